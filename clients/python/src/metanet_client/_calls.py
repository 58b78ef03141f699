"""What each API call sends and how its answers become a result, shared by the sync and async clients.

A call is one or more HTTP requests (large uploads are split to respect the server's per-request
limits) and a function that turns their JSON answers into the typed result.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from ._errors import MetaNetError
from ._images import Image, Images, encode_image, iter_images
from ._models import ClassifyResult, ImportResult, SupportResult, TaskExport, TaskInfo

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    content: bytes | None = None
    idempotent: bool = True
    """Safe to send again after a connection error or a 5xx answer (any request is sent again after
    a 429 or 503 with Retry-After: the server did nothing with it)."""
    idempotency_key: str | None = None
    """Sent as the `Idempotency-Key` header, the same on every retry: the server writes once."""


@dataclass(frozen=True)
class Call(Generic[T]):
    requests: Iterable[Request]
    """Produced lazily, so that a big upload is encoded one request at a time."""
    result: Callable[[list[Any]], T]
    """Builds the result from the JSON answers of all requests."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits the client keeps to, named as the server publishes them at `GET /info`
    (docs/API.md, "Limits")."""

    max_images_per_request: int
    max_body_bytes: int


def _segment(value: str) -> str:
    """A path segment; '.' and '..' are escaped so that URL normalization leaves them alone."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if not quoted.strip(".") else quoted


def _task_path(task_id: str) -> str:
    return f"/tasks/{_segment(task_id)}"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(image: Image) -> str:
    return base64.b64encode(encode_image(image)).decode("ascii")


def _bodies(items: Iterable[bytes], head: bytes, tail: bytes, limits: Limits) -> Iterator[bytes]:
    """Pack JSON items into bodies `head + items + tail`, each within the limits. Always yields at
    least one body (an empty list is the server's to reject); an item too big on its own is sent
    alone, for the server to answer 413."""
    batch: list[bytes] = []
    size = len(head) + len(tail)
    for item in items:
        if batch and (
            len(batch) == limits.max_images_per_request or size + len(item) + 1 > limits.max_body_bytes
        ):
            yield head + b",".join(batch) + tail
            batch, size = [], len(head) + len(tail)
        batch.append(item)
        size += len(item) + 1
    yield head + b",".join(batch) + tail


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def request_key(key: str, part: int) -> str:
    """The key of part `part` of a call with key `key`: `key`, then `key.1`, `key.2`, ... for the parts of
    a split upload, so that the whole call sent again with its key writes only the parts not yet written."""
    return f"{key}.{part}" if part else key


def add_examples(
    task_id: str,
    examples: Iterable[tuple[str, Image]],
    limits: Limits,
    idempotency_key: str | None = None,
) -> Call[SupportResult]:
    """Support requests, each with its own `Idempotency-Key` (derived from `idempotency_key`, a new one
    per call if None), so each is retried like an idempotent request."""
    items = (_json({"label": label, "image": _b64(image)}) for label, image in examples)
    path = f"{_task_path(task_id)}/support"
    bodies = _bodies(items, b'{"examples":[', b"]}", limits)
    key = idempotency_key or new_idempotency_key()
    requests = (
        Request("POST", path, body, idempotency_key=request_key(key, i)) for i, body in enumerate(bodies)
    )
    return Call(requests, lambda answers: SupportResult.model_validate(answers[-1]))


def export(task_id: str) -> Call[TaskExport]:
    path = f"{_task_path(task_id)}/export"
    return Call([Request("GET", path)], lambda answers: TaskExport.model_validate(answers[0]))


def import_task(task_id: str, export: bytes, idempotency_key: str | None = None) -> Call[ImportResult]:
    """`export` is the JSON of a task export (`TaskExport.model_dump_json()` or a file's bytes)."""
    path = f"{_task_path(task_id)}/import"
    request = Request("POST", path, export, idempotency_key=idempotency_key or new_idempotency_key())
    return Call([request], lambda answers: ImportResult.model_validate(answers[0]))


def classify(
    task_id: str,
    images: Images,
    top_k: int,
    limits: Limits,
    reject: bool | None = None,
    novelty_threshold: float | None = None,
) -> Call[ClassifyResult]:
    items = (_json(_b64(image)) for image in iter_images(images))
    options: dict[str, Any] = {"top_k": top_k}
    if reject is not None:  # left out, the server's default applies
        options["reject"] = "on" if reject else "off"
    if novelty_threshold is not None:
        options["novelty_threshold"] = novelty_threshold
    head = _json(options)[:-1] + b',"images":['
    path = f"{_task_path(task_id)}/classify"
    requests = (Request("POST", path, body) for body in _bodies(items, head, b"]}", limits))

    def result(answers: list[Any]) -> ClassifyResult:
        predictions = [prediction for answer in answers for prediction in answer["predictions"]]
        return ClassifyResult.model_validate({**answers[-1], "predictions": predictions})

    return Call(requests, result)


def info(task_id: str) -> Call[TaskInfo]:
    return Call([Request("GET", _task_path(task_id))], lambda answers: TaskInfo.model_validate(answers[0]))


def forget(task_id: str, label: str) -> Call[TaskInfo]:
    path = f"{_task_path(task_id)}/labels/{_segment(label)}"
    return Call([Request("DELETE", path)], lambda answers: TaskInfo.model_validate(answers[0]))


def delete(task_id: str) -> Call[None]:
    return Call([Request("DELETE", _task_path(task_id))], lambda _: None)


def limits(max_images_per_request: int | None, max_body_bytes: int | None) -> Call[Limits]:
    """The limits the server publishes at `GET /info`, each replaced by the client's own if given
    (then no request is needed)."""

    def result(answers: list[Any]) -> Limits:
        info = answers[0] if answers else None
        published = (info or {}).get("limits") or {}
        images = max_images_per_request or published.get("max_images_per_request")
        size = max_body_bytes or published.get("max_body_bytes")
        if not images or not size:
            raise MetaNetError(
                "the server publishes no limits at GET /info: pass max_images_per_request and "
                "max_body_bytes to the client"
            )
        return Limits(int(images), int(size))

    requests = [] if max_images_per_request and max_body_bytes else [Request("GET", "/info")]
    return Call(requests, result)


def health() -> Call[dict[str, Any]]:
    return Call([Request("GET", "/health")], lambda answers: answers[0] or {})
