"""Builds beside serving, over HTTP: a classify that finds its task still building answers 503 with
Retry-After once METANET_BUILD_WAIT runs out, a warm task is served meanwhile, /metrics shows the
build, and a restart reloads the saved memory."""

from __future__ import annotations

import time

import httpx
import pytest

from testkit import b64, omniglot, running_server, support_body

LABELS = 120


@pytest.fixture(scope="module")
def drawings() -> list[list[bytes]]:
    return omniglot(None, LABELS, 2)


def test_a_building_task_answers_503_with_retry_after_and_others_are_served(tmp_path, drawings) -> None:
    data = tmp_path / "data"
    env = {"METANET_BUILD_WAIT": "0"}  # answer at once instead of waiting for the build
    with running_server(data, env=env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        http.post("/tasks/warm/support", json=support_body([(f"w{i}", drawings[i][0]) for i in range(5)]))
        query = {"images": [b64(drawings[0][1])]}
        while (warm := http.post("/tasks/warm/classify", json=query)).status_code == 503:
            time.sleep(0.1)
        assert warm.status_code == 200

        http.post("/tasks/big/support", json=support_body([(f"c{i}", d[0]) for i, d in enumerate(drawings)]))
        building = http.post("/tasks/big/classify", json=query)
        assert building.status_code == 503, building.text
        assert building.json()["error"]["code"] == "task_building"
        assert int(building.headers["Retry-After"]) >= 1
        assert http.post("/tasks/warm/classify", json=query).status_code == 200  # not behind the build
        metrics = http.get("/metrics").text
        assert "metanet_memory_builds_in_progress{" in metrics

        deadline = time.monotonic() + 120
        while (answer := http.post("/tasks/big/classify", json=query)).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "c0"
        metrics = http.get("/metrics").text
        assert 'metanet_memory_build_seconds_count{kind="build"}' in metrics
        assert "metanet_memory_cache_bytes{" in metrics
        deadline = time.monotonic() + 60
        while not list((data / "derived").glob("*.mem")):  # saved after the build answered
            assert time.monotonic() < deadline
            time.sleep(0.2)

    with running_server(data) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        started = time.monotonic()
        answer = http.post("/tasks/big/classify", json=query)  # waits (default) for the reload
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "c0"
        assert time.monotonic() - started < 30
        metrics = http.get("/metrics").text
        assert 'metanet_memory_build_seconds_count{kind="load"} 1.0' in metrics
        assert http.delete("/tasks/big").status_code == 200
        assert not list((data / "derived").glob("*.mem"))  # deleted with the task
