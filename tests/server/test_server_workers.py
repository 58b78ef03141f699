"""Two inference workers, concurrent clients interleaving support and classify calls on shared tasks:
every classify sees every support acknowledged before it (read-your-writes), whichever worker runs it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from testkit import ServerProcess, b64, run_concurrently, running_server, support_body

CLIENTS, ROUNDS = 4, 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("server") / "data", "--workers", "2") as process:
        yield process


def test_read_your_writes_across_two_workers(server: ServerProcess, tibetan) -> None:
    tasks = ["shared-0", "shared-1"]
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for task in tasks:  # start each task with a few examples
            http.post(f"/tasks/{task}/support", json=support_body([(f"{task}-seed", tibetan[19][0])]))

    def client(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for r in range(ROUNDS):
                task, label = tasks[(n + r) % 2], f"client{n}-round{r}"
                drawing = tibetan[(n * ROUNDS + r) % 19]
                added = http.post(f"/tasks/{task}/support", json=support_body([(label, drawing[0])]))
                assert added.status_code == 200, added.text
                query = {"images": [b64(drawing[1])], "top_k": 10_000}
                answer = http.post(f"/tasks/{task}/classify", json=query)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                seen = {r["label"] for r in body["predictions"][0]["top_k"]}
                assert body["version"] >= added.json()["version"] and label in seen, (
                    f"{label}: acknowledged v{added.json()['version']}, classify saw v{body['version']}"
                )

    run_concurrently(client, [(n,) for n in range(CLIENTS)])

    with httpx.Client(base_url=server.url, timeout=60) as http:
        total = sum(http.get(f"/tasks/{task}").json()["num_examples"] for task in tasks)
        assert total == len(tasks) + CLIENTS * ROUNDS
        metrics = http.get("/metrics").text
    # Both workers served classify calls: each holds tasks in its own cache (one gauge per process).
    cached = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("metanet_memory_cache_tasks{")
    ]
    assert sum(value > 0 for value in cached) == 2, cached
