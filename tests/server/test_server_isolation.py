"""One work item that fails inside the inference worker, with an exception the server does not expect,
fails alone: the other items of its dynamic batch get their correct answers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import httpx
import pytest

from testkit import ServerProcess, b64, run_concurrently, running_server, support_body

BATCH_WINDOW_SECONDS = 3.0  # every request of the burst below reaches the worker within this window


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("isolation") / "data"
    # Admission would read the batching window as a slow worker and refuse the burst (it measures how
    # fast answers come back), so the start deadline is set far beyond it.
    env = {"METANET_BATCH_TIMEOUT": str(BATCH_WINDOW_SECONDS), "METANET_QUEUE_DEADLINE": "120"}
    with running_server(data_dir, "--max-batch-size", "16", env=env) as process:
        yield process


def batches_and_items(http: httpx.Client) -> tuple[float, float]:
    """(batches run, work items in them) so far, from the worker's batch-size histogram."""
    values = {}
    for line in http.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("metanet_worker_batch_size_count", "metanet_worker_batch_size_sum"):
            values[name] = float(value)
    return values.get("metanet_worker_batch_size_count", 0.0), values.get(
        "metanet_worker_batch_size_sum", 0.0
    )


def test_an_item_failing_in_the_worker_leaves_its_batch_mates_answered(server, tibetan) -> None:
    good = {"good-a": range(0, 5), "good-b": range(5, 10)}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for task, characters in good.items():
            examples = [(f"c{c}", tibetan[c][0]) for c in characters]
            assert http.post(f"/tasks/{task}/support", json=support_body(examples)).status_code == 200
        assert (
            http.post("/tasks/broken/support", json=support_body([("x", tibetan[10][0])])).status_code == 200
        )
        # Damage the broken task's stored image (one byte too many), as a disk or a bad migration
        # could: building its memory then raises a plain ValueError deep inside the worker.
        with sqlite3.connect(server.data_dir / "tasks.sqlite3") as db:
            digest, pixels = db.execute(
                "SELECT images.digest, pixels FROM examples JOIN tasks ON task_uid = uid "
                "JOIN images ON images.tenant = tasks.tenant AND images.digest = examples.digest "
                "WHERE task_id = 'broken'"
            ).fetchone()
            db.execute("UPDATE images SET pixels = ? WHERE digest = ?", (pixels + b"\x00", digest))
        # Drawer 1 of each character: another person's drawing of what was taught.
        queries = {
            task: {"images": [b64(tibetan[c][1]) for c in chars], "top_k": 3, "reject": "off"}
            for task, chars in good.items()
        }
        queries["broken"] = {"images": [b64(tibetan[10][1])]}

        def classify(task: str) -> httpx.Response:
            return http.post(f"/tasks/{task}/classify", json=queries[task])

        alone = {task: classify(task).json() for task in good}  # each in a batch of its own
        batches_before, items_before = batches_and_items(http)
        answers = dict(zip(queries, run_concurrently(classify, [(task,) for task in queries]), strict=True))
        batches_after, items_after = batches_and_items(http)

    assert (batches_after - batches_before, items_after - items_before) == (1, 3), "not one batch"
    broken = answers["broken"]
    assert broken.status_code == 500, broken.text
    assert broken.json()["error"]["code"] == "internal_error"
    for task, characters in good.items():
        assert answers[task].status_code == 200, answers[task].text
        batched = answers[task].json()
        assert batched["version"] == alone[task]["version"]
        for got, want in zip(batched["predictions"], alone[task]["predictions"], strict=True):
            assert [r["label"] for r in got["top_k"]] == [r["label"] for r in want["top_k"]]
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        correct = sum(p["label"] == f"c{c}" for p, c in zip(batched["predictions"], characters, strict=True))
        assert correct >= 4, batched  # and they are the right answers: 5-way one-shot, unseen alphabet
    assert "ValueError" in server.log_path.read_text()  # the worker logged it with its traceback
