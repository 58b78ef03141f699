"""The SDK's result models (`_models.py`) against the server's published OpenAPI schema: every field
a response carries is a field of the SDK's model, of the same shape, and the SDK expects nothing the
server does not send."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from metanet_client import Client, _models
from pydantic import BaseModel

from server import schemas

# Server response schema (OpenAPI component) -> the SDK model that reads it.
PAIRS: dict[str, type[BaseModel]] = {
    "SupportResponse": _models.SupportResult,
    "ClassifyResponse": _models.ClassifyResult,
    "Prediction": _models.Prediction,
    "LabelScore": _models.LabelScore,
    "TaskInfo": _models.TaskInfo,
    "ImportedTask": _models.ImportResult,
    "TaskExport": _models.TaskExport,
    "ExportedExample": _models.ExportedExample,
    "ExportedModel": _models.ExportedModel,
}
REF = "#/components/schemas/{model}"


def shape(schema: dict[str, Any], names: dict[str, str]) -> tuple:
    """A schema reduced to what must agree: types, item and value shapes, referenced models (a
    server component named by the SDK model that reads it)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return ("model", names.get(name, name))
    if "anyOf" in schema:
        return ("anyOf", tuple(sorted(shape(option, names) for option in schema["anyOf"])))
    kind = schema.get("type")
    if kind == "array":
        return ("array", shape(schema.get("items", {}), names))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return ("map", shape(schema["additionalProperties"], names))
    return (kind,)


def mismatches(openapi: dict[str, Any], pairs: dict[str, type[BaseModel]]) -> list[str]:
    """Every disagreement between the server's response schemas and the SDK's models."""
    components = openapi["components"]["schemas"]
    names = {server: model.__name__ for server, model in pairs.items()}
    found = []
    for server_name, model in pairs.items():
        served = components[server_name]
        client = model.model_json_schema(ref_template=REF)
        sent, read = served.get("properties", {}), client.get("properties", {})
        where = f"server {server_name} / SDK {model.__name__}"
        found += [
            f"{where}: the server sends {f!r}, the SDK model lacks it" for f in sent.keys() - read.keys()
        ]
        found += [
            f"{where}: the SDK expects {f!r}, the server never sends it" for f in read.keys() - sent.keys()
        ]
        for field in sent.keys() & read.keys():
            server_shape, client_shape = shape(sent[field], names), shape(read[field], {})
            if server_shape != client_shape:
                found.append(f"{where}: {field!r} is {server_shape} on the server, {client_shape} in the SDK")
        optional_in_sdk = (set(served.get("required", ())) & read.keys()) - set(client.get("required", ()))
        found += [f"{where}: {f!r} is always sent but optional in the SDK" for f in sorted(optional_in_sdk)]
    return sorted(found)


@pytest.fixture(scope="module")
def openapi(server_url: str) -> dict[str, Any]:
    return httpx.get(f"{server_url}/openapi.json", timeout=30).raise_for_status().json()


def test_sdk_models_match_the_servers_openapi_schema(openapi: dict[str, Any]) -> None:
    assert mismatches(openapi, PAIRS) == []


def test_the_sdk_splits_uploads_by_the_limits_the_server_publishes(server_url: str) -> None:
    published = httpx.get(f"{server_url}/info", timeout=30).raise_for_status().json()["limits"]
    with Client(server_url) as client:
        limits = client.limits()
    assert (limits.max_images_per_request, limits.max_body_bytes) == (
        published["max_images_per_request"],
        published["max_body_bytes"],
    )


def test_a_field_added_to_a_server_response_is_caught(openapi: dict[str, Any]) -> None:
    class Prediction(schemas.Prediction):  # the server's response grows a field...
        rejected: bool

    grown = copy.deepcopy(openapi)
    grown["components"]["schemas"]["Prediction"] = Prediction.model_json_schema(ref_template=REF)
    assert mismatches(grown, PAIRS) == [  # ...that the SDK's model does not have
        "server Prediction / SDK Prediction: the server sends 'rejected', the SDK model lacks it"
    ]


def test_a_field_only_the_sdk_has_or_a_changed_type_is_caught(openapi: dict[str, Any]) -> None:
    class TaskInfo(_models.TaskInfo):
        created_at: str

    class SupportResult(_models.SupportResult):
        version: str  # type: ignore[assignment]

    pairs = {**PAIRS, "TaskInfo": TaskInfo, "SupportResponse": SupportResult}
    assert mismatches(openapi, pairs) == [
        "server SupportResponse / SDK SupportResult: 'version' is ('integer',) on the server, "
        "('string',) in the SDK",
        "server TaskInfo / SDK TaskInfo: the SDK expects 'created_at', the server never sends it",
    ]
