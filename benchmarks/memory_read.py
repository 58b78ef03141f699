"""Reading a task memory, W* = a^T M, one thread as in a server worker: int8 rows by the CPU kernel
(model/csrc/int8_rows.cpp) against the same read as PyTorch operations, for the top-k read of a
large task (each query's k rows), and for the dense read of a small task (every row) beside float32
rows, the other storage small tasks can keep ("Storage tiers" in docs/SERVER.md).

    python -m benchmarks.memory_read        # top-k: 1,000 rows, k = 16; dense: 5, 20 and 31 rows
    python -m benchmarks.memory_read --examples 5000 --queries 1 256

The rows are random in the default checkpoint's layout (a read's cost does not depend on the
values); every call reads other rows or other attention, as different queries would. Prints
milliseconds per call (median) and writes benchmarks/results/memory_read.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from model import compact, cpu_kernels
from model.checkpoint import DEFAULT_CHECKPOINT
from model.compact import FastWeightRows
from model.inference import MetaNetPredictor

RESULTS = Path(__file__).resolve().parent / "results" / "memory_read.json"


@contextlib.contextmanager
def kernel(enabled: bool) -> Iterator[None]:
    """Reads of int8 rows by the kernel, or (enabled False) as PyTorch operations."""
    applies = compact._int8_kernel_applies
    if not enabled:
        compact._int8_kernel_applies = lambda weights: False
    try:
        yield
    finally:
        compact._int8_kernel_applies = applies


@torch.no_grad()
def read_ms(rows: FastWeightRows, weights: torch.Tensor, ids: torch.Tensor | None, use_kernel: bool) -> float:
    """Median milliseconds of ``rows.read(weights[i], ids[i])`` over calls 1.. (call 0 warms up)."""
    times = []
    with kernel(use_kernel):
        for i in range(len(weights)):
            started = time.perf_counter()
            rows.read(weights[i], None if ids is None else ids[i])
            times.append(time.perf_counter() - started)
    return float(np.median(times[1:]) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="rows of the top-k task")
    parser.add_argument("--neighbors", type=int, default=16, help="k: rows each query reads")
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 16, 256], help="queries per call")
    parser.add_argument("--dense", type=int, nargs="+", default=[5, 20, 31], help="rows of each small task")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not cpu_kernels.available():
        parser.error("the CPU kernels cannot be built on this machine (no C++ compiler?)")

    layout = MetaNetPredictor.load(DEFAULT_CHECKPOINT, "cpu").layout
    g = torch.Generator().manual_seed(0)
    calls = args.repeats + 1
    report: dict = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "coordinates": layout.num_coordinates,
        "topk": {"examples": args.examples, "neighbors": args.neighbors},
        "dense": {},
    }

    data = torch.randint(-127, 128, (args.examples, layout.num_coordinates), dtype=torch.int8, generator=g)
    scales = torch.rand(args.examples, layout.num_rows, generator=g) / 127
    rows = FastWeightRows.stored_as(layout, "int8", data, scales)
    print(f"top-k: {args.examples} int8 rows of {layout.num_coordinates} coordinates, k = {args.neighbors}")
    print(f"{'queries':>8} {'kernel ms':>10} {'pytorch ms':>11} {'speed-up':>9}")
    for q in args.queries:
        ids = torch.randint(0, args.examples, (calls, q, args.neighbors), generator=g)
        weights = torch.softmax(torch.randn(calls, q, args.neighbors, generator=g), -1)
        timing = {
            "kernel_ms": read_ms(rows, weights, ids, True),
            "pytorch_ms": read_ms(rows, weights, ids, False),
        }
        report["topk"][str(q)] = timing
        print(f"{q:>8} {timing['kernel_ms']:>10.2f} {timing['pytorch_ms']:>11.2f} ", end="")
        print(f"{timing['pytorch_ms'] / timing['kernel_ms']:>8.1f}x")

    print("\ndense: every row of a small task, ms")
    print(f"{'rows':>5} {'queries':>8} {'float32':>8} {'int8 kernel':>12} {'int8 pytorch':>13}")
    for n in args.dense:
        dense = torch.randn(n, layout.num_coordinates, generator=g)
        float32, int8 = (FastWeightRows.from_dense(dense, layout, s) for s in ("float32", "int8"))
        for q in (1, 256):
            weights = torch.softmax(torch.randn(calls, q, n, generator=g), -1)
            timing = {
                "float32_ms": read_ms(float32, weights, None, True),
                "int8_kernel_ms": read_ms(int8, weights, None, True),
                "int8_pytorch_ms": read_ms(int8, weights, None, False),
            }
            report["dense"][f"{n}x{q}"] = timing
            cells = [f"{timing[k]:>{w}.2f}" for k, w in zip(timing, (8, 12, 13), strict=True)]
            print(f"{n:>5} {q:>8} {' '.join(cells)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
