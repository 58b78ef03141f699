"""m as an exact lookup table: the example-level meta learner, evaluated per coordinate without its MLP.

m reads one preprocessed gradient per coordinate, ``(clamp(log(|g| + eps) / k, min=-1),
clamp(g e^k, -1, 1))``, a point on one of three lines of the plane:

  * |g| < e^-k:  (-1, t) with t = g e^k in (-1, 1);
  * g >= e^-k:   (t, +1) with t = log(g + eps) / k;
  * g <= -e^-k:  (t, -1) likewise.

(Exactly so except for |g| within eps = 1e-8 below e^-k, where the magnitude feature is above
-1 by at most 2e-6.) Each gradient gets a *key*: t on the small-gradient line, +(t + KEY_GAP)
on the positive magnitude line, -(t + KEY_GAP) on the negative one, so the three lines lie on
one monotone axis. m is a ReLU MLP, so along that axis it is piecewise linear with at most
h + h(h + 1) breakpoints per line (h = hidden width): where a first-layer unit changes sign,
and where a second-layer unit does within each first-layer piece. ``PiecewiseLinearM`` finds
every breakpoint in closed form (float64, vectorized, no host round trip), then evaluates m(g)
as ``slope[s] * key + intercept[s]`` with ``s`` the key's piece: about ten elementwise passes
per coordinate instead of the MLP's 2 x (2h + h^2 + h) FLOPs (920 for h = 20), equal to the MLP
up to float32 rounding.

The slopes and intercepts are computed from m's weights with autograd (the ReLU masks of each
piece are constants, as they are in the MLP's own backward), so the table serves training too:
m's parameters receive the gradient the MLP would give them, at a fraction of the memory
traffic of its [coordinates, h] activations.
"""

from __future__ import annotations

import math

import torch

from model.fast_weights import CoordinateMLP

KEY_GAP = 4.0  # keys of the magnitude lines start at +-(KEY_GAP - 1) = +-3, clear of the small line's (-1, 1)
KEY_BOUND = 20.0  # |key| of any finite float32 gradient is below KEY_GAP + log(3.4e38) / 7 = 16.7
SEPARATORS = (-2.0, 2.0)  # between the negative line's keys (<= -3), the small line's, the positive line's

# The three lines in key units, in key order: point(key) = origin + key * direction, key in (low, high).
ORIGINS = ((-KEY_GAP, -1.0), (-1.0, 0.0), (-KEY_GAP, 1.0))
DIRECTIONS = ((-1.0, 0.0), (0.0, 1.0), (1.0, 0.0))
LOWS = (-KEY_BOUND, -1.0, KEY_GAP - 1.0)
HIGHS = (1.0 - KEY_GAP, 1.0, KEY_BOUND)
LINES = {"origin": ORIGINS, "direction": DIRECTIONS, "low": LOWS, "high": HIGHS}


def _layers(mlp: CoordinateMLP) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.weight, layer.bias) for layer in (mlp.net[0], mlp.net[2], mlp.net[4])]


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., i] @ w.T [+ b] as one 2-D product (a batched float64 product with i = 2 is ~1000x slower)."""
    y = x.reshape(-1, x.shape[-1]) @ w.T
    return (y if b is None else y + b).reshape(*x.shape[:-1], w.shape[0])


def _roots(alpha: torch.Tensor, beta: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Where alpha + t beta = 0, per unit; roots outside (low, high) are moved to ``high``.

    alpha, beta: [..., h]; low, high: broadcastable to [..., h] -> [..., h]."""
    t = -alpha / torch.where(beta == 0, torch.ones_like(beta), beta)
    inside = (beta != 0) & (t > low) & (t < high)
    return torch.where(inside, t, high.expand_as(t))


def _midpoints(edges: torch.Tensor) -> torch.Tensor:
    """[..., s + 1] sorted edges -> [..., s] midpoints of the intervals between them."""
    return 0.5 * (edges[..., 1:] + edges[..., :-1])


def _breakpoints(
    layers: list[tuple[torch.Tensor, torch.Tensor]], lines: dict[str, torch.Tensor]
) -> torch.Tensor:
    """[3, h + h(h + 1)] sorted breakpoints of each line (unused ones parked at the line's high end)."""
    (w1, b1), (w2, b2), _ = layers
    low, high = lines["low"].unsqueeze(-1), lines["high"].unsqueeze(-1)  # [3, 1]
    # [3, h]: first-layer pre-activation alpha + t beta along each line
    alpha1, beta1 = _linear(lines["origin"], w1, b1), _linear(lines["direction"], w1)
    first = _roots(alpha1, beta1, low, high).sort(-1).values  # [3, h]
    edges = torch.cat([low, first, high], -1)  # [3, h + 2]
    mid = _midpoints(edges).unsqueeze(-1)  # [3, h + 1, 1]
    on1 = (alpha1.unsqueeze(1) + mid * beta1.unsqueeze(1) > 0).to(w1.dtype)  # [3, h + 1, h]
    alpha2 = _linear(on1 * alpha1.unsqueeze(1), w2, b2)  # [3, h + 1, h]: second layer within each first piece
    beta2 = _linear(on1 * beta1.unsqueeze(1), w2)
    second = _roots(alpha2, beta2, edges[:, :-1, None], edges[:, 1:, None])  # [3, h + 1, h]
    second = torch.where(second < edges[:, 1:, None], second, high.unsqueeze(-1))
    return torch.cat([first, second.flatten(1)], -1).sort(-1).values


class _PiecewiseAffine(torch.autograd.Function):
    """slopes[piece] * key + intercepts[piece]; its backward to the S piece parameters is two
    weighted histograms (``bincount``) instead of an accumulating scatter over every coordinate."""

    @staticmethod
    def forward(slopes: torch.Tensor, intercepts: torch.Tensor, piece: torch.Tensor, key: torch.Tensor):
        return slopes[piece].mul_(key).add_(intercepts[piece])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        slopes, _, piece, key = inputs
        ctx.pieces = len(slopes)
        ctx.save_for_backward(piece, key)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        piece, key = ctx.saved_tensors
        piece, grad = piece.flatten(), grad.flatten()
        slopes = torch.bincount(piece, grad * key.flatten(), ctx.pieces)
        intercepts = torch.bincount(piece, grad, ctx.pieces)
        return slopes.to(grad.dtype), intercepts.to(grad.dtype), None, None


class PiecewiseLinearM:
    """m composed with gradient preprocessing, g [...] -> fast weights [...], as one lookup table.

    ``breaks`` [S - 1] are the sorted piece boundaries on the key axis (the three lines' own
    breakpoints and the two separators); piece s is affine in the key with ``slopes[s]`` and
    ``intercepts[s]``. Built under autograd, the slopes and intercepts carry the graph to m's
    weights (training); built under ``torch.no_grad`` they are plain tensors (inference).
    """

    def __init__(self, mlp: CoordinateMLP, k: float, subtract_zero: bool = False) -> None:
        self.k = k
        layers = _layers(mlp)
        device = layers[0][0].device
        lines = {
            name: torch.tensor(values, dtype=torch.float64, device=device) for name, values in LINES.items()
        }
        with torch.no_grad():  # where the pieces are, and which units are on in each: constants
            exact = [(w.double(), b.double()) for w, b in layers]
            breaks = _breakpoints(exact, lines)  # [3, B]
            edges = torch.cat([lines["low"].unsqueeze(-1), breaks, lines["high"].unsqueeze(-1)], -1)
            mid = _midpoints(edges).unsqueeze(-1)  # [3, B + 1, 1]
            points = lines["origin"].unsqueeze(1) + mid * lines["direction"].unsqueeze(1)  # [3, B + 1, 2]
            (w1, b1), (w2, b2), _ = exact
            first = _linear(points, w1, b1)
            on1 = (first > 0).double()
            on2 = (_linear(on1 * first, w2, b2) > 0).double()
        # m on piece s: ReLU masks fixed, so the MLP is affine in the key (float64, differentiable).
        (w1, b1), (w2, b2), (w3, b3) = [(w.double(), b.double()) for w, b in layers]
        origin, direction = lines["origin"].unsqueeze(1), lines["direction"].unsqueeze(1)  # [3, 1, 2]
        hidden_at_zero = _linear(on1 * _linear(origin, w1, b1), w2, b2)  # [3, B + 1, h]: at key 0
        hidden_slope = _linear(on1 * _linear(direction, w1), w2)
        slopes = _linear(on2 * hidden_slope, w3).flatten()
        intercepts = _linear(on2 * hidden_at_zero, w3, b3).flatten()
        dtype = layers[0][0].dtype
        separators = breaks.new_tensor(SEPARATORS).unsqueeze(-1)
        breaks = torch.cat([breaks[0], separators[0], breaks[1], separators[1], breaks[2]])
        if subtract_zero:  # relative fast weights m(g) - m(0): a zero gradient's key is 0
            intercepts = intercepts - intercepts[torch.searchsorted(breaks, breaks.new_zeros(()))]
        self.breaks = breaks.to(dtype)
        self.slopes, self.intercepts = slopes.to(dtype), intercepts.to(dtype)

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
        """m(preprocess(g)) elementwise (differentiable in m's weights when the table is)."""
        with torch.no_grad():
            key = self.key(g)
            piece = torch.searchsorted(self.breaks, key)
        return _PiecewiseAffine.apply(self.slopes, self.intercepts, piece, key)
