"""The per-worker cache of derived task memories: an LRU under a byte budget (``MemoryCache``) of each
task's memory at one version of the store (``CachedTask``). ``server.memory.TaskMemories`` keeps it in
step with the store."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

from model.inference import TaskMemory
from server import metrics
from server.neighbors import KeyIndex

TaskKey = tuple[str, str]  # (tenant, task_id)


@dataclass(frozen=True)
class CachedTask:
    """A task's derived memory at one (uid, version) of the store."""

    uid: int
    version: int
    memory: TaskMemory
    index: KeyIndex | None  # over memory.keys; only for tasks that use top-k attention

    @property
    def nbytes(self) -> int:
        """Real bytes: fast weights (with spare capacity), keys, images, task weights and the index."""
        return self.memory.nbytes() + (self.index.ntotal * self.index.d * 4 if self.index is not None else 0)


class MemoryCache:
    """LRU of CachedTask by (tenant, task_id) under a byte budget, least recently used evicted first.

    Not thread-safe by itself: TaskMemories serializes access."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[TaskKey, CachedTask] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: TaskKey) -> bool:
        return key in self._entries

    def get(self, key: TaskKey) -> CachedTask | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: TaskKey, entry: CachedTask) -> bool:
        """Cache ``entry``, evicting least recently used ones; False if it alone exceeds the budget."""
        self.pop(key)
        size = entry.nbytes
        if size > self.budget_bytes:
            return False
        while self._entries and self.nbytes + size > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
            self.evictions += 1
            metrics.CACHE_EVICTIONS.labels(str(os.getpid())).inc()
        self._entries[key] = entry
        self.nbytes += size
        return True

    def pop(self, key: TaskKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
