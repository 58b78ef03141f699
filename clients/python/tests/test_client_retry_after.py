"""Retries that honour the server's Retry-After, against a real server: tenant "slow" of
`auth_server_url` may send one request a second, so a second call within the second is refused
429 with `Retry-After: 1` before the server does anything with it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from metanet_client import AsyncClient, Client, RateLimitError, ServerError


def _answers_seen(client: Client | AsyncClient) -> list[tuple[int, str | None]]:
    seen: list[tuple[int, str | None]] = []

    def record(response: httpx.Response) -> None:
        seen.append((response.status_code, response.headers.get("retry-after")))

    async def arecord(response: httpx.Response) -> None:
        record(response)

    client._http.event_hooks["response"].append(arecord if isinstance(client, AsyncClient) else record)
    return seen


def test_a_refused_call_is_sent_again_after_retry_after(
    auth_server_url: str, slow_key: str, task_id: str, drawings: list[list[bytes]]
) -> None:
    with Client(auth_server_url, api_key=slow_key) as client:
        task = client.task(task_id)
        task.add("a", drawings[0][0])
        seen = _answers_seen(client)
        sent = time.monotonic()
        # Adding is not idempotent, but a 429 with Retry-After was refused before any work: resent.
        assert task.add("b", drawings[1][0]).num_examples == 2
        waited = time.monotonic() - sent
        assert seen == [(429, "1"), (200, None)]
        assert waited >= 1.0  # the wait the server asked for, not the 0.5 s backoff
        time.sleep(1.0)
        assert task.info().labels == {"a": 1, "b": 1}  # added once


def test_a_retry_after_over_the_bound_is_raised(
    auth_server_url: str, slow_key: str, task_id: str, drawings: list[list[bytes]]
) -> None:
    time.sleep(1.0)  # a full bucket
    with Client(auth_server_url, api_key=slow_key, max_retry_after=0.5) as client:
        seen = _answers_seen(client)
        client.task(task_id).add("a", drawings[0][0])
        with pytest.raises(RateLimitError) as raised:
            client.task(task_id).info()
    error = raised.value
    assert (error.status_code, error.code, error.retry_after) == (429, "rate_limited", 1.0)
    assert "requests_per_second=1" in raised.value.message
    assert [status for status, _ in seen] == [200, 200, 429]  # GET /info, the add; not sent again


@pytest.mark.anyio
async def test_the_async_client_waits_out_retry_after_too(
    auth_server_url: str, slow_key: str, task_id: str, drawings: list[list[bytes]]
) -> None:
    time.sleep(1.0)
    async with AsyncClient(auth_server_url, api_key=slow_key) as client:
        task = client.task(task_id)
        await task.add("a", drawings[0][0])
        seen = _answers_seen(client)
        assert (await task.info()).num_examples == 1
        assert seen == [(429, "1"), (200, None)]


def test_an_http_date_retry_after_is_understood(stub: Any) -> None:
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    stub.answers = [(503, b'{"error": {"code": "overloaded", "message": "busy"}}')]
    stub.extra_headers = {"Retry-After": later}
    with Client(stub.url, max_retry_after=60) as client, pytest.raises(ServerError) as raised:
        client.health()
    assert 3500 < raised.value.retry_after <= 3600  # an hour away: over the bound, so not waited for
    assert len(stub.seen) == 1
