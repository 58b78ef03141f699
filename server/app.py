"""Assembles the LitServe server: inference workers, HTTP routes, auth, errors and metrics."""

from __future__ import annotations

import logging
import os
import signal

import litserve as ls
import torch
from litserve.utils import WorkerSetupStatus

from server.auth import KeyRing
from server.config import ServerSettings
from server.errors import install_error_handlers
from server.middleware import GuardMiddleware, ObservabilityMiddleware
from server.routes import service_router, task_router
from server.store import SQLiteTaskStore
from server.worker import MetaNetAPI

logger = logging.getLogger("metanet.server")

DESCRIPTION = """Teach visual concepts from one or a few labeled images and classify new images against
them, with Meta Networks (Munkhdalai & Yu, ICML 2017). Images are base64-encoded image files of any
format, size and polarity. Errors are `{"error": {"code", "message"}}`. When API keys are configured,
`/tasks` routes need `Authorization: Bearer <key>` and each tenant sees only its own tasks."""


def accelerator(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_server(settings: ServerSettings, keys: KeyRing) -> ls.LitServer:
    api = MetaNetAPI(settings)
    server = ls.LitServer(
        api,
        accelerator=accelerator(settings.device),
        devices=1,
        workers_per_device=settings.workers,
        timeout=settings.request_timeout,
        model_metadata={"checkpoint": str(settings.checkpoint)},
    )
    store = SQLiteTaskStore(settings.store_path)
    app = server.app
    app.title, app.version, app.description = "MetaNet one-shot concept server", "0.1.0", DESCRIPTION
    # LitServe's own /health answers plain text; ours answers JSON and also checks the store.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != server.healthcheck_path]

    def workers_ready() -> bool:
        status = server.workers_setup_status
        return bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())

    app.include_router(service_router(store, workers_ready))
    app.include_router(task_router(settings, api.spec, store))
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, keys=keys, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(ObservabilityMiddleware)
    return server


def _shutdown_on_sigterm() -> None:
    """SIGTERM to the main process shuts the whole server down, the way Ctrl+C does (LitServe only
    handles KeyboardInterrupt; without this its HTTP and worker processes would be orphaned)."""
    main = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main:  # a forked child that kept this handler: die as usual
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def serve(settings: ServerSettings) -> None:
    """Load keys, pick the listening address and run until interrupted."""
    keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
    host = settings.host
    if keys.enabled:
        logger.info("API keys configured for %d tenant(s)", len(keys.tenants))
    elif host != "127.0.0.1":
        logger.warning("no API keys configured: listening on 127.0.0.1 only (not %s)", host)
        host = "127.0.0.1"
    else:
        logger.warning("no API keys configured: open access, listening on 127.0.0.1 only")
    if settings.onnx_path is not None:  # export once here, not in every worker
        from model.onnx_backend import ensure_export

        ensure_export(settings.checkpoint, settings.onnx_path)
    server = build_server(settings, keys)
    _shutdown_on_sigterm()
    logger.info(
        "serving %s with %d worker(s), data in %s", settings.checkpoint, settings.workers, settings.data_dir
    )
    server.run(
        host=host,
        port=settings.port,
        num_api_servers=settings.api_servers,
        log_level=settings.log_level,
        generate_client_file=False,
        access_log=False,
    )
