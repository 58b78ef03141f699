"""Where a real server's processes spend their time under 256-image classify load: py-spy samples every
process of the server (inference workers, HTTP processes) while clients stream requests at a 20-label
task, then prints each process's busiest functions (inclusive and self time):

    python -m benchmarks.profile_server                          # CPU, one worker, one HTTP process
    python -m benchmarks.profile_server --device cuda --api-servers 8 --clients 16 --out gpu-results/profile

Needs the ``py-spy`` binary (``pip install py-spy``). Writes each process's raw py-spy stacks and a
summary.txt under ``--out``. A profile, not a figure: it shows what to make faster next.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from testkit import b64, omniglot, running_server

ROLES = {"inference_worker": "inference worker", "uvicorn": "HTTP process"}


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for c in map(int, found) for d in (c, *children(c))]


def summarize(raw: Path, top: int) -> tuple[str, list[str]]:
    """The process's role and its ``top`` functions by inclusive and by self samples."""
    inclusive, own, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    role = next((name for key, name in ROLES.items() if any(key in f for f in inclusive)), "other")
    lines = [f"  {total} samples", "  inclusive:"]
    lines += [f"    {n:6d} {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines += ["  self:"] + [f"    {n:6d} {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return role, lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--api-servers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("runs/profile_server"))
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        parser.error("py-spy is not installed: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)

    chars = [[b64(png) for png in row] for row in omniglot(None, 20, 20)]
    support = {"examples": [{"label": f"c{i}", "image": chars[i][0]} for i in range(20)]}
    body = json.dumps({"images": [chars[i % 20][1 + i % 19] for i in range(256)]}).encode()
    server_args = ["--device", args.device, "--backend", args.backend, "--workers", str(args.workers)]
    server_args += ["--api-servers", str(args.api_servers)]
    with (
        tempfile.TemporaryDirectory() as folder,
        running_server(Path(folder) / "data", *server_args) as server,
    ):
        with httpx.Client(base_url=server.url, timeout=600) as http:
            http.post("/tasks/t/support", json=support).raise_for_status()
            for _ in range(3):  # builds the memory, warms every path
                http.post("/tasks/t/classify", content=body, headers={"content-type": "application/json"})
        stop, answered = threading.Event(), Counter()

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=600) as http:
                while not stop.is_set():
                    answer = http.post(
                        "/tasks/t/classify", content=body, headers={"content-type": "application/json"}
                    )
                    answered[answer.status_code] += 1

        clients = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in clients:
            thread.start()
        started = time.perf_counter()
        pids = children(server.process.pid)
        spies = [
            subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", "200"]
                + ["--format", "raw", "--nonblocking", "-o", str(args.out / f"{pid}.raw")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid in pids
        ]
        for spy in spies:
            spy.wait()
        wall = time.perf_counter() - started
        stop.set()
        for thread in clients:
            thread.join()

    report = [
        f"{args.device}, {args.backend}, {args.workers} worker(s), {args.api_servers} HTTP process(es), "
        f"{args.clients} clients: {answered[200] * 256 / wall:.0f} images/s while sampled; "
        f"answers by status: {dict(answered)}"
    ]
    for pid in pids:
        raw = args.out / f"{pid}.raw"
        if raw.exists() and raw.stat().st_size:
            role, lines = summarize(raw, args.top)
            report += [f"process {pid} ({role})", *lines]
    (args.out / "summary.txt").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
