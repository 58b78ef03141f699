"""The HTTP API (docs/SERVER.md, "API"): thin routes over the task store and the inference workers."""

import base64
import io
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from server.config import ServerSettings
from server.errors import ApiError, error_response
from server.images import ImageDecoder
from server.metrics import exposition
from server.schemas import (
    ERROR_RESPONSES,
    ClassifyRequest,
    ClassifyResponse,
    DeletedTask,
    LabelExample,
    SupportRequest,
    SupportResponse,
    TaskInfo,
    TaskLabels,
    TaskList,
)
from server.store import LabelNotFoundError, TaskState, TaskStore
from server.worker import WorkerBridge


def _tenant(request: Request) -> str:
    return request.state.tenant  # set by GuardMiddleware


Tenant = Annotated[str, Depends(_tenant)]


def _info(state: TaskState) -> TaskInfo:
    return TaskInfo(
        task_id=state.task_id, version=state.version, num_examples=state.num_examples, labels=state.labels
    )


def task_router(settings: ServerSettings, bridge: WorkerBridge, store: TaskStore) -> APIRouter:
    """Routes under ``/tasks``; support and classify run in the inference workers, the rest on the store."""
    router = APIRouter(
        prefix="/tasks", tags=["tasks"], responses=ERROR_RESPONSES, max_body_size=settings.max_body_bytes
    )
    decoder = ImageDecoder(settings.max_image_side, settings.normalize_polarity)
    TaskId = Annotated[str, Path(pattern=settings.task_id_pattern, description="[A-Za-z0-9._-]{1,128}")]

    def check_count(n: int) -> None:
        if n > settings.max_images_per_request:
            raise ApiError(
                413,
                "too_many_images",
                f"{n} images in one request; the limit is {settings.max_images_per_request}",
            )

    def check_label(label: str, where: str) -> str:
        if not 1 <= len(label) <= settings.max_label_length or not label.isprintable():
            raise ApiError(
                400,
                "invalid_label",
                f"{where}: labels are 1-{settings.max_label_length} printable characters",
            )
        return label

    def decode_all(images: list[str], where: Callable[[int], str]) -> np.ndarray:
        return np.stack([decoder.decode(image, where(i)) for i, image in enumerate(images)])

    @router.post("/{task_id}/support", summary="Teach a task labeled examples")
    async def add_support(task_id: TaskId, body: SupportRequest, tenant: Tenant) -> SupportResponse:
        """Adds the examples durably (all or nothing) and answers with the task's new version.
        A label the task has not seen becomes a new concept at once."""
        check_count(len(body.examples))
        labels = [check_label(e.label, f"examples[{i}].label") for i, e in enumerate(body.examples)]
        images = await run_in_threadpool(
            decode_all, [e.image for e in body.examples], "examples[{}].image".format
        )
        work = {"op": "support", "tenant": tenant, "task_id": task_id, "images": images, "labels": labels}
        return SupportResponse(task_id=task_id, **await bridge.submit(work))

    @router.post("/{task_id}/classify", summary="Classify images against a task's concepts")
    async def classify(task_id: TaskId, body: ClassifyRequest, tenant: Tenant) -> ClassifyResponse:
        """One prediction per image, in request order, with the task version used."""
        check_count(len(body.images))
        images = await run_in_threadpool(decode_all, body.images, "images[{}]".format)
        work = {
            "op": "classify",
            "tenant": tenant,
            "task_id": task_id,
            "images": images,
            "top_k": body.top_k,
            "reject": body.reject == "on",
            "novelty_threshold": body.novelty_threshold,
        }
        return ClassifyResponse(task_id=task_id, **await bridge.submit(work))

    @router.get("", summary="The caller's tasks")
    async def list_tasks(tenant: Tenant) -> TaskList:
        return TaskList(tasks=[_info(state) for state in await run_in_threadpool(store.list_tasks, tenant)])

    @router.get("/{task_id}/labels", summary="A task's concepts, each with its first example as a picture")
    async def task_labels(task_id: TaskId, tenant: Tenant) -> TaskLabels:
        found = await run_in_threadpool(store.label_examples, tenant, task_id)
        if found is None:
            raise ApiError(404, "task_not_found", f"task {task_id!r} not found")
        state, examples = found
        return TaskLabels(
            task_id=task_id,
            version=state.version,
            labels=[
                LabelExample(label=label, examples=state.labels[label], image=_png(image))
                for label, image in examples.items()
            ],
        )

    @router.get("/{task_id}", summary="A task's version and examples per label")
    async def get_task(task_id: TaskId, tenant: Tenant) -> TaskInfo:
        state = await run_in_threadpool(store.get_task, tenant, task_id)
        if state is None:
            raise ApiError(404, "task_not_found", f"task {task_id!r} not found")
        return _info(state)

    @router.delete("/{task_id}", summary="Delete a task and everything it stored")
    async def delete_task(task_id: TaskId, tenant: Tenant) -> DeletedTask:
        if not await run_in_threadpool(store.delete_task, tenant, task_id):
            raise ApiError(404, "task_not_found", f"task {task_id!r} not found")
        return DeletedTask(task_id=task_id)

    @router.delete("/{task_id}/labels/{label:path}", summary="Forget a concept")
    async def forget_label(task_id: TaskId, label: str, tenant: Tenant) -> TaskInfo:
        """Removes every example of the label as one new version; the task itself stays."""
        try:
            state = await run_in_threadpool(store.forget_label, tenant, task_id, label)
        except LabelNotFoundError:
            raise ApiError(404, "label_not_found", f"task {task_id!r} has no label {label!r}") from None
        if state is None:
            raise ApiError(404, "task_not_found", f"task {task_id!r} not found")
        return _info(state)

    return router


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


UI_DIR = FilePath(__file__).with_name("ui")


def mount_ui(app: FastAPI) -> None:
    """The teaching page (server/ui/: plain HTML, CSS and JavaScript, no build step) at ``/ui/``;
    ``/`` and ``/ui`` lead there. It calls the same ``/tasks`` API as any client."""

    @app.get("/", include_in_schema=False)
    @app.get("/ui", include_in_schema=False)
    async def to_ui() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")


def service_router(store: TaskStore, workers_ready: Callable[[], bool]) -> APIRouter:
    """``/health`` (model loaded in every worker and store reachable) and Prometheus ``/metrics``."""
    router = APIRouter(tags=["service"])

    @router.get("/health", summary="200 once the model is loaded and the store is reachable")
    async def health() -> dict:
        if not workers_ready():
            return error_response(503, "not_ready", "inference workers are loading the model")
        try:
            await run_in_threadpool(store.ping)
        except Exception as exc:
            return error_response(503, "store_unreachable", f"task store unreachable: {type(exc).__name__}")
        return {"status": "ok"}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        body, content_type = await run_in_threadpool(exposition, store)
        return Response(body, media_type=content_type)

    return router
