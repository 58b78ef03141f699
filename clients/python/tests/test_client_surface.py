"""The sync and async clients have one surface: the same public names, parameters and return types,
awaited on the async side."""

from __future__ import annotations

import inspect

import pytest
from metanet_client import AsyncClient, AsyncTask, Client, Task

# The only names that differ, as in httpx: closing and the context-manager protocol.
RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}
NOT_AWAITED = {"task"}  # hands out a handle; no request is made


def public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and not isinstance(member, type)
    }


def signature(member: object) -> list[tuple[str, object, object]]:
    parameters = inspect.signature(member).parameters.values()  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in parameters]


@pytest.mark.parametrize(("sync", "asynchronous"), [(Client, AsyncClient), (Task, AsyncTask)])
def test_sync_and_async_twins_have_one_surface(sync: type, asynchronous: type) -> None:
    sync_names, async_names = public(sync), public(asynchronous)
    assert {RENAMED.get(name, name) for name in sync_names} == set(async_names)
    for name, member in sync_names.items():
        twin = async_names[RENAMED.get(name, name)]
        assert isinstance(member, property) == isinstance(twin, property), name
        if isinstance(member, property):
            continue
        assert signature(member) == signature(twin), name
        assert inspect.iscoroutinefunction(twin) == (name not in NOT_AWAITED), name
        assert not inspect.iscoroutinefunction(member), name
        sync_returns = inspect.signature(member).return_annotation
        async_returns = inspect.signature(twin).return_annotation
        if name in NOT_AWAITED:
            assert async_returns == "Async" + sync_returns, name
        elif name not in RENAMED:
            assert sync_returns == async_returns, name
    assert signature(sync.__init__) == signature(asynchronous.__init__)
