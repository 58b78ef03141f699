"""Meta information: per-example loss gradients and their preprocessing.

The gradients are constants for the meta learners (the original code moves them to NumPy):
they are computed on detached weights, so no second-order terms flow back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.utils._pytree import tree_map

from model.cnn import Weights, features


def preprocess_gradient(g: torch.Tensor, k: float = 7.0, eps: float = 1e-8) -> torch.Tensor:
    """Log-and-sign features of Andrychowicz et al. 2016: g [...] -> [..., 2].

    ``[clamp(log(|g| + eps) / k, min=-1), clamp(g * e^k, -1, 1)]``
    """
    magnitude = (torch.log(g.abs() + eps) / k).clamp(min=-1.0)
    direction = (g * math.exp(k)).clamp(-1.0, 1.0)
    return torch.stack([magnitude, direction], dim=-1)


def _own_label_loss(weights: Weights, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one example against its own label's output row (one-vs-rest).

    Depends on nothing but the example and its label, so an example's meta information (and
    its fast weights) never change when the task gains or loses other labels or examples.
    """
    return F.softplus(-(features(x, weights) @ code))


def _per_example(loss, weights: Weights, *batched: torch.Tensor, argnums=0, example_dims: tuple[int, ...]):
    """vmap(grad(loss)) over examples with any leading shape ``batch`` (e.g. [episodes, n]).

    Each tensor in ``batched`` is [*batch, *example_shape] with the example's own dims given by
    ``example_dims``; gradients come back as [*batch, *shape].
    """
    lead = batched[0].shape[: batched[0].dim() - example_dims[0]]
    flat = [t.reshape(-1, *t.shape[t.dim() - d :]) for t, d in zip(batched, example_dims, strict=True)]
    params = {name: w.detach() for name, w in weights.items()}
    in_dims = (None,) + (0,) * len(flat)
    grads = vmap(grad(loss, argnums=argnums), in_dims=in_dims)(params, *flat)
    return tree_map(lambda g: g.reshape(*lead, *g.shape[1:]), grads)


def example_gradients(weights: Weights, codes: torch.Tensor, x: torch.Tensor) -> Weights:
    """Per-example gradients of the one-vs-rest task loss, vectorized over examples.

    weights: slow CNN weights; codes: [..., n, C] each example's output row; x: [..., n, 1, H, W].
    Returns {name: [..., n, *shape]} plus "out": [..., n, C], the gradient of the example's own
    output row (every other row's gradient is zero).
    """
    grads, out = _per_example(
        _own_label_loss, weights, x, codes.detach(), argnums=(0, 2), example_dims=(3, 1)
    )
    return grads | {"out": out}


def embedding_gradients_ce(weights: Weights, codes: torch.Tensor, x: torch.Tensor) -> Weights:
    """Per-example gradients of the cross-entropy embedding loss w.r.t. u's CNN weights."""
    return _per_example(_own_label_loss, weights, x, codes.detach(), example_dims=(3, 1))


def embedding_gradients_contrastive(
    weights: Weights, x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor, margin: float
) -> Weights:
    """Per-pair gradients of the contrastive loss (paper eq. 6-7; Chopra et al. 2005).

    x1, x2: [..., T, 1, H, W]; same: [..., T] 1.0 where the pair shares a label.
    """

    def loss(w: Weights, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        distance = (features(a, w) - features(b, w)).pow(2).sum().add(1e-12).sqrt()
        return s * distance.pow(2) + (1 - s) * F.relu(margin - distance).pow(2)

    return _per_example(loss, weights, x1, x2, same, example_dims=(3, 3, 0))
