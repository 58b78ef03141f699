"""API keys -> tenants. Keys come from ``METANET_API_KEYS`` and/or a keys file, as ``tenant:key`` pairs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from server.config import NAME_PATTERN, ConfigError
from server.protocol import Unauthorized

DEFAULT_TENANT = "default"
_TENANT = re.compile(NAME_PATTERN)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(text: str, source: str) -> dict[bytes, str]:
    """``tenant:key`` pairs separated by newlines or commas; ``#`` starts a comment line."""
    keys: dict[bytes, str] = {}
    for n, entry in enumerate(re.split(r"[\n,]", text), 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        tenant, sep, key = entry.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key or not _TENANT.match(tenant):
            raise ValueError(
                f"{source}, entry {n}: expected 'tenant:key' with tenant matching {_TENANT.pattern}"
            )
        keys[_digest(key)] = tenant
    return keys


class KeyRing:
    """Resolves ``Authorization: Bearer <key>`` headers to tenants; open (one tenant) when empty."""

    def __init__(self, keys: dict[bytes, str]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, env_value: str = "", file: Path | None = None) -> KeyRing:
        keys = parse_keys(env_value, "METANET_API_KEYS")
        if file is not None:
            try:
                text = Path(file).read_text()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the API keys file {file} ({exc.strerror}): "
                    "it should hold one 'tenant:key' line per client"
                ) from None
            keys |= parse_keys(text, str(file))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def tenants(self) -> set[str]:
        return set(self._keys.values())

    def tenant_for(self, authorization: str | None) -> str:
        if not self._keys:
            return DEFAULT_TENANT
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        tenant = self._keys.get(_digest(key.strip()))
        if tenant is None:
            raise Unauthorized("invalid API key")
        return tenant
