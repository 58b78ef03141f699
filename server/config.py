"""Server configuration: one pydantic-settings class, environment prefix ``METANET_``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CHECKPOINT = Path("checkpoints/omniglot-standard.safetensors")


class ServerSettings(BaseSettings):
    """Everything the server reads at start-up; each field is also ``METANET_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="METANET_", extra="ignore")

    # Where and what to serve.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1024, le=65535)
    data_dir: Path = Path("data")
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
    cache_bytes: int = Field(2 * 1024**3, ge=0, description="per-worker budget of the task-memory LRU cache")
    # From benchmarks/server_bench.py: dense attention loses accuracy as a task grows past the 20-way
    # tasks the model was trained on, while top-16 keeps it (and is faster from a few hundred examples).
    topk_min_examples: int = Field(
        32, ge=1, description="tasks with at least this many examples use FAISS top-k attention"
    )
    topk_neighbors: int = Field(16, ge=1, description="k of top-k attention")
    # One thread: this model's per-query ops are small, and on a CPU shared with the HTTP process (or
    # anything else) more intra-op threads stall each other (benchmarks/server_bench.py, docs/SERVER.md).
    torch_threads: int = Field(1, ge=1, description="intra-op threads per inference worker")
    normalize_polarity: bool = True

    # Limits of the HTTP API (docs/SERVER.md, "API").
    max_body_bytes: int = Field(16 * 1024**2, ge=1)
    max_images_per_request: int = Field(256, ge=1)
    max_image_side: int = Field(4096, ge=1, description="pixels per side of a decoded image")
    max_examples_per_task: int = Field(10_000, ge=1)
    max_label_length: int = Field(128, ge=1)
    task_id_pattern: str = r"^[A-Za-z0-9._-]{1,128}$"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "tasks.sqlite3"

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
