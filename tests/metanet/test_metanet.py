"""MetaNet's pieces: shapes, meta information, fast weights, attention and memory."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model import MetaNet, MetaNetConfig, cnn
from model.fast_weights import CoordinateLSTM
from model.meta_info import example_gradients, preprocess_gradient
from model.metanet import SparseAttention, contrastive_pairs


@pytest.fixture(scope="module")
def model() -> MetaNet:
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig())
    # Non-zero last layers so that the fast path is exercised (training starts them at zero).
    for head in (net.m_conv.net[-1], net.m_fc.net[-1], net.d_rep.head):
        torch.nn.init.normal_(head.weight, std=0.02)
        torch.nn.init.normal_(head.bias, std=0.02)
    return net


def episode(n: int = 5, q: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n), torch.rand(q, 1, 28, 28, generator=g)


def test_cnn_shapes_and_parameter_count():
    weights = cnn.init_weights(64, 5)
    assert sum(w.numel() for w in weights.values()) == 576 + 4 * 64 * 64 * 9 + 64 * 64  # 152,128
    assert cnn.features(torch.rand(3, 1, 28, 28), weights).shape == (3, 64)
    assert cnn.features(torch.rand(1, 28, 28), weights, weights).shape == (64,)


def test_layer_augmentation_sums_relu_of_each_weight_set():
    torch.manual_seed(0)
    slow = cnn.init_weights(8, 1)  # one conv block: 2x2 -> 1x1, then fc 8 -> 8
    fast = {k: torch.randn_like(v) for k, v in slow.items()}
    x = torch.rand(3, 1, 2, 2)
    conv = F.relu(F.conv2d(x, slow["conv1"], padding=1)) + F.relu(F.conv2d(x, fast["conv1"], padding=1))
    pooled = F.max_pool2d(conv, 2, ceil_mode=True).flatten(1)  # [3, 8]
    expected = F.relu(pooled @ slow["fc"].T) + F.relu(pooled @ fast["fc"].T)
    torch.testing.assert_close(cnn.features(x, slow, fast), expected)
    assert not torch.allclose(cnn.features(x, slow), expected)


def test_gradient_preprocessing_matches_hand_computed_values():
    g = torch.tensor([0.0, 1e-3, -0.5, 2.0, -1e-9])
    features = preprocess_gradient(g, k=7.0)
    e7 = math.exp(7)
    expected = torch.tensor(
        [
            [-1.0, 0.0],  # log(1e-8)/7 = -2.63 -> clamped to -1
            [math.log(1e-3 + 1e-8) / 7, min(1e-3 * e7, 1.0)],  # -0.987, 1 (1.097 clamped)
            [math.log(0.5 + 1e-8) / 7, -1.0],
            [math.log(2.0 + 1e-8) / 7, 1.0],
            [-1.0, -1e-9 * e7],
        ]
    )
    torch.testing.assert_close(features, expected)


def test_shapes_of_memory_and_logits(model: MetaNet):
    x, labels, q = episode(n=5, q=7)
    memory = model.build_memory(x, labels, torch.arange(5))
    p = sum(w.numel() for w in model.base.values())
    assert memory.fast_weights.shape == (5, p)
    assert memory.fast_out.shape == (5, 64)
    assert memory.keys.shape == (5, 64)
    torch.testing.assert_close(memory.keys.norm(dim=-1), torch.ones(5))
    assert set(memory.rep_task_weights) == set(model.rep)
    assert model(x, labels, q, torch.arange(5)).shape == (7, 5)


def test_vectorized_fast_weights_equal_a_naive_per_example_loop(model: MetaNet):
    x, labels, _ = episode(n=4)
    codes = model.base_codes[labels]
    fast, fast_out = model.example_fast_weights(x, labels)
    for i in range(4):
        slow = {name: w.detach().clone().requires_grad_() for name, w in model.base.items()}
        code = codes[i].clone().requires_grad_()
        loss = F.softplus(-(cnn.features(x[i : i + 1], slow)[0] @ code))
        grads = torch.autograd.grad(loss, [*slow.values(), code])
        naive = [
            (model.m_conv if name.startswith("conv") else model.m_fc)(preprocess_gradient(g)).flatten()
            for name, g in zip(slow, grads[:-1], strict=True)
        ]
        assert (torch.cat(naive) - fast[i]).abs().max() < 1e-5
        assert (model.m_fc(preprocess_gradient(grads[-1])) - fast_out[i]).abs().max() < 1e-5


def test_per_query_base_learner_equals_a_naive_loop(model: MetaNet):
    x, labels, q = episode(n=3, q=4)
    memory = model.build_memory(x, labels, torch.arange(3))
    attention = torch.softmax(torch.randn(4, 3), dim=-1)
    per_query = model.read_memory(memory, attention)
    batched = model.base_features(q, per_query, None)
    like = dict(model.base)
    for j in range(4):
        fast, start = {}, 0
        for name, w in like.items():
            fast[name] = per_query[j, start : start + w.numel()].view_as(w)
            start += w.numel()
        single = cnn.features(q[j : j + 1], like, fast)[0]
        torch.testing.assert_close(single, batched[j])  # float32: rtol 1.3e-6, atol 1e-5


def test_example_gradients_depend_on_the_example_alone(model: MetaNet):
    x, labels, _ = episode(n=4)
    together = example_gradients(dict(model.base), model.base_codes[labels], x)
    alone = example_gradients(dict(model.base), model.base_codes[labels[2:3]], x[2:3])
    for name in together:
        torch.testing.assert_close(together[name][2], alone[name][0])


def test_attention_is_softmax_of_scaled_cosine_and_reads_memory(model: MetaNet):
    keys = F.normalize(torch.randn(4, 64), dim=-1)
    queries = keys[[2, 0]]
    attention = model.attention(queries @ keys.T, torch.ones(4))
    torch.testing.assert_close(attention.sum(-1), torch.ones(2))
    assert attention.argmax(-1).tolist() == [2, 0]
    scale = model.log_attention_scale.exp()
    torch.testing.assert_close(attention, torch.softmax(scale * (queries @ keys.T), dim=-1))
    # W* = a^T M
    x, labels, _ = episode(n=4)
    memory = model.build_memory(x, labels, torch.arange(4))
    torch.testing.assert_close(model.read_memory(memory, attention), attention @ memory.fast_weights)


def test_sparse_attention_over_all_rows_equals_dense(model: MetaNet):
    x, labels, q = episode(n=5, q=3)
    memory = model.build_memory(x, labels, torch.arange(5))
    cosine = model.embed(q, memory.rep_task_weights) @ memory.keys.T
    shots = model.shots_per_row(memory)
    dense = model.query_logits(q, memory, model.attention(cosine, shots))
    top = cosine.topk(5)
    sparse = model.query_logits(
        q, memory, SparseAttention(top.indices, model.attention(top.values, shots[top.indices]))
    )
    torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=1e-5)


def test_output_layer_equals_dense_fast_rows(model: MetaNet):
    """The closed form of the fast output rows equals reading a dense [n, K, C] memory."""
    x, labels, q = episode(n=3, q=2)
    labels = torch.tensor([0, 1, 1])
    memory = model.build_memory(x, labels, torch.tensor([7, 3]))
    attention = torch.softmax(torch.randn(2, 3), dim=-1)
    h = torch.rand(2, 64)
    zero = model._zero_gradient_fast_weight()
    dense_rows = zero.expand(3, 2, 64).clone()  # [n, K, C]
    for i, label in enumerate(labels.tolist()):
        dense_rows[i, label] = memory.fast_out[i]
    fast_rows = torch.einsum("qn,nkc->qkc", attention, dense_rows)
    expected = h @ model.base_codes[[7, 3]].T + torch.einsum("qc,qkc->qk", h, fast_rows)
    torch.testing.assert_close(model.output_logits(h, memory, attention), expected)


def test_attention_is_balanced_across_labels_with_several_shots(model: MetaNet):
    cosine = torch.tensor([[0.9, 0.9, 0.9]])  # rows 0 and 1 share a label
    attention = model.attention(cosine, torch.tensor([2.0, 2.0, 1.0]))
    torch.testing.assert_close(attention, torch.tensor([[0.25, 0.25, 0.5]]))


def test_any_number_of_labels(model: MetaNet):
    x, _, q = episode(n=30, q=2)
    logits = model(x, torch.arange(30), q, torch.arange(30))
    assert logits.shape == (2, 30)


def test_variants_minus_and_plus():
    x, labels, q = episode(n=3, q=2)
    minus = MetaNet(MetaNetConfig(variant="minus"))
    assert minus.d_rep is None and minus.build_memory(x, labels, torch.arange(3)).rep_task_weights is None
    plus = MetaNet(MetaNetConfig(variant="plus"))
    memory = plus.build_memory(x, labels, torch.arange(3))
    assert set(memory.base_task_weights) == set(plus.base)
    assert plus(x, labels, q, torch.arange(3)).shape == (2, 3)


def test_queries_of_tasks_with_task_level_base_weights_each_read_their_own(model: MetaNet):
    """classify_tasks packs queries of several tasks into one pass of b, except where b carries
    task-level weights (MetaNet+): a pass never mixes two tasks' weights."""
    torch.manual_seed(0)
    tasks = [episode(n=3, q=4, seed=seed) for seed in (1, 2)]
    with torch.no_grad():
        memories = [
            dataclasses.replace(  # weights of either sign, so that each task's move its logits
                model.build_memory(x, labels, torch.arange(3)),
                base_task_weights={name: 0.3 * torch.randn_like(w) for name, w in model.base.items()},
            )
            for x, labels, _ in tasks
        ]
        answers = model.classify_tasks(memories, [q for *_, q in tasks], [None, None], chunk=3)
        for answer, memory, (_, _, q) in zip(answers, memories, tasks, strict=True):
            attention = model.read_attention(memory, model.embed(q, memory.rep_task_weights))
            expected = model.query_logits(q, memory, attention)
            scale = expected.abs().max()
            assert (answer.logits - expected).abs().max() < 1e-5 * scale
            other = dataclasses.replace(memory, base_task_weights=memories[0].base_task_weights)
            if memory is not memories[0]:  # the other task's weights would give other logits
                assert (model.query_logits(q, other, attention) - expected).abs().max() > 1e-2 * scale


def test_contrastive_embedding_loss_for_several_shots():
    first, second, same = contrastive_pairs(torch.tensor([0, 0, 1, 1]), 4)
    assert len(first) == 4 and same.tolist() == [1.0, 1.0, 0.0, 0.0]
    net = MetaNet(MetaNetConfig(embedding_loss="contrastive"))
    x, _, q = episode(n=4, q=2)
    assert net(x, torch.tensor([0, 0, 1, 1]), q, torch.arange(2)).shape == (2, 2)


def test_fast_path_starts_quiet_yet_every_learned_part_gets_gradient():
    """Regression: exactly-zero generator heads gave ReLU(conv(x, 0)) = 0 and no gradient ever."""
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig())
    x, labels, _ = episode(n=3)
    fast = net.build_memory(x, labels, torch.arange(3)).fast_weights
    assert 0 < fast.abs().max() < 0.05 * net.base["conv2"].abs().max()
    x, labels, q = episode(n=3, q=6)
    loss = F.cross_entropy(net(x, labels, q, torch.arange(3)), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    for name in ("base.conv1", "rep.conv1", "m_conv.net.4.weight", "m_fc.net.4.weight", "d_rep.head.weight"):
        param = dict(net.named_parameters())[name]
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_written_out_lstm_step_equals_torch_lstm_cell():
    torch.manual_seed(0)
    d = CoordinateLSTM(hidden=20)
    meta, h, c = torch.randn(2, 7, 2), torch.randn(2, 7, 20), torch.randn(2, 7, 20)
    expected_h, expected_c = d.cell(meta.reshape(14, 2), (h.reshape(14, 20), c.reshape(14, 20)))
    zero_h, zero_c = d.cell(meta.reshape(14, 2))

    def step(state):  # any leading shape
        return tuple(t.reshape(14, 20) for t in d.step(meta, state))

    for grad_enabled in (True, False):  # training and the inference form of the step
        with torch.set_grad_enabled(grad_enabled):
            for got, expected in [(step((h, c)), (expected_h, expected_c)), (step(None), (zero_h, zero_c))]:
                torch.testing.assert_close(got[0], expected[0])
                torch.testing.assert_close(got[1], expected[1])


def test_relative_fast_weights_are_zero_for_a_zero_gradient():
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig(relative_fast_weights=True))
    torch.nn.init.normal_(net.m_fc.net[-1].weight, std=0.1)
    torch.nn.init.normal_(net.m_fc.net[-1].bias, std=0.1)
    grads = {"fc": torch.zeros(2, 64, 64), "out": torch.randn(2, 64)}
    fast = net._m(grads)
    assert fast["fc"].abs().max() == 0 and fast["out"].abs().max() > 0
    assert net._zero_gradient_fast_weight() == 0


def test_m_by_table_trains_m_as_its_mlp_would():
    """Training evaluates m by its exact table: same fast weights and same gradients for m's
    weights as the MLP itself (compared in float64, where the MLP's own float32 sums over
    ~10^5 coordinates are the less exact of the two)."""
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig(relative_fast_weights=True))
    for layer in net.m_conv.net:  # a non-trivial m: every unit active somewhere
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=1.0)
    grads = {"conv2": torch.randn(3, 64, 64, 3, 3) * 1e-3, "conv3": torch.randn(3, 64, 64, 3, 3) * 1e-5}
    upstream = {name: torch.randn_like(g) for name, g in grads.items()}
    fast = net._m(grads)
    table_grads = torch.autograd.grad(
        sum((fast[n] * upstream[n]).sum() for n in grads), list(net.m_conv.parameters())
    )
    mlp = copy.deepcopy(net.m_conv).double()
    k, zero = net.config.grad_clip_k, torch.zeros(1, dtype=torch.float64)
    loss = 0
    for name, g in grads.items():
        expected = mlp(preprocess_gradient(g.double(), k)) - mlp(preprocess_gradient(zero, k))
        scale = expected.abs().max().item()  # float32 rounding of slope * key + intercept
        torch.testing.assert_close(fast[name].double(), expected, atol=1e-6 * scale, rtol=1e-5)
        loss = loss + (expected * upstream[name].double()).sum()
    for got, want in zip(table_grads, torch.autograd.grad(loss, list(mlp.parameters())), strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)


def test_d_in_bfloat16_hands_back_float32_close_to_float32():
    """The training engine's ``d_dtype`` setting: d under autocast, its outputs in float32."""
    torch.manual_seed(0)
    net = MetaNet(MetaNetConfig(max_task_examples=3))
    torch.nn.init.normal_(net.d_rep.head.weight, std=0.1)
    x, slots = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    exact, _ = net.rep_task_weights(x, slots)
    net.d_dtype = torch.bfloat16
    low, state = net.rep_task_weights(x, slots)
    for name, w in exact.items():
        assert low[name].dtype == torch.float32 and state[0].dtype == torch.float32
        torch.testing.assert_close(low[name], w, atol=0.02 * w.abs().max().item(), rtol=0.05)
