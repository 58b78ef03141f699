"""The CNN shared by the base learner b and the representation learner u, with layer augmentation.

Five blocks of 3x3 conv (no bias) -> ReLU -> 2x2 max-pool (ceil), 28 -> 14 -> 7 -> 4 -> 2 -> 1,
then fc 64 -> 64. Every layer is *augmented* (paper section 3.3): it runs once per weight set
(slow weights, plus any fast weights) on the same input, applies ReLU to each, and sums.

Weights are plain dicts ``{"conv1": [64, 1, 3, 3], ..., "conv5": [64, 64, 3, 3], "fc": [64, 64]}``
so the same functions serve slow weights, per-example gradients under ``torch.func.grad``, and
per-example fast weights: a weight set whose tensors carry one more leading dimension
(``{"conv1": [B, 64, 1, 3, 3], ...}``) gives every example of the batch its own weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Weights = dict[str, torch.Tensor]


def layer_names(num_blocks: int) -> list[str]:
    return [f"conv{i}" for i in range(1, num_blocks + 1)] + ["fc"]


def init_weights(channels: int, num_blocks: int) -> Weights:
    """Kaiming-initialized slow weights."""
    weights: Weights = {}
    in_channels = 1
    for name in layer_names(num_blocks)[:-1]:
        w = torch.empty(channels, in_channels, 3, 3)
        torch.nn.init.kaiming_normal_(w, nonlinearity="relu")
        weights[name] = w
        in_channels = channels
    fc = torch.empty(channels, channels)
    torch.nn.init.kaiming_normal_(fc, nonlinearity="relu")
    weights["fc"] = fc
    return weights


def conv_per_example(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """3x3 'same' convolution of every example with its own weights.

    x: [B, Cin, H, W]; w: [B, Cout, Cin, 3, 3] -> [B, Cout, H, W]. A grouped convolution (one group
    per example); under ONNX export, whose Conv fixes the group count in the graph, the same sum as a
    batched matmul over 3x3 patches, so that the exported batch size stays dynamic.
    """
    b, c, h, width = x.shape
    if torch.onnx.is_in_onnx_export():
        padded = F.pad(x, (1, 1, 1, 1))
        shifts = [padded[:, :, i : i + h, j : j + width] for i in range(3) for j in range(3)]
        patches = torch.stack(shifts, dim=2).reshape(b, c * 9, h * width)  # rows in w's (Cin, 3, 3) order
        return (w.reshape(b, w.shape[1], c * 9) @ patches).reshape(b, -1, h, width)
    grouped = F.conv2d(x.reshape(1, b * c, h, width), w.reshape(-1, c, 3, 3), padding=1, groups=b)
    return grouped.reshape(b, -1, h, width)


def _conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return conv_per_example(x, w) if w.dim() == 5 else F.conv2d(x, w, padding=1)


def _fc(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w @ x.unsqueeze(-1)).squeeze(-1) if w.dim() == 3 else x @ w.T


def features(x: torch.Tensor, *weight_sets: Weights, relu_out: bool = True) -> torch.Tensor:
    """Augmented forward pass to the fc output. x: [B, 1, H, W] or [1, H, W] -> [B, C] or [C].

    A weight set is shared by the batch ({name: [*shape]}) or per example ({name: [B, *shape]}).
    relu_out=False leaves the fc layer linear (the sum of each weight set's fc output), a signed
    embedding; the paper's network applies ReLU there too.
    """
    convs = [name for name in weight_sets[0] if name.startswith("conv")]
    for name in convs:
        x = sum(F.relu(_conv(x, w[name])) for w in weight_sets)
        x = F.max_pool2d(x, 2, ceil_mode=True)
    x = x.flatten(-3)
    out_fn = F.relu if relu_out else (lambda t: t)
    return sum(out_fn(_fc(x, w["fc"])) for w in weight_sets)


def codebook(max_labels: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Fixed output weights [max_labels, C]: label slot k of any task uses row k.

    The paper inserts a fresh softmax layer for K-way tasks and keeps its weights fixed
    (section 4.2.1); a fixed random codebook makes that layer deterministic for any K, so
    tasks can grow labels on the fly. Fast weights from the meta learner carry the classes.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(max_labels, channels, generator=generator) / math.sqrt(channels)
