"""Request and response bodies of the HTTP API (docs/SERVER.md, "API")."""

from __future__ import annotations

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


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="softmax probability of the label")


class Prediction(BaseModel):
    label: str
    score: float
    top_k: list[LabelScore]


class ClassifyResponse(BaseModel):
    task_id: str
    version: int = Field(description="the task version the predictions used")
    predictions: list[Prediction] = Field(description="one per image, in request order")


class TaskInfo(BaseModel):
    task_id: str
    version: int
    num_examples: int
    labels: dict[str, int] = Field(description="label -> number of support examples")


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
