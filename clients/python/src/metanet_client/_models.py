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


class Prediction(LabelScore):
    """The most likely label of one image, with the `top_k` best labels."""

    top_k: list[LabelScore]


class ClassifyResult(_Model):
    """Predictions in the order of the images sent, and the task version they used."""

    task_id: str
    version: int
    predictions: list[Prediction]

    @property
    def labels(self) -> list[str]:
        """The predicted label of each image."""
        return [prediction.label for prediction in self.predictions]


class TaskInfo(_Model):
    """A task's version, size and number of examples per label."""

    task_id: str
    version: int
    num_examples: int
    labels: dict[str, int]
