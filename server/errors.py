"""The HTTP edge of the service's errors: each ``ServiceError`` kind's status (one table), the JSON error
body ``{"error": {"code", "message"}}`` of every failure, and the OpenAPI description of them
(docs/API.md, "Errors")."""

from __future__ import annotations

import logging
import math
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from server import metrics
from server.protocol import (
    EmptyTask,
    ExampleLimit,
    IdempotencyKeyReused,
    ImageTooLarge,
    InvalidImage,
    LabelNotFound,
    ModelMismatch,
    NotReady,
    Overloaded,
    OverShare,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    ServiceError,
    StoreOutcomeUnknown,
    StoreUnavailable,
    StoreUnreachable,
    TaskBuilding,
    TaskExists,
    TaskNotFound,
    TaskTooLarge,
    TooManyImages,
    Unauthorized,
    WorkerFailed,
    WorkerTimeout,
)

logger = logging.getLogger("metanet.server")

HTTP_STATUS: dict[type[ServiceError], int] = {
    InvalidImage: 400,
    Unauthorized: 401,
    TaskNotFound: 404,
    LabelNotFound: 404,
    EmptyTask: 409,
    TaskExists: 409,
    ModelMismatch: 409,
    IdempotencyKeyReused: 409,
    PayloadTooLarge: 413,
    ImageTooLarge: 413,
    TooManyImages: 413,
    ExampleLimit: 413,
    OverShare: 429,
    RateLimited: 429,
    WorkerFailed: 500,
    NotReady: 503,
    StoreUnreachable: 503,
    TaskBuilding: 503,
    StoreUnavailable: 503,
    StoreOutcomeUnknown: 503,
    Overloaded: 503,
    WorkerTimeout: 504,
    TaskTooLarge: 507,
    QuotaExceeded: 507,
}
"""The status of each kind of ServiceError; the one place that decides it."""

# Errors raised by the framework rather than by the service: route not found, method not allowed, a
# body over the routes' streamed size limit, a request the schema rejects, anything unexpected.
FRAMEWORK_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "validation_error",
    500: "internal_error",
}


def status_of(error: ServiceError) -> int:
    return HTTP_STATUS[type(error)]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*kinds: type[ServiceError], statuses: tuple[int, ...] = ()) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the given ServiceError kinds and framework statuses, with their codes."""
    codes: dict[int, list[str]] = {}
    for kind in kinds:
        codes.setdefault(HTTP_STATUS[kind], []).append(kind.code)
    for status in statuses:
        codes.setdefault(status, []).append(FRAMEWORK_CODES[status])
    return {
        status: {
            "model": ErrorResponse,
            "description": HTTPStatus(status).phrase
            + ": "
            + ", ".join(f"`{c}`" for c in dict.fromkeys(found)),
        }
        for status, found in sorted(codes.items())
    }


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


REFUSALS = (Overloaded, OverShare, RateLimited, QuotaExceeded)
"""Requests turned away before any work was done (counted in ``metanet_refusals_total``)."""


def service_error_response(error: ServiceError) -> JSONResponse:
    if isinstance(error, REFUSALS):
        metrics.REFUSALS.labels(error.code).inc()
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return error_response(status_of(error), error.code, error.message, headers or None)


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return service_error_response(exc)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the methods of the first route
    that matches the path, and GET and DELETE of ``/tasks/{task_id}`` are two routes)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request)
        message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
    code = FRAMEWORK_CODES.get(status, "bad_request" if status < 500 else "internal_error")
    return error_response(status, code, message, headers or None)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # Name the field and the problem, never echo the input (it may be megabytes of base64).
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return error_response(422, "validation_error", "; ".join(parts) or "invalid request")


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error: %s", type(exc).__name__)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app returns the JSON error body."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
