"""API keys -> tenants, without HTTP."""

from __future__ import annotations

import pytest

from server.auth import DEFAULT_TENANT, KeyRing
from server.errors import status_of
from server.protocol import Unauthorized


def test_keys_from_environment_and_file(tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# tenant:key\nalice:key-a\n\nbob:key:with:colons\n")
    ring = KeyRing.load("carol:key-c, dave:key-d", keys_file)
    assert ring.enabled and ring.tenants == {"alice", "bob", "carol", "dave"}
    assert ring.tenant_for("Bearer key-a") == "alice"
    assert ring.tenant_for("bearer key:with:colons") == "bob"
    assert ring.tenant_for("Bearer key-d") == "dave"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic key-a", "Bearer wrong", "key-a"])
def test_missing_or_wrong_keys_are_401(header: str | None) -> None:
    with pytest.raises(Unauthorized) as caught:
        KeyRing.load("alice:key-a").tenant_for(header)
    assert status_of(caught.value) == 401


def test_no_keys_means_one_open_tenant() -> None:
    ring = KeyRing.load()
    assert not ring.enabled and ring.tenant_for(None) == DEFAULT_TENANT


@pytest.mark.parametrize("text", ["no-colon", "bad tenant:key", ":key", "tenant:"])
def test_malformed_entries_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        KeyRing.load(text)
