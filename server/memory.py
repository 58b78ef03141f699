"""Derived task memory per worker: fast weights and keys from the model, a FAISS index over the keys,
kept in an LRU cache under a byte budget and brought up to date from the task store on use."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from model.inference import MetaNetPredictor, TaskMemory
from server.neighbors import KeyIndex, key_index
from server.store import TaskStore

Refresh = Literal["hit", "extend", "build"]
logger = logging.getLogger("metanet.memory")


class EmptyTaskError(Exception):
    """The task exists but holds no examples (every label was forgotten)."""


@dataclass(frozen=True)
class CachedTask:
    """A task's derived memory at one (uid, version) of the store."""

    uid: int
    version: int
    memory: TaskMemory
    index: KeyIndex | None  # over memory.keys; only for tasks that use top-k attention

    @property
    def nbytes(self) -> int:
        return self.memory.nbytes() + (self.index.ntotal * self.index.d * 4 if self.index is not None else 0)


class MemoryCache:
    """LRU of CachedTask by (tenant, task_id) under a byte budget; an entry larger than the budget is
    used once and not kept."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[str, str], CachedTask] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries

    def get(self, key: tuple[str, str]) -> CachedTask | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, str], entry: CachedTask) -> bool:
        """Cache ``entry``, evicting least recently used ones; False if it alone exceeds the budget."""
        self.pop(key)
        size = entry.nbytes
        if size > self.budget_bytes:
            return False
        while self._entries and self.nbytes + size > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
        self._entries[key] = entry
        self.nbytes += size
        return True

    def pop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes


class TaskMemories:
    """Keeps each task's derived memory in step with the store.

    A cached memory at an older version of the same task is extended with just the examples added since
    (``MetaNetPredictor.extend_memory`` reuses the other examples' fast weights); a memory older than the
    task's last removal, or of a deleted and re-created task, is rebuilt.
    """

    def __init__(
        self,
        predictor: MetaNetPredictor,
        store: TaskStore,
        cache: MemoryCache,
        topk_min_examples: int,
        topk_neighbors: int,
    ) -> None:
        self.predictor = predictor
        self.store = store
        self.cache = cache
        self.topk_min_examples = topk_min_examples
        self.topk_neighbors = topk_neighbors

    def current(self, tenant: str, task_id: str) -> tuple[CachedTask, Refresh] | None:
        """The task's memory at the store's current version; None if the task does not exist."""
        key = (tenant, task_id)
        cached = self.cache.get(key)
        snap = self.store.snapshot(tenant, task_id, since_version=cached.version if cached else 0)
        if snap is None:
            self.cache.pop(key)
            return None
        state = snap.state
        if cached and cached.uid == state.uid and cached.version == state.version:
            return cached, "hit"
        if state.num_examples == 0:
            self.cache.pop(key)
            raise EmptyTaskError(task_id)
        if cached and cached.uid == state.uid and state.rebuild_version <= cached.version:
            memory, refresh = self.predictor.extend_memory(cached.memory, snap.images, snap.labels), "extend"
        else:
            if snap.since_version:  # the cached memory cannot be extended: read every example
                snap = self.store.snapshot(tenant, task_id)
                if snap is None:
                    self.cache.pop(key)
                    return None
                state = snap.state
            memory, refresh = self.predictor.build_memory(snap.images, snap.labels), "build"
        entry = CachedTask(state.uid, state.version, memory, self.build_index(memory))
        if not self.cache.put(key, entry):
            logger.warning(
                "task %r needs %d bytes of memory, more than the whole cache budget (%d): it is rebuilt on "
                "every call; raise METANET_CACHE_BYTES",
                task_id,
                entry.nbytes,
                self.cache.budget_bytes,
            )
        return entry, refresh

    def refresh_if_cached(self, tenant: str, task_id: str) -> Refresh | None:
        """Bring a task this worker already holds up to date (after a support call)."""
        if (tenant, task_id) not in self.cache:
            return None
        found = self.current(tenant, task_id)
        return found[1] if found else None

    def build_index(self, memory: TaskMemory) -> KeyIndex | None:
        """An index over the memory keys (FAISS; see server/neighbors.py) if the task is large enough for
        top-k attention."""
        if memory.num_examples < self.topk_min_examples:
            return None
        return key_index(memory.keys)

    def classify(self, items: list[tuple[CachedTask, np.ndarray]]) -> list[torch.Tensor]:
        """Probabilities [q, K] per item, all in one batch: dense attention for small tasks, top-k
        attention over FAISS neighbours for large ones."""
        neighbors = [
            self._neighbors(task, images) if task.index is not None else None for task, images in items
        ]
        return self.predictor.classify_batch([(task.memory, images) for task, images in items], neighbors)

    def _neighbors(self, task: CachedTask, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return task.index.search(self.predictor.embed_queries(task.memory, images), self.topk_neighbors)
