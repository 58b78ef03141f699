"""The project's HTTP API built from LitServe's public API only, for benchmarks/litserve_public.py.

One ``LitAPI`` per worker route (``POST /tasks/{task_id}/support`` and ``.../classify``) in one
``LitServer``, batched by LitServe's own loop (``max_batch_size``, ``batch_timeout``), with the project's
worker code as their domain: each LitAPI's ``setup`` loads ``server.worker.MetaNetAPI`` as a plain object
(its model, task memories and store) and its ``predict`` calls that object's ``predict`` on the batch.
What the public API offers for the rest is used as far as it goes:

- the path parameter and the tenant reach the worker through the type of ``decode_request``'s argument:
  a FastAPI dependency (``Annotated[dict, Depends(...)]``) that reads the path, the tenant and the body
  in the HTTP process and returns the payload LitServe queues;
- the tenant comes from the bearer key in a middleware given to ``LitServer(middlewares=...)``;
- a failed item is an error value through ``predict`` and ``encode_response`` answers it with a
  ``JSONResponse`` of its status (and ``Retry-After``); with header ``X-Errors: raise`` it raises an
  ``HTTPException`` instead, LitServe's documented way;
- the routes that need no worker (GET, DELETE, export, import) are the project's own, added to
  ``LitServer.app``; LitServe's ``/``, ``/health`` and ``/info`` stay (they are registered first).

Nothing here is imported by the server; ``python -m benchmarks.litserve_public_server --port N
--data-dir DIR`` serves it with the ``METANET_*`` settings of the environment (and, for ``/metrics``,
``PROMETHEUS_MULTIPROC_DIR`` set to an empty folder).
"""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.app import model_info
from server.auth import KeyRing
from server.config import ServerSettings
from server.errors import install_error_handlers, service_error_response, status_of
from server.images import ImageDecoder
from server.protocol import ClassifyWork, ServiceError, SupportResult, SupportWork, TooManyImages, Work
from server.quotas import TenantQuotas
from server.routes import IdempotencyKey, TaskId, service_router, task_router
from server.schemas import ClassifyResponse, SupportResponse, request_models
from server.store import open_store
from server.worker import MetaNetAPI

SETTINGS = ServerSettings()  # the METANET_* environment, the same in every process of this server
SupportRequest, ClassifyRequest = request_models(SETTINGS)


def _check_count(n: int) -> None:
    if n > SETTINGS.max_images_per_request:
        raise TooManyImages(f"{n} images in one request; the limit is {SETTINGS.max_images_per_request}")


def support_payload(
    request: Request,
    task_id: TaskId,
    body: Annotated[SupportRequest, Body()],  # type: ignore[valid-type]
    idempotency_key: IdempotencyKey = None,
) -> dict:
    """What LitServe queues for a support call: the body with the path's task and the caller's tenant."""
    _check_count(len(body.examples))
    return {
        "tenant": request.state.tenant,
        "task_id": task_id,
        "images": [e.image for e in body.examples],
        "labels": [e.label for e in body.examples],
        "idempotency_key": idempotency_key,
        "raise": request.headers.get("x-errors") == "raise",
    }


def classify_payload(
    request: Request,
    task_id: TaskId,
    body: Annotated[ClassifyRequest, Body()],  # type: ignore[valid-type]
) -> dict:
    _check_count(len(body.images))
    return {
        "tenant": request.state.tenant,
        "task_id": task_id,
        "images": body.images,
        "options": (body.top_k, body.reject == "on", body.novelty_threshold),
        "raise": request.headers.get("x-errors") == "raise",
    }


@dataclass
class Item:
    """One request in a worker: its payload, then its work (or the error that stopped it), then its
    outcome and the size of the batch it ran in."""

    payload: dict
    work: Work | ServiceError
    outcome: Any = None
    batch: int = 0


class WorkAPI(ls.LitAPI):
    """A worker route: decode the payload's images in the worker, run the batch through the project's
    worker code, answer each item on its own."""

    def __init__(
        self, settings: ServerSettings, image_size: int, quotas: TenantQuotas, api_path: str
    ) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path=api_path
        )
        self.settings, self.image_size, self.quotas = settings, image_size, quotas

    def setup(self, device: str) -> None:
        self.worker = MetaNetAPI(self.settings, self.image_size, self.quotas)  # a plain object: never run
        self.worker.setup(device)  # by LitServe, so the adapter's loop in it is never used
        s = self.settings
        self.decoder = ImageDecoder(s.max_image_side, self.image_size, s.normalize_polarity)

    def decode_images(self, images: list[str], where: str) -> np.ndarray:
        return np.stack([self.decoder.decode(image, where.format(i)) for i, image in enumerate(images)])

    def work(self, payload: dict) -> Work:
        raise NotImplementedError

    def decode_request(self, request: dict) -> Item:
        try:
            return Item(request, self.work(request))
        except ServiceError as exc:
            return Item(request, exc)

    def batch(self, inputs: list[Item]) -> list[Item]:
        return inputs

    def unbatch(self, outputs: list[Item]) -> list[Item]:
        return outputs

    def predict(self, items: list[Item]) -> list[Item]:
        runnable = [item for item in items if not isinstance(item.work, ServiceError)]
        for item, outcome in zip(
            runnable, self.worker.predict([item.work for item in runnable]), strict=True
        ):
            item.outcome = outcome
        for item in items:
            if isinstance(item.work, ServiceError):
                item.outcome = item.work
            item.batch = len(items)
        return items

    def answer(self, item: Item) -> JSONResponse:
        raise NotImplementedError

    def encode_response(self, item: Item) -> JSONResponse:
        outcome = item.outcome
        if isinstance(outcome, ServiceError):
            if item.payload["raise"]:
                headers = {"Retry-After": str(int(outcome.retry_after))} if outcome.retry_after else None
                raise HTTPException(status_of(outcome), outcome.message, headers)
            response = service_error_response(outcome)
        else:
            response = self.answer(item)
        response.headers["X-Batch-Size"] = str(item.batch)
        return response


class SupportAPI(WorkAPI):
    def work(self, payload: dict) -> Work:
        images = self.decode_images(payload["images"], "examples[{}].image")
        p = payload
        return SupportWork(p["tenant"], p["task_id"], images, tuple(p["labels"]), p["idempotency_key"])

    def decode_request(self, request: Annotated[dict, Depends(support_payload)]) -> Item:
        return super().decode_request(request)

    def answer(self, item: Item) -> JSONResponse:
        result: SupportResult = item.outcome
        body = SupportResponse(
            task_id=item.payload["task_id"],
            version=result.version,
            num_examples=result.num_examples,
            labels=result.labels,
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return JSONResponse(body.model_dump(mode="json"), headers=headers)


class ClassifyAPI(WorkAPI):
    def work(self, payload: dict) -> Work:
        images = self.decode_images(payload["images"], "images[{}]")
        return ClassifyWork(payload["tenant"], payload["task_id"], images, *payload["options"])

    def decode_request(self, request: Annotated[dict, Depends(classify_payload)]) -> Item:
        return super().decode_request(request)

    def answer(self, item: Item) -> JSONResponse:
        return JSONResponse(
            ClassifyResponse.of(item.payload["task_id"], item.outcome).model_dump(mode="json")
        )


class TenantMiddleware:
    """The bearer key of a ``/tasks`` request to ``request.state.tenant`` (401 without a valid one)."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/tasks"):
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            try:
                scope.setdefault("state", {})["tenant"] = self.keys.tenant_for(authorization)
            except ServiceError as exc:
                await service_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_server(settings: ServerSettings) -> ls.LitServer:
    keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
    model = model_info(settings)
    quotas = TenantQuotas.of(settings.tenant_quota, keys.options)
    apis = [
        SupportAPI(settings, model.image_size, quotas, "/tasks/{task_id}/support"),
        ClassifyAPI(settings, model.image_size, quotas, "/tasks/{task_id}/classify"),
    ]
    server = ls.LitServer(
        apis,
        accelerator="cpu",
        devices=1,
        workers_per_device=settings.workers,
        timeout=settings.request_timeout,
        middlewares=[(TenantMiddleware, {"keys": keys})],
    )
    store = open_store(settings.store_url, (model.image_size,) * 2, idempotency_ttl=settings.idempotency_ttl)
    # The project's store routes; its own support and classify (which need the server's worker queue)
    # are left out: LitServe's LitAPI routes serve those paths.
    store_routes = task_router(settings, None, store, model, quotas)  # type: ignore[arg-type]
    store_routes.routes = [r for r in store_routes.routes if not r.path.endswith(("/support", "/classify"))]
    server.app.include_router(store_routes)
    # Its /, /health and /info come after LitServe's own, which answer those paths; /metrics is served.
    server.app.include_router(service_router(store, lambda: True, None, None))  # type: ignore[arg-type]
    install_error_handlers(server.app)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=SETTINGS.checkpoint)
    args = parser.parse_args()
    settings = SETTINGS.model_copy(update={"data_dir": args.data_dir, "checkpoint": args.checkpoint})
    settings.configure_logging()
    if settings.onnx_path is not None:
        from model.onnx_backend import ensure_export

        ensure_export(settings.checkpoint, settings.onnx_path)
    server = build_server(settings)
    server.run(
        host="127.0.0.1",
        port=args.port,
        log_level=settings.log_level,
        generate_client_file=False,
        access_log=False,
    )


if __name__ == "__main__":
    main()
