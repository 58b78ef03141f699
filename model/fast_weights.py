"""Fast-weight generators: m (example level, per-coordinate MLP) and d (task level, per-coordinate LSTM).

Both read preprocessed gradients coordinate by coordinate: a weight tensor's gradient [..., 2]
becomes a fast weight tensor [...] of the same shape. Their last layers start near zero so the
fast path is quiet at first (otherwise ~150k emitted coordinates swamp the slow path). Not at
exactly zero: a zero fast weight gives ReLU(conv(x, 0)) = 0, whose gradient is zero, and that
fast path would never learn.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_INIT_STD = 1e-3


def init_quiet(layer: nn.Linear) -> None:
    """Near-zero output layer: small random weights, zero bias."""
    nn.init.normal_(layer.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(layer.bias)


class CoordinateMLP(nn.Module):
    """m: 2 -> hidden -> hidden -> 1 with ReLU, shared across coordinates. Its weights are m's
    parameters; training and serving evaluate it per coordinate by its exact table
    (``model/meta_table.py``), this forward serves small inputs and the ONNX export."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        init_quiet(self.net[-1])

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        """meta: [..., 2] -> fast weights [...]."""
        return self.net(meta).squeeze(-1)


def lstm_cell(
    meta: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step on any leading shape: meta [..., 2]; state (h, c) [..., H], or None for the
    zero state (the first step: no hidden product, no forget term) -> (h, c).

    Written out (instead of ``nn.LSTMCell``) so that it runs on any batch shape and under
    ``torch.compile``, which fuses the gate arithmetic into one kernel per pass.
    """
    gates = meta @ w_ih.T + bias  # [..., 4H]: input, forget, cell, output
    if state is not None:
        gates = gates + state[0] @ w_hh.T
    if torch.is_grad_enabled():
        i, f, g, o = gates.chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    else:  # inference: one sigmoid pass over all gates measured faster (the cell gate is re-read as tanh)
        i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)
        g = torch.tanh(gates[..., 2 * w_hh.shape[-1] : 3 * w_hh.shape[-1]])
    c = i * g if state is None else f * state[1] + i * g
    return o * torch.tanh(c), c


class CoordinateLSTM(nn.Module):
    """d: LSTM(2, hidden) over a sequence of gradients, then linear hidden -> 1, per coordinate."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(2, hidden)  # parameter container; the step is lstm_cell
        self.head = nn.Linear(hidden, 1)
        init_quiet(self.head)

    def step(
        self, meta: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient per coordinate. meta: [..., 2]; state: ([..., H], [..., H]), None at the start."""
        cell = self.cell
        return lstm_cell(meta, state, cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh)

    def readout(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Fast weights [...] from the hidden state."""
        return self.head(state[0]).squeeze(-1)


def flatten(weights: dict[str, torch.Tensor], batch_dims: int = 1) -> torch.Tensor:
    """{name: [*batch, *shape]} -> [*batch, P] in key order."""
    return torch.cat([w.flatten(batch_dims) for w in weights.values()], dim=-1)


def unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[*batch, P] -> {name: [*batch, *shape]} with the shapes of ``like`` (unbatched).

    One ``split`` (its backward is one concatenation; slicing would zero-fill a [*batch, P]
    gradient per layer)."""
    batch = flat.shape[:-1]
    parts = flat.split([w.numel() for w in like.values()], dim=-1)
    return {name: part.reshape(*batch, *w.shape) for (name, w), part in zip(like.items(), parts, strict=True)}
