"""Big tasks over HTTP: one-shot tasks of 600 and 5,000 labels against a real server (one worker).

For each size it measures
  * time to teach the task (support calls of 256 examples);
  * time to the first classify answer, cold (the memory is built on that call) and again after a
    server restart (built from the store once more);
  * while the big task builds: single-image classify calls on another, warm 20-label task, closed
    loop (p50/p99), and /health;
  * warm classify latency on the big task (p50/p99);
  * the worker's resident memory per stored example (RSS after the build minus before, over the
    examples), and the cache's own byte count;
and, in-process, the support path's build rate (examples/s) per chunk size beside its floor: the
FLOPs of one example's support pass (counted by torch's FLOP counter) over this machine's measured
single-thread matmul rate.

    python benchmarks/big_task.py                       # 600 and 5,000 labels
    python benchmarks/big_task.py --sizes 600 --calls 50 --out /tmp/big.json

Prints a table and writes benchmarks/results/big_task.json.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from model.inference import MetaNetPredictor
from model.preprocess import to_tensor
from testkit import CHECKPOINT, REPO, running_server
from training.data import load_archive

RESULTS = REPO / "benchmarks/results/big_task.json"
SUPPORT_BATCH = 256


def encode(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def one_shot_classes(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Two drawings [count, 2, 28, 28] (taught, asked) of ``count`` distinct classes: evaluation then
    background characters, then their 90/180/270-degree rotations as further classes."""
    drawings = np.concatenate(
        [load_archive("images_evaluation").images[:, :2], load_archive("images_background").images[:, :2]]
    )
    rotations = [np.rot90(drawings, r, axes=(2, 3)) for r in range(4)]
    classes = np.concatenate(rotations)[:count]
    if len(classes) < count:
        raise SystemExit(f"only {len(classes)} classes available")
    return classes[:, 0], classes[:, 1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    if len(ms) == 0:
        return {"calls": 0}
    return {
        "calls": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def worker_pid(http: httpx.Client) -> int:
    """The inference worker's process id: the process whose cache gauge counts bytes (every server
    process that imports the metrics module reports the gauge, at 0)."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("metanet_memory_cache_bytes{") and float(line.split()[-1]) > 0:
            return int(line.split('pid="')[1].split('"')[0])
    raise RuntimeError("no worker with cached memory in /metrics")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metric(http: httpx.Client, name: str) -> float:
    lines = http.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.split("{")[0].split(" ")[0] == name)


class Hammer:
    """Single-image classify calls on a warm task, back to back in a thread, plus a /health probe."""

    def __init__(self, url: str, task: str, queries: list[str]) -> None:
        self.url, self.task, self.queries = url, task, queries
        self.latencies: list[float] = []
        self.health: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            i = 0
            while not self._stop.is_set():
                body = {"images": [self.queries[i % len(self.queries)]]}
                started = time.perf_counter()
                http.post(f"/tasks/{self.task}/classify", json=body).raise_for_status()
                self.latencies.append(time.perf_counter() - started)
                if i % 20 == 0:
                    self.health.append(http.get("/health").status_code)
                i += 1


def first_answer(
    http: httpx.Client, url: str, task: str, query: str, warm: str, warm_queries: list[str]
) -> dict:
    """Time to the first classify answer of ``task`` while another client classifies ``warm``."""
    with Hammer(url, warm, warm_queries) as hammer:
        time.sleep(0.5)  # the hammer's own steady state first
        started = time.perf_counter()
        while (answer := http.post(f"/tasks/{task}/classify", json={"images": [query]})).status_code == 503:
            time.sleep(min(float(answer.headers.get("Retry-After", 1)), 1.0))  # still building: as asked
        seconds = time.perf_counter() - started
        answer.raise_for_status()
    return {
        "first_answer_s": seconds,
        "other_task_during_build": percentiles(hammer.latencies),
        "health_during_build": sorted(set(hammer.health)),
    }


def bench_size(size: int, calls: int, taught: np.ndarray, asked: np.ndarray, env: dict[str, str]) -> dict:
    support = [encode(im) for im in taught[:size]]
    queries = [encode(im) for im in asked[:size]]
    warm_support, warm_queries = support[:20], queries[:20]
    report: dict = {"labels": size}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with running_server(data, env=env) as server, httpx.Client(base_url=server.url, timeout=600) as http:
            examples = [{"label": f"w{i}", "image": im} for i, im in enumerate(warm_support)]
            http.post("/tasks/warm/support", json={"examples": examples}).raise_for_status()
            for q in warm_queries:
                http.post("/tasks/warm/classify", json={"images": [q]}).raise_for_status()
            pid = worker_pid(http)
            rss_before, cache_before = rss_bytes(pid), metric(http, "metanet_memory_cache_bytes")
            started = time.perf_counter()
            for start in range(0, size, SUPPORT_BATCH):
                batch = [
                    {"label": f"c{start + i}", "image": im}
                    for i, im in enumerate(support[start : start + SUPPORT_BATCH])
                ]
                http.post("/tasks/big/support", json={"examples": batch}).raise_for_status()
            report["support_s"] = time.perf_counter() - started
            report["cold"] = first_answer(http, server.url, "big", queries[0], "warm", warm_queries)
            warm = []
            correct = 0
            for i in range(calls):
                started = time.perf_counter()
                answer = http.post("/tasks/big/classify", json={"images": [queries[i % size]]})
                warm.append(time.perf_counter() - started)
                correct += answer.json()["predictions"][0]["label"] == f"c{i % size}"
            report["warm_classify"] = percentiles(warm) | {"accuracy": correct / calls}
            rss_after = rss_bytes(pid)
            cache_after = metric(http, "metanet_memory_cache_bytes")
            report["memory"] = {
                "rss_before_mib": rss_before / 2**20,
                "rss_after_mib": rss_after / 2**20,
                "rss_per_example_mib": (rss_after - rss_before) / size / 2**20,
                "cache_bytes_per_example": (cache_after - cache_before) / size,
                "build_seconds": metric(http, "metanet_memory_build_seconds_sum"),
            }
            report["saved_after_s"] = wait_for_saved_memory(data)
        # Restart on the same data: every memory is gone, the store has the task.
        with running_server(data, env=env) as server, httpx.Client(base_url=server.url, timeout=600) as http:
            for q in warm_queries[:5]:
                http.post("/tasks/warm/classify", json={"images": [q]}).raise_for_status()
            report["after_restart"] = first_answer(http, server.url, "big", queries[1], "warm", warm_queries)
    return report


def wait_for_saved_memory(data: Path, timeout: float = 300.0) -> float:
    """Seconds until the worker has written the big task's memory file (the only task large enough to
    be saved): stopping the server before that would make the restart measure a rebuild."""
    started, folder = time.perf_counter(), data / "derived"
    while not any(folder.glob("*.mem")):
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"no saved task memory in {folder} after {timeout:.0f} s")
        time.sleep(0.1)
    return time.perf_counter() - started


def matmul_rate() -> float:
    """FLOP/s of a large float32 matmul on this thread: the floor's denominator."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    started, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        a @ b
    return 2 * 1024**3 * repeats / (time.perf_counter() - started)


def bench_build_rate(taught: np.ndarray, chunks: list[int], examples: int) -> dict:
    """In-process build rate per chunk size, and the floor it is measured against."""
    from torch.utils.flop_counter import FlopCounterMode

    predictor = MetaNetPredictor.load(CHECKPOINT)
    predictor.warm_up()
    images, labels = taught[:examples], [str(i) for i in range(examples)]
    model = predictor.model
    with FlopCounterMode(display=False) as counter:  # the per-example support pass, d excluded
        x = to_tensor(images[:1])
        with torch.no_grad():
            model.example_fast_weights(x, torch.zeros(1, dtype=torch.int64), predictor.form)
            model.embed(x, None)
            model.embed(x, None)  # keys read u with two weight sets (slow + Q*)
    flops = counter.get_total_flops()
    rate = matmul_rate()
    rows = {}
    for chunk in chunks:
        predictor.form = dataclasses.replace(predictor.form, chunk_size=chunk)
        predictor.build_memory(images[:chunk], labels[:chunk])
        started = time.perf_counter()
        predictor.build_memory(images, labels)
        seconds = time.perf_counter() - started
        rows[str(chunk)] = {"examples_per_s": examples / seconds, "seconds": seconds}
    return {
        "examples": examples,
        "flops_per_example": flops,
        "matmul_flops_per_s": rate,
        "floor_examples_per_s": rate / flops,
        "chunks": rows,
    }


def print_table(report: dict) -> None:
    rate = report["build_rate"]
    print(
        f"\nsupport path: {rate['flops_per_example'] / 1e6:.0f} MFLOP/example, matmul "
        f"{rate['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s -> floor "
        f"{rate['floor_examples_per_s']:.0f} examples/s"
    )
    for chunk, row in rate["chunks"].items():
        print(
            f"  chunk {chunk:>3}: {row['examples_per_s']:.0f} examples/s "
            f"({rate['examples']} examples, d included)"
        )
    print(
        "\n| labels | first answer cold s | after restart s | other task p50/p99 ms during build "
        "| warm p50/p99 ms | RSS MiB/example |"
    )
    for size in report["sizes"]:
        r = report[str(size)]
        other = r["cold"]["other_task_during_build"]
        print(
            f"| {size} | {r['cold']['first_answer_s']:.2f} | {r['after_restart']['first_answer_s']:.2f} | "
            f"{other['p50_ms']:.1f} / {other['p99_ms']:.1f} | {r['warm_classify']['p50_ms']:.1f} / "
            f"{r['warm_classify']['p99_ms']:.1f} | {r['memory']['rss_per_example_mib']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 5000])
    parser.add_argument("--calls", type=int, default=200, help="warm classify calls per size")
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rate-examples", type=int, default=256)
    parser.add_argument(
        "--storage", default=None, help="METANET_MEMORY_STORAGE for the server (default: its own)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(1)
    taught, asked = one_shot_classes(max(args.sizes))
    env = {"METANET_MEMORY_STORAGE": args.storage} if args.storage else {}
    report: dict = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "checkpoint": str(CHECKPOINT.relative_to(REPO)),
        "storage": args.storage or "default",
        "sizes": args.sizes,
        "build_rate": bench_build_rate(taught, args.chunks, args.rate_examples),
    }
    for size in args.sizes:
        report[str(size)] = bench_size(size, args.calls, taught, asked, env)
        print(json.dumps(report[str(size)], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
