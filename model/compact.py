"""Compact storage of a task's example-level fast weights M [n, P], growable one chunk at a time.

Each example's fast weights are P = 152k float32 coordinates (0.6 MB) in the default network:
nearly all of a task memory's bytes. ``FastWeightRows`` keeps them as

  * "float32": as computed (4 bytes per coordinate);
  * "float16" / "bfloat16": 2 bytes per coordinate;
  * "int8": 1 byte per coordinate plus one float32 scale per output row of each layer (a conv
    kernel's output channel, an fc row: 384 scales per example), symmetric round-to-nearest,
    ``scale = max |w| / 127`` over the row.

Reading the memory (W* = a^T M, dense or over each query's top-k rows) dequantizes only the rows
it reads, folding the scales into the attention weights; on a CPU, reading int8 rows (dense or
top-k) is one kernel (``model/csrc/int8_rows.cpp``) that gathers, dequantizes and sums in a single
pass.

Rows live in a buffer with spare capacity that successive versions of a task share: appending to
the newest version writes into the buffer without copying the rows before it (an older version
keeps seeing its own prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from model import cpu_kernels

Storage = Literal["float32", "float16", "bfloat16", "int8"]
STORAGES: tuple[Storage, ...] = ("float32", "float16", "bfloat16", "int8")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
GROWTH = 1.25  # capacity factor when appending outgrows the buffer


@dataclass(frozen=True)
class StoragePolicy:
    """How a task's rows are stored, by its size: ``small`` below ``large_from`` examples, ``large`` from
    there on (a task that grows past ``large_from`` has its rows re-stored once)."""

    large: Storage = "int8"
    small: Storage = "int8"
    large_from: int = 1

    def __post_init__(self) -> None:
        for storage in (self.large, self.small):
            if storage not in _DTYPES:
                raise ValueError(f"unknown fast-weight storage {storage!r}; one of {STORAGES}")

    @classmethod
    def uniform(cls, storage: Storage) -> StoragePolicy:
        return cls(storage, storage, 1)

    def for_examples(self, n: int) -> Storage:
        return self.small if n < self.large_from else self.large


def fastest_small_storage(device: str | torch.device) -> Storage:
    """The storage that reads a small task's rows (dense attention: every query reads every row)
    fastest on ``device``: int8 where the CPU read kernel runs (it reads int8 rows as fast as a
    float32 matrix product reads float32 ones, from a quarter of the bytes), float32 elsewhere."""
    return "int8" if torch.device(device).type == "cpu" and cpu_kernels.available() else "float32"


@dataclass(frozen=True)
class RowLayout:
    """How the P coordinates of a flattened weight set split into layers of output rows."""

    layers: tuple[tuple[int, int], ...]  # (rows, row length) per layer, in flattening order

    @classmethod
    def of(cls, weights: dict[str, torch.Tensor]) -> RowLayout:
        """From unbatched weights {name: [out, *in]} in flattening order."""
        return cls(tuple((w.shape[0], w[0].numel()) for w in weights.values()))

    @property
    def num_coordinates(self) -> int:
        return sum(rows * length for rows, length in self.layers)

    @property
    def num_rows(self) -> int:
        return sum(rows for rows, _ in self.layers)


class _Buffer:
    """Storage shared by the versions of one task's rows; ``filled`` rows are written."""

    def __init__(self, data: torch.Tensor, scales: torch.Tensor | None) -> None:
        self.data = data  # [capacity, P] in the storage dtype
        self.scales = scales  # [capacity, R] float32 (int8 only)
        self.filled = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    @property
    def nbytes(self) -> int:
        tensors = [self.data] + ([self.scales] if self.scales is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class FastWeightRows:
    """The first ``length`` rows of a shared buffer: one task version's memory M, read-only."""

    def __init__(self, layout: RowLayout, storage: Storage, buffer: _Buffer, length: int) -> None:
        self.layout, self.storage, self._buffer, self.length = layout, storage, buffer, length

    @classmethod
    def empty(
        cls, layout: RowLayout, storage: Storage, capacity: int, device: torch.device | str = "cpu"
    ) -> FastWeightRows:
        if storage not in _DTYPES:
            raise ValueError(f"unknown fast-weight storage {storage!r}; one of {STORAGES}")
        data = torch.empty(capacity, layout.num_coordinates, dtype=_DTYPES[storage], device=device)
        scales = torch.empty(capacity, layout.num_rows, device=device) if storage == "int8" else None
        return cls(layout, storage, _Buffer(data, scales), 0)

    @classmethod
    def from_dense(cls, rows: torch.Tensor, layout: RowLayout, storage: Storage) -> FastWeightRows:
        """Rows [n, P] float32 stored as ``storage``."""
        return cls.empty(layout, storage, len(rows), rows.device).appended(rows)

    @classmethod
    def stored_as(
        cls, layout: RowLayout, storage: Storage, data: torch.Tensor, scales: torch.Tensor | None
    ) -> FastWeightRows:
        """Rows from their stored form (as ``stored`` returns it), e.g. read back from a file."""
        if data.dtype != _DTYPES[storage] or (scales is None) != (storage != "int8"):
            raise ValueError(f"stored rows do not match the {storage!r} storage")
        buffer = _Buffer(data, scales)
        buffer.filled = len(data)
        return cls(layout, storage, buffer, len(data))

    def stored(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(data [n, P] in the storage dtype, scales [n, R] or None): these rows as stored, no copy."""
        scales = self._buffer.scales
        return self._buffer.data[: self.length], None if scales is None else scales[: self.length]

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        """Bytes of the buffer these rows live in (including spare capacity)."""
        return self._buffer.nbytes

    def bytes_per_row(self) -> int:
        return self._buffer.nbytes // max(self._buffer.capacity, 1)

    def appended(self, rows: torch.Tensor) -> FastWeightRows:
        """These rows plus ``rows`` [m, P] (float32), as a new FastWeightRows; self is unchanged."""
        buffer, n, m = self._buffer, self.length, len(rows)
        if buffer.filled != n or n + m > buffer.capacity:  # another version owns the tail, or it is full
            capacity = n + m if n == 0 else max(n + m, int(GROWTH * (n + m)))
            grown = FastWeightRows.empty(self.layout, self.storage, capacity, buffer.data.device)._buffer
            grown.data[:n] = buffer.data[:n]
            if buffer.scales is not None:
                grown.scales[:n] = buffer.scales[:n]
            buffer = grown
        self._write(buffer, n, rows)
        buffer.filled = n + m
        return FastWeightRows(self.layout, self.storage, buffer, n + m)

    def _write(self, buffer: _Buffer, start: int, rows: torch.Tensor) -> None:
        end = start + len(rows)
        if self.storage != "int8":
            buffer.data[start:end] = rows
            return
        offset = row = 0
        for count, length in self.layout.layers:
            block = rows[:, offset : offset + count * length].reshape(len(rows), count, length)
            scale = block.abs().amax(-1).clamp_(min=torch.finfo(torch.float32).tiny) / 127.0  # [m, count]
            quantized = (block / scale.unsqueeze(-1)).round_().to(torch.int8)
            buffer.data[start:end, offset : offset + count * length] = quantized.flatten(1)
            buffer.scales[start:end, row : row + count] = scale
            offset += count * length
            row += count

    def restored(self, storage: Storage, chunk: int = 64) -> FastWeightRows:
        """These rows stored as ``storage``, in a new buffer (``chunk`` rows at a time); self is unchanged."""
        device = self._buffer.data.device
        rows = FastWeightRows.empty(self.layout, storage, self.length, device)
        eye = torch.eye(self.length, device=device)
        for start in range(0, self.length, chunk):
            rows = rows.appended(self.read(eye[start : start + chunk]))
        return rows

    def dense(self) -> torch.Tensor:
        """All rows as float32 [n, P] (tests and tools; classification reads with ``read``)."""
        return self.read(torch.eye(self.length, device=self._buffer.data.device))

    def read(self, weights: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """W* = weighted sum of rows, float32 [q, P].

        weights: [q, n] over every row (ids None), or [q, k] over rows ``ids`` [q, k] (top-k).
        """
        buffer = self._buffer
        if self.storage == "float32" and ids is not None:  # the weighted sum without a [q, k, P] copy
            return F.embedding_bag(ids, buffer.data, per_sample_weights=weights, mode="sum")
        if self.storage == "int8" and _int8_kernel_applies(weights):
            if ids is None:  # dense: every query reads every row, as fast as float32 rows' matmul
                ids = torch.arange(self.length).expand(len(weights), -1)
            rows, lengths = zip(*self.layout.layers, strict=True)
            data, scales = self.stored()  # this version's rows only: an id past them is an error
            return torch.ops.metanet_rows.gather_sum(
                data, scales, ids.long().contiguous(), weights.contiguous(), rows, lengths
            )
        data = buffer.data[: self.length] if ids is None else _rows(buffer.data, ids)  # [n, P] or [q, k, P]
        if self.storage != "int8":
            if ids is None:
                return weights @ data.float()
            return torch.einsum("qk,qkp->qp", weights, data.float())
        scales = buffer.scales[: self.length] if ids is None else _rows(buffer.scales, ids)  # [n|q,k, R]
        coef = weights.unsqueeze(-1) * scales  # [q, n|k, R]: attention times each row's scale
        out, offset, row = [], 0, 0
        for count, length in self.layout.layers:
            block = data[..., offset : offset + count * length].unflatten(-1, (count, length))
            c = coef[..., row : row + count]
            if ids is None:  # [r, q, n] @ [r, n, l] -> [r, q, l]
                layer = torch.bmm(c.permute(2, 0, 1), block.transpose(0, 1).contiguous().float()).transpose(
                    0, 1
                )
            else:  # [q, r, 1, k] @ [q, r, k, l] -> [q, r, l]
                layer = (
                    c.transpose(1, 2).unsqueeze(-2) @ block.transpose(1, 2).contiguous().float()
                ).squeeze(-2)
            out.append(layer.reshape(len(weights), -1))
            offset += count * length
            row += count
        return torch.cat(out, dim=-1)


def _int8_kernel_applies(weights: torch.Tensor) -> bool:
    """The int8 read kernel runs float32 attention on a CPU, outside autograd (it has no backward)."""
    on_cpu = weights.device.type == "cpu" and weights.dtype == torch.float32
    return on_cpu and not (weights.requires_grad and torch.is_grad_enabled()) and cpu_kernels.available()


def _rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] for row ids [q, k] -> [q, k, width], a whole-row copy per id (faster than indexing)."""
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[-1])
