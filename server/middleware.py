"""ASGI middleware: header checks for task routes (API key, declared body size), and per-route metrics
with an access log."""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.auth import KeyRing
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
    """Checks what the headers of a ``/tasks`` request already tell, before its body is read: the bearer
    key (401; the tenant goes to ``request.state.tenant``) and a declared Content-Length over the limit
    (413). Bodies sent without a length are counted by the routes' own ``max_body_size``."""

    def __init__(self, app: ASGIApp, keys: KeyRing, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/tasks"):
            headers = dict(scope["headers"])
            try:
                tenant = self.keys.tenant_for(headers.get(b"authorization", b"").decode("latin-1"))
                length = headers.get(b"content-length", b"0")
                if length.isdigit() and int(length) > self.max_body_bytes:
                    raise PayloadTooLarge(f"request body over {self.max_body_bytes} bytes")
            except ServiceError as exc:
                await service_error_response(exc)(scope, receive, send)
                return
            scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


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
