"""`Client` and `AsyncClient`, and the task handles they hand out."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from . import _calls
from ._calls import Call, Limits, Request
from ._errors import APIConnectionError, error_from_response, retry_after
from ._images import Image, Images, iter_images
from ._models import ClassifyResult, ImportResult, SupportResult, TaskExport, TaskInfo
from ._version import __version__

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
_JSON_HEADERS = {"Content-Type": "application/json"}
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)  # the request never reached the server


ExportSource = TaskExport | bytes | str | os.PathLike
"""A task export: the model `Task.export` returns, the JSON's bytes, or the path of a file."""


def _export_bytes(source: ExportSource) -> bytes:
    if isinstance(source, TaskExport):
        return source.model_dump_json().encode()
    if isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def _save(export: TaskExport, path: str | os.PathLike | None) -> TaskExport:
    if path is not None:
        Path(path).write_text(export.model_dump_json(), encoding="utf-8")
    return export


def _finish(request: Request, outcome: httpx.Response | httpx.TransportError) -> Any:
    """The JSON answer of a final outcome, or the exception it stands for."""
    if isinstance(outcome, httpx.TransportError):
        url = outcome.request.url
        raise APIConnectionError(f"{request.method} {url}: {type(outcome).__name__}: {outcome}") from outcome
    if outcome.is_error:
        raise error_from_response(outcome)
    return outcome.json() if outcome.content else None


class _BaseClient:
    _http_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_retry_after: float = 30.0,
        max_images_per_request: int | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.base_url = base_url or os.environ.get("METANET_URL") or DEFAULT_URL
        api_key = api_key if api_key is not None else os.environ.get("METANET_API_KEY")
        headers = {"User-Agent": f"metanet-client/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self._limits_given = (max_images_per_request, max_body_bytes)
        self._limits: Limits | None = None
        self._http = self._http_class(base_url=self.base_url, headers=headers, timeout=timeout)

    def _request_args(self, request: Request) -> dict[str, Any]:
        headers = dict(_JSON_HEADERS) if request.content is not None else {}
        if request.idempotency_key is not None:
            headers["Idempotency-Key"] = request.idempotency_key
        return {"method": request.method, "url": request.path, "content": request.content, "headers": headers}

    def _retry_delay(
        self, request: Request, attempt: int, outcome: httpx.Response | httpx.TransportError
    ) -> float | None:
        """Seconds to wait before sending `request` again, or None to stop at this outcome."""
        if attempt >= self.max_retries:
            return None
        if isinstance(outcome, httpx.Response):
            wait = retry_after(outcome)
            if wait is not None and outcome.status_code in (429, 503):
                # Refused before any work, with the server's word on when to come back: any call may
                # be sent again then (a little later, so that refused clients do not return together).
                return wait * random.uniform(1.0, 1.2) if wait <= self.max_retry_after else None
            retry = outcome.is_server_error and request.idempotent
        else:
            retry = request.idempotent or isinstance(outcome, _NOT_SENT)
        return self.backoff * 2**attempt * random.uniform(0.75, 1.25) if retry else None


class Client(_BaseClient):
    """Synchronous client of a MetaNet server.

    `base_url` and `api_key` default to the environment variables `METANET_URL` and
    `METANET_API_KEY` (then to http://127.0.0.1:8000 and no key). Every call is sent again, up to
    `max_retries` times, after a 429 or 503 answer with a `Retry-After` header (the server refused it
    before doing anything), once that many seconds have passed, unless the server asks for more than
    `max_retry_after`. Calls that are idempotent (info, classify, forget, delete, health) or made so by
    an `Idempotency-Key` (adding examples and importing send one per request, the same on its retries,
    so the server writes them once however often they are sent) are also retried with exponential
    backoff on connection errors and other 5xx answers. Uploads of more than `max_images_per_request`
    images or `max_body_bytes` bytes (by default the server's limits, read once from `GET /info`) are
    split into several requests: such an upload is not all-or-nothing, as the requests before a failed
    one stay stored (sending it again with the same `idempotency_key` completes it without duplicates).
    """

    _http_class = httpx.Client
    _http: httpx.Client

    def task(self, task_id: str) -> Task:
        """A handle on one task; the task exists on the server once examples are added to it."""
        return Task(self, task_id)

    def health(self) -> dict[str, Any]:
        """The server's health answer; raises unless the server is ready."""
        return self._call(_calls.health())

    def limits(self) -> Limits:
        """The per-request limits uploads are split by (the server's unless given to the client)."""
        if self._limits is None:
            self._limits = self._call(_calls.limits(*self._limits_given))
        return self._limits

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, call: Call[T]) -> T:
        return call.result([self._send(request) for request in call.requests])

    def _send(self, request: Request) -> Any:
        for attempt in itertools.count():
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(
                    **self._request_args(request)
                )
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._retry_delay(request, attempt, outcome)
            if delay is None:
                return _finish(request, outcome)
            time.sleep(delay)


class AsyncClient(_BaseClient):
    """Asynchronous client of a MetaNet server: the same arguments and methods as `Client`, awaited."""

    _http_class = httpx.AsyncClient
    _http: httpx.AsyncClient

    def task(self, task_id: str) -> AsyncTask:
        """A handle on one task; the task exists on the server once examples are added to it."""
        return AsyncTask(self, task_id)

    async def health(self) -> dict[str, Any]:
        """The server's health answer; raises unless the server is ready."""
        return await self._call(_calls.health())

    async def limits(self) -> Limits:
        """The per-request limits uploads are split by (the server's unless given to the client)."""
        if self._limits is None:
            self._limits = await self._call(_calls.limits(*self._limits_given))
        return self._limits

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, call: Call[T]) -> T:
        return call.result([await self._send(request) for request in call.requests])

    async def _send(self, request: Request) -> Any:
        for attempt in itertools.count():
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(
                    **self._request_args(request)
                )
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._retry_delay(request, attempt, outcome)
            if delay is None:
                return _finish(request, outcome)
            await asyncio.sleep(delay)


class Task:
    """One task of a `Client`: its labeled support examples and classification against them."""

    def __init__(self, client: Client, task_id: str) -> None:
        self.client = client
        self.id = task_id

    def add(self, label: str, images: Images) -> SupportResult:
        """Teach `label` from one image or several."""
        return self.add_examples((label, image) for image in iter_images(images))

    def add_examples(
        self, examples: Iterable[tuple[str, Image]], idempotency_key: str | None = None
    ) -> SupportResult:
        """Add `(label, image)` pairs; the result is the task's state after the last request.
        `idempotency_key` (default: a new one per call) makes a repeat of this call write nothing."""
        return self.client._call(
            _calls.add_examples(self.id, examples, self.client.limits(), idempotency_key)
        )

    def export(self, path: str | os.PathLike | None = None) -> TaskExport:
        """The task as a portable export (its examples in order and the model it was taught under);
        written to `path` as JSON too if given."""
        return _save(self.client._call(_calls.export(self.id)), path)

    def import_from(self, source: ExportSource, idempotency_key: str | None = None) -> ImportResult:
        """Create this task from an export (a `TaskExport`, its JSON bytes, or a file path) made on any
        server; raises `APIError` 409 `task_exists` if the task exists."""
        return self.client._call(_calls.import_task(self.id, _export_bytes(source), idempotency_key))

    def classify(
        self,
        images: Images,
        top_k: int = 1,
        reject: bool | None = None,
        novelty_threshold: float | None = None,
    ) -> ClassifyResult:
        """Predict a label for each image (in order), with the `top_k` best labels and their scores.

        reject: True (the server's default) gives an image unlike every label of the task the label
        None ("none of these"); False always gives the most likely label. novelty_threshold: this
        call's threshold instead of the server's. Each prediction carries `known` and `novelty`."""
        call = _calls.classify(self.id, images, top_k, self.client.limits(), reject, novelty_threshold)
        return self.client._call(call)

    def info(self) -> TaskInfo:
        """The task's version, number of examples, and examples per label."""
        return self.client._call(_calls.info(self.id))

    def forget(self, label: str) -> TaskInfo:
        """Forget a label and all its examples; returns the task's new state."""
        return self.client._call(_calls.forget(self.id, label))

    def delete(self) -> None:
        """Delete the task and everything it stored."""
        self.client._call(_calls.delete(self.id))

    def __repr__(self) -> str:
        return f"Task({self.id!r})"


class AsyncTask:
    """One task of an `AsyncClient`: the methods of `Task`, awaited."""

    def __init__(self, client: AsyncClient, task_id: str) -> None:
        self.client = client
        self.id = task_id

    async def add(self, label: str, images: Images) -> SupportResult:
        """Teach `label` from one image or several."""
        return await self.add_examples((label, image) for image in iter_images(images))

    async def add_examples(
        self, examples: Iterable[tuple[str, Image]], idempotency_key: str | None = None
    ) -> SupportResult:
        """Add `(label, image)` pairs; the result is the task's state after the last request.
        `idempotency_key` (default: a new one per call) makes a repeat of this call write nothing."""
        limits = await self.client.limits()
        return await self.client._call(_calls.add_examples(self.id, examples, limits, idempotency_key))

    async def export(self, path: str | os.PathLike | None = None) -> TaskExport:
        """The task as a portable export (its examples in order and the model it was taught under);
        written to `path` as JSON too if given."""
        return _save(await self.client._call(_calls.export(self.id)), path)

    async def import_from(self, source: ExportSource, idempotency_key: str | None = None) -> ImportResult:
        """Create this task from an export (a `TaskExport`, its JSON bytes, or a file path) made on any
        server; raises `APIError` 409 `task_exists` if the task exists."""
        return await self.client._call(_calls.import_task(self.id, _export_bytes(source), idempotency_key))

    async def classify(
        self,
        images: Images,
        top_k: int = 1,
        reject: bool | None = None,
        novelty_threshold: float | None = None,
    ) -> ClassifyResult:
        """Predict a label for each image (in order), with the `top_k` best labels and their scores.

        reject: True (the server's default) gives an image unlike every label of the task the label
        None ("none of these"); False always gives the most likely label. novelty_threshold: this
        call's threshold instead of the server's. Each prediction carries `known` and `novelty`."""
        limits = await self.client.limits()
        call = _calls.classify(self.id, images, top_k, limits, reject, novelty_threshold)
        return await self.client._call(call)

    async def info(self) -> TaskInfo:
        """The task's version, number of examples, and examples per label."""
        return await self.client._call(_calls.info(self.id))

    async def forget(self, label: str) -> TaskInfo:
        """Forget a label and all its examples; returns the task's new state."""
        return await self.client._call(_calls.forget(self.id, label))

    async def delete(self) -> None:
        """Delete the task and everything it stored."""
        await self.client._call(_calls.delete(self.id))

    def __repr__(self) -> str:
        return f"AsyncTask({self.id!r})"
