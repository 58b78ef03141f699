"""Does LitServe's public API serve this project? Measured over HTTP against real servers:

  * ``project``: ``python -m server``, on server/litserve_adapter.py (LitServe beyond its public API);
  * ``public``: benchmarks/litserve_public_server.py: the same routes from LitServe's public API only
    (one LitAPI per worker route in one LitServer, LitServe's batching), running the project's worker
    code; the same settings (the defaults) and API keys as ``project``;
  * for latency and idle CPU also ``public`` with ``batch_timeout`` 1 ms instead of 0.

Against the first two: which of today's routes and behaviours each serves (path parameters, GET and
DELETE routes, tenants and auth, error statuses with their JSON codes and Retry-After, admission under
overload, the service routes) and whether one failing item fails the others of its batch. Against all:
latency p50/p99 of a 1-image and a 32-image classify against a 20-label task, calls alternating
between the servers (a different one first each round, so that outside CPU contention hits all alike;
the others paused with SIGSTOP during each call), their CPU use while idle and their memory. Prints a
table and writes JSON:

    python benchmarks/litserve_public.py
    python benchmarks/litserve_public.py --calls 30 --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np

from testkit import REPO, ServerProcess, b64, omniglot

KEYS = {"alice": "key-alice", "bob": "key-bob"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
LABELS = 20


@dataclass
class Server:
    name: str
    process: ServerProcess
    http: httpx.Client


@contextlib.contextmanager
def alone(server: Server, every: list[Server]) -> Iterator[None]:
    """The other servers' processes stopped (SIGSTOP) meanwhile: what one does while idle (LitServe's
    stock loop polls its queue) does not take CPU from the one measured."""
    others = [s.process.process.pid for s in every if s is not server]
    for pgid in others:
        os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pgid in others:
            os.killpg(pgid, signal.SIGCONT)


SERVERS = (
    ("project", "server", {}),
    ("public", "benchmarks.litserve_public_server", {}),
    # LitServe's loop polls its queue every millisecond with a batch timeout, and without one (the
    # project's default) asks it again at once: the variant shows what the polling costs.
    ("public, batch_timeout 1 ms", "benchmarks.litserve_public_server", {"METANET_BATCH_TIMEOUT": "0.001"}),
)


@contextlib.contextmanager
def servers(folder: Path) -> Iterator[list[Server]]:
    """The servers of ``SERVERS``, started one after the other (each alone on the CPU while it loads)."""
    keys = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
    started: list[Server] = []
    try:
        for i, (name, module, settings) in enumerate(SERVERS):
            metrics_dir = folder / f"metrics-{i}"
            metrics_dir.mkdir()
            env = {"METANET_API_KEYS": keys, "METANET_LOG_LEVEL": "warning", **settings}
            if module != "server":  # python -m server sets its own
                env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            process = ServerProcess(folder / f"server-{i}", env=env, module=module).start()
            started.append(Server(name, process, httpx.Client(base_url=process.url, timeout=120)))
        yield started
    finally:
        for server in started:
            server.http.close()
            server.process.stop()


# ---------------------------------------------------------------------------------------------- routes


@dataclass
class Check:
    """One request and what today's API answers it with: ``status``, and ``code`` for an error (its
    JSON ``error.code``), plus ``expect(answer)`` for more."""

    name: str
    method: str
    path: str
    status: int
    body: dict | None = None
    headers: dict | None = None
    code: str | None = None
    expect: Callable[[httpx.Response], bool] | None = None


def route_checks(images: list[str]) -> list[Check]:
    support = {"examples": [{"label": f"r{i}", "image": images[i]} for i in range(3)]}
    twenty = {"examples": [{"label": f"b{i}", "image": images[i]} for i in range(20)]}
    one = {"images": [images[3]]}
    key = {"Idempotency-Key": "0b6a5f4e-0000-4000-8000-000000000001"}

    def json_with(*keys: str) -> Callable[[httpx.Response], bool]:
        def ok(answer: httpx.Response) -> bool:
            try:
                return all(k in answer.json() for k in keys)
            except ValueError:
                return False

        return ok

    return [
        Check("POST /tasks/{id}/support, 20 examples", "POST", "/tasks/b20/support", 200, twenty, ALICE),
        Check(
            "  first classify waits for its memory's build: 200",
            "POST",
            "/tasks/b20/classify",
            200,
            one,
            ALICE,
        ),
        Check(
            "POST /tasks/{id}/support",
            "POST",
            "/tasks/r1/support",
            200,
            support,
            ALICE,
            expect=lambda a: a.json()["num_examples"] == 3,
        ),
        Check(
            "  repeat with the same Idempotency-Key writes nothing",
            "POST",
            "/tasks/r1/support",
            200,
            {"examples": support["examples"][:1]},
            {**ALICE, **key},
        ),
        Check(
            "  ... and its repeat is answered as replayed",
            "POST",
            "/tasks/r1/support",
            200,
            {"examples": support["examples"][:1]},
            {**ALICE, **key},
            expect=lambda a: a.headers.get("Idempotent-Replayed") == "true" and a.json()["num_examples"] == 4,
        ),
        Check(
            "POST /tasks/{id}/classify",
            "POST",
            "/tasks/r1/classify",
            200,
            one,
            ALICE,
            expect=lambda a: a.json()["version"] == 2 and len(a.json()["predictions"]) == 1,
        ),
        Check(
            "another tenant's task is invisible: 404",
            "POST",
            "/tasks/r1/classify",
            404,
            one,
            BOB,
            code="task_not_found",
        ),
        Check("GET /tasks", "GET", "/tasks", 200, None, ALICE, expect=lambda a: len(a.json()["tasks"]) >= 1),
        Check("GET /tasks/{id}", "GET", "/tasks/r1", 200, None, ALICE, expect=json_with("version", "labels")),
        Check(
            "GET /tasks/{id}/labels", "GET", "/tasks/r1/labels", 200, None, ALICE, expect=json_with("labels")
        ),
        Check(
            "GET /tasks/{id}/export",
            "GET",
            "/tasks/r1/export",
            200,
            None,
            ALICE,
            expect=json_with("examples"),
        ),
        Check(
            "DELETE /tasks/{id}/labels/{label}",
            "DELETE",
            "/tasks/r1/labels/r2",
            200,
            None,
            ALICE,
            expect=lambda a: a.json()["version"] == 3,
        ),
        Check(
            "  classify after it uses the new version",
            "POST",
            "/tasks/r1/classify",
            200,
            one,
            ALICE,
            expect=lambda a: a.json()["version"] == 3,
        ),
        Check("DELETE /tasks/{id}", "DELETE", "/tasks/r1", 200, None, ALICE),
        Check(
            "  classify after it: 404 task_not_found",
            "POST",
            "/tasks/r1/classify",
            404,
            one,
            ALICE,
            code="task_not_found",
        ),
        Check(
            "no key on a worker route: 401",
            "POST",
            "/tasks/t20/classify",
            401,
            one,
            None,
            code="unauthorized",
        ),
        Check("no key on a store route: 401", "GET", "/tasks", 401, None, None, code="unauthorized"),
        Check(
            "invalid image: 400 invalid_image",
            "POST",
            "/tasks/t20/classify",
            400,
            {"images": [base64.b64encode(b"not an image").decode()]},
            ALICE,
            code="invalid_image",
        ),
        Check(
            "257 images: 413 too_many_images",
            "POST",
            "/tasks/t20/classify",
            413,
            {"images": [images[3]] * 257},
            ALICE,
            code="too_many_images",
        ),
        Check(
            "GET / (JSON links)",
            "GET",
            "/",
            200,
            None,
            {"accept": "application/json"},
            expect=json_with("docs", "ui"),
        ),
        Check(
            "GET /health (JSON, store pinged)", "GET", "/health", 200, None, None, expect=json_with("status")
        ),
        Check(
            "GET /info (model, limits, queue)",
            "GET",
            "/info",
            200,
            None,
            None,
            expect=json_with("model", "limits", "queue"),
        ),
        Check(
            "GET /metrics (Prometheus)",
            "GET",
            "/metrics",
            200,
            None,
            None,
            expect=lambda a: "metanet_" in a.text,
        ),
    ]


def run_check(http: httpx.Client, check: Check) -> dict:
    answer = http.request(check.method, check.path, json=check.body, headers=check.headers)
    served = answer.status_code == check.status
    if served and check.code is not None:
        try:
            served = answer.json()["error"]["code"] == check.code
        except (ValueError, KeyError, TypeError):
            served = False
    if served and check.expect is not None:
        try:
            served = bool(check.expect(answer))
        except (ValueError, KeyError, TypeError):
            served = False
    return {"status": answer.status_code, "served": served, "answer": answer.text[:160]}


def overload(server: Server, images: list[str], clients: int) -> dict:
    """``clients`` 256-image classifies at once from alice, then bob's 1-image classify: are requests
    that cannot start within the deadline refused at once with Retry-After, and does bob wait?"""
    body = {"images": (images * 256)[:256]}

    def call(args: tuple[dict, dict]) -> tuple[int, float, str | None]:
        payload, headers = args
        started = time.perf_counter()
        answer = server.http.post("/tasks/t20/classify", json=payload, headers=headers)
        return answer.status_code, time.perf_counter() - started, answer.headers.get("retry-after")

    bob_body = {"images": [images[0]]}
    with ThreadPoolExecutor(clients + 1) as pool:
        heavy = [pool.submit(call, (body, ALICE)) for _ in range(clients)]
        time.sleep(0.5)  # the heavy requests are in the queue
        bob = pool.submit(call, (bob_body, {**BOB})).result()
        results = [f.result() for f in heavy]
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "requests": clients,
        "statuses": statuses,
        "refused_with_retry_after": sum(1 for s, _, r in results if s in (429, 503) and r is not None),
        "max_wait_s": round(max(t for _, t, _ in results), 2),
        "other_tenant_1_image_s": round(bob[1], 3),
        "other_tenant_status": bob[0],
    }


# ------------------------------------------------------------------------------------------- isolation


def isolation(server: Server, images: list[str], raise_errors: bool) -> dict:
    """One batch of 6 good 1-image classifies, one of a missing task and one of an invalid image, queued
    behind a 256-image classify so that the worker takes them together: are the good ones answered 200?
    With ``raise_errors`` the public server raises HTTPException for the failing items (LitServe's way)."""
    good = {"images": [images[1]]}
    calls = [("t20", good)] * 6 + [("missing", good), ("t20", {"images": ["aGVsbG8="]})]
    extra = {"X-Errors": "raise"} if raise_errors else {}

    def call(args: tuple[str, dict]) -> tuple[int, str | None]:
        task, body = args
        answer = server.http.post(f"/tasks/{task}/classify", json=body, headers={**ALICE, **extra})
        return answer.status_code, answer.headers.get("x-batch-size")

    before = batch_counts(server)
    with ThreadPoolExecutor(len(calls) + 1) as pool:
        blocker = pool.submit(call, ("t20", {"images": (images * 256)[:256]}))
        time.sleep(0.3)  # the blocker is in the worker: the rest queue up behind it
        answers = list(pool.map(call, calls))
        blocker.result()
    batches, items = (after - was for after, was in zip(batch_counts(server), before, strict=True))
    return {
        "good_statuses": [s for s, _ in answers[:6]],
        "missing_task_status": answers[6][0],
        "invalid_image_status": answers[7][0],
        "isolated": all(s == 200 for s, _ in answers[:6]) and answers[6][0] == 404 and answers[7][0] == 400,
        "worker_batches": int(batches),  # the blocker's and these, from metanet_worker_batch_size
        "items_in_them": int(items),
    }


def batch_counts(server: Server) -> tuple[float, float]:
    """The batches the worker code has run and the items in them (its ``metanet_worker_batch_size``)."""
    text = server.http.get("/metrics").text
    found = [re.search(rf"^metanet_worker_batch_size_{k} (\S+)$", text, re.M) for k in ("count", "sum")]
    return tuple(float(m.group(1)) if m else 0.0 for m in found)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- latency


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1e3
    return {
        "calls": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def latency(every: list[Server], images: list[str], n: int, calls: int) -> dict:
    """Sequential classifies of ``n`` images; each round calls every server, a different one first, each
    with the others paused."""
    body = json.dumps({"images": images[:n]}).encode()
    headers = {**ALICE, "content-type": "application/json"}
    seconds: dict[str, list[float]] = {s.name: [] for s in every}
    for round_ in range(calls + 5):
        for server in every[round_ % len(every) :] + every[: round_ % len(every)]:
            with alone(server, every):
                started = time.perf_counter()
                server.http.post("/tasks/t20/classify", content=body, headers=headers).raise_for_status()
                elapsed = time.perf_counter() - started
            if round_ >= 5:  # warm-up rounds are not counted
                seconds[server.name].append(elapsed)
    return {name: percentiles(values) for name, values in seconds.items()}


# --------------------------------------------------------------------------------- CPU and memory use


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


def cpu_seconds(pgid: int) -> float:
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def pss_mib(pgid: int) -> float:
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def idle_use(every: list[Server], seconds: float = 5.0) -> dict:
    """Each server's CPU (cores busy, its whole process group) while no request is in flight."""
    before = {s.name: cpu_seconds(s.process.process.pid) for s in every}
    time.sleep(seconds)
    return {
        s.name: {
            "idle_cpu_cores": round((cpu_seconds(s.process.process.pid) - before[s.name]) / seconds, 2),
            "processes": len(group_pids(s.process.process.pid)),
            "pss_mib": pss_mib(s.process.process.pid),
        }
        for s in every
    }


# ------------------------------------------------------------------------------------------------ main


def within(public: float, project: float, tolerance: float = 0.10) -> bool:
    return public <= project * (1 + tolerance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150, help="timed calls per server and size")
    parser.add_argument("--overload-clients", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/litserve_public.json")
    args = parser.parse_args()
    drawings = [b64(png) for row in omniglot(None, LABELS + 40, 2) for png in row]
    examples, queries = (
        drawings[0 : 2 * LABELS : 2],
        drawings[2 * LABELS + 1 :: 2] + drawings[1 : 2 * LABELS : 2],
    )
    report: dict = {
        "command": " ".join(["python benchmarks/litserve_public.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "litserve": version("litserve"),
    }
    with tempfile.TemporaryDirectory() as folder, servers(Path(folder)) as every:
        both = every[:2]  # the project's and the public API's, on the same settings
        task = {"examples": [{"label": f"c{i}", "image": image} for i, image in enumerate(examples)]}
        one = {"images": queries[:1]}
        for server in every:
            for tenant in (ALICE, BOB):
                server.http.post("/tasks/t20/support", json=task, headers=tenant).raise_for_status()
                # Its memory is built now; a 503 task_building says when to ask again, as the SDK does.
                while (
                    answer := server.http.post("/tasks/t20/classify", json=one, headers=tenant)
                ).status_code == 503:
                    time.sleep(float(answer.headers["retry-after"]))
                answer.raise_for_status()
        print("routes ...", file=sys.stderr)
        report["routes"] = [
            {"name": c.name, "expected": c.status, **{s.name: run_check(s.http, c) for s in both}}
            for c in route_checks(queries)
        ]
        print("isolation ...", file=sys.stderr)
        project, public = both
        with alone(project, every):
            report["isolation"] = {"project": isolation(project, queries, raise_errors=False)}
        with alone(public, every):
            report["isolation"]["public, errors as values"] = isolation(public, queries, raise_errors=False)
            report["isolation"]["public, HTTPException (LitServe's way)"] = isolation(
                public, queries, raise_errors=True
            )
        print("idle CPU and memory ...", file=sys.stderr)
        report["idle"] = idle_use(every)
        print("latency ...", file=sys.stderr)
        report["latency"] = {
            f"classify_{n}": latency(every, queries, n, args.calls if n == 1 else max(10, args.calls // 3))
            for n in (1, 32)
        }
        print("overload ...", file=sys.stderr)
        report["overload"] = {}
        for server in both:
            with alone(server, every):
                report["overload"][server.name] = overload(server, queries, args.overload_clients)
    report["latency_within_10_percent"] = {
        name: {
            f"{size} {stat}": within(figures[name][stat], figures["project"][stat])
            for size, figures in report["latency"].items()
            for stat in ("p50_ms", "p99_ms")
        }
        for name, *_ in SERVERS[1:]
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {args.out}")


def print_table(report: dict) -> None:
    print(f"\nLitServe {report['litserve']}: project server vs LitServe's public API, {report['command']}")
    print(f"\n{'route / behaviour':58} {'today':>5} {'project':>8} {'public':>8}")
    for row in report["routes"]:
        cells = [f"{row[n]['status']}{'' if row[n]['served'] else ' x'}" for n in ("project", "public")]
        print(f"{row['name']:58} {row['expected']:>5} {cells[0]:>8} {cells[1]:>8}")
    print("(x: not what today's API answers)")
    print("\nper-item isolation (6 good + missing task + invalid image, queued together):")
    for name, r in report["isolation"].items():
        print(
            f"  {name:40} good {r['good_statuses']}, missing {r['missing_task_status']}, "
            f"invalid {r['invalid_image_status']}, "
            f"{r['items_in_them']} items in {r['worker_batches']} batches: "
            f"{'isolated' if r['isolated'] else 'NOT isolated'}"
        )
    print(f"\n{'latency ms, p50 / p99':28}" + "".join(f"{name:>30}" for name, *_ in SERVERS))
    for size, figures in report["latency"].items():
        cells = [f"{figures[n]['p50_ms']:.1f} / {figures[n]['p99_ms']:.1f}" for n, *_ in SERVERS]
        cells = "".join(f"{cell:>30}" for cell in cells)
        print(f"{size:28}{cells}")
    print(f"within 10% of the project's: {report['latency_within_10_percent']}")
    print("\nidle:", json.dumps(report["idle"]))
    print("overload:", json.dumps(report["overload"]))


if __name__ == "__main__":
    main()
