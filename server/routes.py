"""The HTTP API (docs/API.md): thin routes over the task store and the inference workers."""

import asyncio
import base64
import binascii
import io
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from server.config import NAME_PATTERN, ServerSettings
from server.derived import DerivedMemoryFiles
from server.dispatch import Dispatcher
from server.errors import error_responses, service_error_response
from server.images import ImageDecoder, decode_images
from server.metrics import exposition
from server.protocol import (
    ClassifyWork,
    EmptyTask,
    ExampleLimit,
    IdempotencyKeyReused,
    ImageTooLarge,
    InvalidImage,
    LabelNotFound,
    ModelMismatch,
    NotReady,
    Overloaded,
    OverShare,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    ServiceError,
    StoreOutcomeUnknown,
    StoreUnavailable,
    StoreUnreachable,
    SupportWork,
    TaskBuilding,
    TaskExists,
    TaskNotFound,
    TaskTooLarge,
    TooManyImages,
    Unauthorized,
    WorkerFailed,
    WorkerTimeout,
)
from server.quotas import TenantQuotas
from server.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    ClassifyResponse,
    DeletedTask,
    Health,
    ImportedTask,
    Index,
    LabelExample,
    ModelInfo,
    ServerInfo,
    SupportResponse,
    TaskInfo,
    TaskLabels,
    TaskList,
    export_model,
    label_constraints,
    request_models,
)
from server.store import TaskState, TaskStore

logger = logging.getLogger(__name__)


async def _tenant(request: Request) -> str:  # async: FastAPI runs a plain def in the thread pool
    return request.state.tenant  # set by GuardMiddleware


async def _arrived(request: Request) -> float:
    return request.state.arrived  # set by GuardMiddleware: when the request's headers were read


Tenant = Annotated[str, Depends(_tenant)]
Arrived = Annotated[float, Depends(_arrived)]
TaskId = Annotated[str, Path(pattern=NAME_PATTERN, description=f"task id, matching {NAME_PATTERN}")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="a key unique to this call (a UUID): a repeat with the same key within the server's "
        "`idempotency_ttl` (GET /info) writes nothing and answers the first call's result, with header "
        "`Idempotent-Replayed: true`; the same key with another request is 409 `idempotency_key_reused`",
    ),
]
REPLAYED = {"Idempotent-Replayed": "true"}


def _info(state: TaskState) -> TaskInfo:
    return TaskInfo(
        task_id=state.task_id, version=state.version, num_examples=state.num_examples, labels=state.labels
    )


def task_router(
    settings: ServerSettings, dispatcher: Dispatcher, store: TaskStore, model: ModelInfo, quotas: TenantQuotas
) -> APIRouter:
    """Routes under ``/tasks``; support and classify run in the inference workers (through admission:
    ``Dispatcher``), the rest on the store (an import within the tenant's ``quotas``). ``GuardMiddleware``
    checks key, rates and body size first."""
    router = APIRouter(
        prefix="/tasks",
        tags=["tasks"],
        responses=error_responses(
            Unauthorized,
            RateLimited,
            PayloadTooLarge,
            StoreUnavailable,
            StoreOutcomeUnknown,
            statuses=(422, 500),
        ),
    )
    image_size = model.image_size
    decoder = ImageDecoder(settings.max_image_side, image_size, settings.normalize_polarity)
    quantum = settings.queue_quantum  # images per decoded chunk, as per classify part
    derived = DerivedMemoryFiles(settings.derived_dir)  # saved task memories: removed with the data
    SupportRequest, ClassifyRequest = request_models(settings)
    TaskExport = export_model(settings)
    Label = Annotated[str, Path(**label_constraints(settings))]
    image_errors = (InvalidImage, ImageTooLarge, TooManyImages, WorkerTimeout, WorkerFailed)
    queue_errors = (OverShare, Overloaded)

    def check_count(n: int) -> None:
        if n > settings.max_images_per_request:
            raise TooManyImages(f"{n} images in one request; the limit is {settings.max_images_per_request}")

    @router.post(
        "/{task_id}/support",
        summary="Teach a task labeled examples",
        responses=error_responses(
            *image_errors, *queue_errors, ExampleLimit, QuotaExceeded, IdempotencyKeyReused
        ),
    )
    async def add_support(
        task_id: TaskId,
        body: SupportRequest,
        tenant: Tenant,
        response: Response,
        arrived: Arrived,
        idempotency_key: IdempotencyKey = None,
    ) -> SupportResponse:
        """Adds the examples durably (all or nothing) and answers with the task's new version.
        A label the task has not seen becomes a new concept at once. Over a tenant quota: 507
        ``quota_exceeded`` naming it, and nothing is written. With an ``Idempotency-Key`` the call can be
        retried safely: a repeat writes nothing and answers the first call's result."""
        check_count(len(body.examples))
        labels = tuple(e.label for e in body.examples)
        with dispatcher.admit(tenant, len(body.examples), arrived) as reservation:
            where = "examples[{}].image".format
            images = await decode_images(
                decoder, [e.image for e in body.examples], where, dispatcher.decoding(reservation), quantum
            )
            work = SupportWork(tenant, task_id, images, labels, idempotency_key)
            result = await dispatcher.support(work, reservation)
        if result.replayed:
            response.headers.update(REPLAYED)
        return SupportResponse(
            task_id=task_id, version=result.version, num_examples=result.num_examples, labels=result.labels
        )

    @router.post(
        "/{task_id}/classify",
        summary="Classify images against a task's concepts",
        responses=error_responses(
            *image_errors, *queue_errors, TaskNotFound, EmptyTask, TaskBuilding, TaskTooLarge
        ),
    )
    async def classify(
        task_id: TaskId, body: ClassifyRequest, tenant: Tenant, arrived: Arrived
    ) -> ClassifyResponse:
        """One prediction per image, in request order, with the task version used. While the task's
        memory is being built the call waits for it, up to ``METANET_BUILD_WAIT`` seconds, then answers
        503 ``task_building`` with a Retry-After header. A request that cannot be answered within
        ``METANET_QUEUE_DEADLINE`` of its arrival is refused, at once if the queue shows it: 429
        ``over_share`` or 503 ``overloaded``, with Retry-After."""
        check_count(len(body.images))
        with dispatcher.admit(tenant, len(body.images), arrived) as reservation:
            images = await decode_images(
                decoder, body.images, "images[{}]".format, dispatcher.decoding(reservation), quantum
            )
            options = (body.top_k, body.reject == "on", body.novelty_threshold)
            result = await dispatcher.classify(ClassifyWork(tenant, task_id, images, *options), reservation)
        return ClassifyResponse.of(task_id, result)

    @router.get(
        "/{task_id}/export",
        summary="A task as a portable file: its examples, labels and the model it was taught under",
        responses=error_responses(TaskNotFound),
    )
    async def export_task(task_id: TaskId, tenant: Tenant, response: Response) -> TaskExport:
        """Every example in the order it was added, as the stored image (a PNG of the model's input),
        with the checkpoint's name and SHA-256; ``POST /tasks/{id}/import`` recreates the task."""
        snapshot = await run_in_threadpool(store.snapshot, tenant, task_id)
        if snapshot is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        pngs = await run_in_threadpool(lambda: [_png(image) for image in snapshot.images])
        response.headers["Content-Disposition"] = f'attachment; filename="{task_id}.metanet.json"'
        return TaskExport(
            task_id=task_id,
            version=snapshot.state.version,
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            model={
                "checkpoint": FilePath(model.checkpoint).name,
                "sha256": model.sha256,
                "image_size": image_size,
            },
            examples=[
                {"label": label, "image": png} for label, png in zip(snapshot.labels, pngs, strict=True)
            ],
        )

    @router.post(
        "/{task_id}/import",
        summary="Recreate a task from an export (of this server or another, of any tenant)",
        responses=error_responses(
            InvalidImage, TaskExists, ModelMismatch, ExampleLimit, QuotaExceeded, IdempotencyKeyReused
        ),
    )
    async def import_task(
        task_id: TaskId,
        body: TaskExport,
        tenant: Tenant,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> ImportedTask:
        """Creates the task ``task_id`` (any id: the export's own is not used) with the export's examples,
        in their order, as version 1, all or nothing; 409 ``task_exists`` if the task exists. The images
        are stored exactly as exported, so under the same checkpoint the task answers as the exported one
        did; under another checkpoint of the same image size its memory is derived anew."""
        if body.model.image_size != image_size:
            raise ModelMismatch(
                f"the export holds {body.model.image_size}x{body.model.image_size} images; this server's "
                f"model takes {image_size}x{image_size}"
            )
        images = await run_in_threadpool(_stored_images, [e.image for e in body.examples], image_size)
        written = await run_in_threadpool(
            store.write_examples,
            tenant,
            task_id,
            images,
            [e.label for e in body.examples],
            settings.max_examples_per_task,
            idempotency_key,
            True,
            quotas(tenant).storage,
        )
        if written.replayed:
            response.headers.update(REPLAYED)
        state = written.state
        return ImportedTask(
            task_id=task_id,
            version=state.version,
            num_examples=state.num_examples,
            labels=state.labels,
            model_matches=body.model.sha256 == model.sha256,
        )

    @router.get("", summary="The caller's tasks")
    async def list_tasks(tenant: Tenant) -> TaskList:
        return TaskList(tasks=[_info(state) for state in await run_in_threadpool(store.list_tasks, tenant)])

    @router.get(
        "/{task_id}/labels",
        summary="A task's concepts, each with its first example as a picture",
        responses=error_responses(TaskNotFound),
    )
    async def task_labels(task_id: TaskId, tenant: Tenant) -> TaskLabels:
        found = await run_in_threadpool(store.label_examples, tenant, task_id)
        if found is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        state, examples = found
        return TaskLabels(
            task_id=task_id,
            version=state.version,
            labels=[
                LabelExample(label=label, examples=state.labels[label], image=_png(image))
                for label, image in examples.items()
            ],
        )

    @router.get(
        "/{task_id}",
        summary="A task's version and examples per label",
        responses=error_responses(TaskNotFound),
    )
    async def get_task(task_id: TaskId, tenant: Tenant) -> TaskInfo:
        state = await run_in_threadpool(store.get_task, tenant, task_id)
        if state is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        return _info(state)

    @router.delete(
        "/{task_id}",
        summary="Delete a task and everything it stored",
        responses=error_responses(TaskNotFound),
    )
    async def delete_task(task_id: TaskId, tenant: Tenant) -> DeletedTask:
        if not await run_in_threadpool(store.delete_task, tenant, task_id):
            raise TaskNotFound(f"task {task_id!r} not found")
        derived.discard(tenant, task_id)
        return DeletedTask(task_id=task_id)

    @router.delete(
        "/{task_id}/labels/{label:path}",
        summary="Forget a concept",
        responses=error_responses(TaskNotFound, LabelNotFound),
    )
    async def forget_label(task_id: TaskId, label: Label, tenant: Tenant) -> TaskInfo:
        """Removes every example of the label as one new version; the task itself stays."""
        state = await run_in_threadpool(store.forget_label, tenant, task_id, label)
        if state is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        derived.discard(tenant, task_id)
        return _info(state)

    return router


def _stored_images(encoded: list[str], image_size: int) -> np.ndarray:
    """Exported example images back to stored pixels, uint8 [n, image_size, image_size], unchanged (no
    preprocessing: they were stored preprocessed); 400 ``invalid_image`` names the first bad one."""
    images = np.zeros((len(encoded), image_size, image_size), dtype=np.uint8)
    for i, text in enumerate(encoded):
        where = f"examples[{i}].image"
        try:
            with Image.open(io.BytesIO(base64.b64decode(text.partition(",")[2] or text))) as image:
                if image.size != (image_size, image_size):
                    raise InvalidImage(
                        f"{where}: {image.size[0]}x{image.size[1]} pixels; an exported example is "
                        f"{image_size}x{image_size}"
                    )
                images[i] = np.asarray(image.convert("L"))
        except (OSError, ValueError, binascii.Error) as exc:
            raise InvalidImage(f"{where}: not an image file ({type(exc).__name__})") from None
    return images


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


UI_DIR = FilePath(__file__).with_name("ui")


def mount_ui(app: FastAPI) -> None:
    """The teaching page (server/ui/: plain HTML, CSS and JavaScript, no build step) at ``/ui/``;
    ``/ui`` leads there. It calls the same ``/tasks`` API as any client."""

    @app.get("/ui", include_in_schema=False)
    async def to_ui() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")


class ServiceHealth:
    """What ``/health`` answers: the inference workers have loaded the model, and the task store answers.

    Checked every ``every`` seconds by a task of the HTTP process's event loop (started by the first
    call), which keeps the latest answer; a ``/health`` call reads it. So a health check under load waits
    for neither the round trip to LitServe's manager process nor a thread-pool hop to the store, and a
    change shows within ``every`` seconds."""

    def __init__(self, store: TaskStore, workers_ready: Callable[[], bool], every: float = 0.5) -> None:
        self.store = store
        self.workers_ready = workers_ready
        self.every = every
        self._latest: ServiceError | None = None
        self._refresher: asyncio.Task | None = None

    async def check(self) -> ServiceError | None:
        """None if healthy, else why not."""
        if not self.workers_ready():
            return NotReady("inference workers are loading the model")
        try:
            await run_in_threadpool(self.store.ping)
        except Exception as exc:
            return StoreUnreachable(f"task store unreachable: {type(exc).__name__}")
        return None

    async def latest(self) -> ServiceError | None:
        if self._refresher is None:
            self._latest = await self.check()
            self._refresher = asyncio.create_task(self._refresh())
        return self._latest

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                self._latest = await self.check()
            except Exception:  # never let the refresher die: the next round tries again
                logger.exception("health check failed")


def service_router(
    store: TaskStore, workers_ready: Callable[[], bool], index: Index, info: ServerInfo
) -> APIRouter:
    """``/`` (links), ``/info`` (model and limits), ``/health`` (model loaded in every worker and store
    reachable, as of at most half a second ago: ``ServiceHealth``) and Prometheus ``/metrics``."""
    router = APIRouter(tags=["service"])
    service_health = ServiceHealth(store, workers_ready)

    @router.get(
        "/",
        summary="Links to the API's documentation, UI and service routes (a browser is sent to the UI)",
        response_model=Index,
    )
    async def root(request: Request) -> Index | RedirectResponse:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/ui/")
        return index

    @router.get("/info", summary="The model served and the limits this server enforces")
    async def server_info() -> ServerInfo:
        return info

    @router.get(
        "/health",
        summary="200 once the model is loaded and the store is reachable",
        response_model=Health,
        responses=error_responses(NotReady, StoreUnreachable),
    )
    async def health() -> Health | JSONResponse:
        if (problem := await service_health.latest()) is not None:
            return service_error_response(problem)
        return Health()

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def prometheus_metrics() -> Response:
        body, content_type = await run_in_threadpool(exposition, store)
        return Response(body, media_type=content_type)

    return router
