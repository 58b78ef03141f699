"""m as an exact lookup table: the example-level meta learner, evaluated per coordinate without its MLP.

m reads one preprocessed gradient per coordinate, ``(clamp(log(|g| + eps) / k, min=-1),
clamp(g e^k, -1, 1))``, a point on one of three lines of the plane:

  * |g| < e^-k:  (-1, t) with t = g e^k in (-1, 1);
  * g >= e^-k:   (t, +1) with t = log(g + eps) / k;
  * g <= -e^-k:  (t, -1) likewise.

(Exactly so except for |g| within eps = 1e-8 below e^-k, where the magnitude feature is above
-1 by at most 2e-6.) m is a ReLU MLP, so along each line it is a piecewise-linear function of t
with at most h + h(h + 1) breakpoints (h = hidden width): where a first-layer unit changes sign,
and where a second-layer unit does within each first-layer piece. ``PiecewiseLinearM`` finds every
breakpoint in closed form (float64), joins the three lines into one monotone key, and evaluates
m(g) as ``slope[s] * key + intercept[s]`` with ``s`` the key's piece: about ten elementwise
passes per coordinate instead of the MLP's 2 x (2h + h^2 + h) FLOPs (920 for h = 20), and equal
to the MLP up to float32 rounding. For inference only (it holds no autograd graph to m's
parameters).
"""

from __future__ import annotations

import math

import torch

from model.fast_weights import CoordinateMLP
from model.meta_info import preprocess_gradient

KEY_GAP = 4.0  # keys of the magnitude lines start at +-(KEY_GAP - 1) = +-3, clear of the small line's (-1, 1)


def _mlp_layers(mlp: CoordinateMLP) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = [mlp.net[0], mlp.net[2], mlp.net[4]]
    return [(layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu()) for layer in layers]


def _roots(alpha: torch.Tensor, beta: torch.Tensor, low: float, high: float) -> list[float]:
    """t in (low, high) where alpha + t beta = 0, per unit."""
    nonzero = beta != 0
    t = -alpha[nonzero] / beta[nonzero]
    return [float(v) for v in t if low < v < high]


def line_pieces(
    mlp: CoordinateMLP,
    origin: tuple[float, float],
    direction: tuple[float, float],
    low: float = -math.inf,
    high: float = math.inf,
) -> tuple[list[float], list[tuple[float, float]]]:
    """m along x(t) = origin + t direction for t in (low, high), as pieces: breakpoints
    [b_1 < ... < b_s] and the (slope, intercept) of m on each of the s + 1 intervals
    (low, b_1), ..., (b_s, high)."""
    (w1, b1), (w2, b2), (w3, b3) = _mlp_layers(mlp)
    x0 = torch.tensor(origin, dtype=torch.float64)
    v = torch.tensor(direction, dtype=torch.float64)
    alpha1, beta1 = w1 @ x0 + b1, w1 @ v  # first-layer pre-activation alpha + t beta
    first = [low, *sorted(_roots(alpha1, beta1, low, high)), high]
    breaks: list[float] = []
    pieces: list[tuple[float, float]] = []
    for start, end in zip(first[:-1], first[1:], strict=True):
        mid = _inside(start, end)
        on1 = (alpha1 + mid * beta1 > 0).double()
        alpha2, beta2 = w2 @ (on1 * alpha1) + b2, w2 @ (on1 * beta1)
        second = [start, *sorted(_roots(alpha2, beta2, start, end)), end]
        for low2, high2 in zip(second[:-1], second[1:], strict=True):
            on2 = (alpha2 + _inside(low2, high2) * beta2 > 0).double()
            slope = float(w3[0] @ (on2 * beta2))
            intercept = float(w3[0] @ (on2 * alpha2) + b3[0])
            if pieces:
                breaks.append(low2)
            pieces.append((slope, intercept))
    return breaks, pieces


def _inside(low: float, high: float) -> float:
    """A point strictly inside (low, high), either end possibly infinite."""
    if low == -math.inf and high == math.inf:
        return 0.0
    if low == -math.inf:
        return high - 1.0
    if high == math.inf:
        return low + 1.0
    return 0.5 * (low + high)


class PiecewiseLinearM:
    """m composed with gradient preprocessing, g [...] -> fast weights [...], as one lookup table.

    The key of a gradient is t on the small-gradient line, +(t + KEY_GAP) on the positive
    magnitude line and -(t + KEY_GAP) on the negative one, monotone within each line; pieces
    of all three lines are concatenated in key order.
    """

    def __init__(self, mlp: CoordinateMLP, k: float, subtract_zero: bool = False) -> None:
        self.k = k
        breaks: list[float] = []
        slopes: list[float] = []
        intercepts: list[float] = []
        # Negative magnitude line, key = -(t + GAP), t = -key - GAP: pieces reversed, slope negated.
        b, p = line_pieces(mlp, (0.0, -1.0), (1.0, 0.0), low=-1.0)
        for j, (slope, intercept) in enumerate(reversed(p)):
            if j:
                breaks.append(-(b[len(b) - j] + KEY_GAP))
            slopes.append(-slope)
            intercepts.append(intercept - KEY_GAP * slope)
        breaks.append(-2.0)  # between the negative line's keys (<= -3) and the small line's (> -1)
        b, p = line_pieces(mlp, (-1.0, 0.0), (0.0, 1.0), low=-1.0, high=1.0)
        breaks += b
        slopes += [s for s, _ in p]
        intercepts += [c for _, c in p]
        breaks.append(2.0)
        b, p = line_pieces(mlp, (0.0, 1.0), (1.0, 0.0), low=-1.0)
        breaks += [t + KEY_GAP for t in b]
        slopes += [s for s, _ in p]
        intercepts += [c - KEY_GAP * s for s, c in p]
        if subtract_zero:  # relative fast weights m(g) - m(0)
            zero = float(mlp(preprocess_gradient(torch.zeros(1), k)).double()[0])
            intercepts = [c - zero for c in intercepts]
        self.breaks = torch.tensor(breaks, dtype=torch.float32)
        self.slopes = torch.tensor(slopes, dtype=torch.float32)
        self.intercepts = torch.tensor(intercepts, dtype=torch.float32)
        if not torch.all(self.breaks[1:] >= self.breaks[:-1]):
            raise AssertionError("breakpoints out of order")

    def to(self, device: torch.device | str) -> PiecewiseLinearM:
        self.breaks, self.slopes, self.intercepts = (
            t.to(device) for t in (self.breaks, self.slopes, self.intercepts)
        )
        return self

    def key(self, g: torch.Tensor) -> torch.Tensor:
        """The table key of each gradient (same shape as g)."""
        direction = g * math.exp(self.k)
        magnitude = torch.log(g.abs() + 1e-8).div_(self.k).clamp_(min=-1.0).add_(KEY_GAP)
        return torch.where(direction.abs() < 1.0, direction, magnitude.copysign_(g))

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """m(preprocess(g)) elementwise."""
        key = self.key(g)
        piece = torch.searchsorted(self.breaks, key)
        return self.slopes[piece].mul_(key).add_(self.intercepts[piece])
