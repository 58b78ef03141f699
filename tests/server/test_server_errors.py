# ruff: noqa: E501
"""Every kind of bad request (docs/API.md, "Errors") gets a 4xx JSON error, changes nothing, and leaves the
server healthy."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from testkit import ServerProcess, b64, decompression_bomb, png, running_server, support_body, zero_size_png

MAX_EXAMPLES = 12  # a small per-task limit, so that going over it is quick


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"METANET_MAX_EXAMPLES_PER_TASK": str(MAX_EXAMPLES)}
    with running_server(tmp_path_factory.mktemp("server") / "data", env=env) as process:
        yield process


@pytest.fixture(scope="module")
def known(server: ServerProcess, tibetan) -> dict:
    """A task with 10 examples, and its state and predictions before any bad request."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        examples = [(f"c{i}", tibetan[i][0]) for i in range(10)]
        assert http.post("/tasks/known/support", json=support_body(examples)).status_code == 200
        query = {"images": [b64(tibetan[i][1]) for i in range(10)], "top_k": 3}
        return {
            "info": http.get("/tasks/known").json(),
            "query": query,
            "predictions": http.post("/tasks/known/classify", json=query).json(),
        }


GOOD = png(np.full((28, 28), 255, np.uint8))
NOISE = base64.b64decode(png(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)))
TRUNCATED = b64(NOISE[: len(NOISE) // 2])

# (name, method, path, request kwargs, status, error code)
CASES = [
    ("not-an-image", "POST", "classify", {"json": {"images": [b64(b"hello, not an image")]}}, 400, "invalid_image"),
    ("not-base64", "POST", "classify", {"json": {"images": ["***"]}}, 422, "validation_error"),
    ("base64-not-an-image", "POST", "classify", {"json": {"images": ["AAAA"]}}, 400, "invalid_image"),
    ("truncated", "POST", "classify", {"json": {"images": [TRUNCATED]}}, 400, "invalid_image"),
    ("zero-size", "POST", "classify", {"json": {"images": [b64(zero_size_png())]}}, 400, "invalid_image"),
    ("huge", "POST", "classify", {"json": {"images": [png(np.zeros((2, 4097), np.uint8))]}}, 413, "image_too_large"),
    ("bomb", "POST", "classify", {"json": {"images": [b64(decompression_bomb())]}}, 413, "image_too_large"),
    ("images-not-strings", "POST", "classify", {"json": {"images": [1, 2]}}, 422, "validation_error"),
    ("top-k-not-int", "POST", "classify", {"json": {"images": [GOOD], "top_k": "many"}}, 422, "validation_error"),
    ("top-k-zero", "POST", "classify", {"json": {"images": [GOOD], "top_k": 0}}, 422, "validation_error"),
    ("empty-images", "POST", "classify", {"json": {"images": []}}, 422, "validation_error"),
    ("missing-images", "POST", "classify", {"json": {"image": GOOD}}, 422, "validation_error"),
    ("body-is-a-list", "POST", "classify", {"json": [GOOD]}, 422, "validation_error"),
    ("invalid-json", "POST", "classify", {"content": b'{"images": [', "headers": {"content-type": "application/json"}}, 422, "validation_error"),
    ("too-many-images", "POST", "classify", {"json": {"images": [GOOD] * 257}}, 413, "too_many_images"),
    ("body-too-large", "POST", "classify", {"json": {"images": ["A" * (16 * 1024 * 1024)]}}, 413, "payload_too_large"),
    ("body-too-large-chunked", "POST", "classify", {"content": iter([b'{"images": ["' + b"A" * (1 << 20)] * 17)}, 413, "payload_too_large"),
    ("unknown-task", "POST", "/tasks/nope/classify", {"json": {"images": [GOOD]}}, 404, "task_not_found"),
    ("unknown-task-get", "GET", "/tasks/nope", {}, 404, "task_not_found"),
    ("unknown-task-delete", "DELETE", "/tasks/nope", {}, 404, "task_not_found"),
    ("unknown-label", "DELETE", "/tasks/known/labels/nope", {}, 404, "label_not_found"),
    ("bad-task-id", "POST", "/tasks/bad%20id!/classify", {"json": {"images": [GOOD]}}, 422, "validation_error"),
    ("task-id-too-long", "GET", "/tasks/" + "x" * 129, {}, 422, "validation_error"),
    ("empty-examples", "POST", "support", {"json": {"examples": []}}, 422, "validation_error"),
    ("examples-not-list", "POST", "support", {"json": {"examples": "x"}}, 422, "validation_error"),
    ("label-not-string", "POST", "support", {"json": {"examples": [{"label": 5, "image": GOOD}]}}, 422, "validation_error"),
    ("label-too-long", "POST", "support", {"json": {"examples": [{"label": "x" * 129, "image": GOOD}]}}, 422, "validation_error"),
    ("label-empty", "POST", "support", {"json": {"examples": [{"label": "", "image": GOOD}]}}, 422, "validation_error"),
    ("label-control-chars", "POST", "support", {"json": {"examples": [{"label": "a\nb", "image": GOOD}]}}, 422, "validation_error"),
    ("image-empty", "POST", "support", {"json": {"examples": [{"label": "x", "image": ""}]}}, 422, "validation_error"),
    ("label-path-control-chars", "DELETE", "/tasks/known/labels/a%01b", {}, 422, "validation_error"),
    ("one-bad-example", "POST", "support", {"json": {"examples": [{"label": "ok", "image": GOOD}, {"label": "bad", "image": b64(b"nope")}]}}, 400, "invalid_image"),
    ("too-many-examples", "POST", "support", {"json": {"examples": [{"label": "x", "image": GOOD}] * 3}}, 413, "too_many_examples"),
    ("form-body", "POST", "support", {"data": {"examples": "x"}}, 422, "validation_error"),
    ("wrong-method", "PUT", "/tasks/known", {}, 405, "method_not_allowed"),
    ("unknown-route", "GET", "/nothing/here", {}, 404, "not_found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_a_json_4xx(server, known, method, path, kwargs, status, code) -> None:
    url = path if path.startswith("/") else f"/tasks/known/{path}"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answer = http.request(method, url, **kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    assert len(answer.text) < 2000  # errors never echo what was sent


def test_nothing_changed_and_server_healthy(server, known) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/tasks/known").json() == known["info"]
        assert http.post("/tasks/known/classify", json=known["query"]).json() == known["predictions"]
        # The limit leaves room for exactly two more examples.
        answer = http.post("/tasks/known/support", json=support_body([("x", GOOD)] * 2))
        assert answer.status_code == 200 and answer.json()["num_examples"] == MAX_EXAMPLES
