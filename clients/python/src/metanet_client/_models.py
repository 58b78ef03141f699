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
