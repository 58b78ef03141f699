"""The asynchronous SDK against a real server process: the same methods and errors, awaited."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from metanet_client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    ClassifyResult,
    ImportResult,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    SupportResult,
    TaskExport,
    TaskInfo,
)

pytestmark = pytest.mark.anyio


async def test_task_lifecycle(server_url: str, task_id: str, drawings: list[list[bytes]]) -> None:
    async with AsyncClient(server_url) as client:
        assert isinstance(await client.health(), dict)
        task = client.task(task_id)
        first = await task.add("a", drawings[0][0])
        assert isinstance(first, SupportResult) and first.labels == ["a"]
        second = await task.add_examples([("b", drawings[1][0]), ("c", drawings[2][0])])
        assert second.num_examples == 3 and second.version > first.version

        info = await task.info()
        assert isinstance(info, TaskInfo) and info.labels == {"a": 1, "b": 1, "c": 1}

        concurrent = await asyncio.gather(*(task.classify(drawings[i][0], top_k=3) for i in range(3)))
        assert all(isinstance(result, ClassifyResult) for result in concurrent)
        assert [result.labels[0] for result in concurrent] == ["a", "b", "c"]
        assert all(len(result.predictions[0].top_k) == 3 for result in concurrent)

        assert (await task.forget("b")).labels == {"a": 1, "c": 1}
        assert (await task.info()).labels == {"a": 1, "c": 1}
        await task.delete()
        with pytest.raises(NotFoundError) as raised:
            await task.info()
        assert raised.value.status_code == 404


async def test_errors(server_url: str, task_id: str, drawings: list[list[bytes]]) -> None:
    async with AsyncClient(server_url) as client:
        task = client.task(task_id)
        with pytest.raises(NotFoundError):
            await task.classify(drawings[0][0])
        version = (await task.add("a", drawings[0][0])).version
        with pytest.raises(InvalidRequestError) as raised:
            await task.add("b", b"GIF89a but not really")
        assert raised.value.status_code == 400
        with pytest.raises(InvalidRequestError) as raised:
            await task.classify([], top_k=1)
        assert raised.value.status_code == 422
        with pytest.raises(NotFoundError):
            await task.forget("never-taught")
        assert (await task.info()).version == version

    async with AsyncClient(server_url, max_body_bytes=64 * 1024 * 1024) as client:
        with pytest.raises(PayloadTooLargeError):
            await client.task(task_id).add("big", b"\0" * (17 * 1024 * 1024))


async def test_api_keys_and_tenants(
    auth_server_url: str, api_keys: dict[str, str], task_id: str, drawings: list[list[bytes]]
) -> None:
    async with AsyncClient(auth_server_url, api_key="wrong-key") as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.task(task_id).info()
        assert raised.value.status_code == 401
    async with AsyncClient(auth_server_url, api_key=api_keys["alice"]) as alice:
        assert (await alice.task(task_id).add("a", drawings[0][0])).num_examples == 1
    async with AsyncClient(auth_server_url, api_key=api_keys["bob"]) as bob:
        with pytest.raises(NotFoundError):
            await bob.task(task_id).delete()


async def test_uploads_are_split(server_url: str, task_id: str, drawings: list[list[bytes]]) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    async with AsyncClient(server_url, max_images_per_request=2) as client:
        # and the byte limit is the server's, read now
        assert (await client.limits()).max_images_per_request == 2
        client._http.event_hooks["request"].append(record)
        task = client.task(task_id)
        assert (await task.add("c0", [drawings[0][d] for d in range(5)])).num_examples == 5
        assert len(seen) == 3
        result = await task.classify([drawings[0][d] for d in range(5, 10)])
        assert len(seen) == 6 and len(result.predictions) == 5


async def test_server_errors_retries_and_connection_errors(stub: Any) -> None:
    unavailable = (503, b'{"error": {"code": "unavailable", "message": "warming up"}}')
    async with AsyncClient(
        stub.url, max_retries=1, backoff=0.01, max_images_per_request=8, max_body_bytes=1 << 20
    ) as client:
        stub.answers = [unavailable]
        assert await client.health() == {"status": "ok"}
        stub.answers = [unavailable] * 2
        with pytest.raises(ServerError) as raised:
            await client.task("t").classify(b"png")
        assert (raised.value.status_code, raised.value.code) == (503, "unavailable")
        assert len(stub.seen) == 4
    async with AsyncClient("http://127.0.0.1:9", max_retries=1, backoff=0.01) as client:
        with pytest.raises(APIConnectionError):
            await client.task("t").info()


async def test_export_import_and_idempotency_keys(
    server_url: str, task_id: str, drawings: list[list[bytes]]
) -> None:
    async with AsyncClient(server_url) as client:
        task = client.task(task_id)
        examples = [(f"c{i}", drawings[i][0]) for i in range(3)]
        first = await task.add_examples(examples, idempotency_key=f"{task_id}-once")
        assert await task.add_examples(examples, idempotency_key=f"{task_id}-once") == first
        assert (await task.info()).num_examples == 3

        export = await task.export()
        assert isinstance(export, TaskExport) and [e.label for e in export.examples] == ["c0", "c1", "c2"]
        copy = client.task(f"{task_id}-copy")
        imported = await copy.import_from(export)
        assert isinstance(imported, ImportResult) and imported.num_examples == 3 and imported.model_matches
        queries = [drawings[i][4] for i in range(3)]
        assert (await copy.classify(queries)).labels == (await task.classify(queries)).labels
