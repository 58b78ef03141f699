"""d's fused CPU kernel (model/fused_d.py) against d as PyTorch operations."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from model import MetaNet, MetaNetConfig, cpu_kernels, fused_d
from model.fast_weights import CoordinateLSTM

needs_kernel = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernel")


def lively_d(seed: int = 0) -> CoordinateLSTM:
    """A d whose every weight matters (training starts its head near zero)."""
    torch.manual_seed(seed)
    d = CoordinateLSTM(hidden=20)
    for w in d.parameters():
        torch.nn.init.normal_(w, std=0.5)
    return d


def pytorch_d(d: CoordinateLSTM, meta: torch.Tensor, state=None):
    for step in meta.unbind(-3):
        state = d.step(step, state)
    return d.readout(state), state


@needs_kernel
def test_the_kernel_builds_on_a_machine_with_a_compiler():
    assert cpu_kernels.available()
    assert torch.ops.metanet_d.lanes() in (8, 16)
    assert fused_d.applies(torch.device("cpu"), torch.float32, 20)
    assert not fused_d.applies(torch.device("cpu"), torch.bfloat16, 20)
    assert not fused_d.applies(torch.device("cpu"), torch.float32, 18)
    assert not fused_d.applies(torch.device("meta"), torch.float32, 20)


@needs_kernel
@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("with_state", [False, True])
def test_kernel_equals_pytorch_d_forward_and_gradients(lead, steps, with_state):
    """Fast weights, the state after the last step and the gradients of all of d's weights, on
    every coordinate (37: two full blocks of 16 and a partial one) of any batch shape. The reference
    runs in float64."""
    d = lively_d()
    g = torch.Generator().manual_seed(1)
    coordinates = 37
    meta = torch.rand(*lead, steps, coordinates, 2, generator=g) * 2 - 1
    state = None
    if with_state:
        state = tuple(torch.randn(*lead, coordinates, 20, generator=g) for _ in range(2))
    upstream = torch.randn(*lead, coordinates, generator=g)

    fast, (h, c) = fused_d.run(d, meta, state)
    got = torch.autograd.grad((fast * upstream).sum(), list(d.parameters()))

    exact = lively_d().double()
    want_fast, (want_h, want_c) = pytorch_d(
        exact, meta.double(), None if state is None else tuple(s.double() for s in state)
    )
    loss = (want_fast * upstream.double()).sum()
    # one step from the zero state never reads w_hh: its gradient is 0
    want = torch.autograd.grad(loss, list(exact.parameters()), allow_unused=True, materialize_grads=True)
    assert fast.shape == (*lead, coordinates) and h.shape == c.shape == (*lead, coordinates, 20)
    for a, b in [(fast, want_fast), (h, want_h), (c, want_c)]:
        torch.testing.assert_close(a.double(), b, atol=2e-6, rtol=1e-5)
    for (name, _), a, b in zip(d.named_parameters(), got, want, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-5 * b.abs().max().item(), rtol=1e-4, msg=name)


@needs_kernel
def test_kernel_survives_saturated_gates():
    """Huge pre-activations saturate every gate: finite outputs equal to the PyTorch form's."""
    d = lively_d()
    with torch.no_grad():
        d.cell.weight_ih.mul_(1e4)
    meta = torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]).expand(4, 3, 2).contiguous()
    fast, (h, c) = fused_d.run(d, meta, None)
    want, (want_h, want_c) = pytorch_d(d, meta)
    assert torch.isfinite(fast).all() and torch.isfinite(c).all()
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, want_h, atol=1e-6, rtol=1e-5)


def _episode_loss(net: MetaNet) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, q = torch.rand(5, 1, 28, 28, generator=g), torch.rand(10, 1, 28, 28, generator=g)
    logits = net(x, torch.arange(5), q, torch.arange(5))
    return F.cross_entropy(logits, torch.arange(5).repeat(2))


@needs_kernel
def test_task_weights_and_their_gradients_equal_pytorch_d_for_a_meta_batch():
    """Q* of a meta-batch of 2 episodes through MetaNet's own d path (per-example gradients,
    preprocessing, flattening of every layer), and the gradients of d's weights through it."""
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig(max_task_examples=5))
    for w in net.d_rep.parameters():
        torch.nn.init.normal_(w, std=0.3)
    x, slots = torch.rand(2, 5, 1, 28, 28), torch.arange(5).expand(2, 5)
    results = {}
    for kernel in fused_d.KERNELS:
        net.d_kernel = kernel
        task, _ = net.rep_task_weights(x, slots)
        upstream = torch.Generator().manual_seed(1)
        loss = sum((w * torch.randn(w.shape, generator=upstream)).sum() for w in task.values())
        results[kernel] = task, torch.autograd.grad(loss, list(net.d_rep.parameters()))
    (task, grads), (want_task, want_grads) = results["auto"], results["torch"]
    for name, w in want_task.items():
        assert task[name].shape == w.shape == (2, *net.rep[name].shape)
        torch.testing.assert_close(task[name], w, atol=1e-5 * w.abs().max().item(), rtol=1e-5)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)


@needs_kernel
def test_metanet_trains_the_same_with_the_kernel(monkeypatch):
    """A training step of the whole model: same loss and same gradients whether d runs by its
    kernel (the default on a CPU) or as PyTorch operations. Compared where the gradients stand above
    float rounding: in an untrained model, u's, d's and the attention scale's are below 1e-5 and set
    by the rounding of nearly uniform attention (the test above checks d's path on its own)."""
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig(max_task_examples=5))
    torch.nn.init.normal_(net.d_rep.head.weight, std=0.05)  # d's fast weights visible in the loss
    runs, original = [], fused_d.run
    monkeypatch.setattr(fused_d, "run", lambda *a: runs.append(1) or original(*a))
    assert net.d_is_fused(torch.device("cpu"))
    loss = _episode_loss(net)
    got = torch.autograd.grad(loss, list(net.parameters()))
    assert runs, "the kernel did not run"

    net.d_kernel = "torch"
    assert not net.d_is_fused(torch.device("cpu"))
    want_loss = _episode_loss(net)
    want = torch.autograd.grad(want_loss, list(net.parameters()))
    assert len(runs) == 1
    torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=1e-6)
    compared = 0
    for (name, _), a, b in zip(net.named_parameters(), got, want, strict=True):
        if b.abs().max() > 1e-3:
            torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-3, msg=name)
            compared += 1
    assert compared >= 15  # b's and m's parameters


@needs_kernel
def test_a_growing_task_continues_from_the_kernels_state():
    """Serving: a task taught 2 examples, then 3 more, gets the Q* of all 5 read at once."""
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig(max_task_examples=5)).eval()
    torch.nn.init.normal_(net.d_rep.head.weight, std=0.05)
    x, slots = torch.rand(5, 1, 28, 28), torch.arange(5)
    with torch.no_grad():
        at_once, _ = net.rep_task_weights(x, slots)
        first, state = net.rep_task_weights(x[:2], slots[:2])
        grown, _ = net.rep_task_weights(x[2:], slots[2:], state)
        net.d_kernel = "torch"
        reference, _ = net.rep_task_weights(x, slots)
    for name, w in at_once.items():
        torch.testing.assert_close(grown[name], w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(w, reference[name], atol=1e-6, rtol=1e-5)


def test_bfloat16_d_and_the_torch_setting_never_use_the_kernel(monkeypatch):
    monkeypatch.setattr(fused_d, "run", lambda *a: pytest.fail("the kernel ran"))
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig(max_task_examples=3))
    x, slots = torch.rand(3, 1, 28, 28), torch.arange(3)
    net.d_kernel = "torch"
    net.rep_task_weights(x, slots)
    net.d_kernel, net.d_dtype = "auto", torch.bfloat16
    net.rep_task_weights(x, slots)
