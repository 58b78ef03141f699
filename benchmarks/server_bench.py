"""Benchmark of the one-shot concept server, over HTTP against a real server process.

Measures, with real Omniglot drawings (evaluation alphabets):
  * latency p50/p95/p99 of classify (1 image) and support (1 image of a known label) calls against
    tasks of 5, 20 and 100 labels (one example per label);
  * throughput of classify calls under 1, 4 and 16 concurrent clients (dynamic batching);
  * memory per stored example: derived memory in a worker's cache, and the task store on disk;
  * dense vs FAISS top-k attention in-process, over task sizes, to place the server's default
    ``topk_min_examples`` where top-k starts to win.

Prints a table and writes JSON:

    python benchmarks/server_bench.py                      # defaults: 200 calls each, 1 worker
    python benchmarks/server_bench.py --calls 50 --skip-crossover --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests/server")]  # the server's code, and its test helpers

from serverkit import CHECKPOINT, OMNIGLOT_ZIP, ServerProcess  # noqa: E402

from model.inference import MetaNetPredictor  # noqa: E402
from server.images import ImageDecoder  # noqa: E402
from server.memory import CachedTask, MemoryCache, TaskMemories  # noqa: E402

SIZES = (5, 20, 100)


def drawings(characters: int, drawers: int) -> list[list[str]]:
    """base64 PNGs of ``characters`` evaluation characters (alphabet by alphabet): [character][drawer]."""
    by_character: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
        for name in archive.namelist():
            if name.endswith(".png"):
                by_character[name.rsplit("/", 1)[0]].append(name)
        chosen = sorted(by_character)[:characters]
        return [
            [base64.b64encode(archive.read(n)).decode() for n in sorted(by_character[c])[:drawers]]
            for c in chosen
        ]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {
        "calls": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def timed(http: httpx.Client, method: str, path: str, body: dict) -> float:
    started = time.perf_counter()
    answer = http.request(method, path, json=body)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed


def create(http: httpx.Client, task: str, chars: list[list[str]], labels: int) -> None:
    examples = [{"label": f"c{i}", "image": chars[i][0]} for i in range(labels)]
    http.post(f"/tasks/{task}/support", json={"examples": examples}).raise_for_status()
    http.post(f"/tasks/{task}/classify", json={"images": [chars[0][1]]}).raise_for_status()  # builds memory


def bench_classify(http: httpx.Client, chars: list[list[str]], calls: int) -> dict:
    results = {}
    for size in SIZES:
        task = f"classify-{size}"
        create(http, task, chars, size)
        queries = [chars[i % size][1 + i % 19] for i in range(calls)]
        for q in queries[:5]:  # warm-up
            timed(http, "POST", f"/tasks/{task}/classify", {"images": [q]})
        latencies = [
            timed(http, "POST", f"/tasks/{task}/classify", {"images": [q]})
            for q in tqdm(queries, desc=f"classify vs {size} labels", leave=False)
        ]
        results[str(size)] = percentiles(latencies)
    return results


def support_tasks(size: int, pool: int) -> list[str]:
    return [f"support-{size}-{j}" for j in range(pool)]


def bench_support(http: httpx.Client, chars: list[list[str]], calls: int, pool: int) -> dict:
    """Support calls round-robin over ``pool`` warm tasks per size, so each task grows by calls/pool."""
    results = {}
    for size in SIZES:
        tasks = support_tasks(size, pool)
        for task in tqdm(tasks, desc=f"build {pool} tasks of {size}", leave=False):
            create(http, task, chars, size)
        latencies = []
        for i in tqdm(range(calls), desc=f"support into {size}-example tasks", leave=False):
            example = {"label": f"c{i % size}", "image": chars[i % size][1 + i % 19]}
            latencies.append(
                timed(http, "POST", f"/tasks/{tasks[i % pool]}/support", {"examples": [example]})
            )
        results[str(size)] = percentiles(latencies) | {
            "task_examples_from": size,
            "task_examples_to": size + -(-calls // pool),
        }
    return results


def bench_throughput(url: str, chars: list[list[str]], clients: list[int], calls: int) -> dict:
    """Concurrent clients, each classifying one image per call against the 20-label task."""

    def client(k: int, count: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=120) as http:
            path = "/tasks/classify-20/classify"
            return [timed(http, "POST", path, {"images": [chars[(k + i) % 20][2]]}) for i in range(count)]

    results = {}
    for n in clients:
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            latencies = [t for ts in pool.map(client, range(n), [max(1, calls // n)] * n) for t in ts]
        wall = time.perf_counter() - started
        results[str(n)] = {"clients": n, "requests_per_s": len(latencies) / wall} | percentiles(latencies)
        print(f"  {n:>3} clients: {results[str(n)]['requests_per_s']:.1f} classify/s", file=sys.stderr)
    return results


def metric_values(text: str, name: str) -> list[float]:
    return [float(line.split()[-1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name]


def bench_memory(http: httpx.Client, data_dir: Path, tasks: list[str]) -> dict:
    """Cache bytes over the examples of ``tasks`` (every task the worker holds), and store bytes."""
    stats = http.get("/metrics").text
    cache_bytes = sum(metric_values(stats, "metanet_memory_cache_bytes"))
    cached_examples = sum(http.get(f"/tasks/{t}").json()["num_examples"] for t in tasks)
    stored = sum(metric_values(stats, "metanet_store_examples"))
    store_bytes = sum(p.stat().st_size for p in data_dir.glob("tasks.sqlite3*"))
    return {
        "cache_bytes": cache_bytes,
        "cached_examples": cached_examples,
        "cache_bytes_per_example": cache_bytes / max(cached_examples, 1),
        "stored_examples": stored,
        "store_bytes": store_bytes,
        "store_bytes_per_example": store_bytes / max(stored, 1),
        "batch_size_mean": sum(metric_values(stats, "metanet_worker_batch_size_sum"))
        / max(sum(metric_values(stats, "metanet_worker_batch_size_count")), 1),
    }


def bench_crossover(sizes: list[int], neighbors: int, repeats: int, threads: int) -> dict:
    """In-process: classify latency of one query with dense attention vs FAISS top-k, per task size.

    Memories of n examples are tiles of a real 100-example memory (classify cost depends only on
    shapes), so large sizes need no long builds.
    """
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    predictor = MetaNetPredictor.load(CHECKPOINT)
    decoder = ImageDecoder(max_side=4096)
    chars = drawings(100, 3)
    support = np.stack([decoder.decode(c[0], "support") for c in chars])
    queries = np.stack([decoder.decode(c[1], "query") for c in chars])
    base = predictor.build_memory(support, [f"c{i}" for i in range(100)])
    results = []
    for n in tqdm(sizes, desc="dense vs top-k", leave=False):
        reps = -(-n // 100)
        m = base.memory
        memory = dataclasses.replace(
            base,
            images=base.images.repeat(reps, 1, 1)[:n],
            memory=dataclasses.replace(
                m,
                fast_weights=m.fast_weights.repeat(reps, 1)[:n].contiguous(),
                fast_out=m.fast_out.repeat(reps, 1)[:n].contiguous(),
                labels=m.labels.repeat(reps)[:n].contiguous(),
                keys=m.keys.repeat(reps, 1)[:n].contiguous(),
            ),
        )
        timings = {}
        for mode, threshold in (("dense", n + 1), ("topk", 1)):
            tasks = TaskMemories(predictor, None, MemoryCache(0), threshold, neighbors)
            entry = CachedTask(1, 1, memory, tasks.build_index(memory))
            q = queries[:1]
            tasks.classify([(entry, q)])  # warm-up
            seconds = []
            for i in range(repeats):
                q = queries[[i % 100]]
                started = time.perf_counter()
                tasks.classify([(entry, q)])
                seconds.append(time.perf_counter() - started)
            timings[mode] = statistics.median(seconds) * 1e3
        results.append({"examples": n, "dense_ms": timings["dense"], "topk_ms": timings["topk"]})
        del memory
    wins_from = None  # the smallest size from which top-k is faster at every larger size
    for r in reversed(results):
        if r["topk_ms"] >= r["dense_ms"]:
            break
        wins_from = r["examples"]
    return {"neighbors": neighbors, "threads": threads, "sizes": results, "topk_wins_from": wins_from}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per latency measurement")
    parser.add_argument(
        "--pool", type=int, default=8, help="warm tasks per size that support calls rotate over"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--crossover-sizes", type=int, nargs="+", default=[100, 200, 400, 800, 1600, 3200])
    parser.add_argument("--skip-crossover", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/server_bench.json")
    args = parser.parse_args()

    report: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "checkpoint": str(CHECKPOINT.relative_to(REPO)),
        "workers": args.workers,
        "load_average_before": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    chars = drawings(100, 20)
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(
            Path(folder) / "data", "--workers", str(args.workers), "--log-level", "warning"
        )
        print("starting server ...", file=sys.stderr)
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=300) as http:
                report["classify"] = bench_classify(http, chars, args.calls)
                report["support"] = bench_support(http, chars, args.calls, args.pool)
                print("throughput ...", file=sys.stderr)
                report["throughput"] = bench_throughput(server.url, chars, args.clients, args.calls)
                held = [f"classify-{size}" for size in SIZES]
                held += [task for size in SIZES for task in support_tasks(size, args.pool)]
                report["memory"] = bench_memory(http, server.data_dir, held)
        finally:
            server.stop()
    if not args.skip_crossover:
        report["crossover"] = bench_crossover(args.crossover_sizes, 64, 30, os.cpu_count() or 1)
    report["load_average_after"] = os.getloadavg()

    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def print_table(report: dict) -> None:
    before, after = report["load_average_before"][0], report["load_average_after"][0]
    print(f"\nworkers={report['workers']}  load average before/after: {before:.2f}/{after:.2f}")
    print(f"{'call':<34}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'calls':>7}")
    rows = [(f"classify 1 image, {size} labels", r) for size, r in report["classify"].items()]
    rows += [
        (f"support 1 image, {r['task_examples_from']}-{r['task_examples_to']} ex", r)
        for r in report["support"].values()
    ]
    for name, r in rows:
        print(f"{name:<34}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['calls']:>7}")
    print(f"\n{'concurrent clients':<20}{'classify/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for r in report["throughput"].values():
        print(f"{r['clients']:<20}{r['requests_per_s']:>11.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}")
    m = report["memory"]
    print(
        f"\nmemory per example: {m['cache_bytes_per_example'] / 2**20:.2f} MiB cached in a worker, "
        f"{m['store_bytes_per_example'] / 1024:.2f} KiB in the store; mean batch {m['batch_size_mean']:.2f}"
    )
    if "crossover" in report:
        c = report["crossover"]
        print(f"\n{'examples':<10}{'dense ms':>10}{'top-' + str(c['neighbors']) + ' ms':>12}")
        for r in c["sizes"]:
            print(f"{r['examples']:<10}{r['dense_ms']:>10.1f}{r['topk_ms']:>12.1f}")
        print(f"top-k attention wins from {c['topk_wins_from']} examples")


if __name__ == "__main__":
    main()
