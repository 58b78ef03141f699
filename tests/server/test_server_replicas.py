"""Two server processes (replicas) on different ports over one real PostgreSQL server: interleaved
support and classify calls across them (read-your-writes every time, checked by version and labels),
concurrent supports to one task from both (each version exactly once, no example lost), PostgreSQL
killed and restarted under load (every call answers JSON: 2xx, or 503 while the store is down; nothing
acknowledged is lost), and SIGKILL of a replica mid-stream (the other one has every acknowledged example).

The interleaved run makes 200 calls by default and 1,000 with ``-m slow``."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from testkit import ServerProcess, assert_acknowledged_kept, b64, support_body
from testkit.postgres import PostgresServer

CLIENTS = 8


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[list[ServerProcess]]:
    """Two replicas over one new database, started at the same time (both run the migrations)."""
    url = postgres.create_database()
    root = tmp_path_factory.mktemp("replicas")
    servers = [ServerProcess(root / f"replica{i}", "--store", url) for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServerProcess.start, servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


class Ledger:
    """What clients were told, per task: each acknowledged label with the version that added it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, dict[str, int]] = defaultdict(dict)

    def acknowledge(self, task: str, label: str, version: int) -> None:
        with self.lock:
            self.acked[task][label] = version

    def known(self, task: str) -> tuple[int, set[str]]:
        with self.lock:
            return max(self.acked[task].values(), default=0), set(self.acked[task])


@pytest.mark.parametrize("calls", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_interleaved_calls_across_replicas_read_their_writes(
    replicas: list[ServerProcess], tibetan, calls: int
) -> None:
    """``calls`` calls from CLIENTS clients, each alternating replicas and tasks; half support (one new label
    each), half classify. Every classify answers at a version at least that of every support
    acknowledged before it was sent, with every such label in its memory."""
    tasks = [f"interleaved{calls}-{i}" for i in range(4)]
    ledger = Ledger()
    with httpx.Client(timeout=120) as http:
        for task in tasks:
            seed = http.post(
                f"{replicas[0].url}/tasks/{task}/support", json=support_body([("seed", tibetan[19][0])])
            )
            ledger.acknowledge(task, "seed", seed.json()["version"])
    failures: list[str] = []

    def client(n: int) -> tuple[int, int]:
        supports = classifies = 0
        with httpx.Client(timeout=120) as http:
            for i in range(calls // CLIENTS):
                replica, task = replicas[(n + i) % 2], tasks[(n + i // 2) % len(tasks)]
                drawing = tibetan[(n * 7 + i) % 19]
                if i % 2 == 0:
                    label = f"c{n}-{i}"
                    answer = http.post(
                        f"{replica.url}/tasks/{task}/support", json=support_body([(label, drawing[0])])
                    )
                    assert answer.status_code == 200, answer.text
                    ledger.acknowledge(task, label, answer.json()["version"])
                    supports += 1
                    continue
                version, labels = ledger.known(task)
                query = {"images": [b64(drawing[1])], "top_k": 10_000}
                answer = http.post(f"{replica.url}/tasks/{task}/classify", json=query)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                missing = labels - {r["label"] for r in body["predictions"][0]["top_k"]}
                if body["version"] < version or missing:
                    failures.append(
                        f"{task} on {replica.url}: knew v{version}, saw v{body['version']}, missing {missing}"
                    )
                classifies += 1
            return supports, classifies

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        supports, classifies = map(sum, zip(*pool.map(client, range(CLIENTS)), strict=True))
    elapsed = time.monotonic() - started
    assert not failures, failures[:5]
    assert supports + classifies == calls

    for task in tasks:
        acked = ledger.acked[task]
        assert sorted(acked.values()) == list(range(1, len(acked) + 1)), (
            f"{task}: duplicate or missing version"
        )
        for replica in replicas:
            state = httpx.get(f"{replica.url}/tasks/{task}", timeout=60).json()
            assert state["version"] == len(acked) and set(state["labels"]) == set(acked)
            assert state["num_examples"] == len(acked)  # 0 examples lost, none added twice
    print(
        f"\n{calls} calls ({supports} support, {classifies} classify), {CLIENTS} clients, 2 replicas, "
        f"{elapsed:.1f} s: 0 stale classify answers, 0 examples lost, 0 duplicate versions"
    )


def test_concurrent_supports_to_one_task_from_both_replicas(replicas: list[ServerProcess], tibetan) -> None:
    writers, each = 8, 10

    def write(n: int) -> list[int]:
        with httpx.Client(timeout=120) as http:
            versions = []
            for i in range(each):
                body = support_body([(f"w{n}-{i}", tibetan[(n + i) % 20][2])])
                answer = http.post(f"{replicas[(n + i) % 2].url}/tasks/contended/support", json=body)
                assert answer.status_code == 200, answer.text
                versions.append(answer.json()["version"])
            return versions

    with ThreadPoolExecutor(writers) as pool:
        versions = [v for vs in pool.map(write, range(writers)) for v in vs]
    assert sorted(versions) == list(range(1, writers * each + 1))  # each version exactly once
    state = httpx.get(f"{replicas[1].url}/tasks/contended", timeout=60).json()
    assert state["num_examples"] == writers * each
    assert set(state["labels"]) == {f"w{n}-{i}" for n in range(writers) for i in range(each)}


def test_forget_and_delete_on_one_replica_show_on_the_other(replicas: list[ServerProcess], tibetan) -> None:
    a, b = (httpx.Client(base_url=r.url, timeout=60) for r in replicas)
    with a, b:
        examples = [(f"c{i}", tibetan[i][0]) for i in range(5)]
        assert a.post("/tasks/shared/support", json=support_body(examples)).status_code == 200
        query = {"images": [b64(tibetan[i][1]) for i in range(5)], "top_k": 10}
        assert b.post("/tasks/shared/classify", json=query).json()["version"] == 1  # b caches version 1
        forgotten = a.delete("/tasks/shared/labels/c0").json()
        answer = b.post("/tasks/shared/classify", json=query).json()
        assert answer["version"] == forgotten["version"] == 2
        assert {r["label"] for p in answer["predictions"] for r in p["top_k"]} == {"c1", "c2", "c3", "c4"}
        assert b.delete("/tasks/shared").status_code == 200
        assert a.post("/tasks/shared/classify", json=query).status_code == 404
        assert b.post("/tasks/shared/support", json=support_body(examples[:1])).json()["version"] == 1
        answer = a.post("/tasks/shared/classify", json=query).json()  # a new task: rebuilt, not extended
        assert answer["version"] == 1 and {r["label"] for r in answer["predictions"][0]["top_k"]} == {"c0"}


def test_postgres_killed_and_restarted_under_load(
    replicas: list[ServerProcess], postgres: PostgresServer, tibetan
) -> None:
    """Clients keep calling both replicas while PostgreSQL is SIGKILLed and started again: every call gets
    a JSON answer, 2xx or 503; after recovery each task holds exactly the acknowledged examples (plus, at
    most, those whose 503 said the connection was lost during their commit)."""
    stop = threading.Event()
    ledger = Ledger()
    maybe: set[str] = set()
    statuses: dict[str, list[int]] = defaultdict(list)
    bad: list[str] = []
    health_during_outage: list[dict] = []

    def client(n: int) -> None:
        task = f"outage-{n % 2}"
        with httpx.Client(timeout=60) as http:
            i = 0
            while not stop.is_set():
                replica, drawing = replicas[(n + i) % 2], tibetan[(n + i) % 20]
                label = f"c{n}-{i}"
                try:
                    if i % 2 == 0:
                        answer = http.post(
                            f"{replica.url}/tasks/{task}/support", json=support_body([(label, drawing[0])])
                        )
                    else:
                        answer = http.post(
                            f"{replica.url}/tasks/{task}/classify", json={"images": [b64(drawing[1])]}
                        )
                    body = answer.json()
                except (httpx.HTTPError, ValueError) as exc:
                    bad.append(f"{label}: {type(exc).__name__}: {exc}")
                    i += 1
                    continue
                statuses["support" if i % 2 == 0 else "classify"].append(answer.status_code)
                if answer.status_code == 200 and i % 2 == 0:
                    ledger.acknowledge(task, label, body["version"])
                elif answer.status_code == 503:
                    if body["error"]["code"] == "store_outcome_unknown":
                        maybe.add(label)
                    elif body["error"]["code"] != "store_unavailable":
                        bad.append(f"{label}: 503 {body}")
                elif answer.status_code not in (200, 404):  # 404: classify before the task's first support
                    bad.append(f"{label}: {answer.status_code} {body}")
                i += 1

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, n) for n in range(4)]
        time.sleep(3)
        postgres.kill()
        time.sleep(1)
        for replica in replicas:
            answer = httpx.get(f"{replica.url}/health", timeout=10)
            health_during_outage.append({"status": answer.status_code, **answer.json()})
        time.sleep(1)
        postgres.start()
        deadline = time.monotonic() + 30
        while not all(r.healthy() for r in replicas):
            assert time.monotonic() < deadline, "replicas did not recover"
            time.sleep(0.2)
        time.sleep(3)  # load goes on after recovery
        stop.set()
        for done in running:
            done.result()

    assert not bad, [*bad[:5], *(replica.log(20000) for replica in replicas)]  # the logs name a 500's cause
    assert all(h["status"] == 503 and h["error"]["code"] == "store_unreachable" for h in health_during_outage)
    for op, codes in statuses.items():
        assert 503 in codes and 200 in codes, f"{op}: {sorted(set(codes))}"
        assert codes[-1] == 200, f"{op} did not recover"
    for task, acked in ledger.acked.items():
        stored = set(httpx.get(f"{replicas[0].url}/tasks/{task}", timeout=60).json()["labels"])
        assert set(acked) <= stored, f"{task}: lost {set(acked) - stored}"
        assert stored - set(acked) <= maybe, f"{task}: unacknowledged {stored - set(acked) - maybe} stored"
    print(
        "\nPostgreSQL killed and restarted under load: "
        + ", ".join(
            f"{op} {codes.count(200)} x 200 / {codes.count(503)} x 503" for op, codes in statuses.items()
        )
        + f"; {sum(map(len, ledger.acked.values()))} acknowledged examples all stored, "
        f"{len(maybe)} with unknown outcome, 0 calls without a JSON answer"
    )


def test_sigkill_of_a_replica_loses_nothing_acknowledged(replicas: list[ServerProcess], tibetan) -> None:
    """Support calls stream into both replicas; one is SIGKILLed (every process of it) mid-stream. The
    other replica has every example either acknowledged, and serves them at once."""
    victim, survivor = replicas
    acked: dict[str, list[str]] = {"sigkill-0": [], "sigkill-1": []}
    enough = threading.Event()

    def stream(task: str, replica: ServerProcess) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(10_000):
                label = f"{task}-{i}"
                try:
                    answer = http.post(
                        f"{replica.url}/tasks/{task}/support",
                        json=support_body([(label, tibetan[i % 20][1])]),
                    )
                except httpx.TransportError:
                    return  # the replica is gone
                assert answer.status_code == 200, answer.text
                acked[task].append(label)
                if len(acked["sigkill-0"]) >= 15:
                    enough.set()
                if task == "sigkill-1" and victim.process.poll() is not None and len(acked[task]) > 40:
                    return

    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(stream, "sigkill-0", victim), pool.submit(stream, "sigkill-1", survivor)]
        assert enough.wait(120), "support calls did not come through"
        victim.kill()
        for done in running:
            done.result()
    with httpx.Client(base_url=survivor.url, timeout=60) as http:
        assert_acknowledged_kept(http, acked)
        answer = http.post(
            "/tasks/sigkill-0/classify", json={"images": [b64(tibetan[0][1])], "top_k": 10_000}
        )
        assert {r["label"] for r in answer.json()["predictions"][0]["top_k"]} >= set(acked["sigkill-0"])
