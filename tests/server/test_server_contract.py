"""The published contract: the OpenAPI schema states the configured limits and rules, `/` and `/info`
answer JSON, a wrong method is a 405 that names every method of the path, and the settings are checked
against the checkpoint before the server starts."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from server.app import build_server, model_info
from server.auth import KeyRing
from server.config import LABEL_PATTERN, NAME_PATTERN, ConfigError, ServerSettings
from testkit import CHECKPOINT, REPO


def openapi(settings: ServerSettings) -> dict:
    return build_server(settings, KeyRing({})).app.openapi()


def test_the_schema_states_the_configured_limits(tmp_path) -> None:
    settings = ServerSettings(
        data_dir=tmp_path, checkpoint=CHECKPOINT, max_images_per_request=7, max_label_length=9
    )
    schema = openapi(settings)
    components = schema["components"]["schemas"]
    label = components["SupportExample"]["properties"]["label"]
    assert (label["minLength"], label["maxLength"], label["pattern"]) == (1, 9, LABEL_PATTERN)
    assert "1-9 characters" in label["description"]
    assert components["SupportExample"]["properties"]["image"]["minLength"] == 1
    for body, field in (("SupportRequest", "examples"), ("ClassifyRequest", "images")):
        items = components[body]["properties"][field]
        assert (items["minItems"], items["maxItems"]) == (1, 7) and "1-7" in items["description"]
    assert components["ClassifyRequest"]["properties"]["images"]["items"]["minLength"] == 1
    for path in ("/tasks/{task_id}", "/tasks/{task_id}/labels/{label}"):
        parameters = {p["name"]: p["schema"] for p in schema["paths"][path]["delete"]["parameters"]}
        assert parameters["task_id"]["pattern"] == NAME_PATTERN
    assert parameters["label"]["maxLength"] == 9
    classify = schema["paths"]["/tasks/{task_id}/classify"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "413", "422", "500", "504"} <= set(classify)
    assert "`empty_task`" in classify["409"]["description"]


def test_more_examples_per_task_than_the_model_has_labels_is_refused(tmp_path) -> None:
    capacity = model_info(ServerSettings(data_dir=tmp_path, checkpoint=CHECKPOINT)).max_labels
    with pytest.raises(ConfigError, match="METANET_MAX_EXAMPLES_PER_TASK"):
        model_info(
            ServerSettings(data_dir=tmp_path, checkpoint=CHECKPOINT, max_examples_per_task=capacity + 1)
        )
    started = subprocess.run(
        [sys.executable, "-m", "server", "--checkpoint", str(CHECKPOINT), "--data-dir", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "METANET_MAX_EXAMPLES_PER_TASK": str(capacity + 1)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 2 and f"exceeds the {capacity} labels" in started.stderr


def test_root_and_info_answer_json(client: httpx.Client) -> None:
    root = client.get("/")
    assert root.status_code == 200 and root.headers["content-type"] == "application/json"
    assert {root.json()[k] for k in ("docs", "ui", "openapi", "health", "info")} == {
        "/docs",
        "/ui",
        "/openapi.json",
        "/health",
        "/info",
    }
    info = client.get("/info").json()
    defaults = ServerSettings()
    assert info["limits"]["max_images_per_request"] == defaults.max_images_per_request
    assert info["limits"]["max_body_bytes"] == defaults.max_body_bytes
    assert info["model"]["image_size"] == 28 and info["task_id_pattern"] == NAME_PATTERN


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/tasks/t1", "DELETE, GET"),
        ("PUT", "/tasks/t1", "DELETE, GET"),
        ("GET", "/tasks/t1/classify", "POST"),
        ("POST", "/health", "GET"),
        ("POST", "/tasks/t1/labels/a/b", "DELETE"),
    ],
)
def test_a_wrong_method_is_405_naming_every_allowed_method(
    client: httpx.Client, method: str, path: str, allowed: str
) -> None:
    answer = client.request(method, path)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allowed
    assert answer.json()["error"]["code"] == "method_not_allowed"
