"""The HTTP API through a real server process: the full one-shot flow on Omniglot, forgetting a label,
deleting a task, on-the-fly labels, metrics and OpenAPI docs."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from testkit import ServerProcess, b64, omniglot, support_body


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def test_one_shot_flow_on_unseen_omniglot_characters(client: httpx.Client, task_id: str, tibetan) -> None:
    labels = [f"char{i:02d}" for i in range(len(tibetan))]
    answer = client.post(
        f"/tasks/{task_id}/support",
        json=support_body(list(zip(labels, (d[0] for d in tibetan[: len(labels)]), strict=True))),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"task_id": task_id, "version": 1, "num_examples": 20, "labels": labels}

    queries = [
        (label, drawings[drawer])
        for label, drawings in zip(labels, tibetan, strict=True)
        for drawer in (1, 2, 3)
    ]
    answer = client.post(  # closed set: every image gets a label (tests/server/test_server_open_set.py)
        f"/tasks/{task_id}/classify",
        json={"images": [b64(im) for _, im in queries], "top_k": 3, "reject": "off"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["task_id"] == task_id and body["version"] == 1
    predictions = body["predictions"]
    assert len(predictions) == len(queries)
    for prediction in predictions:
        ranked = prediction["top_k"]
        assert len(ranked) == 3 and ranked[0] == {"label": prediction["label"], "score": prediction["score"]}
        assert ranked[0]["score"] >= ranked[1]["score"] >= ranked[2]["score"] > 0
        assert sum(r["score"] for r in ranked) <= 1 + 1e-5
    accuracy = sum(p["label"] == label for p, (label, _) in zip(predictions, queries, strict=True)) / len(
        queries
    )
    assert accuracy >= 0.6, f"20-way one-shot accuracy {accuracy:.2f} (chance 0.05)"

    info = client.get(f"/tasks/{task_id}").json()
    assert info == {"task_id": task_id, "version": 1, "num_examples": 20, "labels": dict.fromkeys(labels, 1)}


def test_large_tasks_use_faiss_top_k_attention(client: httpx.Client, task_id: str) -> None:
    characters = omniglot(None, 40, 2)  # 40 characters of two alphabets, past the top-k threshold (32)
    labels = [f"char{i:02d}" for i in range(len(characters))]
    client.post(
        f"/tasks/{task_id}/support",
        json=support_body([(lab, c[0]) for lab, c in zip(labels, characters, strict=True)]),
    )
    before = metric(client, "metanet_classified_images_total", attention="topk")
    answer = client.post(
        f"/tasks/{task_id}/classify", json={"images": [b64(c[1]) for c in characters], "reject": "off"}
    )
    assert answer.status_code == 200, answer.text
    assert metric(client, "metanet_classified_images_total", attention="topk") == before + len(characters)
    predicted = [p["label"] for p in answer.json()["predictions"]]
    accuracy = sum(p == label for p, label in zip(predicted, labels, strict=True)) / len(labels)
    assert accuracy >= 0.5, f"40-way one-shot accuracy {accuracy:.2f} (chance 0.025)"


def test_new_labels_and_examples_arrive_on_the_fly(client: httpx.Client, task_id: str, tibetan) -> None:
    first = client.post(
        f"/tasks/{task_id}/support", json=support_body([("a", tibetan[0][0]), ("b", tibetan[1][0])])
    )
    assert first.json()["version"] == 1
    assert client.post(f"/tasks/{task_id}/classify", json={"images": [b64(tibetan[0][1])]}).status_code == 200

    builds = metric(client, "metanet_memory_cache_lookups_total", result="build")
    extends = metric(client, "metanet_memory_cache_lookups_total", result="extend")
    second = client.post(f"/tasks/{task_id}/support", json=support_body([("a", tibetan[0][2])])).json()
    assert second == {"task_id": task_id, "version": 2, "num_examples": 3, "labels": ["a", "b"]}
    # A new example of a known label extends the cached memory (here a build job: the task has fewer
    # than T examples, so its task-level weights change too); nothing is rebuilt.
    deadline = time.monotonic() + 60
    while metric(client, "metanet_memory_cache_lookups_total", result="extend") < extends + 1:
        assert time.monotonic() < deadline
        time.sleep(0.5)  # each look is a logged GET /metrics: few of them
    assert metric(client, "metanet_memory_cache_lookups_total", result="extend") == extends + 1
    assert metric(client, "metanet_memory_cache_lookups_total", result="build") == builds

    third = client.post(f"/tasks/{task_id}/support", json=support_body([("c", tibetan[2][0])])).json()
    assert (third["version"], third["labels"]) == (3, ["a", "b", "c"])
    answer = client.post(
        f"/tasks/{task_id}/classify", json={"images": [b64(tibetan[2][1])], "top_k": 10}
    ).json()
    assert answer["version"] == 3
    assert sorted(r["label"] for r in answer["predictions"][0]["top_k"]) == [
        "a",
        "b",
        "c",
    ]  # top_k capped at K


def test_forget_label(client: httpx.Client, task_id: str, tibetan) -> None:
    examples = [("a", tibetan[0][0]), ("b", tibetan[1][0]), ("b", tibetan[1][1]), ("c", tibetan[2][0])]
    client.post(f"/tasks/{task_id}/support", json=support_body(examples))
    query = {"images": [b64(tibetan[1][2])], "top_k": 3, "reject": "off"}
    assert client.post(f"/tasks/{task_id}/classify", json=query).json()["predictions"][0]["label"] == "b"

    answer = client.delete(f"/tasks/{task_id}/labels/b")
    assert answer.status_code == 200
    assert answer.json() == {"task_id": task_id, "version": 2, "num_examples": 2, "labels": {"a": 1, "c": 1}}
    after = client.post(f"/tasks/{task_id}/classify", json=query).json()
    assert after["version"] == 2 and {r["label"] for r in after["predictions"][0]["top_k"]} == {"a", "c"}

    assert client.delete(f"/tasks/{task_id}/labels/b").json()["error"]["code"] == "label_not_found"
    assert client.delete(f"/tasks/{task_id}/labels/a").status_code == 200
    assert client.delete(f"/tasks/{task_id}/labels/c").json()["num_examples"] == 0
    empty = client.post(f"/tasks/{task_id}/classify", json=query)
    assert empty.status_code == 409 and empty.json()["error"]["code"] == "empty_task"


def test_labels_with_slashes_and_unicode(client: httpx.Client, task_id: str, tibetan) -> None:
    labels = ["ka / ཀ", "ünïcödé label"]
    client.post(
        f"/tasks/{task_id}/support",
        json=support_body(list(zip(labels, (d[0] for d in tibetan[: len(labels)]), strict=True))),
    )
    assert list(client.get(f"/tasks/{task_id}").json()["labels"]) == labels
    assert client.delete(f"/tasks/{task_id}/labels/ka / ཀ").json()["labels"] == {"ünïcödé label": 1}


def test_delete_task(client: httpx.Client, task_id: str, tibetan) -> None:
    client.post(f"/tasks/{task_id}/support", json=support_body([("a", tibetan[0][0])]))
    client.post(f"/tasks/{task_id}/classify", json={"images": [b64(tibetan[0][1])]})
    answer = client.delete(f"/tasks/{task_id}")
    assert answer.status_code == 200 and answer.json() == {"task_id": task_id, "deleted": True}
    assert client.get(f"/tasks/{task_id}").status_code == 404
    assert client.get(f"/tasks/{task_id}/labels").status_code == 404
    assert client.post(f"/tasks/{task_id}/classify", json={"images": [b64(tibetan[0][1])]}).status_code == 404
    assert client.delete(f"/tasks/{task_id}/labels/a").status_code == 404
    assert client.delete(f"/tasks/{task_id}").status_code == 404
    assert task_id not in [task["task_id"] for task in client.get("/tasks").json()["tasks"]]
    again = client.post(f"/tasks/{task_id}/support", json=support_body([("z", tibetan[3][0])])).json()
    assert (again["version"], again["labels"]) == (1, ["z"])  # a fresh task
    answer = client.post(f"/tasks/{task_id}/classify", json={"images": [b64(tibetan[0][1])]}).json()
    assert answer["predictions"][0]["top_k"][0]["label"] == "z"


def test_health_metrics_and_docs(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    text = client.get("/metrics").text
    for name in [
        "metanet_http_requests_total",
        "metanet_http_request_duration_seconds_bucket",
        "metanet_memory_cache_lookups_total",
        "metanet_store_tasks",
        "metanet_store_examples",
    ]:
        assert name in text
    schema = client.get("/openapi.json").json()
    assert {
        "/tasks/{task_id}/support",
        "/tasks/{task_id}/classify",
        "/tasks/{task_id}",
        "/tasks/{task_id}/labels/{label}",
        "/health",
    } <= set(schema["paths"])
    assert "/_worker" not in schema["paths"]
    assert client.get("/docs").status_code == 200


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_without_keys_it_listens_on_loopback_only(server: ServerProcess) -> None:
    startup = server.log_path.read_text(errors="replace")  # the whole log: the line is an early one
    assert "no API keys configured: listening on 127.0.0.1 only (not 0.0.0.0)" in startup
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    listening = {row[1] for row in rows if row[3] == "0A"}  # state 0A = LISTEN
    assert f"0100007F:{server.port:04X}" in listening
    assert f"00000000:{server.port:04X}" not in listening
