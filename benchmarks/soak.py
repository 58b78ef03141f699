"""Soak test: mixed traffic on one server for a long time, with a SIGKILL and restart of every server
process at fixed intervals; at the end every acknowledged example must be stored, and nothing else.

Clients (threads, each owning its own tasks) send, by weight: support calls of 1-4 Omniglot drawings
(each with an ``Idempotency-Key``), classify calls of 1 to 256 images, label forgets, task deletes and
task exports (each export must hold exactly the examples the client was told were stored). A call that
loses its connection (the server was killed) or is answered 503 (or 429 from admission) is sent again,
unchanged and with the same key, once the server is back, so the client's ledger is exact: at the end
every task holds exactly the examples the ledger says, and deleted tasks are gone. Every minute it
prints the resident memory of the server's processes (all of them: HTTP, inference worker, main), the
calls and errors so far; at the end the latency percentiles per call and the error counts by status,
and it writes JSON:

    python benchmarks/soak.py                                  # an hour, a SIGKILL every 10 minutes
    python benchmarks/soak.py --minutes 3 --kill-every 1 --out /tmp/soak.json

Exit status 1 if any acknowledged example was lost, any unacknowledged one appeared, an export
disagreed with the ledger, or the server answered a 5xx other than the documented 503s.
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
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from testkit import REPO, ServerProcess, latency_ms, omniglot

DOCUMENTED_503 = {"store_unavailable", "task_building", "not_ready", "overloaded"}
DOCUMENTED_429 = {"over_share", "rate_limited"}  # admission and rate limits: sent again after Retry-After
CLASSIFY_SIZES = [1, 1, 1, 4, 16, 64, 256]
WEIGHTS = {"support": 40, "classify": 40, "forget": 6, "delete": 3, "export": 6, "info": 5}
LABELS_PER_TASK = 12
MAX_TASK_EXAMPLES = 80


def cache_bytes(url: str) -> int | None:
    """Bytes of task memory the server's workers cache (``metanet_memory_cache_bytes``), None if it does
    not answer (restarting)."""
    try:
        page = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    return int(
        sum(
            float(line.split()[-1])
            for line in page.splitlines()
            if line.startswith("metanet_memory_cache_bytes")
        )
    )


def group_rss(pgid: int) -> tuple[int, int]:
    """Resident bytes of every process in process group ``pgid``, and how many processes there are."""
    total = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    count += 1
        except (OSError, ValueError, IndexError):
            continue
    return total, count


@dataclass
class Stats:
    """What every client saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)  # (op, status or "connection") -> count
    unexpected: list[str] = field(default_factory=list)
    export_mismatches: list[str] = field(default_factory=list)

    def record(self, op: str, status: int | str, seconds: float | None = None) -> None:
        with self.lock:
            self.statuses[op, status] += 1
            if seconds is not None:
                self.latencies[op].append(seconds)

    def problem(self, what: str) -> None:
        with self.lock:
            self.unexpected.append(what)


class Server:
    """The server process, with an event that is set while it is up (cleared across a kill and restart)."""

    def __init__(self, data_dir: Path, args: list[str]) -> None:
        self.process = ServerProcess(data_dir, *args)
        self.up = threading.Event()
        self.restarts: list[float] = []

    def start(self) -> None:
        self.process.start()
        self.up.set()

    def kill_and_restart(self) -> None:
        self.up.clear()
        self.process.kill()
        started = time.monotonic()
        self.process.start()
        self.restarts.append(time.monotonic() - started)
        self.up.set()


class Client:
    """One client thread: its own tasks and the ledger of what the server acknowledged for them."""

    def __init__(self, n: int, server: Server, drawings: list[list[str]], stats: Stats, seed: int) -> None:
        self.n = n
        self.server = server
        self.drawings = drawings
        self.stats = stats
        self.rng = random.Random(seed * 1000 + n)
        self.ledger: dict[str, Counter] = {}  # task -> label -> acknowledged examples
        self.deleted: set[str] = set()
        self.created = 0
        self.http = httpx.Client(base_url=server.process.url, timeout=180)

    def send(self, op: str | None, method: str, path: str, **kwargs) -> tuple[httpx.Response, bool]:
        """The request, sent again (unchanged) after a lost connection or a documented 503 until it gets
        another answer; the answer and whether it was sent more than once. ``op`` None: not counted."""
        resent = False
        while True:
            self.server.up.wait()
            started = time.perf_counter()
            try:
                answer = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if op:
                    self.stats.record(op, "connection")
                resent = True
                time.sleep(0.5)  # the server is going down: its event is about to be cleared
                continue
            elapsed = time.perf_counter() - started
            if answer.status_code in (429, 503):
                code = answer.json().get("error", {}).get("code")
                if op:
                    self.stats.record(op, answer.status_code)
                if code not in (DOCUMENTED_503 if answer.status_code == 503 else DOCUMENTED_429):
                    self.stats.problem(f"{op} {path}: {answer.status_code} {code}")
                time.sleep(float(answer.headers.get("Retry-After", "1")))
                resent = True
                continue
            if op:
                self.stats.record(op, answer.status_code, elapsed if answer.is_success else None)
            if answer.status_code >= 500:
                self.stats.problem(f"{op} {path}: {answer.status_code} {answer.text[:200]}")
            return answer, resent

    def live_tasks(self) -> list[str]:
        return sorted(self.ledger)

    def new_task(self) -> str:
        self.created += 1
        return f"soak-{self.n}-{self.created}"

    def pick_task(self) -> str:
        tasks = self.live_tasks()
        if len(tasks) < 3 or self.rng.random() < 0.05:
            return self.new_task()
        return self.rng.choice(tasks)

    def image(self) -> str:
        character = self.rng.choice(self.drawings)
        return self.rng.choice(character)

    def support(self) -> None:
        task = self.pick_task()
        held = self.ledger.get(task, Counter())
        if sum(held.values()) >= MAX_TASK_EXAMPLES:
            return self.forget(task)
        labels = [f"c{self.rng.randrange(LABELS_PER_TASK)}" for _ in range(self.rng.randint(1, 4))]
        body = {"examples": [{"label": label, "image": self.image()} for label in labels]}
        key = str(uuid.uuid4())
        answer, _ = self.send("support", "POST", f"/tasks/{task}/support", json=body,
                              headers={"Idempotency-Key": key})  # fmt: skip
        if answer.status_code != 200:
            return self.stats.problem(f"support {task}: {answer.status_code} {answer.text[:200]}")
        self.ledger.setdefault(task, Counter()).update(labels)
        stored = answer.json()["num_examples"]
        if stored != sum(self.ledger[task].values()):
            self.stats.problem(f"support {task}: answered {stored} examples, ledger {self.ledger[task]}")

    def classify(self) -> None:
        tasks = [t for t in self.live_tasks() if self.ledger[t]]
        if not tasks:
            return self.support()
        task = self.rng.choice(tasks)
        size = self.rng.choice(CLASSIFY_SIZES)
        body = {"images": [self.image() for _ in range(size)], "top_k": 3}
        answer, _ = self.send(f"classify_{size}", "POST", f"/tasks/{task}/classify", json=body)
        if answer.status_code != 200 or len(answer.json()["predictions"]) != size:
            self.stats.problem(f"classify {task}: {answer.status_code} {answer.text[:200]}")

    def forget(self, task: str | None = None) -> None:
        tasks = [t for t in self.live_tasks() if self.ledger[t]]
        if task is None:
            if not tasks:
                return self.support()
            task = self.rng.choice(tasks)
        label = self.rng.choice(sorted(self.ledger[task]))
        answer, resent = self.send("forget", "DELETE", f"/tasks/{task}/labels/{label}")
        # A forget resent after a lost answer may find its label already gone: it was applied.
        if answer.status_code == 200 or (resent and answer.status_code == 404):
            del self.ledger[task][label]
        else:
            self.stats.problem(f"forget {task}/{label}: {answer.status_code} {answer.text[:200]}")

    def delete(self) -> None:
        tasks = self.live_tasks()
        if not tasks:
            return self.support()
        task = self.rng.choice(tasks)
        answer, resent = self.send("delete", "DELETE", f"/tasks/{task}")
        if answer.status_code == 200 or (resent and answer.status_code == 404):
            del self.ledger[task]
            self.deleted.add(task)
        else:
            self.stats.problem(f"delete {task}: {answer.status_code} {answer.text[:200]}")

    def export(self) -> None:
        tasks = self.live_tasks()
        if not tasks:
            return self.support()
        task = self.rng.choice(tasks)
        answer, _ = self.send("export", "GET", f"/tasks/{task}/export")
        if answer.status_code != 200:
            return self.stats.problem(f"export {task}: {answer.status_code} {answer.text[:200]}")
        exported = Counter(example["label"] for example in answer.json()["examples"])
        if exported != +self.ledger[task]:
            with self.stats.lock:
                self.stats.export_mismatches.append(f"{task}: export {exported}, ledger {self.ledger[task]}")

    def info(self) -> None:
        tasks = self.live_tasks()
        if tasks:
            self.send("info", "GET", f"/tasks/{self.rng.choice(tasks)}")

    def run(self, deadline: float) -> None:
        ops = list(WEIGHTS)
        weights = [WEIGHTS[op] for op in ops]
        while time.monotonic() < deadline:
            getattr(self, self.rng.choices(ops, weights)[0])()

    def verify(self) -> dict:
        """Every task of the ledger holds exactly its acknowledged examples; deleted ones are gone."""
        lost = extra = 0
        problems = []
        for task, labels in self.ledger.items():
            answer, _ = self.send(None, "GET", f"/tasks/{task}")
            stored = Counter(answer.json()["labels"]) if answer.status_code == 200 else Counter()
            expected = +labels
            lost += sum((expected - stored).values())
            extra += sum((stored - expected).values())
            if stored != expected:
                problems.append(f"{task}: stored {dict(stored)}, acknowledged {dict(expected)}")
        for task in self.deleted - set(self.ledger):
            answer, _ = self.send(None, "GET", f"/tasks/{task}")
            if answer.status_code != 404:
                problems.append(f"{task}: deleted, but GET answers {answer.status_code}")
        examples = sum(sum(labels.values()) for labels in self.ledger.values())
        return {
            "tasks": len(self.ledger),
            "examples": examples,
            "lost": lost,
            "extra": extra,
            "problems": problems,
        }


def _is_error(status: int | str) -> bool:
    return status == "connection" or status >= 400


def run(
    minutes: float,
    kill_every: float,
    clients: int = 4,
    sample_every: float = 60.0,
    data_dir: Path | None = None,
    server_args: tuple[str, ...] = (),
    seed: int = 0,
    log=print,
) -> dict:
    """Run the soak; its report (also what ``--out`` saves)."""
    drawings = [[base64.b64encode(png).decode() for png in character] for character in omniglot(None, 60, 20)]
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="metanet-soak-")) / "data"
    server = Server(data_dir, list(server_args))
    stats = Stats()
    log(f"soak: {minutes} min, SIGKILL every {kill_every} min, {clients} clients, data in {data_dir}")
    server.start()
    started = time.monotonic()
    deadline = started + minutes * 60
    workers = [Client(n, server, drawings, stats, seed) for n in range(clients)]
    threads = [threading.Thread(target=w.run, args=(deadline,), name=f"client-{w.n}") for w in workers]
    samples: list[dict] = []
    stop = threading.Event()

    def sample() -> None:
        rss, processes = group_rss(server.process.process.pid)
        with stats.lock:
            calls = sum(n for (_, status), n in stats.statuses.items() if status != "connection")
            errors = sum(n for (_, status), n in stats.statuses.items() if _is_error(status))
        cached = cache_bytes(server.process.url) if server.up.is_set() else None
        entry = {
            "minute": round((time.monotonic() - started) / 60, 2),
            "rss_mib": round(rss / 2**20, 1),
            "cache_mib": None if cached is None else round(cached / 2**20, 1),
            "processes": processes,
            "calls": calls,
            "errors": errors,
            "restarts": len(server.restarts),
        }
        samples.append(entry)
        log(
            f"  {entry['minute']:6.2f} min  server RSS {entry['rss_mib']:7.1f} MiB ({processes} processes; "
            f"task memory cached {entry['cache_mib']} MiB)  "
            f"calls {calls}  errors {errors}  restarts {entry['restarts']}"
        )

    def kill_and_restart() -> None:
        log(f"  {(time.monotonic() - started) / 60:6.2f} min  SIGKILL every server process, then restart")
        server.kill_and_restart()
        log(f"  restarted in {server.restarts[-1]:.1f} s")

    def monitor() -> None:
        """Samples memory on time, also while a restart (in its own thread) is under way."""
        next_kill = started + kill_every * 60
        next_sample = started + sample_every
        restarting: threading.Thread | None = None
        while not stop.is_set():
            now = time.monotonic()
            idle = restarting is None or not restarting.is_alive()
            if kill_every > 0 and idle and now >= next_kill and now < deadline:
                restarting = threading.Thread(target=kill_and_restart, name="restart")
                restarting.start()
                while next_kill <= now:
                    next_kill += kill_every * 60
            if now >= next_sample:
                sample()
                while next_sample <= now:
                    next_sample += sample_every
            stop.wait(0.2)
        if restarting is not None:
            restarting.join()

    watcher = threading.Thread(target=monitor, name="monitor")
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()
    sample()
    verified = [w.verify() for w in workers]
    server.process.stop()
    for w in workers:
        w.http.close()

    by_op = {op: latency_ms(values) for op, values in sorted(stats.latencies.items())}
    errors = Counter()
    for (op, status), n in stats.statuses.items():
        if _is_error(status):
            errors[f"{op} {status}"] += n
    report = {
        "config": {
            "minutes": minutes,
            "kill_every_minutes": kill_every,
            "clients": clients,
            "weights": WEIGHTS,
            "classify_sizes": sorted(set(CLASSIFY_SIZES)),
            "server_args": list(server_args),
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "elapsed_minutes": round((time.monotonic() - started) / 60, 2),
        "restarts_s": [round(s, 1) for s in server.restarts],
        "latency": by_op,
        "errors": dict(sorted(errors.items())),
        "unexpected": stats.unexpected,
        "export_mismatches": stats.export_mismatches,
        "rss": samples,
        "rss_drift": rss_drift(samples, minutes, kill_every or 10.0),
        "acknowledged": {
            "tasks": sum(v["tasks"] for v in verified),
            "examples": sum(v["examples"] for v in verified),
            "lost": sum(v["lost"] for v in verified),
            "extra": sum(v["extra"] for v in verified),
            "problems": [p for v in verified for p in v["problems"]],
        },
    }
    report["ok"] = not (
        report["acknowledged"]["lost"]
        or report["acknowledged"]["extra"]
        or report["acknowledged"]["problems"]
        or stats.unexpected
        or stats.export_mismatches
    )
    return report


def rss_drift(samples: list[dict], minutes: float, window: float) -> dict | None:
    """Mean resident memory over the last ``window`` minutes against the ``window`` minutes after the
    first (warm-up) one; with a restart every ``window`` minutes, both are one whole life of a restarted
    server (samples taken while it restarts left out). Also the same for RSS less the task memory the
    workers cache (a bounded LRU cache, so what grows beyond it is what would leak). None for a run too
    short to have both."""
    up = max((s["processes"] for s in samples), default=0)
    samples = [s for s in samples if s["processes"] == up]  # not those taken during a restart

    def change(value) -> tuple[float, float, float] | None:
        early = [value(s) for s in samples if window <= s["minute"] < 2 * window and value(s) is not None]
        late = [
            value(s) for s in samples if minutes - window <= s["minute"] < minutes and value(s) is not None
        ]
        if not early or not late:
            return None
        before, after = float(np.mean(early)), float(np.mean(late))
        return round(before, 1), round(after, 1), round(after / before - 1, 4)

    rss = change(lambda s: s["rss_mib"])
    if minutes < 3 * window or rss is None:
        return None
    less_cache = change(lambda s: None if s.get("cache_mib") is None else s["rss_mib"] - s["cache_mib"])
    return {
        "minutes": [[window, 2 * window], [minutes - window, minutes]],
        "mean_rss_mib": list(rss[:2]),
        "change": rss[2],
        "mean_rss_less_cache_mib": None if less_cache is None else list(less_cache[:2]),
        "change_less_cache": None if less_cache is None else less_cache[2],
    }


def summary(report: dict) -> str:
    lines = [f"{'call':<14}{'calls':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for op, row in report["latency"].items():
        lines.append(
            f"{op:<14}{row['calls']:>7}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}"
            f"{row['p99_ms']:>10.1f}{row['max_ms']:>10.1f}"
        )
    ack = report["acknowledged"]
    lines.append("errors: " + (", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"))
    lines.append(f"restarts (s): {report['restarts_s']}")
    lines.append(
        f"acknowledged at the end: {ack['examples']} examples in {ack['tasks']} tasks; "
        f"lost {ack['lost']}, unacknowledged extra {ack['extra']}"
    )
    mismatches = len(report["export_mismatches"])
    lines.append(f"unexpected answers: {len(report['unexpected'])}; export mismatches: {mismatches}")
    if drift := report.get("rss_drift"):
        (a, b), (c, d) = drift["minutes"]
        before, after = drift["mean_rss_mib"]
        lines.append(
            f"server RSS, mean over minutes {a:g}-{b:g}: {before:.0f} MiB, over {c:g}-{d:g}: {after:.0f} MiB "
            f"({drift['change']:+.1%})"
        )
        if drift["mean_rss_less_cache_mib"]:
            before, after = drift["mean_rss_less_cache_mib"]
            lines.append(
                f"  less the cached task memory: {before:.0f} MiB, then {after:.0f} MiB "
                f"({drift['change_less_cache']:+.1%})"
            )
    lines.append("OK" if report["ok"] else "FAILED")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to run (default: 60)")
    parser.add_argument("--kill-every", type=float, default=10.0, help="minutes between SIGKILLs (0: none)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default: 4)")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between memory samples")
    parser.add_argument("--data-dir", type=Path, help="the server's data dir (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/soak.json")
    parser.add_argument("server_args", nargs="*", help="extra options of python -m server (after --)")
    args = parser.parse_args()
    report = run(
        args.minutes,
        args.kill_every,
        args.clients,
        args.sample_every,
        args.data_dir,
        tuple(args.server_args),
        args.seed,
    )
    print(summary(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
