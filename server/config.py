"""Server configuration: one pydantic-settings class, environment prefix ``METANET_``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.checkpoint import DEFAULT_CHECKPOINT
from model.compact import Storage, StoragePolicy, fastest_small_storage
from server.quotas import TenantQuota
from server.store.base import IDEMPOTENCY_TTL

# The API's fixed formats; the limits are ServerSettings fields below. Schemas, routes, auth and docs
# import these (docs/API.md).
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
"""Task ids (path segment) and tenant names (keys file)."""
LABEL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
"""Labels: any characters but control characters (their length is ``max_label_length``)."""
IMAGE_PATTERN = r"^(data:[^,]*,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
"""Images: standard base64 with padding, optionally as a data URL (``data:image/png;base64,...``)."""


class ConfigError(ValueError):
    """Settings that cannot work together (or with the checkpoint); the message says what to change."""


class ServerSettings(BaseSettings):
    """Everything the server reads at start-up; each field is also ``METANET_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="METANET_", extra="ignore")

    # Where and what to serve.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1024, le=65535)
    data_dir: Path = Path("data")
    store: str | None = Field(
        None,
        description="task store URL: sqlite:///path (default: <data_dir>/tasks.sqlite3) or postgresql://...",
    )
    checkpoint: Path = DEFAULT_CHECKPOINT
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    # Query side: the model in torch, or its ONNX export on ONNX Runtime (exported into onnx_dir at the
    # first start with a checkpoint; CUDA provider with onnxruntime-gpu on a GPU). See docs/SERVER.md.
    backend: Literal["torch", "onnxruntime"] = "onnxruntime"
    onnx_dir: Path = Field(Path(".cache/onnx"), description="ONNX exports, one per checkpoint contents")
    workers: int = Field(1, ge=1)
    api_servers: int | None = Field(None, ge=1, description="HTTP processes; default: one per worker")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # Auth: "tenant:key" pairs, comma separated, and/or a file with one pair per line.
    api_keys: str = ""
    api_keys_file: Path | None = None

    # Inference.
    max_batch_size: int = Field(16, ge=1, description="requests per dynamic batch in a worker")
    batch_timeout: float = Field(0.0, ge=0, description="extra seconds a worker waits to fill a batch")
    request_timeout: float = Field(120.0, gt=0, description="seconds a request may wait in the queue")
    gzip_level: int = Field(
        4, ge=1, le=9, description="zlib level of gzip answers (clients that accept gzip, bodies over 1 kB)"
    )
    cache_bytes: int = Field(2 * 1024**3, ge=0, description="per-worker budget of the task-memory LRU cache")
    # Task memory (docs/SERVER.md, "Task memory at scale").
    # Fast weights by task size (docs/SERVER.md, "Storage tiers"): tasks of fewer than compact_from_examples
    # examples (dense attention reads every row for every query) keep small_memory_storage, larger ones
    # memory_storage. On a CPU with the int8 read kernel int8 rows read as fast as float32 ones, at a
    # quarter of the bytes; elsewhere float32 rows read faster.
    memory_storage: Storage = Field(
        "int8", description="fast weights of large tasks: int8, float16, bfloat16 or float32"
    )
    small_memory_storage: Storage | Literal["auto"] = Field(
        "auto",
        description="fast weights of small tasks; auto: int8 on a CPU with the int8 read kernel, or float32",
    )
    compact_from_examples: int = Field(
        32, ge=1, description="tasks this large keep memory_storage, smaller ones small_memory_storage"
    )
    build_chunk: int = Field(32, ge=1, description="support examples per vectorized pass of a build")
    build_inline_examples: int = Field(
        8, ge=0, description="extends of at most this many examples run inline, larger ones as build jobs"
    )
    derived_memory: bool = Field(True, description="save big tasks' derived memory under <data dir>/derived")
    derived_min_examples: int = Field(64, ge=1, description="tasks this large have their memory saved")
    build_wait: float = Field(
        60.0, ge=0, description="seconds a classify waits for its task's build before a 503 with Retry-After"
    )
    # From benchmarks/server_bench.py: dense attention loses accuracy as a task grows past the 20-way
    # tasks the model was trained on, while top-16 keeps it (and is faster from a few hundred examples).
    topk_min_examples: int = Field(
        32, ge=1, description="tasks with at least this many examples use FAISS top-k attention"
    )
    topk_neighbors: int = Field(16, ge=1, description="k of top-k attention")
    # One thread: this model's per-query ops are small, and on a CPU shared with the HTTP process (or
    # anything else) more intra-op threads stall each other (benchmarks/server_bench.py, docs/SERVER.md).
    torch_threads: int = Field(1, ge=1, description="intra-op threads per inference worker")
    # Open set: a query whose novelty (model/novelty.py) is over the threshold is "none of these".
    novelty_threshold: float | None = Field(
        None, ge=0, le=2, description="open-set threshold; default: the checkpoint's calibration"
    )
    normalize_polarity: bool = True
    idempotency_ttl: float = Field(
        IDEMPOTENCY_TTL, gt=0, description="seconds a support call's Idempotency-Key is remembered"
    )

    # Admission and fairness (docs/SERVER.md, "Admission and fairness"); GET /info publishes them.
    queue_deadline: float = Field(
        5.0, gt=0, description="seconds within which a classify is answered, a support started, or refused"
    )
    queue_quantum: int = Field(
        32, ge=1, description="images a tenant is served per turn; classify requests run in parts this size"
    )
    queue_initial_rate: float = Field(
        400.0, gt=0, description="images/s the workers are assumed to answer until measured"
    )

    # Per-tenant quotas (docs/API.md, "Quotas"): defaults; a tenant's own are options in the keys file.
    tenant_max_tasks: int = Field(100_000, ge=1, description="tasks a tenant may hold")
    tenant_max_examples: int = Field(10_000_000, ge=1, description="support examples a tenant may hold")
    tenant_max_stored_bytes: int = Field(
        64 * 1024**3, ge=1, description="bytes of a tenant's stored images (each distinct image once)"
    )
    tenant_requests_per_second: float = Field(1000.0, gt=0, description="/tasks requests per second")
    tenant_images_per_second: float = Field(
        100_000.0, gt=0, description="images per second in support and classify requests"
    )
    tenant_share: float = Field(1.0, gt=0, description="a tenant's weight in the inference queue")

    # Limits of the HTTP API (docs/API.md, "Limits"); GET /info publishes them.
    max_body_bytes: int = Field(16 * 1024**2, ge=1, description="bytes of a request body")
    max_images_per_request: int = Field(256, ge=1, description="images (or examples) in one request")
    max_image_side: int = Field(4096, ge=1, description="pixels per side of a decoded image")
    max_examples_per_task: int = Field(
        10_000, ge=1, description="examples a task may hold; at most the model's label capacity"
    )
    max_label_length: int = Field(128, ge=1, description="characters of a label")

    @property
    def store_url(self) -> str:
        """``store``, or the embedded SQLite store in ``data_dir``."""
        return self.store or f"sqlite:///{self.data_dir / 'tasks.sqlite3'}"

    def storage_policy(self, device: str) -> StoragePolicy:
        """How each task's fast weights are stored on ``device``, by the task's size."""
        small = self.small_memory_storage
        if small == "auto":
            small = fastest_small_storage(device)
        return StoragePolicy(self.memory_storage, small, self.compact_from_examples)

    @property
    def tenant_quota(self) -> TenantQuota:
        """Every tenant's quota unless the keys file gives it its own."""
        return TenantQuota(
            self.tenant_max_tasks,
            self.tenant_max_examples,
            self.tenant_max_stored_bytes,
            self.tenant_requests_per_second,
            self.tenant_images_per_second,
            self.tenant_share,
        )

    @property
    def derived_dir(self) -> Path:
        return self.data_dir / "derived"

    @property
    def onnx_path(self) -> Path | None:
        """The checkpoint's ONNX export (named by its contents) for the onnxruntime backend."""
        if self.backend != "onnxruntime":
            return None
        from model.onnx_backend import default_onnx_path

        return default_onnx_path(self.checkpoint, self.onnx_dir)

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "prometheus"

    def configure_logging(self) -> None:
        """One log format for the server's processes (each spawned worker calls this too)."""
        logging.basicConfig(
            level=self.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        )
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
