"""The work protocol between the HTTP processes and the inference workers, and the service's errors.

An HTTP route resolves tenant, task id, labels and images, then submits one self-contained work item
(``SupportWork`` or ``ClassifyWork``) to the inference workers; a worker answers every item on its own
with a result (``SupportResult`` or ``ClassifyResult``) or a ``ServiceError``, so one failing item
never fails the others of its batch. Everything here crosses a process boundary (pickled), so it is
plain data: frozen dataclasses and exceptions constructed from a message alone.

To extend it: a new classify option is a field with a default on ``ClassifyWork`` (and on the request
schema); a new per-prediction field goes on ``Prediction`` here, the one result type the workers
answer with, and on ``server.schemas.Prediction``, its HTTP form (the route copies results into responses
field by name; tests/server/test_server_protocol.py checks that every result's fields and types are in
its HTTP form), and on the SDK's model, which clients/python/tests/test_client_contract.py checks
against the schema.

The errors are the service's vocabulary of failures, raised where they are detected (store, memory,
worker, image decoding, routes); ``server.errors`` maps each kind to its HTTP status in one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class SupportWork:
    """Add labeled examples to a task (creating it), durably, as one new version."""

    tenant: str
    task_id: str
    images: np.ndarray  # uint8 [n, H, W], preprocessed
    labels: tuple[str, ...]  # one per image
    idempotency_key: str | None = None  # a repeat with this key answers the first call's result


@dataclass(frozen=True)
class ClassifyWork:
    """Classify images against a task's current version; options of the call have defaults."""

    tenant: str
    task_id: str
    images: np.ndarray  # uint8 [q, H, W], preprocessed
    top_k: int = 1
    reject: bool = True  # an image unlike every concept of the task gets label None ("none of these")
    novelty_threshold: float | None = None  # this call's threshold instead of the server's


Work = SupportWork | ClassifyWork


@dataclass(frozen=True)
class SupportResult:
    version: int
    num_examples: int
    labels: tuple[str, ...]  # the task's labels in label-index order
    replayed: bool = False  # the answer of an earlier call with the same idempotency key; nothing written


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float  # softmax probability of the label


@dataclass(frozen=True)
class Prediction:
    """The best label of one image and the ``top_k`` best; the HTTP ``Prediction`` mirrors its fields."""

    label: str | None  # None: rejected as "none of these"
    score: float
    known: bool  # novelty at most the threshold
    novelty: float  # 1 - cosine similarity of the image's key to the nearest stored example, 0..2
    top_k: tuple[LabelScore, ...]


@dataclass(frozen=True)
class ClassifyResult:
    version: int  # the task version the predictions used
    novelty_threshold: float | None  # the threshold ``known`` was decided with
    predictions: tuple[Prediction, ...]  # one per image, in request order


Result = SupportResult | ClassifyResult


class ServiceError(Exception):
    """A failure the client is told about: a stable machine-readable ``code`` and a message."""

    code: ClassVar[str] = "internal_error"
    retry_after: float | None = None  # seconds until a retry may succeed (the Retry-After header)

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after

    def __reduce__(self) -> tuple:  # pickled across the worker boundary with its retry_after
        return type(self), (self.message, self.retry_after)


Outcome = Result | ServiceError
"""What a worker answers a work item with."""


class InvalidImage(ServiceError):
    code = "invalid_image"


class Unauthorized(ServiceError):
    code = "unauthorized"


class TaskNotFound(ServiceError):
    """The task does not exist for this tenant (another tenant's task of that id is invisible)."""

    code = "task_not_found"


class LabelNotFound(ServiceError):
    code = "label_not_found"


class EmptyTask(ServiceError):
    """The task exists but holds no examples (every label was forgotten)."""

    code = "empty_task"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"


class ImageTooLarge(ServiceError):
    code = "image_too_large"


class TooManyImages(ServiceError):
    code = "too_many_images"


class ExampleLimit(ServiceError):
    """Adding the examples would take the task over its example limit."""

    code = "too_many_examples"


class IdempotencyKeyReused(ServiceError):
    """An ``Idempotency-Key`` sent again with a different request (another task or other examples)."""

    code = "idempotency_key_reused"


class TaskExists(ServiceError):
    """An import into a task id that already holds a task."""

    code = "task_exists"


class ModelMismatch(ServiceError):
    """An import of examples whose images are not the size this server's model takes."""

    code = "model_mismatch"


class WorkerFailed(ServiceError):
    """An unexpected exception while a worker handled one item (logged there with its traceback)."""

    code = "internal_error"


class WorkerTimeout(ServiceError):
    code = "timeout"


class NotReady(ServiceError):
    code = "not_ready"


class StoreUnreachable(ServiceError):
    """``/health``: the task store does not answer."""

    code = "store_unreachable"


class StoreUnavailable(ServiceError):
    """The task store cannot be reached; nothing was changed, so the call can be retried."""

    code = "store_unavailable"
    retry_after = 1.0


class StoreOutcomeUnknown(StoreUnavailable):
    """The connection to the store was lost while a change was being committed, and the store did not
    come back in time to say whether it was: read the task before retrying."""

    code = "store_outcome_unknown"
    retry_after = None  # not blindly: read the task first


class TaskBuilding(ServiceError):
    """The task's memory is being built beside serving; ask again in ``retry_after`` seconds."""

    code = "task_building"


class TaskTooLarge(ServiceError):
    """The task's derived memory is larger than an inference worker's whole cache budget."""

    code = "task_too_large"


class Overloaded(ServiceError):
    """The request could not start within the queue deadline: the inference workers are at capacity."""

    code = "overloaded"


class OverShare(ServiceError):
    """The request could not start within the queue deadline while its tenant holds more than its share
    of the queue and other tenants are waiting."""

    code = "over_share"


class RateLimited(ServiceError):
    """The tenant is over one of its rate limits (the message names it)."""

    code = "rate_limited"


class QuotaExceeded(ServiceError):
    """The write would take the tenant over one of its storage quotas (the message names it); nothing
    was written."""

    code = "quota_exceeded"
