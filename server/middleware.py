"""ASGI middleware: the checks of task routes before their work (API key, request rate, admission to the
inference queue, body size), and per-route metrics with an access log."""

from __future__ import annotations

import logging
import re
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.auth import KeyRing
from server.dispatch import Dispatcher
from server.errors import service_error_response
from server.protocol import PayloadTooLarge, ServiceError

logger = logging.getLogger("metanet.http")

_ROUTES = [
    (re.compile(r"^/tasks/[^/]+/support$"), "/tasks/{task_id}/support"),
    (re.compile(r"^/tasks/[^/]+/classify$"), "/tasks/{task_id}/classify"),
    (re.compile(r"^/tasks/[^/]+/export$"), "/tasks/{task_id}/export"),
    (re.compile(r"^/tasks/[^/]+/import$"), "/tasks/{task_id}/import"),
    (re.compile(r"^/tasks/[^/]+/labels/.+$"), "/tasks/{task_id}/labels/{label}"),
    (re.compile(r"^/tasks/[^/]+/labels$"), "/tasks/{task_id}/labels"),
    (re.compile(r"^/tasks/[^/]+$"), "/tasks/{task_id}"),
    (re.compile(r"^/tasks$"), "/tasks"),
    (re.compile(r"^/ui(/.*)?$"), "/ui"),
]


def route_template(path: str) -> str:
    """The route a path belongs to, with bounded cardinality for metric labels."""
    for pattern, template in _ROUTES:
        if pattern.match(path):
            return template
    return path if path in ("/", "/health", "/metrics", "/docs", "/openapi.json", "/info") else "other"


class GuardMiddleware:
    """The checks of a ``/tasks`` request that come before its work. From the headers, before the body is
    read: the bearer key (401; the tenant goes to ``request.state.tenant``, the time to
    ``request.state.arrived``: a request's deadline counts from there), the tenant's request rate
    (429 ``rate_limited``), for work for the inference queue whether it could start within the deadline
    (429 ``over_share`` or 503 ``overloaded``), and a declared Content-Length over ``max_body_bytes``
    (413). As the body streams in: its bytes, against the same limit (the one check of it)."""

    def __init__(self, app: ASGIApp, keys: KeyRing, dispatcher: Dispatcher, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.dispatcher = dispatcher
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/tasks"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            tenant = self.keys.tenant_for(headers.get(b"authorization", b"").decode("latin-1"))
            state = scope.setdefault("state", {})
            state["tenant"], state["arrived"] = tenant, time.monotonic()
            queued = scope["method"] == "POST" and scope["path"].endswith(("/support", "/classify"))
            self.dispatcher.refuse_early(tenant, queued=queued)
            length = headers.get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.max_body_bytes:
                raise self._too_large()
        except ServiceError as exc:
            await service_error_response(exc)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                # Raised inside the route, while it reads the body: FastAPI passes HTTP exceptions on
                # (anything else there becomes a 400), and the error handlers answer it as JSON.
                raise HTTPException(413, self._too_large().message)
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over max_body_bytes={self.max_body_bytes}")


class ObservabilityMiddleware:
    """Counts and times every request by route and logs one line per request (never bodies)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            method, route = scope["method"], route_template(scope["path"])
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_SECONDS.labels(method, route).observe(elapsed)
            if route not in ("/health", "/metrics"):
                tenant = scope.get("state", {}).get("tenant", "-")
                logger.info("%s %s %d %.1fms tenant=%s", method, scope["path"], status, elapsed * 1e3, tenant)
