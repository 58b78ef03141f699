"""Assembles the LitServe server: inference workers, HTTP routes, auth, errors and metrics."""

from __future__ import annotations

import gc
import logging
import os
import signal

import litserve as ls
import torch

from model.checkpoint import read_metadata
from model.config import MetaNetConfig
from server.admission import Admission
from server.auth import KeyRing
from server.config import ConfigError, ServerSettings
from server.derived import fingerprint
from server.dispatch import Dispatcher
from server.errors import install_error_handlers
from server.litserve_adapter import DirectQueueServer, WorkerReadiness, remove_builtin_routes, set_gzip_level
from server.middleware import GuardMiddleware, ObservabilityMiddleware
from server.quotas import RateLimiter, TenantQuotas
from server.routes import mount_ui, service_router, task_router
from server.schemas import Index, Limits, ModelInfo, Queue, ServerInfo, TenantQuotaInfo
from server.store import open_store
from server.worker import MetaNetAPI

logger = logging.getLogger("metanet.server")

TITLE, VERSION = "MetaNet one-shot concept server", "0.1.0"
DESCRIPTION = """Teach visual concepts from one or a few labeled images and classify new images against
them, with Meta Networks (Munkhdalai & Yu, ICML 2017). Images are base64-encoded image files of any
format, size and polarity. Errors are `{"error": {"code", "message"}}`. When API keys are configured,
`/tasks` routes need `Authorization: Bearer <key>` and each tenant sees only its own tasks."""


def accelerator(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_info(settings: ServerSettings) -> ModelInfo:
    """What the server needs to know of the checkpoint, read from its metadata (no weights loaded);
    raises ConfigError if the settings ask for more than the model can do."""
    config = MetaNetConfig.from_dict(read_metadata(settings.checkpoint)["config"])
    if settings.max_examples_per_task > config.max_labels:
        raise ConfigError(
            f"max_examples_per_task={settings.max_examples_per_task} exceeds the {config.max_labels} labels "
            f"a task can hold with {settings.checkpoint} (every example may carry a new label): "
            f"set METANET_MAX_EXAMPLES_PER_TASK to at most {config.max_labels}"
        )
    return ModelInfo(
        checkpoint=str(settings.checkpoint),
        sha256=fingerprint(settings.checkpoint),
        image_size=config.image_size,
        max_labels=config.max_labels,
    )


def build_server(settings: ServerSettings, keys: KeyRing) -> ls.LitServer:
    model = model_info(settings)
    quotas = TenantQuotas.of(settings.tenant_quota, keys.options)
    api = MetaNetAPI(settings, model.image_size, quotas)
    server = DirectQueueServer(
        api,
        accelerator=accelerator(settings.device),
        devices=1,
        workers_per_device=settings.workers,
        timeout=settings.request_timeout,
    )
    set_gzip_level(server, settings.gzip_level)
    # Creates or migrates the schema before any worker starts.
    store = open_store(
        settings.store_url, (model.image_size, model.image_size), idempotency_ttl=settings.idempotency_ttl
    )
    app = server.app
    app.title, app.version, app.description = TITLE, VERSION, DESCRIPTION
    # LitServe's own /, /health and /info answer untyped plain text; ours answer JSON.
    remove_builtin_routes(server)
    info = ServerInfo(
        model=model,
        limits=Limits.of(settings),
        queue=Queue(queue_deadline=settings.queue_deadline, queue_quantum=settings.queue_quantum),
        tenant_quotas=TenantQuotaInfo.of(settings),
        idempotency_ttl=settings.idempotency_ttl,
        api_keys=keys.enabled,
    )
    index = Index(name=TITLE, version=VERSION)
    # Each HTTP process gets its own copy (they fork from here) and admits the work it sends.
    s = settings
    admission = Admission(s.queue_deadline, s.queue_quantum, s.queue_initial_rate, quotas.share)
    limiter = RateLimiter(quotas, processes=s.api_servers or s.workers)
    dispatcher = Dispatcher(api.spec, admission, limiter, s.build_wait, s.max_images_per_request)
    app.include_router(service_router(store, WorkerReadiness(server), index, info))
    app.include_router(task_router(settings, dispatcher, store, model, quotas))
    mount_ui(app)
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, keys=keys, dispatcher=dispatcher, max_body_bytes=s.max_body_bytes)
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
    # Everything loaded so far (torch, the app) lives as long as the processes: kept out of the cyclic
    # garbage collector's full passes, which would otherwise walk all of it in every HTTP process (a
    # pause in the event loop) and touch its pages after the fork.
    gc.collect()
    gc.freeze()
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
