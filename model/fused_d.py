"""d on a CPU as one fused kernel (``model/csrc/coordinate_lstm.cpp``).

d is an LSTM(2, H) plus a linear readout run on every coordinate of a gradient, ~150k per episode.
Written out in PyTorch (``CoordinateLSTM.step``), each step moves [coordinates, 4H] gate tensors
through main memory several times; this kernel runs all T steps of a block of 16 coordinates (8
without AVX-512) in registers and recomputes the forward in its backward instead of saving it: d
about 6x faster, a 5-way training step about 2x (``python -m benchmarks.train_speed [--d-kernel
torch]``). Same arithmetic, to float rounding (``tests/metanet/test_fused_d.py``).

It is built with the project's other CPU kernels (``model/cpu_kernels.py``); where they cannot be
built, d runs as PyTorch operations, as on a GPU.
"""

from __future__ import annotations

import torch

from model import cpu_kernels
from model.fast_weights import CoordinateLSTM

KERNELS = ("auto", "torch")  # MetaNet.d_kernel: the fused kernel where it applies, or never


def applies(device: torch.device, dtype: torch.dtype, hidden: int) -> bool:
    """Whether the kernel can run d (float32 on a CPU, H a multiple of 4 up to 64) on this machine."""
    shape_ok = hidden % 4 == 0 and hidden <= 64
    return device.type == "cpu" and dtype == torch.float32 and shape_ok and cpu_kernels.available()


class _FusedD(torch.autograd.Function):
    """Gradients flow to d's weights only: the preprocessed gradients and the initial state are
    constants (as in the PyTorch path, where they carry no graph)."""

    @staticmethod
    def forward(ctx, meta, h0, c0, w_ih, w_hh, bias, head_w, head_b):
        out, h, c = torch.ops.metanet_d.forward(meta, h0, c0, w_ih, w_hh, bias, head_w, head_b)
        ctx.save_for_backward(meta, h0, c0, w_ih, w_hh, bias, head_w, head_b)
        ctx.mark_non_differentiable(h, c)
        return out, h, c

    @staticmethod
    def backward(ctx, grad_out, _grad_h, _grad_c):
        grads = torch.ops.metanet_d.backward(grad_out.contiguous(), *ctx.saved_tensors)
        return (None, None, None, *grads)


@torch.compiler.disable
def run(
    d: CoordinateLSTM, meta: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """d over a sequence: meta [..., t, P, 2] (one gradient per step), state ([..., P, H] twice, or
    None for the zero state) -> (fast weights [..., P], state after the last step)."""
    if not cpu_kernels.available():
        raise RuntimeError("d's fused CPU kernel is unavailable on this machine")
    lead, (t, p) = meta.shape[:-3], meta.shape[-3:-1]
    hidden = d.hidden
    h0 = c0 = None
    if state is not None:
        h0, c0 = (s.detach().reshape(-1, p, hidden).contiguous() for s in state)
    cell = d.cell
    out, h, c = _FusedD.apply(
        meta.detach().reshape(-1, t, p, 2).contiguous(),
        h0,
        c0,
        cell.weight_ih,
        cell.weight_hh,
        cell.bias_ih + cell.bias_hh,
        d.head.weight.reshape(-1),
        d.head.bias,
    )
    return out.reshape(*lead, p), (h.reshape(*lead, p, hidden), c.reshape(*lead, p, hidden))
