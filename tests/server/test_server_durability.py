"""SIGKILL the whole server while support calls stream in; after a restart every acknowledged example is
there and predictions are the same."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from testkit import ServerProcess, assert_acknowledged_kept, b64, in_threads, support_body


def test_sigkill_loses_no_acknowledged_example(tmp_path, tibetan) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            examples = [(f"c{i}", tibetan[i][0]) for i in range(10)]
            assert http.post("/tasks/stable/support", json=support_body(examples)).status_code == 200
            query = {"images": [b64(tibetan[i][1]) for i in range(10)], "top_k": 3}
            before = http.post("/tasks/stable/classify", json=query).json()

        acknowledged: dict[str, list[str]] = {"stream-0": [], "stream-1": []}
        enough, stop = threading.Event(), threading.Event()

        def stream(task: str) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    label = f"{task}-{i}"
                    body = support_body([(label, tibetan[i % 20][1 + i % 19])])
                    try:
                        answer = http.post(f"/tasks/{task}/support", json=body)
                    except httpx.TransportError:
                        return  # the server is gone
                    assert answer.status_code == 200, answer.text
                    acknowledged[task].append(label)
                    if sum(map(len, acknowledged.values())) >= 30:
                        enough.set()

        with in_threads(stream, [(task,) for task in acknowledged]):
            try:
                assert enough.wait(120), "support calls did not come through"
                server.kill()  # SIGKILL to every process of the server, mid-stream
            finally:
                stop.set()

        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert_acknowledged_kept(http, acknowledged)
            after = http.post("/tasks/stable/classify", json=query).json()
        assert after["version"] == before["version"]
        for old, new in zip(before["predictions"], after["predictions"], strict=True):
            assert [r["label"] for r in new["top_k"]] == [r["label"] for r in old["top_k"]]
            for a, b in zip(old["top_k"], new["top_k"], strict=True):
                assert abs(a["score"] - b["score"]) < 1e-4
    finally:
        server.stop()


def test_sigterm_to_the_main_process_stops_every_process(tmp_path) -> None:
    server = ServerProcess(tmp_path / "data", "--workers", "2").start()
    try:
        server.process.send_signal(signal.SIGTERM)  # the main process only, as `docker stop` or systemd do
        server.process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(server.process.pid, 0)  # anyone left in the server's process group?
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("server processes outlived SIGTERM to the main process")
        assert not server.healthy()
    finally:
        server.stop()
