"""The LitServe side: ``MetaNetAPI`` runs in each inference worker, ``WorkerBridge`` hands work to it.

LitServe forwards only a request body to its workers, so the HTTP routes (``server.routes``) resolve
tenant, task id, labels and images first and submit a self-contained work item through the bridge, a
LitSpec: ``{"op": "support" | "classify", "tenant", "task_id", "images": uint8 [n, 28, 28], ...}``.
A worker answers each item with a result dict or ``{"error": {...}}``; one bad item never fails the
others in its batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import faiss
import litserve as ls
import torch
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from model.inference import MetaNetPredictor
from server import metrics
from server.config import ServerSettings
from server.errors import ApiError
from server.loop import DrainingBatchedLoop
from server.memory import CachedTask, EmptyTaskError, MemoryCache, TaskMemories
from server.store import ExampleLimitError, SQLiteTaskStore

logger = logging.getLogger("metanet.worker")


class WorkerBridge(LitSpec):
    """Submits work items to the inference workers and awaits their answers (no routes of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.api_path = "/_worker"  # names the worker queue; no route is served there

    def decode_request(self, request: dict, context_kwargs: dict | None = None) -> dict:
        return request

    def encode_response(self, output: dict, context_kwargs: dict | None = None) -> dict:
        return output

    async def submit(self, item: dict[str, Any]) -> dict[str, Any]:
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), item))
            await event.wait()
        finally:  # also when the client went away: a late answer for uid is then dropped
            buffered = self.response_buffer.pop(uid)
        response, status = buffered.response
        if status == LitAPIStatus.ERROR:
            if getattr(response, "status_code", None) == 504:
                raise ApiError(504, "timeout", "the request waited too long for an inference worker")
            raise ApiError(500, "internal_error", "inference worker failed")
        if "error" in response:
            raise ApiError.from_dict(response["error"])
        return response


class MetaNetAPI(ls.LitAPI):
    """Support and classify work items, batched across tasks."""

    def __init__(self, settings: ServerSettings) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            spec=WorkerBridge(),
            loop=DrainingBatchedLoop(),
        )
        self.settings = settings

    def setup(self, device: str) -> None:
        self.settings.configure_logging()
        s = self.settings
        torch.set_num_threads(s.torch_threads)
        faiss.omp_set_num_threads(s.torch_threads)
        self.store = SQLiteTaskStore(s.store_path)
        self.memories = TaskMemories(
            MetaNetPredictor.load(s.checkpoint, device, s.backend, s.onnx_path),
            self.store,
            MemoryCache(s.cache_bytes),
            s.topk_min_examples,
            s.topk_neighbors,
        )
        logger.info(
            "worker ready: %s on %s (%s), %d thread(s)", s.checkpoint, device, s.backend, s.torch_threads
        )

    def batch(self, inputs: list[dict]) -> list[dict]:
        return inputs

    def unbatch(self, outputs: list[dict]) -> list[dict]:
        return outputs

    def predict(self, items: list[dict]) -> list[dict]:
        metrics.BATCH_SIZE.observe(len(items))
        results: list[dict | None] = [None] * len(items)
        # Supports first: a classify batched with a support of the same task sees it.
        for i, item in enumerate(items):
            if item["op"] == "support":
                results[i] = self._guard(self._support, item)
        classify = [i for i, item in enumerate(items) if item["op"] == "classify"]
        if classify:
            started = time.perf_counter()
            for i, result in zip(classify, self._classify([items[i] for i in classify]), strict=True):
                results[i] = result
            metrics.INFERENCE_SECONDS.labels("classify").observe(time.perf_counter() - started)
        metrics.CACHE_BYTES.set(self.memories.cache.nbytes)
        metrics.CACHE_TASKS.set(len(self.memories.cache))
        return results

    @staticmethod
    def _guard(fn, *args) -> dict:
        try:
            return fn(*args)
        except ApiError as exc:
            return {"error": exc.to_dict()}

    def _support(self, item: dict) -> dict:
        started = time.perf_counter()
        try:
            state = self.store.add_examples(
                item["tenant"],
                item["task_id"],
                item["images"],
                item["labels"],
                self.settings.max_examples_per_task,
            )
        except ExampleLimitError as exc:
            raise ApiError(413, "too_many_examples", str(exc)) from None
        # Durable from here on. Refresh this worker's memory of the task if it holds one (an extend:
        # only the new examples' fast weights are computed); otherwise the first classify builds it.
        try:
            refresh = self.memories.refresh_if_cached(item["tenant"], item["task_id"])
            if refresh:
                metrics.CACHE_REFRESHES.labels(refresh).inc()
        except Exception:
            logger.exception("refreshing task memory after support failed; it will be rebuilt on use")
            self.memories.cache.pop((item["tenant"], item["task_id"]))
        metrics.INFERENCE_SECONDS.labels("support").observe(time.perf_counter() - started)
        logger.info(
            "support tenant=%s task=%s added=%d version=%d examples=%d",
            item["tenant"],
            item["task_id"],
            len(item["labels"]),
            state.version,
            state.num_examples,
        )
        return {"version": state.version, "num_examples": state.num_examples, "labels": list(state.labels)}

    def _classify(self, items: list[dict]) -> list[dict]:
        tasks: dict[tuple[str, str], CachedTask | ApiError] = {}
        for key in dict.fromkeys((item["tenant"], item["task_id"]) for item in items):
            tasks[key] = self._task(*key)
        results: list[dict] = [{}] * len(items)
        ready = []
        for i, item in enumerate(items):
            task = tasks[item["tenant"], item["task_id"]]
            if isinstance(task, ApiError):
                results[i] = {"error": task.to_dict()}
            else:
                ready.append((i, task))
        probabilities = (
            self.memories.classify([(task, items[i]["images"]) for i, task in ready]) if ready else []
        )
        for (i, task), probs in zip(ready, probabilities, strict=True):
            results[i] = _predictions(task, probs, items[i]["top_k"])
            metrics.ATTENTION.labels("dense" if task.index is None else "topk").inc(len(probs))
        return results

    def _task(self, tenant: str, task_id: str) -> CachedTask | ApiError:
        try:
            found = self.memories.current(tenant, task_id)
        except EmptyTaskError:
            return ApiError(409, "empty_task", f"task {task_id!r} has no examples: add some first")
        if found is None:
            return ApiError(404, "task_not_found", f"task {task_id!r} not found")
        task, refresh = found
        metrics.CACHE_REFRESHES.labels(refresh).inc()
        return task


def _predictions(task: CachedTask, probs: torch.Tensor, top_k: int) -> dict:
    labels = task.memory.labels
    k = min(top_k, len(labels))
    scores, indices = probs.float().topk(k, dim=-1)
    predictions = []
    for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True):
        ranked = [{"label": labels[j], "score": s} for s, j in zip(row_scores, row_indices, strict=True)]
        predictions.append({**ranked[0], "top_k": ranked})
    return {"version": task.version, "predictions": predictions}
