"""Derived task memory on disk: a restarted or evicting worker reloads a big task's memory instead of
recomputing it from the store's images.

One file per (tenant, task) under ``<data dir>/derived/``, named by a hash of the two, written
atomically by a worker's build thread after it builds (or extends in the background) a task of at
least ``derived_min_examples`` examples. A file records the task's uid and version, the checkpoint's
fingerprint and the fast-weight storage; it is used only while all of them still hold and no example
was removed since its version (then the examples added since are appended as usual), otherwise it is
ignored and replaced. The task store stays the only source of truth: this is a cache, safe to delete.
Deleting a task or forgetting a label deletes the file (``discard``).

Format: ``METANETMEM1\\n``, an 8-byte little-endian header length, a JSON header (metadata and each
tensor's name, dtype, shape, byte offset), then the tensors' raw bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.compact import FastWeightRows
from model.inference import MetaNetPredictor, TaskMemory
from model.metanet import Memory

MAGIC = b"METANETMEM1\n"
logger = logging.getLogger("metanet.derived")


@dataclass(frozen=True)
class StoredMemory:
    """A task memory read back from disk, at the (uid, version) it was built for."""

    uid: int
    version: int
    memory: TaskMemory


def fingerprint(path: Path) -> str:
    """sha256 of a checkpoint file: derived memory is valid only for the weights that made it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class DerivedMemoryFiles:
    """Save, load and discard derived task memories in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, tenant: str, task_id: str) -> Path:
        name = hashlib.sha256(f"{tenant}\0{task_id}".encode()).hexdigest()[:40]
        return self.folder / f"{name}.mem"

    def discard(self, tenant: str, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(tenant, task_id).unlink()

    def save(
        self, tenant: str, task_id: str, uid: int, version: int, task: TaskMemory, checkpoint: str
    ) -> int:
        """Write ``task`` (at uid, version) atomically; returns the bytes written."""
        memory = task.memory
        rows: FastWeightRows = memory.fast_weights
        data, scales = rows.stored()
        tensors = {
            "images": task.images,
            "rows": data,
            "fast_out": memory.fast_out,
            "labels": memory.labels,
            "label_codes": memory.label_codes,
            "keys": memory.keys,
        }
        if scales is not None:
            tensors["scales"] = scales
        for prefix, weights in (("rep.", memory.rep_task_weights), ("base.", memory.base_task_weights)):
            tensors |= {prefix + name: w for name, w in (weights or {}).items()}
        arrays = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        entries, offset = [], 0
        for name, t in arrays.items():
            size = t.numel() * t.element_size()
            dtype = str(t.dtype).removeprefix("torch.")
            entries.append({"name": name, "dtype": dtype, "shape": list(t.shape), "offset": offset})
            offset += size
        header = json.dumps(
            {
                "tenant": tenant,
                "task_id": task_id,
                "uid": uid,
                "version": version,
                "checkpoint": checkpoint,
                "storage": rows.storage,
                "label_names": task.labels,
                "tensors": entries,
            }
        ).encode()
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(tenant, task_id)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for t in arrays.values():
                f.write(_raw(t))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return len(MAGIC) + 8 + len(header) + offset

    def load(
        self, tenant: str, task_id: str, predictor: MetaNetPredictor, checkpoint: str
    ) -> StoredMemory | None:
        """The saved memory of the task if it was made by this checkpoint and storage; else None."""
        path = self.path(tenant, task_id)
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    return None
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
                if (header["tenant"], header["task_id"]) != (tenant, task_id):
                    return None
                examples = next(e["shape"][0] for e in header["tensors"] if e["name"] == "rows")
                storage = predictor.storage_for(examples)
                if header["checkpoint"] != checkpoint or header["storage"] != storage:
                    return None
                start = f.tell()
                tensors = {}
                for entry in header["tensors"]:
                    dtype = getattr(torch, entry["dtype"])
                    t = torch.empty(entry["shape"], dtype=dtype)
                    f.seek(start + entry["offset"])
                    f.readinto(_raw(t))
                    tensors[entry["name"]] = t.to(predictor.device)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, struct.error) as exc:
            logger.warning("ignoring unreadable derived memory %s: %s", path.name, exc)
            return None
        rows = FastWeightRows.stored_as(predictor.layout, storage, tensors["rows"], tensors.get("scales"))
        memory = Memory(
            fast_weights=rows,
            fast_out=tensors["fast_out"],
            labels=tensors["labels"],
            label_codes=tensors["label_codes"],
            keys=tensors["keys"],
            rep_task_weights=_prefixed(tensors, "rep.") or None,
            base_task_weights=_prefixed(tensors, "base.") or None,
        )
        task = TaskMemory(header["label_names"], tensors["images"], memory)
        return StoredMemory(header["uid"], header["version"], task)


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (any dtype, bfloat16 included)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8))


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}
