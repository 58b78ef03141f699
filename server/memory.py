"""Derived task memory per worker: fast weights and keys from the model, a FAISS index over the keys,
kept in an LRU cache under a byte budget (``server/memory_cache.py``) and brought up to date from the
task store on use.

Heavy work runs beside serving: building a task's memory (or extending it by many examples) is a job
for the worker's one build thread, so the worker's request loop never waits for it. A lookup of a
task whose memory is being built answers ``Building`` (the HTTP layer waits and asks again, or
answers 503 with Retry-After); other tasks are served meanwhile. Only a small extend of a task
whose task-level weights are final runs inline (a few milliseconds per example).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch

from model.inference import Classified, TaskMemory
from server import metrics
from server.derived import DerivedMemoryFiles
from server.memory_cache import CachedTask, MemoryCache, TaskKey
from server.neighbors import KeyIndex, key_index
from server.protocol import EmptyTask, ServiceError, TaskTooLarge
from server.store import TaskSnapshot, TaskState, TaskStore, TaskVersion

Refresh = Literal["hit", "extend", "build", "load"]  # load: read back from a derived-memory file
logger = logging.getLogger("metanet.memory")


def empty_task(task_id: str) -> EmptyTask:
    return EmptyTask(f"task {task_id!r} has no examples: add some first")


def task_too_large(task_id: str, nbytes: int, budget: int) -> TaskTooLarge:
    return TaskTooLarge(
        f"task {task_id!r} needs {nbytes / 2**20:.0f} MiB of derived memory, more than this worker's "
        f"cache budget of {budget / 2**20:.0f} MiB (METANET_CACHE_BYTES)"
    )


class Predictor(Protocol):
    """What TaskMemories needs of ``model.inference.MetaNetPredictor``."""

    task_examples: int

    def build_memory(self, images: np.ndarray, labels: list[str]) -> TaskMemory: ...

    def extend_memory(self, task: TaskMemory, images: np.ndarray, labels: list[str]) -> TaskMemory: ...

    def embed_queries(self, task: TaskMemory, images: np.ndarray) -> torch.Tensor: ...

    def classify_batch(self, items: list, neighbors: list) -> list[Classified]: ...


@dataclass(frozen=True)
class Building:
    """A task whose memory a build job is computing; ask again in about ``retry_after`` seconds."""

    examples: int
    elapsed: float
    retry_after: float


@dataclass
class _Job:
    examples: int
    queued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)


class TaskMemories:
    """Keeps each task's derived memory in step with the store.

    A cached memory at an older version of the same task is extended with just the examples added since
    (``MetaNetPredictor.extend_memory`` reuses the other examples' fast weights); a memory older than the
    task's last removal, or of a deleted and re-created task, is rebuilt. Builds, and extends by more than
    ``inline_examples`` examples, run on the build thread.
    """

    def __init__(
        self,
        predictor: Predictor,
        store: TaskStore,
        cache: MemoryCache,
        *,
        topk_min_examples: int,
        topk_neighbors: int,
        inline_examples: int = 8,
        derived: DerivedMemoryFiles | None = None,
        checkpoint: str = "",
        derived_min_examples: int = 64,
    ) -> None:
        """``topk_min_examples``, ``topk_neighbors``: tasks of at least that many examples are searched
        for each query's nearest keys, that many of them. ``inline_examples``: extensions by more run on
        the build thread. ``derived``: where build jobs save (and load) the memories of tasks of at least
        ``derived_min_examples`` examples, made with the checkpoint of fingerprint ``checkpoint``."""
        self.predictor = predictor
        self.store = store
        self.cache = cache
        self.topk_min_examples = topk_min_examples
        self.topk_neighbors = topk_neighbors
        self.inline_examples = inline_examples
        self.derived, self.checkpoint, self.derived_min_examples = derived, checkpoint, derived_min_examples
        self._saved: dict[TaskKey, int] = {}  # examples in each task's derived file (build thread only)
        self._working = False  # the build thread is between taking a job and finishing its file
        self.seconds_per_example = 0.01  # running estimate of the build rate, for Retry-After
        self._lock = threading.Lock()  # guards the cache, _jobs and _too_large
        self._jobs: dict[TaskKey, _Job] = {}
        self._too_large: dict[TaskKey, tuple[int, int, int]] = {}  # key -> (uid, version, bytes)
        self._queue: queue.SimpleQueue[TaskKey] = queue.SimpleQueue()
        self._builder = threading.Thread(target=self._run_jobs, name="memory-builder", daemon=True)
        self._builder.start()

    # ---- lookups (the worker's request thread) ----------------------------------------------------
    def current(
        self, tenant: str, task_id: str, wait: bool = False
    ) -> tuple[CachedTask, Refresh] | Building | None:
        """The task's memory at the store's current version; None if the task does not exist.

        When the memory needs a build job: ``Building`` (or, with ``wait``, the memory once built)."""
        while True:
            found = self._current(tenant, task_id)
            if not (wait and isinstance(found, Building)):
                return found
            job = self._jobs.get((tenant, task_id))
            if job is not None:
                job.done.wait()

    def _current(self, tenant: str, task_id: str) -> tuple[CachedTask, Refresh] | Building | None:
        key = (tenant, task_id)
        with self._lock:
            cached, job = self.cache.get(key), self._jobs.get(key)
        if cached:  # the common case, a warm task at its stored version: one indexed read
            stored = self.store.current_version(tenant, task_id)
            if stored is None:
                self._forget(key)
                return None
            if stored == TaskVersion(cached.uid, cached.version):
                return cached, "hit"
        snap = self.store.snapshot(tenant, task_id, since_version=cached.version if cached else 0)
        if snap is None:
            self._forget(key)
            return None
        state = snap.state
        if cached and cached.uid == state.uid and cached.version == state.version:
            return cached, "hit"
        if state.num_examples == 0:
            self._forget(key)
            raise empty_task(task_id)
        with self._lock:
            too_large = self._too_large.get(key)
        if too_large is not None and too_large[:2] == (state.uid, state.version):
            raise task_too_large(task_id, too_large[2], self.cache.budget_bytes)
        extendable, small = self._extendable(cached, snap), len(snap.labels) <= self.inline_examples
        final = extendable and cached.memory.num_examples >= self.predictor.task_examples
        if job is None and small and final:
            return self._refresh(key, cached, snap), "extend"  # new fast weights only: no Q* refresh
        if job is None:
            job = self._schedule(key, len(snap.labels) if extendable else state.num_examples)
        elapsed = time.monotonic() - job.queued
        retry = max(0.1, job.examples * self.seconds_per_example - elapsed)
        return Building(job.examples, elapsed, retry)

    def refresh_after_support(
        self, tenant: str, task_id: str, state: TaskState, images: np.ndarray, labels: list[str]
    ) -> Refresh | None:
        """Bring a task this worker already holds up to date after a support call, from what the call
        wrote: ``state``, the task after the write, and the ``images`` and ``labels`` it added. A small
        extend runs inline, anything larger as a build job. The store is read only where the held memory
        is not at the version just before the write (another writer came between, or a job holds the
        task). Returns what happened now (None: nothing held, or a job)."""
        key = (tenant, task_id)
        with self._lock:
            cached, job = self.cache.get(key), self._jobs.get(key)
        if cached is None:
            return None
        written = TaskSnapshot(state, state.version - 1, images, list(labels))
        if (
            job is not None
            or cached.version != written.since_version
            or not self._extendable(cached, written)
        ):
            found = self.current(tenant, task_id)
            return found[1] if isinstance(found, tuple) else None
        if len(labels) <= self.inline_examples and cached.memory.num_examples >= self.predictor.task_examples:
            self._refresh(key, cached, written)
            return "extend"
        self._schedule(key, len(labels))
        return None

    @property
    def builds_in_progress(self) -> int:
        return len(self._jobs)

    def wait_until_idle(self, timeout: float = 600.0) -> bool:
        """Wait until the build thread has no job and no file to write (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._jobs or self._working:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # ---- build jobs (the build thread) --------------------------------------------------------------
    def _schedule(self, key: TaskKey, examples: int) -> _Job:
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = _Job(examples)
                self._queue.put(key)
                metrics.BUILDS_IN_PROGRESS.set(len(self._jobs))
        return job

    def _run_jobs(self) -> None:
        # The build's budget: this one thread, at a lower priority than request handling (Linux: a
        # thread's own nice value), with the process's intra-op thread count, one job at a time.
        torch.set_num_threads(torch.get_num_threads())
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while True:
            key = self._queue.get()
            self._working = True
            started = time.perf_counter()
            refresh: Refresh = "build"
            entry = None
            try:
                refresh, entry = self._run_job(key)
            except Exception:
                logger.exception("building the memory of task %r failed", key[1])
            finally:
                seconds = time.perf_counter() - started
                with self._lock:
                    job = self._jobs.pop(key)
                    metrics.BUILDS_IN_PROGRESS.set(len(self._jobs))
                job.done.set()
            metrics.BUILD_SECONDS.labels(refresh).observe(seconds)
            if entry is not None:
                metrics.CACHE_REFRESHES.labels(refresh).inc()
            if job.examples >= 64 and refresh != "load":  # large enough to measure the rate
                self.seconds_per_example = seconds / job.examples
            level = logging.INFO if job.examples >= 64 else logging.DEBUG  # big builds are news
            logger.log(level, "%s task=%r examples=%d in %.2f s", refresh, key[1], job.examples, seconds)
            if entry is not None:
                self._save(key, entry, refresh)
            release_free_memory()
            self._working = False

    def _run_job(self, key: TaskKey) -> tuple[Refresh, CachedTask | None]:
        with self._lock:
            cached = self.cache.get(key)
        snap = self.store.snapshot(*key, since_version=cached.version if cached else 0)
        if snap is None:
            self._forget(key)
            return "build", None
        state = snap.state
        if state.num_examples == 0:
            return "build", None  # the next lookup reports it
        if cached and cached.version == state.version and cached.uid == state.uid:
            return "hit", None
        if self._extendable(cached, snap):
            return "extend", self._refresh(key, cached, snap)
        loaded = self._load(key, state)
        if loaded is None:
            return "build", self._refresh(key, None, snap)
        if loaded.version == state.version:
            return "load", self._put(key, loaded.uid, loaded.version, loaded.memory)
        since = self.store.snapshot(*key, since_version=loaded.version)
        if since is None or not self._extendable(loaded, since):  # changed meanwhile: build
            return "build", self._refresh(key, None, snap)
        return "load", self._refresh(key, loaded, since)

    def _load(self, key: TaskKey, state: TaskState) -> CachedTask | None:
        """The task's derived-memory file, if it holds this incarnation of the task and nothing removed
        since (then it can be extended to the current version)."""
        if self.derived is None:
            return None
        stored = self.derived.load(*key, self.predictor, self.checkpoint)
        if (
            stored is None
            or stored.uid != state.uid
            or not state.rebuild_version <= stored.version <= state.version
        ):
            return None
        self._saved[key] = stored.memory.num_examples
        return CachedTask(stored.uid, stored.version, stored.memory, None)

    def _save(self, key: TaskKey, entry: CachedTask, refresh: Refresh) -> None:
        """Save a big task's memory after a build, or once it grew by a quarter since its last save."""
        n = entry.memory.num_examples
        if self.derived is None or n < max(self.derived_min_examples, self.predictor.task_examples):
            return
        if refresh != "build" and n < 1.25 * self._saved.get(key, 0):
            return
        try:
            started = time.perf_counter()
            size = self.derived.save(*key, entry.uid, entry.version, entry.memory, self.checkpoint)
            state = self.store.get_task(*key)
            if state is None or state.uid != entry.uid:  # deleted while saving (after the job's waiters woke)
                self.derived.discard(*key)
                return
            self._saved[key] = n
            logger.info(
                "saved task=%r memory: %.0f MiB in %.2f s",
                key[1],
                size / 2**20,
                time.perf_counter() - started,
            )
        except (OSError, ServiceError):  # the disk, or the store while checking the task still exists
            logger.exception("saving the derived memory of task %r failed", key[1])

    # ---- shared ---------------------------------------------------------------------------------
    @staticmethod
    def _extendable(cached: CachedTask | None, snap: TaskSnapshot) -> bool:
        return bool(cached and cached.uid == snap.state.uid and snap.state.rebuild_version <= cached.version)

    def _refresh(self, key: TaskKey, cached: CachedTask | None, snap: TaskSnapshot) -> CachedTask:
        """Extend ``cached`` with the snapshot's examples, or (cached None) build from every example."""
        if cached is not None:
            memory = self.predictor.extend_memory(cached.memory, snap.images, snap.labels)
        else:
            if snap.since_version:  # the cached memory cannot be extended: read every example
                snap = self.store.snapshot(*key)
                if snap is None or snap.state.num_examples == 0:
                    raise empty_task(key[1])
            memory = self.predictor.build_memory(snap.images, snap.labels)
        return self._put(key, snap.state.uid, snap.state.version, memory)

    def _put(self, key: TaskKey, uid: int, version: int, memory: TaskMemory) -> CachedTask:
        entry = CachedTask(uid, version, memory, self.build_index(memory))
        with self._lock:
            if self.cache.put(key, entry):
                self._too_large.pop(key, None)
            else:
                self._too_large[key] = (uid, version, entry.nbytes)
                logger.warning("%s", task_too_large(key[1], entry.nbytes, self.cache.budget_bytes))
            metrics.CACHE_BYTES.set(self.cache.nbytes)
            metrics.CACHE_TASKS.set(len(self.cache))
        return entry

    def _forget(self, key: TaskKey) -> None:
        """The task is gone from the store: drop its memory here and on disk."""
        with self._lock:
            self.cache.pop(key)
            self._too_large.pop(key, None)
        if self.derived is not None:
            self.derived.discard(*key)

    def build_index(self, memory: TaskMemory) -> KeyIndex | None:
        """An index over the memory keys (FAISS; see server/neighbors.py) if the task is large enough for
        top-k attention."""
        if memory.num_examples < self.topk_min_examples:
            return None
        return key_index(memory.keys)

    def classify(self, items: list[tuple[CachedTask, np.ndarray]]) -> list[Classified]:
        """Probabilities [q, K] and novelty [q] per item, all in one batch: dense attention for small
        tasks, top-k attention over FAISS neighbours for large ones."""
        neighbors = [
            self._neighbors(task, images) if task.index is not None else None for task, images in items
        ]
        return self.predictor.classify_batch([(task.memory, images) for task, images in items], neighbors)

    def _neighbors(self, task: CachedTask, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return task.index.search(self.predictor.embed_queries(task.memory, images), self.topk_neighbors)


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_trim()


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc keeps a build's freed temporaries in its
    heap otherwise, so resident memory would stay at the build's peak instead of what is cached)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
