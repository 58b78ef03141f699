"""The synchronous SDK against a real server process: every method, every error mapping, splitting."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from metanet_client import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ClassifyResult,
    Client,
    ImportResult,
    InvalidRequestError,
    MetaNetError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    SupportResult,
    TaskExport,
    TaskInfo,
)
from PIL import Image


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


def _requests_seen(client: Client) -> list[httpx.Request]:
    seen: list[httpx.Request] = []
    client._http.event_hooks["request"].append(seen.append)
    return seen


def test_health(client: Client) -> None:
    assert isinstance(client.health(), dict)


def test_task_lifecycle(
    client: Client, task_id: str, drawings: list[list[bytes]], strangers: list[bytes]
) -> None:
    task = client.task(task_id)
    first = task.add("a", drawings[0][0])
    assert isinstance(first, SupportResult)
    assert (first.task_id, first.num_examples, first.labels) == (task_id, 1, ["a"])

    second = task.add_examples([("b", drawings[1][0]), ("c", drawings[2][0])])
    assert second.num_examples == 3 and set(second.labels) == {"a", "b", "c"}
    assert second.version > first.version

    images = [drawings[0][0], drawings[1][0], drawings[2][0], drawings[1][5]]
    result = task.classify(images, top_k=2, reject=False)
    assert isinstance(result, ClassifyResult)
    assert result.task_id == task_id and result.version == second.version and len(result.predictions) == 4
    assert result.labels[:3] == ["a", "b", "c"]  # the taught drawings themselves
    for prediction in result.predictions:
        assert [s.label for s in prediction.top_k][0] == prediction.label
        assert len(prediction.top_k) == 2 and prediction.top_k[0].score >= prediction.top_k[1].score
        assert 0 <= prediction.score <= 1 and prediction.score == prediction.top_k[0].score

    # Open set: novelty and known on every prediction; the taught drawings are known, and another
    # alphabet's characters mostly are not ("none of these": label None).
    opened = task.classify(images + strangers, novelty_threshold=0.3)
    assert opened.novelty_threshold == 0.3
    assert opened.labels[:3] == ["a", "b", "c"] and all(p.known for p in opened.predictions[:3])
    assert all((p.label is None) == (not p.known) == (p.novelty > 0.3) for p in opened.predictions)
    assert sum(p.label is None for p in opened.predictions[4:]) >= 3

    third = task.add("c", drawings[2][1])
    info = task.info()
    assert isinstance(info, TaskInfo)
    assert info == TaskInfo(
        task_id=task_id, version=third.version, num_examples=4, labels={"a": 1, "b": 1, "c": 2}
    )

    forgotten = task.forget("b")
    info = task.info()
    assert forgotten == info
    assert info.labels == {"a": 1, "c": 2} and info.num_examples == 3 and info.version > third.version
    assert "b" not in task.classify([drawings[1][0], drawings[1][1]], top_k=2).labels

    task.delete()
    with pytest.raises(NotFoundError):
        task.info()


def test_image_inputs(client: Client, task_id: str, drawings: list[list[bytes]], tmp_path: Path) -> None:
    """Paths, bytes, file objects, PIL images and numpy arrays of one drawing are the same image."""
    png = drawings[3][0]
    path = tmp_path / "drawing.png"
    path.write_bytes(png)
    pil = Image.open(io.BytesIO(png))
    gray = np.asarray(pil.convert("L"))
    task = client.task(task_id)
    task.add_examples([("x", drawings[4][0]), ("y", drawings[5][0])])
    assert task.add("z", [png]).num_examples == 3

    with open(path, "rb") as file:
        inputs = [
            str(path), path, png, bytearray(png), memoryview(png), file, pil, pil.convert("CMYK"),
            gray, gray.astype(bool), gray / 255.0, gray[:, :, None], np.stack([gray] * 3, axis=-1),
            np.stack([gray] * 3 + [np.full_like(gray, 255)], axis=-1),
        ]  # fmt: skip
        predictions = task.classify(inputs, top_k=3).predictions
    reference = predictions[0].top_k
    for prediction in predictions:
        assert [s.label for s in prediction.top_k] == [s.label for s in reference]
        assert [s.score for s in prediction.top_k] == pytest.approx([s.score for s in reference], abs=1e-4)


def test_bad_image_arguments_are_caught_locally() -> None:
    unreachable = Client("http://127.0.0.1:9", max_images_per_request=256, max_body_bytes=1 << 24)
    task = unreachable.task("never-sent")
    with pytest.raises(TypeError, match="unsupported image type"):
        task.classify([42])
    with pytest.raises(TypeError, match="binary mode"):
        task.classify(io.StringIO("text"))
    with pytest.raises(ValueError, match="list"):
        task.classify(np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="non-empty"):
        task.classify(np.zeros((0, 0), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        task.classify(np.full((28, 28), 2.0))


def test_errors_map_to_exceptions(client: Client, task_id: str, drawings: list[list[bytes]]) -> None:
    task = client.task(task_id)
    with pytest.raises(NotFoundError) as raised:
        task.info()
    assert raised.value.status_code == 404 and raised.value.code and raised.value.message
    assert str(raised.value).startswith("404 ")
    with pytest.raises(NotFoundError):
        task.classify(drawings[0][0])

    version = task.add("a", drawings[0][0]).version
    with pytest.raises(NotFoundError):
        task.forget("never-taught")
    cases: list[tuple[type[APIError], int | None, Callable[[], object]]] = [
        (InvalidRequestError, 400, lambda: task.add("b", b"not an image")),
        (InvalidRequestError, 400, lambda: task.add("b", drawings[0][0][:60])),  # truncated PNG
        (InvalidRequestError, None, lambda: task.add("x" * 129, drawings[1][0])),  # label too long
        (InvalidRequestError, 422, lambda: task.add_examples([(7, drawings[1][0])])),  # label not a string
        (InvalidRequestError, 422, lambda: task.add_examples([])),
        (InvalidRequestError, 422, lambda: task.classify(drawings[0][0], top_k=0)),
        (PayloadTooLargeError, 413, lambda: task.add("b", np.zeros((8, 4100), np.uint8))),  # side > 4096
    ]
    for error, status, call in cases:
        with pytest.raises(error) as raised:
            call()
        assert raised.value.status_code in ((status,) if status else (400, 422))
        assert raised.value.code and raised.value.message
    assert task.info().version == version, "a rejected request must change nothing"


def test_body_over_limit_is_413(server_url: str, task_id: str) -> None:
    client = Client(server_url, max_body_bytes=64 * 1024 * 1024)
    with client, pytest.raises(PayloadTooLargeError) as raised:
        client.task(task_id).add("big", b"\0" * (17 * 1024 * 1024))
    assert raised.value.status_code == 413


def test_uploads_are_split(server_url: str, task_id: str, drawings: list[list[bytes]]) -> None:
    examples = [(f"c{i}", drawings[i][0]) for i in range(7)]
    queries = [drawings[i][1] for i in range(7)]
    with Client(server_url, max_images_per_request=3) as client:
        assert client.limits().max_images_per_request == 3  # and the byte limit is the server's, read now
        seen = _requests_seen(client)
        task = client.task(task_id)
        assert task.add_examples(examples).num_examples == 7
        assert len(seen) == 3
        split = task.classify(queries, top_k=2)
        assert len(seen) == 6
    with Client(server_url) as client:
        whole = client.task(task_id).classify(queries, top_k=2)
    assert split.version == whole.version
    assert split.labels == whole.labels
    assert [p.score for p in split.predictions] == pytest.approx(
        [p.score for p in whole.predictions], abs=1e-4
    )

    with Client(server_url, max_body_bytes=1000) as client:
        assert client.limits().max_body_bytes == 1000
        seen = _requests_seen(client)
        assert client.task(task_id).add("more", [png for _, png in examples]).num_examples == 14
        assert len(seen) > 2 and all(len(request.content) <= 1000 for request in seen)


def test_api_keys_and_tenants(
    auth_server_url: str, api_keys: dict[str, str], task_id: str, drawings: list[list[bytes]]
) -> None:
    for key in (None, "wrong-key"):
        with Client(auth_server_url, api_key=key) as client, pytest.raises(AuthenticationError) as raised:
            client.task(task_id).info()
        assert raised.value.status_code == 401
    with Client(auth_server_url, api_key=api_keys["alice"]) as alice:
        alice.task(task_id).add("a", drawings[0][0])
        assert alice.task(task_id).info().num_examples == 1
    with Client(auth_server_url, api_key=api_keys["bob"]) as bob, pytest.raises(NotFoundError):
        bob.task(task_id).info()


def test_environment_variables(
    auth_server_url: str, api_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METANET_URL", auth_server_url)
    monkeypatch.setenv("METANET_API_KEY", api_keys["bob"])
    with Client() as client, pytest.raises(NotFoundError):
        client.task("nothing-here").info()


def test_connection_errors() -> None:
    with Client("http://127.0.0.1:9", max_retries=1, backoff=0.01) as client:
        with pytest.raises(APIConnectionError, match="127.0.0.1:9"):
            client.health()
        with pytest.raises(APIConnectionError):
            client.task("t").add("a", b"png")


def test_server_errors_and_retries(stub: Any) -> None:
    unavailable = (503, json.dumps({"error": {"code": "unavailable", "message": "warming up"}}).encode())
    with Client(
        stub.url, max_retries=2, backoff=0.01, max_images_per_request=8, max_body_bytes=1 << 20
    ) as client:
        stub.answers = [unavailable, unavailable]
        assert client.health() == {"status": "ok"}  # retried twice
        assert len(stub.seen) == 3

        stub.answers = [unavailable] * 3
        with pytest.raises(ServerError) as raised:
            client.task("t").info()
        assert (raised.value.status_code, raised.value.code, raised.value.message) == (
            503,
            "unavailable",
            "warming up",
        )

        # Adding is resent with its Idempotency-Key, the same on every retry: the server writes once.
        added = {"task_id": "t", "version": 1, "num_examples": 1, "labels": ["a"]}
        stub.answers, stub.seen, stub.keys = [unavailable, (200, json.dumps(added).encode())], [], []
        assert client.task("t").add("a", b"png").version == 1
        assert stub.seen == ["POST /tasks/t/support"] * 2
        assert stub.keys[0] and stub.keys == [stub.keys[0]] * 2
        first_key = stub.keys[0]
        stub.answers, stub.keys = [(200, json.dumps(added).encode())], []
        client.task("t").add("a", b"png")
        assert stub.keys[0] != first_key  # each call has its own key

        stub.answers = [(500, b"Internal Server Error")] * 3
        with pytest.raises(ServerError) as raised:
            client.task("t").delete()
        assert (raised.value.code, raised.value.message) == ("http_500", "Internal Server Error")

        stub.answers = [(418, b'{"detail": "teapot"}')]
        with pytest.raises(APIError) as raised:
            client.task("t").forget("a")
        assert (type(raised.value), raised.value.message) == (APIError, "teapot")


def test_uploads_are_split_by_the_limits_the_server_publishes(stub: Any) -> None:
    published = {"limits": {"max_images_per_request": 2, "max_body_bytes": 1 << 20}}
    added = {"task_id": "t", "version": 3, "num_examples": 5, "labels": ["a"]}
    stub.answers = [(200, json.dumps(published).encode())] + [(200, json.dumps(added).encode())] * 4
    with Client(stub.url) as client:
        assert client.task("t").add("a", [b"png"] * 5).num_examples == 5
        assert (client.limits().max_images_per_request, client.limits().max_body_bytes) == (2, 1 << 20)
        client.task("t").add("a", b"png")
    assert stub.seen == ["GET /info", *["POST /tasks/t/support"] * 4]  # /info is read once


def test_a_server_without_published_limits_needs_them_given(stub: Any) -> None:
    with Client(stub.url) as client, pytest.raises(MetaNetError, match="max_images_per_request"):
        client.task("t").add("a", b"png")
    with Client(stub.url, max_images_per_request=1) as client, pytest.raises(MetaNetError):
        client.task("t").classify(b"png")
    with Client(stub.url, max_images_per_request=1, max_body_bytes=1 << 20) as client:
        assert (client.limits().max_images_per_request, client.limits().max_body_bytes) == (1, 1 << 20)
    assert stub.seen == ["GET /info", "GET /info"]  # given limits need no request


def test_any_label_and_task_id_round_trip(client: Client, drawings: list[list[bytes]]) -> None:
    """Path segments are escaped: labels with '/', '%', '?', '#' or dots, and the task ids '.' and '..'."""
    labels = ["b/ü x", "a%2Fb", "..", "?x=1#y"]
    for task_id in (".", ".."):
        task = client.task(task_id)
        assert task.add_examples((label, drawings[i][0]) for i, label in enumerate(labels)).task_id == task_id
        for label in labels:
            assert label in task.info().labels
            assert label not in task.forget(label).labels
        task.delete()


def test_a_repeated_idempotency_key_writes_once(
    server_url: str, task_id: str, drawings: list[list[bytes]]
) -> None:
    examples = [(f"k{i}", drawings[i][0]) for i in range(5)]
    with Client(server_url, max_images_per_request=2) as client:  # three requests: keys k, k.1, k.2
        task = client.task(task_id)
        first = task.add_examples(examples, idempotency_key=f"{task_id}-upload")
        again = task.add_examples(examples, idempotency_key=f"{task_id}-upload")
        assert again == first and first.num_examples == 5
        assert task.info().num_examples == 5
        with pytest.raises(APIError) as raised:
            task.add_examples(examples[:1], idempotency_key=f"{task_id}-upload.1")  # k.1 named other images
        assert (raised.value.status_code, raised.value.code) == (409, "idempotency_key_reused")


def test_export_and_import(client: Client, task_id: str, drawings: list[list[bytes]], tmp_path: Path) -> None:
    task = client.task(task_id)
    task.add_examples([(f"c{i}", drawings[i][0]) for i in range(4)] + [("c1", drawings[1][1])])
    queries = [drawings[i][6] for i in range(4)]
    before = task.classify(queries, top_k=2)

    export = task.export(tmp_path / "task.json")
    assert isinstance(export, TaskExport) and export.task_id == task_id and len(export.examples) == 5
    assert TaskExport.model_validate_json((tmp_path / "task.json").read_text()) == export

    file = tmp_path / "task.json"
    for source in (file, str(file), export, export.model_dump_json().encode()):
        copy = client.task(f"{task_id}-copy")
        imported = copy.import_from(source)
        assert isinstance(imported, ImportResult) and imported.model_matches
        assert (imported.num_examples, imported.labels) == (5, {"c0": 1, "c1": 2, "c2": 1, "c3": 1})
        after = copy.classify(queries, top_k=2)
        assert after.labels == before.labels
        assert [[s.label for s in p.top_k] for p in after.predictions] == [
            [s.label for s in p.top_k] for p in before.predictions
        ]
        with pytest.raises(APIError) as raised:
            copy.import_from(source)
        assert (raised.value.status_code, raised.value.code) == (409, "task_exists")
        copy.delete()
