"""Benchmark of the one-shot concept server, over HTTP against real server processes, beside its anchors.

Runs, on the same machine and the same real Omniglot drawings (evaluation alphabets):
  * the project's server once per query backend (``--backend torch`` and ``onnxruntime``), one worker:
    latency p50/p95/p99 of classify (1 image) and support (1 image of a known label) calls against tasks
    of 5, 20 and 100 labels; throughput in classified images/s with 256-image requests against a 20-label
    and a 1,000-label task at 1, 16 and 64 concurrent clients; single-image classify at 1 and 16 clients;
    memory per stored example;
  * the HTTP floor: a bare FastAPI server (benchmarks/http_floor.py) with the same request schema and
    image decoding that classifies by pixel nearest neighbour, for the same calls;
  * the compute floor: the model itself in-process (same backend, same thread count as a worker) on
    already-decoded images: classify of 1 image, extend of a warm task by 1 image plus its key index
    (the worker's own work for a support call, less the store), and images/s on 256-image batches;
  * optionally dense vs FAISS top-k attention in-process (``--attention``).

Prints tables and writes JSON:

    python benchmarks/server_bench.py                       # both backends, the anchors, 200 calls each
    python benchmarks/server_bench.py --calls 50 --backends onnxruntime --out /tmp/quick.json
    python benchmarks/server_bench.py --device cuda         # servers and compute floor on the GPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import httpx
import numpy as np
import onnxruntime
import torch
from tqdm import tqdm

from model.compact import FastWeightRows
from model.config import MetaNetConfig
from model.inference import MetaNetPredictor, TaskMemory
from model.onnx_backend import default_onnx_path
from server.config import ServerSettings
from server.images import ImageDecoder
from server.memory import TaskMemories
from server.memory_cache import CachedTask, MemoryCache
from testkit import CHECKPOINT, REPO, b64, free_port, latency_ms, omniglot, running_server

SIZES = (5, 20, 100)


def drawings(characters: int, drawers: int) -> list[list[str]]:
    """base64 PNGs of evaluation characters, alphabet by alphabet: [character][drawer]."""
    return [[b64(png) for png in row] for row in omniglot(None, characters, drawers)]


def timed(http: httpx.Client, method: str, path: str, body: dict | bytes) -> float:
    """Seconds of one call; ``body`` is JSON, or already-encoded JSON (sent as it is). A call refused
    with Retry-After (the server's admission: docs/SERVER.md) is sent again after that wait, as the SDK
    does; the time includes the wait."""
    started = time.perf_counter()
    while True:
        if isinstance(body, bytes):
            answer = http.request(method, path, content=body, headers={"content-type": "application/json"})
        else:
            answer = http.request(method, path, json=body)
        if answer.status_code not in (429, 503) or "retry-after" not in answer.headers:
            break
        time.sleep(float(answer.headers["retry-after"]))
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
        results[str(size)] = latency_ms(latencies)
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
        results[str(size)] = latency_ms(latencies) | {
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
        results[str(n)] = {"clients": n, "requests_per_s": len(latencies) / wall} | latency_ms(latencies)
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
        probs = tasks.classify([(entry, queries[start : start + 32])])[0].probabilities
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
        return TaskMemories(predictor, None, MemoryCache(0), topk_min_examples=threshold, topk_neighbors=k)

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


def floor_ms(fn, repeats: int) -> dict[str, float]:
    """Percentiles of an in-process call (after a warm-up call)."""
    fn(0)
    seconds = []
    for i in range(repeats):
        started = time.perf_counter()
        fn(i)
        seconds.append(time.perf_counter() - started)
    return latency_ms(seconds)


def bench_compute_floor(predictor: MetaNetPredictor, images: np.ndarray, big: TaskMemory, calls: int) -> dict:
    """The model alone, in-process, on decoded images: what each server call costs at the least.

    images: [characters >= 100, drawers, 28, 28]; big: the memory of the large throughput task."""
    settings = ServerSettings()
    tasks = TaskMemories(
        predictor,
        None,
        MemoryCache(0),
        topk_min_examples=settings.topk_min_examples,
        topk_neighbors=settings.topk_neighbors,
    )
    labels = [f"c{i}" for i in range(images.shape[0])]
    report: dict = {"classify": {}, "support": {}, "throughput": {}}
    for size in SIZES:
        memory = predictor.build_memory(images[:size, 0], labels[:size])
        entry = CachedTask(1, 1, memory, tasks.build_index(memory))
        queries = images[np.arange(size), 1 + np.arange(size) % 19]

        def classify(i: int, entry=entry, queries=queries) -> None:
            tasks.classify([(entry, queries[i % len(queries)][None])])

        def support(i: int, memory=memory, size=size) -> None:
            tasks.build_index(predictor.extend_memory(memory, images[i % size, 2][None], [labels[i % size]]))

        report["classify"][str(size)] = floor_ms(classify, calls)
        report["support"][str(size)] = floor_ms(support, max(calls // 4, 20))
    batch = images[np.arange(256) % 20, 3 + np.arange(256) % 17]
    for name, memory in (("20", predictor.build_memory(images[:20, 0], labels[:20])), ("1000", big)):
        entry = CachedTask(1, 1, memory, tasks.build_index(memory))
        timing = floor_ms(lambda i, entry=entry: tasks.classify([(entry, batch)]), 5)
        report["throughput"][name] = {"images_per_s": 256 / (timing["p50_ms"] / 1e3)} | timing
    return report


def big_task(chars: list[list[str]], labels: int) -> list[tuple[str, str]]:
    """(label, image) of a task of ``labels`` labels, one drawing each (characters reused across drawers)."""
    return [(f"l{i}", chars[i % len(chars)][i // len(chars)]) for i in range(labels)]


def bench_images_per_s(url: str, task: str, batch: list[str], concurrency: list[int], requests: int) -> dict:
    """Classified images/s with ``len(batch)``-image classify requests, at each number of clients. The
    request body is encoded once: the clients share this process's interpreter, and encoding 256
    images per call would make the benchmark measure its own JSON encoder."""
    body = json.dumps({"images": batch}).encode()

    def client(k: int, n: int, count: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=600) as http:
            path = f"/tasks/{task}/classify"
            return [timed(http, "POST", path, body) for _ in range(k, count, n)]

    results = {}
    for n in concurrency:
        count = max(requests, n)
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            latencies = [t for ts in pool.map(client, range(n), [n] * n, [count] * n) for t in ts]
        wall = time.perf_counter() - started
        results[str(n)] = {
            "clients": n,
            "images_per_request": len(batch),
            "images_per_s": len(latencies) * len(batch) / wall,
        } | latency_ms(latencies)
        print(f"    {task}, {n:>2} clients: {results[str(n)]['images_per_s']:.0f} images/s", file=sys.stderr)
    return results


def setup_tasks(http: httpx.Client, chars: list[list[str]], big: list[tuple[str, str]]) -> None:
    """The throughput tasks: 20 labels and len(big) labels, memories built."""
    create(http, "tp-20", chars, 20)
    for start in range(0, len(big), 250):
        body = {"examples": [{"label": label, "image": image} for label, image in big[start : start + 250]]}
        http.post("/tasks/tp-1000/support", json=body).raise_for_status()
    http.post("/tasks/tp-1000/classify", json={"images": [chars[0][1]]}).raise_for_status()  # builds memory


def bench_server(url: str, data_dir: Path | None, chars, big, args) -> dict:
    """Every HTTP measurement against one server (the project's, or the HTTP floor when data_dir is None)."""
    batch = [chars[i % 20][3 + i % 17] for i in range(256)]
    with httpx.Client(base_url=url, timeout=600) as http:
        setup_tasks(http, chars, big)
        report = {"classify": bench_classify(http, chars, args.calls)}
        if data_dir is not None:
            report["support"] = bench_support(http, chars, args.calls, args.pool)
        report["single_image"] = bench_throughput(url, chars, args.single_clients, args.calls)
        report["throughput"] = {
            task: bench_images_per_s(url, f"tp-{task}", batch, args.clients, args.requests)
            for task in ("20", "1000")
        }
        if data_dir is not None:
            held = [f"classify-{size}" for size in SIZES] + ["tp-20", "tp-1000"]
            held += [task for size in SIZES for task in support_tasks(size, args.pool)]
            report["memory"] = bench_memory(http, data_dir, held)
    return report


@contextlib.contextmanager
def http_floor_server() -> Iterator[str]:
    """benchmarks/http_floor.py under uvicorn, one process."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.http_floor:app", "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/docs", timeout=1)
                break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def machine(device: str) -> dict:
    """The hardware the figures come from."""
    names = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    info = {"cpus": os.cpu_count(), "cpu": names[0] if names else platform.processor()}
    info |= {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per latency measurement")
    parser.add_argument(
        "--pool", type=int, default=8, help="warm tasks per size that support calls rotate over"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--api-servers", type=int, help="HTTP processes (default: one per worker)")
    parser.add_argument(
        "--backends", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"]
    )
    parser.add_argument("--device", default="cpu", help="the servers' and the compute floor's device")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64], help="for 256-image requests")
    parser.add_argument("--requests", type=int, default=32, help="256-image requests per throughput row")
    parser.add_argument("--single-clients", type=int, nargs="+", default=[1, 16], help="for 1-image requests")
    parser.add_argument("--big-labels", type=int, default=1000, help="labels of the large throughput task")
    parser.add_argument("--attention", action="store_true", help="also dense vs top-k attention (in-process)")
    parser.add_argument("--attention-sizes", type=int, nargs="+", default=[20, 50, 100, 200, 400, 659])
    parser.add_argument("--tiled-sizes", type=int, nargs="+", default=[1600, 3200])
    parser.add_argument("--neighbors", type=int, nargs="+", default=[16, 64], help="k of top-k attention")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/server_bench.json")
    args = parser.parse_args()

    report: dict = {
        "machine": machine(args.device),
        "checkpoint": str(CHECKPOINT.relative_to(REPO)),
        "workers": args.workers,
        "api_servers": args.api_servers or args.workers,
        "device": args.device,
        "load_average_before": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "servers": {},
    }
    chars = drawings(500, 20)
    big = big_task(chars, args.big_labels)
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as folder:
            print(f"server, {backend} backend ...", file=sys.stderr)
            server_args = ("--workers", str(args.workers), "--log-level", "warning", "--backend", backend)
            if args.api_servers:
                server_args += ("--api-servers", str(args.api_servers))
            with running_server(Path(folder) / "data", *server_args, "--device", args.device) as server:
                report["servers"][backend] = bench_server(server.url, server.data_dir, chars, big, args)
    print("HTTP floor: bare FastAPI, pixel nearest neighbour ...", file=sys.stderr)
    with http_floor_server() as url:
        report["http_floor"] = bench_server(url, None, chars, big, args)
    print("compute floor: the model in-process ...", file=sys.stderr)
    threads = ServerSettings().torch_threads  # as in a server worker
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    decoder = ImageDecoder(ServerSettings().max_image_side, MetaNetConfig().image_size)
    images = np.stack([[decoder.decode(image, "image") for image in row[:20]] for row in chars[:100]])
    onnx_path = default_onnx_path(CHECKPOINT, REPO / ServerSettings().onnx_dir)
    storage = ServerSettings().storage_policy(args.device)  # as in a server worker
    predictors = {
        b: MetaNetPredictor.load(CHECKPOINT, args.device, storage, backend=b, onnx_path=onnx_path)
        for b in args.backends
    }
    big_images = np.stack([decoder.decode(image, "image") for _, image in big])
    big_memory = next(iter(predictors.values())).build_memory(big_images, [label for label, _ in big])
    report["compute_floor"] = {}
    for backend, predictor in predictors.items():
        report["compute_floor"][backend] = bench_compute_floor(predictor, images, big_memory, args.calls)
        print(f"  compute floor ({backend}) done", file=sys.stderr)
    if args.attention:
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
    m, servers, floor, nn = (
        report["machine"],
        report["servers"],
        report["compute_floor"],
        report["http_floor"],
    )
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    processes = f"workers={report['workers']}; HTTP processes={report['api_servers']}"
    print(f"\n{m['cpu']} ({m['cpus']} CPUs){gpu}; {processes}; load {before:.2f}/{after:.2f}")
    print(
        f"\n{'p50 ms (floor: in-process)':<30}" + "".join(f"{b + ' HTTP':>18}{'floor':>8}" for b in servers),
        end="",
    )
    print(f"{'HTTP floor':>12}")
    for kind in ("classify", "support"):
        for size in (str(s) for s in SIZES):
            cells = "".join(
                f"{s[kind][size]['p50_ms']:>18.2f}{floor[b][kind][size]['p50_ms']:>8.2f}"
                for b, s in servers.items()
            )
            anchor = f"{nn[kind][size]['p50_ms']:>12.2f}" if kind in nn else ""
            print(f"{f'{kind} 1 image, {size} labels':<30}{cells}{anchor}")
    print(
        f"\n{'images/s, 256-image requests':<30}"
        + "".join(f"{b:>18}" for b in servers)
        + f"{'HTTP floor':>12}"
    )
    for task in ("20", "1000"):
        for clients in nn["throughput"][task]:
            cells = "".join(
                f"{s['throughput'][task][clients]['images_per_s']:>18.0f}" for s in servers.values()
            )
            anchor = nn["throughput"][task][clients]["images_per_s"]
            print(f"{f'{task} labels, {clients} clients':<30}{cells}{anchor:>12.0f}")
        cells = "".join(f"{floor[b]['throughput'][task]['images_per_s']:>18.0f}" for b in servers)
        print(f"{f'{task} labels, in-process':<30}{cells}")
    print(
        f"\n{'1-image classify p50/p99 ms':<30}"
        + "".join(f"{b:>18}" for b in servers)
        + f"{'HTTP floor':>12}"
    )
    for clients in nn["single_image"]:
        cells = "".join(
            f"{s['single_image'][clients]['p50_ms']:>11.1f}/{s['single_image'][clients]['p99_ms']:<6.1f}"
            for s in servers.values()
        )
        anchor = nn["single_image"][clients]
        print(f"{f'{clients} clients':<30}{cells}{anchor['p50_ms']:>6.1f}/{anchor['p99_ms']:<5.1f}")
    for backend, server in servers.items():
        mem = server["memory"]
        print(
            f"memory per example ({backend}): {mem['cache_bytes_per_example'] / 2**20:.2f} MiB cached, "
            f"{mem['store_bytes_per_example'] / 1024:.2f} KiB stored; mean batch {mem['batch_size_mean']:.2f}"
        )
    if "attention" in report:
        print_attention(report["attention"])


def print_attention(a: dict) -> None:
    names = ["dense"] + [key[:-3] for key in a["rows"][0] if key.startswith("top") and key.endswith("_ms")]
    print(f"\n{'examples':<10}" + "".join(f"{n + ' ms':>11}{n + ' acc':>11}" for n in names))
    for row in a["rows"]:
        cells = [(row[f"{n}_ms"], row.get(f"{n}_accuracy")) for n in names]
        print(
            f"{row['examples']:<10}"
            + "".join(
                f"{ms:>11.1f}" + (f"{acc:>11.1%}" if acc is not None else f"{'':>11}") for ms, acc in cells
            )
        )
    for k, n in a["topk_faster_from"].items():
        print(f"top-{k} attention is faster from {n} examples on")


if __name__ == "__main__":
    main()
