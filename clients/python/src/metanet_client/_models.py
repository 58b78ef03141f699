"""Typed results of the server's API (its docs/API.md). Unknown extra fields are ignored.

clients/python/tests/test_client_contract.py checks them against the server's OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class SupportResult(_Model):
    """Answer to adding support examples."""

    task_id: str
    version: int
    num_examples: int
    labels: list[str]


class LabelScore(_Model):
    label: str
    score: float
    """Softmax probability of the label."""


class Prediction(_Model):
    """The most likely label of one image, with the `top_k` best labels.

    `label` is None when the server rejected the image as "none of these" (its `novelty` is over
    the threshold); `top_k` still ranks the task's labels."""

    label: str | None
    score: float
    """Softmax probability of the most likely label."""
    known: bool
    """Novelty at most the threshold: the image looks like one of the task's concepts."""
    novelty: float
    """1 - cosine similarity of the image's key to the nearest stored example (0..2)."""
    top_k: list[LabelScore]


class ClassifyResult(_Model):
    """Predictions in the order of the images sent, and the task version they used."""

    task_id: str
    version: int
    novelty_threshold: float | None
    """The threshold `known` was decided with (None: none configured, every image is known)."""
    predictions: list[Prediction]

    @property
    def labels(self) -> list[str | None]:
        """The predicted label of each image (None: "none of these")."""
        return [prediction.label for prediction in self.predictions]


class TaskInfo(_Model):
    """A task's version, size and number of examples per label."""

    task_id: str
    version: int
    num_examples: int
    labels: dict[str, int]


class ImportResult(_Model):
    """Answer to importing a task export: the new task's state."""

    task_id: str
    version: int
    num_examples: int
    labels: dict[str, int]
    model_matches: bool
    """The export was made under the server's own checkpoint (same SHA-256): the task answers as the
    exported one did."""


class ExportedExample(_Model):
    label: str
    image: str
    """base64 PNG of the example as the server stored it (the model's input size, white on black)."""


class ExportedModel(_Model):
    """The checkpoint a task was taught under."""

    checkpoint: str
    sha256: str
    image_size: int


class TaskExport(_Model):
    """A task as a portable file (`Task.export`): its examples in order, and the model it was made for.
    `model_dump_json()` gives the file's contents; `Task.import_from` recreates the task."""

    format: str
    format_version: int
    task_id: str
    version: int
    exported_at: str
    model: ExportedModel
    examples: list[ExportedExample]
