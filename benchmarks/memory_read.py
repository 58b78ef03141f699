"""The top-k read of a task memory kept as int8 rows, W* = a^T M over each query's k rows: the CPU
kernel (model/csrc/int8_rows.cpp) against the same read as PyTorch operations, one thread as in a
server worker.

    python -m benchmarks.memory_read                       # 1,000-example memory, k = 16
    python -m benchmarks.memory_read --examples 5000 --queries 1 256

The rows are random int8 in the default checkpoint's layout (a read's cost does not depend on the
values); every call reads other rows, as different queries would. Prints milliseconds per call
(median) and writes benchmarks/results/memory_read.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from model import compact, cpu_kernels
from model.checkpoint import DEFAULT_CHECKPOINT
from model.compact import FastWeightRows
from model.inference import MetaNetPredictor

RESULTS = Path(__file__).resolve().parent / "results" / "memory_read.json"


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn(i)`` over calls 1..repeats (call 0 warms up)."""
    fn(0)
    times = []
    for i in range(1, repeats + 1):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="rows in the memory")
    parser.add_argument("--neighbors", type=int, default=16, help="k: rows each query reads")
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 16, 256], help="queries per call")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not cpu_kernels.available():
        parser.error("the CPU kernels cannot be built on this machine (no C++ compiler?)")

    layout = MetaNetPredictor.load(DEFAULT_CHECKPOINT, "cpu").layout
    g = torch.Generator().manual_seed(0)
    data = torch.randint(-127, 128, (args.examples, layout.num_coordinates), dtype=torch.int8, generator=g)
    scales = torch.rand(args.examples, layout.num_rows, generator=g) / 127
    rows = FastWeightRows.stored_as(layout, "int8", data, scales)
    kernel_applies = compact._int8_kernel_applies
    report = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "examples": args.examples,
        "neighbors": args.neighbors,
        "coordinates": layout.num_coordinates,
        "reads": {},
    }
    shape = f"{args.examples} int8 rows of {layout.num_coordinates} coordinates"
    print(f"{shape}, k = {args.neighbors}, 1 thread")
    print(f"{'queries':>8} {'kernel ms':>10} {'pytorch ms':>11} {'speed-up':>9}")
    for q in args.queries:
        calls = args.repeats + 1
        ids = torch.randint(0, args.examples, (calls, q, args.neighbors), generator=g)
        weights = torch.softmax(torch.randn(calls, q, args.neighbors, generator=g), -1)

        def read(i: int, ids=ids, weights=weights) -> None:
            rows.read(weights[i], ids[i])

        with torch.no_grad():
            kernel = median_ms(read, args.repeats)
            compact._int8_kernel_applies = lambda weights: False
            try:
                pytorch = median_ms(read, args.repeats)
            finally:
                compact._int8_kernel_applies = kernel_applies
        report["reads"][str(q)] = {"kernel_ms": kernel, "pytorch_ms": pytorch}
        print(f"{q:>8} {kernel:>10.2f} {pytorch:>11.2f} {pytorch / kernel:>8.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
