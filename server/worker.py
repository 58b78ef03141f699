"""``MetaNetAPI``: the LitAPI that runs in each inference worker and answers the work items of
``server.protocol``, batched across tasks.

Every item is isolated: whatever one item raises (a ``ServiceError`` or any unexpected exception)
becomes that item's answer, and the other items of its batch are answered as if it were not there.
A classify of a task whose memory is still building answers ``TaskBuilding`` at once (a worker never
waits for a build); ``server.dispatch`` asks again until it is ready. Which work runs next, and when
work that waited too long is refused, is ``FairBatchedLoop``'s (server/litserve_adapter.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import faiss
import litserve as ls
import torch

from model.checkpoint import read_metadata
from model.inference import Classified, MetaNetPredictor
from model.novelty import OpenSetCalibration
from server import metrics
from server.allocator import keep_freed_heap
from server.config import ServerSettings
from server.derived import DerivedMemoryFiles, fingerprint
from server.litserve_adapter import FairBatchedLoop, WorkerBridge
from server.memory import Building, TaskMemories
from server.memory_cache import CachedTask, MemoryCache
from server.protocol import (
    ClassifyResult,
    ClassifyWork,
    LabelScore,
    Outcome,
    Prediction,
    ServiceError,
    SupportResult,
    SupportWork,
    TaskBuilding,
    TaskNotFound,
    Work,
    WorkerFailed,
)
from server.quotas import TenantQuotas
from server.store import open_store

logger = logging.getLogger("metanet.worker")


def isolated(what: str, fn: Callable[..., Outcome], *args: object) -> Outcome:
    """``fn(*args)``, or the ServiceError it raised, or WorkerFailed for any other exception (logged
    with ``what`` names the failed item)."""
    try:
        return fn(*args)
    except ServiceError as exc:
        return exc
    except Exception:
        logger.exception("work item failed: %s", what)
        return WorkerFailed("inference worker failed on this item")


class MetaNetAPI(ls.LitAPI):
    """Support and classify work items, batched across tasks."""

    def __init__(self, settings: ServerSettings, image_size: int, quotas: TenantQuotas) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            spec=WorkerBridge(),
            loop=FairBatchedLoop(settings.queue_quantum, quotas.share),
        )
        self.settings = settings
        self.image_size = image_size
        self.quotas = quotas

    def setup(self, device: str) -> None:
        self.settings.configure_logging()
        s = self.settings
        keep_freed_heap()  # each batch reuses the memory the last one freed (server/allocator.py)
        torch.set_num_threads(s.torch_threads)
        faiss.omp_set_num_threads(s.torch_threads)
        # The main process migrated the schema.
        self.store = open_store(
            s.store_url, (self.image_size, self.image_size), migrate=False, idempotency_ttl=s.idempotency_ttl
        )
        predictor = MetaNetPredictor.load(
            s.checkpoint, device, s.storage_policy(device), s.build_chunk, s.backend, s.onnx_path
        )
        predictor.warm_up()
        self.memories = TaskMemories(
            predictor,
            self.store,
            MemoryCache(s.cache_bytes),
            topk_min_examples=s.topk_min_examples,
            topk_neighbors=s.topk_neighbors,
            inline_examples=s.build_inline_examples,
            derived=DerivedMemoryFiles(s.derived_dir) if s.derived_memory else None,
            checkpoint=fingerprint(s.checkpoint),
            derived_min_examples=s.derived_min_examples,
        )
        calibration = OpenSetCalibration.from_metadata(read_metadata(s.checkpoint))
        self.novelty_threshold = s.novelty_threshold
        if self.novelty_threshold is None and calibration is not None:
            self.novelty_threshold = calibration.threshold
        logger.info(
            "worker ready: %s on %s (%s), %d thread(s)", s.checkpoint, device, s.backend, s.torch_threads
        )

    def batch(self, inputs: list[Work]) -> list[Work]:
        return inputs

    def unbatch(self, outputs: list[Outcome]) -> list[Outcome]:
        return outputs

    def predict(self, items: list[Work]) -> list[Outcome]:
        metrics.BATCH_SIZE.observe(len(items))
        results: list[Outcome | None] = [None] * len(items)
        # Supports first: a classify batched with a support of the same task sees it.
        for i, item in enumerate(items):
            if isinstance(item, SupportWork):
                results[i] = isolated(_describe(item), self._support, item)
        classify = [i for i, item in enumerate(items) if isinstance(item, ClassifyWork)]
        if classify:
            started = time.perf_counter()
            for i, result in zip(classify, self._classify([items[i] for i in classify]), strict=True):
                results[i] = result
            metrics.INFERENCE_SECONDS.labels("classify").observe(time.perf_counter() - started)
        for i, item in enumerate(items):
            if results[i] is None:
                results[i] = WorkerFailed(f"unknown work item {type(item).__name__}")
        metrics.CACHE_BYTES.set(self.memories.cache.nbytes)
        metrics.CACHE_TASKS.set(len(self.memories.cache))
        return results

    def _support(self, item: SupportWork) -> SupportResult:
        started = time.perf_counter()
        written = self.store.write_examples(
            item.tenant,
            item.task_id,
            item.images,
            list(item.labels),
            self.settings.max_examples_per_task,
            item.idempotency_key,
            quota=self.quotas(item.tenant).storage,
        )
        state = written.state
        # Durable from here on. Refresh this worker's memory of the task if it holds one, from what was
        # just written (an extend: only the new examples' fast weights are computed); otherwise the
        # first classify builds it.
        try:
            refresh = self.memories.refresh_after_support(
                item.tenant, item.task_id, state, item.images, list(item.labels)
            )
            if refresh:
                metrics.CACHE_REFRESHES.labels(refresh).inc()
        except Exception:
            logger.exception("refreshing task memory after support failed; it will be rebuilt on use")
            self.memories.cache.pop((item.tenant, item.task_id))
        metrics.INFERENCE_SECONDS.labels("support").observe(time.perf_counter() - started)
        logger.info(
            "support tenant=%s task=%s added=%d version=%d examples=%d%s",
            item.tenant,
            item.task_id,
            0 if written.replayed else len(item.labels),
            state.version,
            state.num_examples,
            " (replayed: its idempotency key was seen before)" if written.replayed else "",
        )
        return SupportResult(state.version, state.num_examples, tuple(state.labels), written.replayed)

    def _classify(self, items: list[ClassifyWork]) -> list[Outcome]:
        """All items in one batched pass; if that pass fails, each item alone, so that only the items
        that fail on their own get an error."""
        tasks: dict[tuple[str, str], CachedTask | ServiceError] = {}
        for tenant, task_id in dict.fromkeys((item.tenant, item.task_id) for item in items):
            tasks[tenant, task_id] = isolated(
                f"task tenant={tenant} task={task_id}", self._task, tenant, task_id
            )
        found = [tasks[item.tenant, item.task_id] for item in items]
        results: list[Outcome | None] = [task if isinstance(task, ServiceError) else None for task in found]
        ready = [
            (i, task, item)
            for i, (task, item) in enumerate(zip(found, items, strict=True))
            if results[i] is None
        ]
        try:
            answers = self._predict([(task, item) for _, task, item in ready])
        except Exception:
            logger.warning("a batch of %d classify items failed; answering each alone", len(ready))
            answers = [isolated(_describe(item), self._predict_one, task, item) for _, task, item in ready]
        for (i, _, _), answer in zip(ready, answers, strict=True):
            results[i] = answer
        return results

    def _predict(self, batch: list[tuple[CachedTask, ClassifyWork]]) -> list[ClassifyResult]:
        if not batch:
            return []
        classified = self.memories.classify([(task, item.images) for task, item in batch])
        answers = []
        for (task, item), found in zip(batch, classified, strict=True):
            threshold = self.novelty_threshold if item.novelty_threshold is None else item.novelty_threshold
            answers.append(_predictions(task, found, item.top_k, threshold, item.reject))
            metrics.ATTENTION.labels("dense" if task.index is None else "topk").inc(len(found.novelty))
        return answers

    def _predict_one(self, task: CachedTask, item: ClassifyWork) -> ClassifyResult:
        return self._predict([(task, item)])[0]

    def _task(self, tenant: str, task_id: str) -> CachedTask:
        found = self.memories.current(tenant, task_id)
        if found is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        if isinstance(found, Building):
            raise TaskBuilding(
                f"task {task_id!r}: its memory of {found.examples} examples is being built "
                f"({found.elapsed:.1f} s so far)",
                found.retry_after,
            )
        task, refresh = found
        metrics.CACHE_REFRESHES.labels(refresh).inc()
        return task


def _describe(item: Work) -> str:
    return f"{type(item).__name__} tenant={item.tenant} task={item.task_id} images={len(item.images)}"


def _predictions(
    task: CachedTask, found: Classified, top_k: int, threshold: float | None, reject: bool
) -> ClassifyResult:
    """The result of one classify item. ``known``: novelty at most ``threshold`` (every query when
    there is none); with ``reject`` an unknown query's label is None ("none of these")."""
    labels = task.memory.labels
    k = min(top_k, len(labels))
    scores, indices = found.probabilities.float().topk(k, dim=-1)
    predictions = []
    rows = zip(scores.tolist(), indices.tolist(), found.novelty.tolist(), strict=True)
    for row_scores, row_indices, value in rows:
        ranked = tuple(LabelScore(labels[j], s) for s, j in zip(row_scores, row_indices, strict=True))
        known = threshold is None or value <= threshold
        label = ranked[0].label if known or not reject else None
        predictions.append(Prediction(label, ranked[0].score, known, value, ranked))
    return ClassifyResult(task.version, threshold, tuple(predictions))
