"""Meta information: per-example loss gradients and their preprocessing.

The gradients are constants for the meta learners (the original code moves them to NumPy):
they are computed on detached weights, so no second-order terms flow back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

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


def example_gradients(weights: Weights, codes: torch.Tensor, x: torch.Tensor) -> Weights:
    """Per-example gradients of the one-vs-rest task loss, vectorized over examples.

    weights: slow CNN weights; codes: [n, C] each example's output row; x: [n, 1, H, W].
    Returns {name: [n, *shape]} plus "out": [n, C], the gradient of the example's own output row
    (every other row's gradient is zero).
    """
    params = {name: w.detach() for name, w in weights.items()}
    grads, out = vmap(grad(_own_label_loss, argnums=(0, 2)), in_dims=(None, 0, 0))(params, x, codes.detach())
    return grads | {"out": out}


def embedding_gradients_ce(weights: Weights, codes: torch.Tensor, x: torch.Tensor) -> Weights:
    """Per-example gradients of the cross-entropy embedding loss w.r.t. u's CNN weights."""
    params = {name: w.detach() for name, w in weights.items()}
    return vmap(grad(_own_label_loss), in_dims=(None, 0, 0))(params, x, codes.detach())


def embedding_gradients_contrastive(
    weights: Weights, x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor, margin: float
) -> Weights:
    """Per-pair gradients of the contrastive loss (paper eq. 6-7; Chopra et al. 2005).

    x1, x2: [T, 1, H, W]; same: [T] 1.0 where the pair shares a label.
    """
    detached = {name: w.detach() for name, w in weights.items()}

    def loss(w: Weights, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        distance = (features(a, w) - features(b, w)).pow(2).sum().add(1e-12).sqrt()
        return s * distance.pow(2) + (1 - s) * F.relu(margin - distance).pow(2)

    return vmap(grad(loss), in_dims=(None, 0, 0, 0))(detached, x1, x2, same)
