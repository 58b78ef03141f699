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


def parse_keys(text: str, source: str) -> tuple[dict[bytes, str], dict[str, dict[str, str]]]:
    """``tenant:key`` pairs separated by newlines or commas, each optionally followed by the tenant's
    own quotas as ``name=value`` words (``alice:k1 max_tasks=100 share=2``; server.quotas); ``#``
    starts a comment line. Returns key digest -> tenant, and tenant -> its options."""
    keys: dict[bytes, str] = {}
    options: dict[str, dict[str, str]] = {}
    for n, entry in enumerate(re.split(r"[\n,]", text), 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        pair, *words = entry.split()
        tenant, sep, key = pair.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key or not _TENANT.match(tenant):
            raise ValueError(
                f"{source}, entry {n}: expected 'tenant:key' with tenant matching {_TENANT.pattern}"
            )
        keys[_digest(key)] = tenant
        for word in words:
            name, eq, value = word.partition("=")
            if not eq or not name or not value:
                raise ValueError(f"{source}, entry {n}: expected name=value after the key, not {word!r}")
            options.setdefault(tenant, {})[name] = value
    return keys, options


class KeyRing:
    """Resolves ``Authorization: Bearer <key>`` headers to tenants; open (one tenant) when empty.
    ``options``: each tenant's own quotas from the keys, as given (``name=value``)."""

    def __init__(self, keys: dict[bytes, str], options: dict[str, dict[str, str]] | None = None) -> None:
        self._keys = keys
        self.options = options or {}

    @classmethod
    def load(cls, env_value: str = "", file: Path | None = None) -> KeyRing:
        keys, options = parse_keys(env_value, "METANET_API_KEYS")
        if file is not None:
            try:
                text = Path(file).read_text()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the API keys file {file} ({exc.strerror}): "
                    "it should hold one 'tenant:key' line per client"
                ) from None
            more, more_options = parse_keys(text, str(file))
            keys |= more
            for tenant, given in more_options.items():
                options.setdefault(tenant, {}).update(given)
        return cls(keys, options)

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
