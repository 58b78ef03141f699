"""The latency summary every benchmark reports: call durations in seconds -> milliseconds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """How many calls, and their p50 / p95 / p99 / mean / max in milliseconds (None when there are none)."""
    if not len(seconds):
        return {"calls": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    return {
        "calls": len(ms),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }
