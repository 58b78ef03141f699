"""Request and response bodies of the HTTP API (docs/SERVER.md, "API")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="


class SupportExample(BaseModel):
    label: str = Field(description="concept name, 1-128 characters")
    image: str = Field(description="base64 of an encoded image file (PNG, JPEG, BMP, GIF, WebP, ...)")


class SupportRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"examples": [{"label": "alpha", "image": _PNG}]}]}
    )

    examples: list[SupportExample] = Field(min_length=1)


class SupportResponse(BaseModel):
    task_id: str
    version: int
    num_examples: int
    labels: list[str] = Field(description="the task's labels in label-index order")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"images": [_PNG], "top_k": 3}]})

    images: list[str] = Field(min_length=1, description="base64 encoded image files")
    top_k: int = Field(1, ge=1, description="how many ranked labels each prediction lists")
    reject: Literal["on", "off"] = Field(
        "on",
        description='"on": an image whose novelty is over the threshold gets label null ("none of '
        'these"); "off": every image gets its most likely label. `known` and `novelty` are reported '
        "either way",
    )
    novelty_threshold: float | None = Field(
        None, ge=0, le=2, description="this call's threshold instead of the server's (the checkpoint's)"
    )


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


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "bad image or label",
        401: "missing or wrong API key",
        404: "unknown task or label",
        413: "over a size limit",
        422: "request does not match the schema",
    }.items()
}
