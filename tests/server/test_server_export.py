"""Task export and import over HTTP: a task exported from one server and imported on a second one (under
API keys, by two tenants) answers the same queries with the same predictions; the export names the
checkpoint; imports refuse existing tasks, images of the wrong size and exports for another image size."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from testkit import ServerProcess, b64, png, running_server, support_body

KEYS = {"alice": "alice-export-key", "bob": "bob-export-key"}


@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("second")
    keys = folder / "keys"
    keys.write_text("".join(f"{tenant}:{key}\n" for tenant, key in KEYS.items()))
    with running_server(folder / "data", "--api-keys-file", str(keys)) as process:
        yield process


def as_tenant(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def same_predictions(a: dict, b: dict) -> None:
    assert len(a["predictions"]) == len(b["predictions"])
    for x, y in zip(a["predictions"], b["predictions"], strict=True):
        assert (x["label"], x["known"]) == (y["label"], y["known"])
        assert [r["label"] for r in x["top_k"]] == [r["label"] for r in y["top_k"]]
        for r, s in zip(x["top_k"], y["top_k"], strict=True):
            assert abs(r["score"] - s["score"]) < 1e-4
        assert abs(x["novelty"] - y["novelty"]) < 1e-4


def test_export_then_import_on_a_second_server_gives_the_same_predictions(
    client: httpx.Client, second_server: ServerProcess, tibetan
) -> None:
    examples = [(f"c{i}", tibetan[i][0]) for i in range(12)] + [("c3", tibetan[3][1]), ("c7", tibetan[7][1])]
    assert client.post("/tasks/original/support", json=support_body(examples[:8])).status_code == 200
    assert client.post("/tasks/original/support", json=support_body(examples[8:])).status_code == 200
    queries = {"images": [b64(tibetan[i][5]) for i in range(12)] + [b64(tibetan[15][5])], "top_k": 3}
    before = client.post("/tasks/original/classify", json=queries).json()

    answer = client.get("/tasks/original/export")
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == 'attachment; filename="original.metanet.json"'
    export = answer.json()
    info = client.get("/info").json()["model"]
    assert (export["format"], export["format_version"], export["task_id"], export["version"]) == (
        "metanet-task",
        1,
        "original",
        2,
    )
    assert export["model"] == {
        "checkpoint": info["checkpoint"].rsplit("/", 1)[-1],
        "sha256": info["sha256"],
        "image_size": info["image_size"],
    }
    assert [e["label"] for e in export["examples"]] == [label for label, _ in examples]

    with httpx.Client(base_url=second_server.url, timeout=120) as other:
        imported = other.post("/tasks/copy/import", json=export, headers=as_tenant("alice"))
        assert imported.status_code == 200, imported.text
        assert imported.json() == {
            "task_id": "copy",
            "version": 1,
            "num_examples": 14,
            "labels": {f"c{i}": 2 if i in (3, 7) else 1 for i in range(12)},
            "model_matches": True,
        }
        after = other.post("/tasks/copy/classify", json=queries, headers=as_tenant("alice")).json()
        same_predictions(before, after)
        # Its export holds the same images: a round trip changes nothing.
        again = other.get("/tasks/copy/export", headers=as_tenant("alice")).json()
        assert again["examples"] == export["examples"]

        # Another tenant imports it under the same id: its own task. An existing task is refused.
        assert other.post("/tasks/copy/import", json=export, headers=as_tenant("bob")).status_code == 200
        exists = other.post("/tasks/copy/import", json=export, headers=as_tenant("alice"))
        assert exists.status_code == 409 and exists.json()["error"]["code"] == "task_exists"
        assert other.get("/tasks/copy", headers=as_tenant("alice")).json()["num_examples"] == 14


def test_import_refuses_what_it_cannot_store_unchanged(client: httpx.Client, tibetan) -> None:
    assert client.post("/tasks/source/support", json=support_body([("a", tibetan[0][0])])).status_code == 200
    export = client.get("/tasks/source/export").json()

    wrong_size = copy.deepcopy(export)
    wrong_size["examples"].append({"label": "b", "image": png(np.zeros((30, 30), np.uint8))})
    answer = client.post("/tasks/bad-size/import", json=wrong_size)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_image"
    assert "examples[1].image" in answer.json()["error"]["message"]

    not_an_image = copy.deepcopy(export)
    not_an_image["examples"][0]["image"] = b64(b"not an image at all")
    assert client.post("/tasks/bad-image/import", json=not_an_image).status_code == 400

    other_model = copy.deepcopy(export)
    other_model["model"]["image_size"] = 105
    answer = client.post("/tasks/bad-model/import", json=other_model)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "model_mismatch"

    other_format = {**export, "format": "something-else"}
    assert client.post("/tasks/bad-format/import", json=other_format).status_code == 422
    for task in ("bad-size", "bad-image", "bad-model", "bad-format"):
        assert client.get(f"/tasks/{task}").status_code == 404  # nothing half-written

    another_checkpoint = copy.deepcopy(export)
    another_checkpoint["model"]["sha256"] = "0" * 64
    moved = client.post("/tasks/moved/import", json=another_checkpoint)
    assert moved.status_code == 200 and moved.json()["model_matches"] is False
    assert client.get("/tasks/missing/export").status_code == 404
