"""Benchmark of the one-shot concept server, over HTTP against a real server process.

Measures, with real Omniglot drawings (evaluation alphabets):
  * latency p50/p95/p99 of classify (1 image) and support (1 image of a known label) calls against
    tasks of 5, 20 and 100 labels (one example per label);
  * throughput of classify calls under 1, 4 and 16 concurrent clients (dynamic batching);
  * memory per stored example: derived memory in a worker's cache, and the task store on disk;
  * dense vs FAISS top-k attention in-process: latency over task sizes, to place the server's
    default ``topk_min_examples`` where top-k starts to win, and accuracy on a task of every
    evaluation character.

Prints a table and writes JSON:

    python benchmarks/server_bench.py                      # defaults: 200 calls each, 1 worker
    python benchmarks/server_bench.py --calls 50 --skip-attention --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch
from tqdm import tqdm

from model.compact import FastWeightRows
from model.inference import MetaNetPredictor, TaskMemory
from server.config import ServerSettings
from server.images import ImageDecoder
from server.memory import CachedTask, MemoryCache, TaskMemories
from testkit import CHECKPOINT, REPO, b64, omniglot, running_server

SIZES = (5, 20, 100)


def drawings(characters: int, drawers: int) -> list[list[str]]:
    """base64 PNGs of evaluation characters, alphabet by alphabet: [character][drawer]."""
    return [[b64(png) for png in row] for row in omniglot(None, characters, drawers)]


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


def tiled(task: TaskMemory, n: int) -> TaskMemory:
    """A memory of n examples made of copies of ``task``'s rows: classify costs depend only on shapes."""
    reps, m = -(-n // task.num_examples), task.memory

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(reps, *[1] * (t.dim() - 1))[:n].contiguous()

    data, scales = m.fast_weights.stored()
    fast = m.fast_weights
    inner = dataclasses.replace(
        m,
        fast_weights=FastWeightRows.stored_as(
            fast.layout, fast.storage, rows(data), rows(scales) if scales is not None else None
        ),
        fast_out=rows(m.fast_out),
        labels=rows(m.labels),
        keys=rows(m.keys),
    )
    return dataclasses.replace(task, images=rows(task.images), memory=inner)


def median_ms(tasks: TaskMemories, entry: CachedTask, queries: np.ndarray, repeats: int) -> float:
    tasks.classify([(entry, queries[:1])])  # warm-up
    seconds = []
    for i in range(repeats):
        started = time.perf_counter()
        tasks.classify([(entry, queries[[i % len(queries)]])])
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1e3


def accuracy(tasks: TaskMemories, entry: CachedTask, queries: np.ndarray) -> float:
    """Share of queries (query i shows label i) classified correctly."""
    hits = 0
    for start in range(0, len(queries), 32):
        probs = tasks.classify([(entry, queries[start : start + 32])])[0]
        hits += int((probs.argmax(dim=1) == torch.arange(start, start + len(probs))).sum())
    return hits / len(queries)


def bench_attention(sizes: list[int], tiled_sizes: list[int], neighbors: list[int], repeats: int) -> dict:
    """In-process, dense attention vs FAISS top-k: accuracy and latency on real one-shot tasks of the
    first n evaluation characters (one drawing each; grown with extend_memory, as the server does),
    and latency on larger tiled memories."""
    predictor = MetaNetPredictor.load(CHECKPOINT)
    decoder = ImageDecoder(ServerSettings().max_image_side, predictor.model.config.image_size)
    chars = drawings(max(sizes), 2)
    support = np.stack([decoder.decode(c[0], "support") for c in chars])
    queries = np.stack([decoder.decode(c[1], "query") for c in chars])
    labels = [f"c{i}" for i in range(len(chars))]

    def memories(threshold: int, k: int) -> TaskMemories:
        return TaskMemories(predictor, None, MemoryCache(0), threshold, k)

    def measure(memory: TaskMemory, n_queries: int) -> dict:
        row = {"examples": memory.num_examples}
        variants = [("dense", memories(memory.num_examples + 1, 1))]
        variants += [(f"top{k}", memories(1, k)) for k in neighbors]
        for name, tasks in variants:
            entry = CachedTask(1, 1, memory, tasks.build_index(memory))
            row[f"{name}_ms"] = median_ms(tasks, entry, queries[:n_queries], repeats)
            if n_queries == memory.num_examples:
                row[f"{name}_accuracy"] = accuracy(tasks, entry, queries[:n_queries])
        return row

    rows, memory = [], None
    for n in tqdm(sorted(sizes), desc="real tasks: dense vs top-k", leave=False):
        if memory is None:
            memory = predictor.build_memory(support[:n], labels[:n])
        else:
            memory = predictor.extend_memory(
                memory, support[memory.num_examples : n], labels[memory.num_examples : n]
            )
        rows.append(measure(memory, n))
    for n in tqdm(tiled_sizes, desc="tiled tasks: dense vs top-k", leave=False):
        rows.append(measure(tiled(memory, n), memory.num_examples))
    wins_from = {}
    for k in neighbors:  # the smallest size from which top-k is faster at every larger size
        wins_from[k] = None
        for row in reversed(rows):
            if row[f"top{k}_ms"] >= row["dense_ms"]:
                break
            wins_from[k] = row["examples"]
    return {"rows": rows, "topk_faster_from": wins_from}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per latency measurement")
    parser.add_argument(
        "--pool", type=int, default=8, help="warm tasks per size that support calls rotate over"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--attention-sizes", type=int, nargs="+", default=[20, 50, 100, 200, 400, 659])
    parser.add_argument("--tiled-sizes", type=int, nargs="+", default=[1600, 3200])
    parser.add_argument("--neighbors", type=int, nargs="+", default=[16, 64], help="k of top-k attention")
    parser.add_argument("--skip-attention", action="store_true", help="skip dense vs top-k (in-process)")
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
        print("starting server ...", file=sys.stderr)
        server_args = ("--workers", str(args.workers), "--log-level", "warning")
        with (
            running_server(Path(folder) / "data", *server_args) as server,
            httpx.Client(base_url=server.url, timeout=300) as http,
        ):
            report["classify"] = bench_classify(http, chars, args.calls)
            report["support"] = bench_support(http, chars, args.calls, args.pool)
            print("throughput ...", file=sys.stderr)
            report["throughput"] = bench_throughput(server.url, chars, args.clients, args.calls)
            held = [f"classify-{size}" for size in SIZES]
            held += [task for size in SIZES for task in support_tasks(size, args.pool)]
            report["memory"] = bench_memory(http, server.data_dir, held)
    if not args.skip_attention:
        threads = ServerSettings().torch_threads  # as in a server worker
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        report["attention"] = bench_attention(
            args.attention_sizes, args.tiled_sizes, args.neighbors, repeats=30
        )
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
    if "attention" in report:
        a = report["attention"]
        names = ["dense"] + [
            key[:-3] for key in a["rows"][0] if key.startswith("top") and key.endswith("_ms")
        ]
        print(f"\n{'examples':<10}" + "".join(f"{n + ' ms':>11}{n + ' acc':>11}" for n in names))
        for row in a["rows"]:
            cells = [(row[f"{n}_ms"], row.get(f"{n}_accuracy")) for n in names]
            print(
                f"{row['examples']:<10}"
                + "".join(
                    f"{ms:>11.1f}" + (f"{acc:>11.1%}" if acc is not None else f"{'':>11}")
                    for ms, acc in cells
                )
            )
        for k, n in a["topk_faster_from"].items():
            print(f"top-{k} attention is faster from {n} examples on")


if __name__ == "__main__":
    main()
