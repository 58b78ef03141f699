"""Scale-out benchmark: N server replicas over one PostgreSQL task store, N = 1..4.

For each N it creates a fresh database, starts N replicas (one inference worker each) on free ports,
teaches 16 tasks of 20 labels (one Omniglot drawing each) and warms every replica's cache, then drives
the replicas round-robin from concurrent clients for a fixed time per phase:
  * classify: one image against a random warm task;
  * support: one drawing of a known label added to a random task (a durable commit, then the next
    classify of that task on any replica extends its cached memory).
It reports calls/s and p50/p99 latency per phase and N, and writes JSON:

    python benchmarks/scale_out.py                              # a throwaway PostgreSQL, N = 1..4
    python benchmarks/scale_out.py --replicas 1 2 --seconds 5 --out /tmp/scale.json
    python benchmarks/scale_out.py --store postgresql://user@host/db   # an existing server (its tables are
                                                                       # dropped and created per N)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

from testkit import REPO, ServerProcess, free_port, latency_ms, omniglot
from testkit.postgres import PostgresServer, install_postgresql

TASKS, LABELS = 16, 20


def percentiles(seconds: list[float], elapsed: float) -> dict[str, float | int | None]:
    return {"calls_per_s": len(seconds) / elapsed} | latency_ms(seconds)


def drive(urls: list[str], clients: int, seconds: float, call) -> dict[str, float]:
    """``clients`` threads call ``call(http, url, rng)`` round-robin over ``urls`` for ``seconds``."""
    deadline = time.monotonic() + seconds

    def client(k: int) -> list[float]:
        rng, latencies = random.Random(k), []
        with httpx.Client(timeout=120) as http:
            i = k
            while time.monotonic() < deadline:
                started = time.perf_counter()
                call(http, urls[i % len(urls)], rng).raise_for_status()
                latencies.append(time.perf_counter() - started)
                i += 1
        return latencies

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [s for batch in pool.map(client, range(clients)) for s in batch]
    return percentiles(latencies, time.monotonic() - started)


def reset_database(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def bench(n: int, url: str, chars: list[list[str]], clients: int, seconds: float, root: Path) -> dict:
    servers = [ServerProcess(root / f"n{n}-replica{i}", "--store", url) for i in range(n)]
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(ServerProcess.start, servers))
        startup = time.monotonic() - started
        urls = [s.url for s in servers]
        with httpx.Client(timeout=120) as http:
            for t in range(TASKS):
                examples = [{"label": f"c{c}", "image": chars[t + c][0]} for c in range(LABELS)]
                http.post(f"{urls[0]}/tasks/t{t}/support", json={"examples": examples}).raise_for_status()
                for u in urls:  # every replica builds its memory of every task
                    http.post(f"{u}/tasks/t{t}/classify", json={"images": [chars[t][1]]}).raise_for_status()

        def classify(http: httpx.Client, u: str, rng: random.Random) -> httpx.Response:
            t, c = rng.randrange(TASKS), rng.randrange(LABELS)
            return http.post(
                f"{u}/tasks/t{t}/classify", json={"images": [chars[t + c][2 + rng.randrange(10)]]}
            )

        def support(http: httpx.Client, u: str, rng: random.Random) -> httpx.Response:
            t, c = rng.randrange(TASKS), rng.randrange(LABELS)
            example = {"label": f"c{c}", "image": chars[t + c][2 + rng.randrange(10)]}
            return http.post(f"{u}/tasks/t{t}/support", json={"examples": [example]})

        result = {"replicas": n, "startup_s": startup, "load_average_before": os.getloadavg()[0]}
        result["classify"] = drive(urls, clients, seconds, classify)
        result["support"] = drive(urls, clients, seconds, support)
        return result
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase and replica count")
    parser.add_argument("--store", help="an existing PostgreSQL database (default: a throwaway server)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/scale_out.json")
    args = parser.parse_args()

    chars = [[base64.b64encode(png).decode() for png in row] for row in omniglot(None, TASKS + LABELS, 12)]
    postgres = None
    if args.store is None:
        bindir = install_postgresql()
        if bindir is None:
            sys.exit(f"PostgreSQL cannot run here: {install_postgresql.reason}")
        postgres = PostgresServer(bindir, free_port()).start()
        args.store = postgres.create_database("scale_out")
    results = []
    try:
        with tempfile.TemporaryDirectory() as root:
            for n in args.replicas:
                reset_database(args.store)
                results.append(bench(n, args.store, chars, args.clients, args.seconds, Path(root)))
                print(
                    f"N={n}: "
                    + " | ".join(
                        f"{op} {r['calls_per_s']:.1f}/s p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms"
                        for op, r in ((op, results[-1][op]) for op in ("classify", "support"))
                    ),
                    flush=True,
                )
    finally:
        if postgres is not None:
            postgres.remove()
    report = {
        "benchmark": "scale_out",
        "clients": args.clients,
        "seconds_per_phase": args.seconds,
        "tasks": TASKS,
        "labels_per_task": LABELS,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "platform": platform.platform(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
