"""Prometheus metrics. Every server process (HTTP and inference workers) records into
``PROMETHEUS_MULTIPROC_DIR`` (set by the CLI before this module is imported); ``/metrics`` aggregates
them and adds the store's counts, read at scrape time."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.protocol import StoreUnavailable
from server.store import TaskStore

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter("metanet_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "metanet_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
CACHE_REFRESHES = Counter(
    "metanet_memory_cache_lookups_total",
    "Task-memory lookups and refreshes: hit, extend (new examples only), build (from every example) or "
    "load (from its saved file); extends and builds count inline ones and build jobs alike",
    ["result"],
)
# Per worker (a "pid" label): each worker has its own cache and budget.
CACHE_BYTES = Gauge("metanet_memory_cache_bytes", "Bytes of task memory cached", multiprocess_mode="liveall")
CACHE_TASKS = Gauge("metanet_memory_cache_tasks", "Tasks with cached memory", multiprocess_mode="liveall")
CACHE_EVICTIONS = Counter(
    "metanet_memory_cache_evictions_total",
    "Task memories evicted from a worker's cache to stay within its byte budget",
    ["worker"],
)
BUILDS_IN_PROGRESS = Gauge(
    "metanet_memory_builds_in_progress",
    "Task-memory build jobs queued or running on a worker's build thread",
    multiprocess_mode="liveall",
)
BUILD_SECONDS = Histogram(
    "metanet_memory_build_seconds",
    "Duration of task-memory build jobs: build (every example) or extend (examples added since)",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
ATTENTION = Counter(
    "metanet_classified_images_total", "Images classified, by attention: dense or FAISS top-k", ["attention"]
)
BATCH_SIZE = Histogram(
    "metanet_worker_batch_size", "Work items per dynamic batch", buckets=(1, 2, 4, 8, 16, 32, 64)
)
INFERENCE_SECONDS = Histogram(
    "metanet_worker_seconds", "Worker time per batch of an operation", ["op"], buckets=_LATENCY_BUCKETS
)

# Admission and fairness (server/admission.py).
QUEUE_IMAGES = Gauge(
    "metanet_queue_images",
    "Images sent to the inference workers and not yet answered (summed over HTTP processes)",
    multiprocess_mode="livesum",
)
QUEUE_RATE = Gauge(
    "metanet_queue_rate_images_per_second",
    "Images per second the inference workers answer, as each HTTP process measures it",
    multiprocess_mode="liveall",
)
WORKER_QUEUE_IMAGES = Gauge(
    "metanet_worker_queue_images",
    "Images a worker holds in its fair queue, not yet started",
    multiprocess_mode="liveall",
)
REFUSALS = Counter(
    "metanet_refusals_total",
    "Requests refused before any work: overloaded and expired (503), over_share and rate_limited (429), "
    "quota_exceeded (507)",
    ["code"],
)
EXPIRED = Counter(
    "metanet_worker_expired_total", "Work items a worker refused because they did not start by their deadline"
)


class StoreCollector(Collector):
    """Tenants, tasks, examples and images stored, counted when scraped."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self.store.counts()
        except StoreUnavailable:  # the rest of the page still answers; /health reports the outage
            return
        yield GaugeMetricFamily("metanet_store_tenants", "Tenants in the task store", value=counts.tenants)
        yield GaugeMetricFamily("metanet_store_tasks", "Tasks in the task store", value=counts.tasks)
        yield GaugeMetricFamily(
            "metanet_store_examples", "Support examples in the task store", value=counts.examples
        )
        yield GaugeMetricFamily(
            "metanet_store_images", "Distinct images in the task store (once per tenant)", value=counts.images
        )


def exposition(store: TaskStore) -> tuple[bytes, str]:
    """The metrics page of every server process, plus the store's counts."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # a single process (tests, embedding)
        return generate_latest(REGISTRY) + generate_latest(registry), CONTENT_TYPE_LATEST
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
