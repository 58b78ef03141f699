"""Overload benchmark: one server on its defaults (except the API keys that name the tenants), flooded
by one tenant while another tenant and a monitor keep calling (docs/SERVER.md, "Admission and
fairness").

Throughout, tenant "probe" sends 1-image classifies back to back and a monitor calls /health every
50 ms. Phases, in one run against one server process:
  0. warm-up: 5 s of phase 1, not measured;
  1. busy: ``--baseline-clients`` (4) clients of tenant "heavy" send 256-image classifies back to back
     for ``--baseline-seconds``: the throughput of a server kept busy without being overloaded;
     then the probe and the monitor alone (their latency on an idle server);
  2. overload: ``--clients`` clients of tenant "heavy" each send 256-image classifies for
     ``--seconds`` (from a process of their own); a refused request (429 or 503) is sent again after
     its Retry-After, as the SDK does;
  3. busy again, as in 1. This VM's speed drifts from minute to minute, so the unloaded throughput
     is the mean of phases 1 and 3.
Every phase's clients are created and connected before its clock starts.

Reports: images answered per second from a phase's start to its last answer (unloaded and under
overload, and their ratio); the probe's 1-image latency p50/p99/max in each phase and its p99 per
5-second window of the overload; /health p50/p99; the heavy clients' answers by status, whether every
refusal carried Retry-After and the JSON error body, the slowest refusal and answer (at the client);
the server's own counters (refusals by code, work items its worker refused at the deadline, images it
classified and its seconds busy) and its processes' CPU seconds and page faults, with the images the
worker classified per busy second.
Prints JSON and writes it to ``--out``.

    python benchmarks/overload.py                         # 64 clients x 256 images for 30 s
    python benchmarks/overload.py --clients 16 --seconds 10 --out /tmp/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from testkit import REPO, ServerProcess, b64, latency_ms, omniglot, running_server

KEYS = {"heavy": "heavy-overload-key", "probe": "probe-overload-key"}
LABELS = 20


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def counters(server: ServerProcess) -> dict[str, float]:
    """The server's admission counters, summed over its processes, and its processes' CPU seconds and
    page faults (Linux; the server runs in a process group of its own)."""
    return {**metrics(server.url), **process_group_usage(server.process.pid)}


def process_group_usage(group: int) -> dict[str, float]:
    """Minor page faults and user and system CPU seconds of the live processes in process group
    ``group``, from /proc (empty elsewhere)."""
    if not Path("/proc/self/stat").exists():
        return {}
    usage = {"process_minor_faults": 0.0, "process_user_seconds": 0.0, "process_system_seconds": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp
        except OSError:
            continue  # exited
        if int(fields[2]) == group:
            usage["process_minor_faults"] += int(fields[7])
            usage["process_user_seconds"] += int(fields[11]) / tick
            usage["process_system_seconds"] += int(fields[12]) / tick
    return usage


def rates(counted: dict[str, float], seconds: float) -> dict[str, float | None]:
    """From a phase's counter deltas: the images the worker classified per second it was busy, and the
    server processes' page faults and system (kernel) CPU seconds per second."""
    busy = counted.get("metanet_worker_seconds_sum", 0.0)
    classified = counted.get("metanet_classified_images_total", 0.0)
    return {
        "worker_images_per_busy_s": classified / busy if busy else None,
        "minor_faults_per_s": counted.get("process_minor_faults", 0.0) / seconds,
        "system_cpu_per_s": counted.get("process_system_seconds", 0.0) / seconds,
    }


def metrics(url: str) -> dict[str, float]:
    """The server's admission counters, summed over processes."""
    page = httpx.get(f"{url}/metrics", timeout=60).text
    found: dict[str, float] = {}
    summed = (
        "metanet_worker_expired_total",
        "metanet_queue_images",
        "metanet_classified_images_total",  # what the worker computed, answered in time or not
        "metanet_worker_seconds_sum",  # the worker's busy time
    )
    for name, labels, value in re.findall(r"^(metanet_[a-z_]+)(\{[^}]*\})? (\S+)$", page, re.M):
        if name in summed or name == "metanet_refusals_total":
            key = name + (labels if name == "metanet_refusals_total" else "")
            found[key] = found.get(key, 0.0) + float(value)
    return found


async def setup(url: str, chars: list[list[str]]) -> None:
    """A 20-label task for each tenant, its memory built."""
    for key in KEYS.values():
        async with httpx.AsyncClient(base_url=url, headers=auth(key), timeout=600) as http:
            examples = [{"label": f"c{i}", "image": chars[i][0]} for i in range(LABELS)]
            (await http.post("/tasks/t/support", json={"examples": examples})).raise_for_status()
            (await http.post("/tasks/t/classify", json={"images": [chars[0][1]]})).raise_for_status()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "content-type": "application/json"}


async def open_clients(url: str, key: str | None, count: int) -> list[httpx.AsyncClient]:
    """``count`` clients (of the tenant with ``key``), each with its connection open: a phase's clock
    starts once every client is ready to send (making 64 clients takes the client process seconds)."""
    clients = [
        httpx.AsyncClient(base_url=url, headers=auth(key) if key else None, timeout=600) for _ in range(count)
    ]
    await asyncio.gather(*(client.get("/health") for client in clients))
    return clients


async def classify_loop(http: httpx.AsyncClient, body: bytes, until: float, record: list) -> None:
    """Send ``body`` back to back until ``until``, a refused one again after its Retry-After; ``record``
    gets (sent, seconds, status, retry_after, json_error) per request."""
    while time.monotonic() < until:
        sent = time.monotonic()
        answer = await http.post("/tasks/t/classify", content=body)
        elapsed = time.monotonic() - sent
        retry_after = answer.headers.get("retry-after")
        error = None
        if answer.status_code != 200:
            try:
                error = answer.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                error = "not-json"
        record.append((sent, elapsed, answer.status_code, retry_after, error))
        if answer.status_code in (429, 503) and retry_after:
            await asyncio.sleep(min(float(retry_after), max(0.0, until - time.monotonic())))


async def health_loop(
    http: httpx.AsyncClient, until: float, record: list[float], every: float = 0.05
) -> None:
    while time.monotonic() < until:
        sent = time.monotonic()
        (await http.get("/health")).raise_for_status()
        record.append(time.monotonic() - sent)
        await asyncio.sleep(max(0.0, every - (time.monotonic() - sent)))


def served_images(record: list, images: int) -> int:
    return sum(images for _, _, status, _, _ in record if status == 200)


def answering_seconds(started: float, *records: list) -> float:
    """From ``started`` to the last answer in ``records``: the time the server took to answer them (not
    counting the client processes' own shutdown)."""
    return max(sent + elapsed for record in records for sent, elapsed, *_ in record) - started


async def watching(url: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """The clients of tenant "probe" and of the /health monitor, connected."""
    (probe,), (monitor,) = await open_clients(url, KEYS["probe"], 1), await open_clients(url, None, 1)
    return probe, monitor


async def watch(clients: tuple[httpx.AsyncClient, httpx.AsyncClient], body: bytes, until: float) -> tuple:
    """Tenant "probe"'s 1-image classifies back to back, and /health every 50 ms, until ``until``: their
    records."""
    probe: list = []
    health: list[float] = []
    await asyncio.gather(
        classify_loop(clients[0], body, until, probe), health_loop(clients[1], until, health)
    )
    for http in clients:
        await http.aclose()
    return probe, health


async def busy(
    server: ServerProcess, heavy_body: bytes, probe_body: bytes, seconds: float, clients: int
) -> dict:
    """``clients`` of tenant "heavy" sending 256-image classifies back to back for ``seconds``, with the
    probe and the monitor: the throughput of a server that is busy but refuses nothing."""
    url = server.url
    https = await open_clients(url, KEYS["heavy"], clients)
    watchers = await watching(url)
    record: list = []
    before = counters(server)
    started = time.monotonic()
    until = started + seconds
    _, (probe, health) = await asyncio.gather(
        asyncio.gather(*(classify_loop(http, heavy_body, until, record) for http in https)),
        watch(watchers, probe_body, until),
    )
    wall = time.monotonic() - started
    after = counters(server)
    for http in https:
        await http.aclose()
    answering = answering_seconds(started, record, probe)
    return {
        "seconds": wall,
        "answering_seconds": answering,
        "images_per_s": (served_images(record, 256) + served_images(probe, 1)) / answering,
        "refused": sum(1 for r in record if r[2] != 200),
        "request_256": latency_ms([e for _, e, s, _, _ in record if s == 200]),
        "probe_1_image": latency_ms([e for _, e, s, _, _ in probe if s == 200]),
        "health": latency_ms(health),
        "server_counters": (counted := {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}),
        "server_rates": rates(counted, wall),
    }


async def quiet(url: str, probe_body: bytes, seconds: float) -> dict:
    """The probe's 1-image classifies and /health with nothing else running."""
    probe, health = await watch(await watching(url), probe_body, time.monotonic() + seconds)
    return {
        "probe_1_image": latency_ms([e for _, e, s, _, _ in probe if s == 200]),
        "health": latency_ms(health),
    }


def flood(url: str, body: bytes, clients: int, ready, go, out: Path) -> None:
    """The heavy tenant's clients, in a process of their own (``overload``), so that their work on the
    client side does not delay the probe's and the monitor's measurements. Once every client is
    connected it sets ``ready`` and sends until the time ``go`` gives; records go to ``out``."""
    record: list = []

    async def run() -> None:
        https = await open_clients(url, KEYS["heavy"], clients)
        ready.set()
        until = await asyncio.to_thread(go.get)
        await asyncio.gather(*(classify_loop(http, body, until, record) for http in https))

    asyncio.run(run())
    out.write_text(json.dumps(record))


async def overload(
    server: ServerProcess, heavy_body: bytes, probe_body: bytes, clients: int, seconds: float
) -> dict:
    url = server.url
    spawn = mp.get_context("spawn")
    ready, go = spawn.Event(), spawn.Queue()
    with tempfile.TemporaryDirectory() as folder:
        records = Path(folder) / "heavy.json"
        flooding = spawn.Process(target=flood, args=(url, heavy_body, clients, ready, go, records))
        flooding.start()
        await asyncio.to_thread(ready.wait)
        watchers = await watching(url)
        before = counters(server)
        print(f"  {clients} clients connected, flooding", file=sys.stderr)
        started = time.monotonic()  # CLOCK_MONOTONIC: the same clock in the flood's process
        until = started + seconds
        go.put(until)
        probe, health = await watch(watchers, probe_body, until)
        await asyncio.to_thread(flooding.join)
        heavy = [tuple(r) for r in json.loads(records.read_text())]
    wall = time.monotonic() - started
    after = counters(server)
    refused = [r for r in heavy if r[2] != 200]
    windows = {}
    for start in np.arange(0, seconds, 5.0):
        inside = [e for t, e, s, _, _ in probe if s == 200 and start <= t - started < start + 5.0]
        windows[f"{start:.0f}-{start + 5:.0f}s"] = percentile([e * 1e3 for e in inside], 99)
    answering = answering_seconds(started, heavy, probe)
    return {
        "clients": clients,
        "seconds": wall,
        "answering_seconds": answering,
        # Sent within the window: requests answered after its end count too, up to the last answer.
        "images_per_s": (served_images(heavy, 256) + served_images(probe, 1)) / answering,
        "heavy_answers": dict(Counter(f"{r[2]} {r[4] or 'ok'}" for r in heavy)),
        "heavy_200": latency_ms([e for _, e, s, _, _ in heavy if s == 200]),
        "heavy_refused": latency_ms([e for _, e, _, _, _ in refused]),
        "refusals_with_retry_after": sum(1 for r in refused if r[3] is not None),
        "refusals_with_json_error": sum(1 for r in refused if r[4] not in (None, "not-json")),
        "refusal_statuses": sorted({r[2] for r in refused}),
        "probe_1_image": latency_ms([e for _, e, s, _, _ in probe if s == 200]),
        "probe_not_200": sum(1 for r in probe if r[2] != 200),
        "probe_p99_ms_per_5s": windows,
        # Each probe call: seconds into the overload when sent, seconds to its answer, status.
        "probe_calls": [(round(t - started, 4), round(e, 4), s) for t, e, s, _, _ in probe],
        "health": latency_ms(health),
        "server_counters": (counted := {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}),
        "server_rates": rates(counted, wall),
    }


async def run(args: argparse.Namespace) -> dict:
    chars = [[b64(png) for png in row] for row in omniglot(None, LABELS, 20)]
    batch = [chars[i % LABELS][1 + i % 19] for i in range(256)]
    heavy_body = json.dumps({"images": batch}).encode()
    probe_body = json.dumps({"images": [chars[3][5]]}).encode()
    with tempfile.TemporaryDirectory() as folder:
        keys_file = Path(folder) / "keys"
        keys_file.write_text("".join(f"{tenant}:{key}\n" for tenant, key in KEYS.items()))
        with running_server(Path(folder) / "data", "--api-keys-file", str(keys_file)) as server:
            info = httpx.get(f"{server.url}/info", timeout=60).json()
            await setup(server.url, chars)
            # Warm-up, not measured: phase 1 then does not start on a server that has barely served.
            await busy(server, heavy_body, probe_body, 5.0, args.baseline_clients)
            print("unloaded ...", file=sys.stderr)
            before = await busy(server, heavy_body, probe_body, args.baseline_seconds, args.baseline_clients)
            alone = await quiet(server.url, probe_body, min(args.baseline_seconds, 5.0))
            print(f"  {before['images_per_s']:.0f} images/s", file=sys.stderr)
            print(
                f"overload: {args.clients} clients x 256 images for {args.seconds:g} s ...", file=sys.stderr
            )
            loaded = await overload(server, heavy_body, probe_body, args.clients, args.seconds)
            print("unloaded again ...", file=sys.stderr)
            after = await busy(server, heavy_body, probe_body, args.baseline_seconds, args.baseline_clients)
            print(f"  {after['images_per_s']:.0f} images/s", file=sys.stderr)
    deadline = info["queue"]["queue_deadline"]
    # The unloaded throughput is measured before and after the overload: this VM's speed drifts.
    base = (before["images_per_s"] + after["images_per_s"]) / 2
    slowest = max(loaded["heavy_200"]["max_ms"] or 0, loaded["heavy_refused"]["max_ms"] or 0)
    return {
        "command": "python benchmarks/overload.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "server": {"queue": info["queue"], "workers": 1, "api_servers": 1},
        "unloaded": {
            "clients": args.baseline_clients,
            "images_per_s": base,
            "before": before,
            "after": after,
            **alone,
        },
        "overload": loaded,
        "checks": {
            "probe_p99_ms_at_most_250": (loaded["probe_1_image"]["p99_ms"] or 1e9) <= 250,
            "answered_or_refused_within_deadline": slowest <= deadline * 1e3,
            "every_refusal_has_retry_after": loaded["refusals_with_retry_after"]
            == sum(v for k, v in loaded["heavy_answers"].items() if not k.startswith("200")),
            "images_per_s_within_10pct": loaded["images_per_s"] >= 0.9 * base,
            "health_p99_ms_at_most_50": (loaded["health"]["p99_ms"] or 1e9) <= 50,
        },
        "throughput_ratio": loaded["images_per_s"] / base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument(
        "--baseline-clients",
        type=int,
        default=4,
        help="clients of the unloaded phase: enough to keep the "
        "worker busy (decoding overlaps inference), too few to be refused",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/overload.json")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
