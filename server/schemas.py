"""Request and response bodies of the HTTP API (docs/API.md).

The request bodies state the configured limits, so they are built from the settings
(``request_models``); the response bodies are fixed. The Python SDK's models
(clients/python/src/metanet_client/_models.py) mirror the responses; a test checks them against
the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.config import IMAGE_PATTERN, LABEL_PATTERN, NAME_PATTERN, ServerSettings
from server.protocol import ClassifyResult

_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
IMAGE_FORMATS = "PNG, JPEG, BMP, GIF, WebP, TIFF or PPM"


def label_constraints(settings: ServerSettings) -> dict:
    """What a label is, for ``Field`` (in bodies) and ``Path`` (in paths)."""
    return {
        "min_length": 1,
        "max_length": settings.max_label_length,
        "pattern": LABEL_PATTERN,
        "description": f"concept name: 1-{settings.max_label_length} characters, no control characters",
    }


def request_models(settings: ServerSettings) -> tuple[type[BaseModel], type[BaseModel]]:
    """SupportRequest and ClassifyRequest with the configured limits in their schema. The image count
    is stated (``maxItems``) and answered 413 ``too_many_images`` by the routes, not 422."""
    n = settings.max_images_per_request
    image = Annotated[
        str,
        Field(
            min_length=1,
            pattern=IMAGE_PATTERN,
            description=f"base64 of an image file ({IMAGE_FORMATS}), optionally as a data: URL; "
            f"at most {settings.max_image_side} pixels a side",
        ),
    ]

    class SupportExample(BaseModel):
        label: str = Field(**label_constraints(settings))
        image: image  # type: ignore[valid-type]

    class SupportRequest(BaseModel):
        model_config = ConfigDict(
            json_schema_extra={"examples": [{"examples": [{"label": "alpha", "image": _PNG}]}]}
        )

        examples: list[SupportExample] = Field(
            min_length=1, json_schema_extra={"maxItems": n}, description=f"1-{n} labeled images"
        )

    class ClassifyRequest(BaseModel):
        model_config = ConfigDict(json_schema_extra={"examples": [{"images": [_PNG], "top_k": 3}]})

        images: list[image] = Field(  # type: ignore[valid-type]
            min_length=1, json_schema_extra={"maxItems": n}, description=f"1-{n} images"
        )
        top_k: int = Field(1, ge=1, description="how many ranked labels each prediction lists")
        reject: Literal["on", "off"] = Field(
            "on",
            description='"on": an image whose novelty is over the threshold gets label null ("none of '
            'these"); "off": every image gets its most likely label. `known` and `novelty` are reported '
            "either way",
        )
        novelty_threshold: float | None = Field(
            None,
            ge=0,
            le=2,
            strict=True,  # a number: JSON true/false is not 1/0 here
            description="this call's threshold instead of the server's (the checkpoint's)",
        )

    return SupportRequest, ClassifyRequest


IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
"""An ``Idempotency-Key`` header: 1-255 printable ASCII characters, no spaces (a UUID suits)."""

EXPORT_FORMAT = "metanet-task"


def export_model(settings: ServerSettings) -> type[BaseModel]:
    """``TaskExport``: the portable file of one task (``GET /tasks/{id}/export``), also the body of
    ``POST /tasks/{id}/import``; its labels obey the configured label rule."""

    class ExportedExample(BaseModel):
        label: str = Field(**label_constraints(settings))
        image: str = Field(
            pattern=IMAGE_PATTERN,
            description="base64 PNG of the example as stored: image_size x image_size, 8-bit gray, "
            "white strokes on black (imported without preprocessing)",
        )

    class ExportedModel(BaseModel):
        checkpoint: str = Field(description="file name of the checkpoint the task was taught under")
        sha256: str = Field(description="SHA-256 of that checkpoint file")
        image_size: int

    class TaskExport(BaseModel):
        format: Literal["metanet-task"] = EXPORT_FORMAT
        format_version: Literal[1] = 1
        task_id: str
        version: int = Field(description="the task's version when exported")
        exported_at: str = Field(description="UTC time of the export, ISO 8601")
        model: ExportedModel
        examples: list[ExportedExample] = Field(
            description="every example in the order it was added (label indices follow first appearance)"
        )

    return TaskExport


class ImportedTask(BaseModel):
    task_id: str
    version: int
    num_examples: int
    labels: dict[str, int] = Field(description="label -> number of support examples")
    model_matches: bool = Field(
        description="the export was made under this server's checkpoint (same SHA-256): predictions are "
        "the same as on the server it came from"
    )


class SupportResponse(BaseModel):
    task_id: str
    version: int
    num_examples: int
    labels: list[str] = Field(description="the task's labels in label-index order")


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="softmax probability of the label")


class Prediction(BaseModel):
    label: str | None = Field(description='the most likely label; null when rejected as "none of these"')
    score: float = Field(description="softmax probability of the most likely label")
    known: bool = Field(description="novelty at most the threshold: it looks like one of the task's concepts")
    novelty: float = Field(description="1 - cosine similarity of its key to the nearest stored example, 0..2")
    top_k: list[LabelScore] = Field(description="the best labels, rejected or not")


class ClassifyResponse(BaseModel):
    task_id: str
    version: int = Field(description="the task version the predictions used")
    novelty_threshold: float | None = Field(
        description="the threshold `known` was decided with; null when none is set (every image is known)"
    )
    predictions: list[Prediction] = Field(description="one per image, in request order")

    @classmethod
    def of(cls, task_id: str, result: ClassifyResult) -> ClassifyResponse:
        """The answer for a worker's result, read from its dataclasses' attributes (a 256-image answer
        validates in 1 ms this way, against 4 ms through ``dataclasses.asdict``; benchmarks/http_process)."""
        fields = {
            "task_id": task_id,
            "version": result.version,
            "novelty_threshold": result.novelty_threshold,
            "predictions": result.predictions,
        }
        return cls.model_validate(fields, from_attributes=True)


class TaskInfo(BaseModel):
    task_id: str
    version: int
    num_examples: int
    labels: dict[str, int] = Field(description="label -> number of support examples")


class TaskList(BaseModel):
    tasks: list[TaskInfo] = Field(description="the caller's tasks, most recently changed first")


class LabelExample(BaseModel):
    label: str
    examples: int = Field(description="number of support examples of the label")
    image: str = Field(description="base64 PNG of its first example as the model sees it (white on black)")


class TaskLabels(BaseModel):
    task_id: str
    version: int
    labels: list[LabelExample] = Field(description="in label-index order")


class DeletedTask(BaseModel):
    task_id: str
    deleted: bool = True


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Limits(BaseModel):
    """The limits this server enforces (``METANET_MAX_*``)."""

    max_body_bytes: int
    max_images_per_request: int
    max_image_side: int
    max_examples_per_task: int
    max_label_length: int

    @classmethod
    def of(cls, settings: ServerSettings) -> Limits:
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})


class Queue(BaseModel):
    """How the inference queue admits and shares work (``METANET_QUEUE_*``; docs/SERVER.md, "Admission
    and fairness")."""

    queue_deadline: float = Field(
        description="seconds within which a classify is answered (a support started); else 429/503"
    )
    queue_quantum: int = Field(description="images a tenant is served per turn of the round robin")


class TenantQuotaInfo(BaseModel):
    """Each tenant's quotas unless the keys file gives it its own (``METANET_TENANT_*``; docs/API.md,
    "Quotas")."""

    max_tasks: int
    max_examples: int
    max_stored_bytes: int
    requests_per_second: float
    images_per_second: float
    share: float = Field(description="weight in the inference queue's round robin")

    @classmethod
    def of(cls, settings: ServerSettings) -> TenantQuotaInfo:
        return cls.model_validate(settings.tenant_quota, from_attributes=True)


class ModelInfo(BaseModel):
    checkpoint: str
    sha256: str = Field(description="SHA-256 of the checkpoint file (task exports record it)")
    image_size: int = Field(description="images are resized to image_size x image_size")
    max_labels: int = Field(description="labels one task can hold")


class ServerInfo(BaseModel):
    model: ModelInfo
    limits: Limits
    queue: Queue
    tenant_quotas: TenantQuotaInfo
    idempotency_ttl: float = Field(description="seconds a support call's Idempotency-Key is remembered")
    api_keys: bool = Field(
        description="whether the /tasks routes need an API key (``Authorization: Bearer <key>``)"
    )
    task_id_pattern: str = NAME_PATTERN
    label_pattern: str = LABEL_PATTERN


class Index(BaseModel):
    name: str
    version: str
    docs: str = "/docs"
    openapi: str = "/openapi.json"
    ui: str = "/ui"
    health: str = "/health"
    info: str = "/info"


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
