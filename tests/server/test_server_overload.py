"""Admission, fairness, quotas and rate limits through a real server process (docs/API.md, "Quotas";
docs/SERVER.md, "Admission and fairness"). The classes behind them are unit-tested in
test_server_admission.py; figures under load come from benchmarks/overload.py."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from testkit import ServerProcess, b64, png, run_concurrently, running_server, support_body

KEYS = {
    "heavy": "heavy-key-0001",
    "light": "light-key-0002",
    "small": "small-key-0003",
    "slow": "slow-key-0004",
}
PIXELS = 28 * 28  # bytes of one stored image
DEADLINE = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("server")
    keys_file = folder / "api-keys"
    keys_file.write_text(
        f"heavy:{KEYS['heavy']}\nlight:{KEYS['light']}\n"
        f"small:{KEYS['small']} max_tasks=2 max_examples=4 max_stored_bytes={3 * PIXELS}\n"
        f"slow:{KEYS['slow']} requests_per_second=1\n"
    )
    env = {"METANET_QUEUE_DEADLINE": str(DEADLINE)}
    with running_server(folder / "data", "--api-keys-file", str(keys_file), env=env) as process:
        yield process


def as_tenant(server: ServerProcess, tenant: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=120)


def metric(server: ServerProcess, name: str) -> float:
    """The sum of a metric's samples over all its labels."""
    page = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", page, re.M))


@pytest.fixture(scope="module")
def images(tibetan) -> list[str]:
    """256 drawings of 5 characters, base64."""
    return [b64(tibetan[i % 5][1 + i % 19]) for i in range(256)]


@pytest.fixture(scope="module")
def heavy_and_light_tasks(server: ServerProcess, tibetan) -> None:
    for tenant in ("heavy", "light"):
        with as_tenant(server, tenant) as http:
            body = support_body([(f"c{i}", tibetan[i][0]) for i in range(5)])
            assert http.post("/tasks/t/support", json=body).status_code == 200
            # Its memory built now: a first classify waits for the build, which is not what is tested.
            assert http.post("/tasks/t/classify", json={"images": [b64(tibetan[0][1])]}).status_code == 200


def test_info_publishes_the_queue_settings_and_default_quotas(server: ServerProcess) -> None:
    info = httpx.get(f"{server.url}/info").json()
    assert info["queue"] == {"queue_deadline": DEADLINE, "queue_quantum": 32}
    assert info["tenant_quotas"]["max_tasks"] == 100_000 and info["tenant_quotas"]["share"] == 1.0
    assert info["api_keys"] is True and info["idempotency_ttl"] == 86400  # beside main's fields


def test_another_tenants_small_request_goes_ahead_of_a_backlog(
    server: ServerProcess, heavy_and_light_tasks: None, images: list[str]
) -> None:
    """Two 256-image classifies of one tenant are queued; a one-image classify of another tenant sent
    after them does not wait for both (first in, first out would answer it last)."""
    finished: dict[str, float] = {}

    def classify(tenant: str, name: str, batch: list[str]) -> int:
        with as_tenant(server, tenant) as http:
            status = http.post("/tasks/t/classify", json={"images": batch}).status_code
        finished[name] = time.monotonic()
        return status

    heavy = [threading.Thread(target=classify, args=("heavy", f"heavy{i}", images)) for i in range(2)]
    for thread in heavy:
        thread.start()
    deadline = time.monotonic() + 60
    while metric(server, "metanet_queue_images") <= 256 and time.monotonic() < deadline:
        time.sleep(0.01)  # until both heavy requests are in the queue
    assert classify("light", "light", images[:1]) == 200
    for thread in heavy:
        thread.join()
    # First in, first out would answer it after both; the fair queue lets it in after one part, so it
    # is answered before the second (the first may be finishing by the time it reaches the worker).
    assert finished["light"] < max(finished["heavy0"], finished["heavy1"])


def test_a_tenant_over_its_share_is_refused_and_others_are_served(
    server: ServerProcess, heavy_and_light_tasks: None, images: list[str]
) -> None:
    refused_before = metric(server, "metanet_refusals_total")
    stop = threading.Event()

    def light() -> list[int]:
        statuses = []
        with as_tenant(server, "light") as http:
            while not stop.is_set():
                statuses.append(http.post("/tasks/t/classify", json={"images": images[:1]}).status_code)
        return statuses

    def heavy(_: int) -> httpx.Response:
        with as_tenant(server, "heavy") as http:
            return http.post("/tasks/t/classify", json={"images": images})

    prober = threading.Thread(target=lambda: probes.extend(light()))
    probes: list[int] = []
    prober.start()
    try:
        answers = run_concurrently(heavy, [(i,) for i in range(24)])  # 6,144 images at once
    finally:
        stop.set()
        prober.join()
    refused = [a for a in answers if a.status_code != 200]
    assert refused and len(refused) < len(answers)
    for answer in refused:
        code = answer.json()["error"]["code"]
        assert (answer.status_code, code) in ((429, "over_share"), (503, "overloaded")), answer.text
        assert "METANET_QUEUE_DEADLINE" in answer.json()["error"]["message"]
        assert int(answer.headers["retry-after"]) >= 1
    assert probes and set(probes) == {200}  # the other tenant was served throughout
    assert metric(server, "metanet_refusals_total") - refused_before >= len(refused)


def test_storage_quotas_refuse_507_naming_the_limit_and_write_nothing(server: ServerProcess, tibetan) -> None:
    with as_tenant(server, "small") as http:
        assert http.post("/tasks/a/support", json=support_body([("x", tibetan[0][0])])).status_code == 200
        assert http.post("/tasks/b/support", json=support_body([("y", tibetan[1][0])])).status_code == 200

        def refused(task: str, examples: list[tuple[str, bytes]], limit: str) -> None:
            answer = http.post(f"/tasks/{task}/support", json=support_body(examples))
            assert answer.status_code == 507, answer.text
            assert answer.json()["error"]["code"] == "quota_exceeded"
            assert limit in answer.json()["error"]["message"]

        refused("c", [("z", tibetan[2][0])], "max_tasks=2")
        # Three distinct images are the byte quota: a fourth is refused, the same image again is not.
        assert http.post("/tasks/a/support", json=support_body([("w", tibetan[2][0])])).status_code == 200
        refused("a", [("v", tibetan[3][0])], f"max_stored_bytes={3 * PIXELS}")
        key = {"Idempotency-Key": "fills-the-quota"}
        filling = support_body([("y", tibetan[1][0])])
        assert http.post("/tasks/b/support", json=filling, headers=key).status_code == 200
        refused("b", [("y", tibetan[1][0])], "max_examples=4")
        # The filling call sent again with its key is answered from the first: no quota refuses a replay.
        again = http.post("/tasks/b/support", json=filling, headers=key)
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        # An import is a write like a support call: a third task is over max_tasks.
        export = http.get("/tasks/a/export").json()
        imported = http.post("/tasks/c/import", json=export)
        assert imported.status_code == 507 and "max_tasks=2" in imported.json()["error"]["message"]
        # Only what was acknowledged is stored: two tasks, four examples.
        tasks = {t["task_id"]: t["labels"] for t in http.get("/tasks").json()["tasks"]}
        assert tasks == {"a": {"x": 1, "w": 1}, "b": {"y": 2}}


def test_a_refused_support_of_many_images_writes_none_of_them(server: ServerProcess) -> None:
    with as_tenant(server, "small") as http:
        before = http.get("/tasks/a").json()
        examples = [{"label": f"n{i}", "image": png(np.full((28, 28), i, np.uint8))} for i in range(3)]
        answer = http.post("/tasks/a/support", json={"examples": examples})
        assert answer.status_code == 507
        assert http.get("/tasks/a").json() == before


def test_a_tenant_over_its_request_rate_gets_429_with_retry_after(server: ServerProcess) -> None:
    with as_tenant(server, "slow") as http:
        answers = [http.get("/tasks") for _ in range(3)]
    assert answers[0].status_code == 200
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    error = limited[0].json()["error"]
    assert error["code"] == "rate_limited" and "requests_per_second=1" in error["message"]
    assert limited[0].headers["retry-after"] == "1"
    with as_tenant(server, "light") as http:  # other tenants are not limited by it
        assert http.get("/tasks").status_code == 200
