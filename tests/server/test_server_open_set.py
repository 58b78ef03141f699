"""Open-set answers through a real server: known / novelty on every prediction, the reject policy,
the checkpoint's calibrated threshold, and the listing routes the teaching page uses."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from PIL import Image

from model.checkpoint import read_metadata
from model.novelty import OpenSetCalibration
from testkit import CHECKPOINT, b64, omniglot, support_body


def test_predictions_carry_novelty_and_unknown_images_are_rejected(
    client: httpx.Client, task_id: str, tibetan
) -> None:
    # Five Tibetan characters are the task; five characters of another alphabet are not in it.
    client.post(f"/tasks/{task_id}/support", json=support_body([(f"t{i}", tibetan[i][0]) for i in range(5)]))
    others = omniglot("Atlantean", 5, 2)
    known = [b64(tibetan[i][j]) for i in range(5) for j in (1, 2)]
    unknown = [b64(drawings[j]) for drawings in others for j in (0, 1)]
    body = client.post(f"/tasks/{task_id}/classify", json={"images": known + unknown, "top_k": 2}).json()

    calibration = OpenSetCalibration.from_metadata(read_metadata(CHECKPOINT))
    assert calibration is not None, "the default checkpoint is calibrated (python -m training.open_set)"
    assert body["novelty_threshold"] == calibration.threshold
    predictions = body["predictions"]
    novelty = np.array([p["novelty"] for p in predictions])
    assert ((novelty >= 0) & (novelty <= 2)).all()
    for p in predictions:
        assert p["known"] == (p["novelty"] <= calibration.threshold)
        assert p["label"] == (p["top_k"][0]["label"] if p["known"] else None)
        assert p["score"] == p["top_k"][0]["score"] and len(p["top_k"]) == 2
    # Unknown characters sit farther from the task's examples than known ones, and most are rejected.
    assert novelty[10:].mean() > novelty[:10].mean() + 0.1
    assert sum(not p["known"] for p in predictions[10:]) >= 6
    assert sum(p["known"] for p in predictions[:10]) >= 7

    off = client.post(
        f"/tasks/{task_id}/classify", json={"images": known + unknown, "top_k": 2, "reject": "off"}
    ).json()
    for p, q in zip(predictions, off["predictions"], strict=True):
        assert q["label"] == q["top_k"][0]["label"] == p["top_k"][0]["label"]  # today's answer
        assert (q["known"], q["novelty"]) == (p["known"], p["novelty"])


def test_threshold_per_request(client: httpx.Client, task_id: str, tibetan) -> None:
    client.post(f"/tasks/{task_id}/support", json=support_body([("a", tibetan[0][0]), ("b", tibetan[1][0])]))
    images = [b64(tibetan[0][0]), b64(tibetan[5][0])]  # the stored example itself, and another character
    strict = client.post(
        f"/tasks/{task_id}/classify", json={"images": images, "novelty_threshold": 0.0001}
    ).json()
    assert strict["novelty_threshold"] == 0.0001
    assert strict["predictions"][0]["label"] == "a" and strict["predictions"][0]["novelty"] < 1e-4
    assert strict["predictions"][1]["label"] is None and not strict["predictions"][1]["known"]
    lenient = client.post(
        f"/tasks/{task_id}/classify", json={"images": images, "novelty_threshold": 2}
    ).json()
    assert all(p["known"] and p["label"] in ("a", "b") for p in lenient["predictions"])
    bad = client.post(f"/tasks/{task_id}/classify", json={"images": images, "reject": "maybe"})
    assert bad.status_code == 422


def test_task_list_and_label_pictures(client: httpx.Client, task_id: str, tibetan) -> None:
    client.post(
        f"/tasks/{task_id}/support",
        json=support_body([("a", tibetan[0][0]), ("b", tibetan[1][0]), ("a", tibetan[0][1])]),
    )
    listed = {t["task_id"]: t for t in client.get("/tasks").json()["tasks"]}
    assert listed[task_id]["labels"] == {"a": 2, "b": 1}

    body = client.get(f"/tasks/{task_id}/labels").json()
    assert body["task_id"] == task_id and body["version"] == 1
    assert [(e["label"], e["examples"]) for e in body["labels"]] == [("a", 2), ("b", 1)]
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["labels"][0]["image"]))))
    assert first.shape == (28, 28) and first.dtype == np.uint8
    # The stored image as the model sees it: bright strokes on a dark background.
    assert first[0].mean() < 64 and first.max() > 128

    assert client.get("/tasks/no-such-task/labels").status_code == 404
    client.delete(f"/tasks/{task_id}/labels/a")
    assert [e["label"] for e in client.get(f"/tasks/{task_id}/labels").json()["labels"]] == ["b"]


def test_root_leads_a_browser_to_the_teaching_page(client: httpx.Client) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    root = client.get("/", headers=browser, follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/ui/"
    assert client.get("/", headers={"Accept": "application/json"}).json()["ui"] == "/ui"
    page = client.get("/ui", follow_redirects=True)
    assert page.status_code == 200 and "<canvas" in page.text and 'src="app.js"' in page.text
    assert (
        client.get("/ui/app.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert client.get("/ui/app.css").headers["content-type"].startswith("text/css")
