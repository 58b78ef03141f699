"""Per-tenant quotas and rate limits (docs/API.md, "Quotas"): what each tenant may store and how fast it
may call. Defaults are settings (``METANET_TENANT_*``); a tenant's own values come from the keys file
(``tenant:key max_tasks=100 images_per_second=500``). Storage quotas are checked by the task store in
the write's own transaction; rates by ``RateLimiter`` in each HTTP process."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Self

from server.protocol import RateLimited
from server.store.base import StorageQuota


@dataclass(frozen=True)
class TenantQuota:
    """Everything limited per tenant, and its weight in the inference queue's round robin."""

    max_tasks: int
    max_examples: int
    max_stored_bytes: int
    requests_per_second: float  # /tasks requests
    images_per_second: float  # images in support and classify requests
    share: float  # weight in the inference queue (docs/SERVER.md, "Admission and fairness")

    @property
    def storage(self) -> StorageQuota:
        return StorageQuota(self.max_tasks, self.max_examples, self.max_stored_bytes)

    def with_options(self, options: dict[str, str], where: str) -> Self:
        """This quota with ``name=value`` options of a keys-file entry applied."""
        kinds = {f.name: f.type for f in fields(self)}
        changes: dict[str, float | int] = {}
        for name, text in options.items():
            if name not in kinds:
                raise ValueError(f"{where}: unknown option {name!r}; known: {', '.join(kinds)}")
            try:
                value = int(text) if kinds[name] == "int" else float(text)
            except ValueError:
                raise ValueError(f"{where}: {name}={text!r} is not a number") from None
            if not value > 0:
                raise ValueError(f"{where}: {name} must be positive")
            changes[name] = value
        return replace(self, **changes)


class TenantQuotas:
    """Each tenant's quota: its own from the keys file, else the default."""

    def __init__(self, default: TenantQuota, by_tenant: dict[str, TenantQuota] | None = None) -> None:
        self.default = default
        self.by_tenant = by_tenant or {}

    def __call__(self, tenant: str) -> TenantQuota:
        return self.by_tenant.get(tenant, self.default)

    def share(self, tenant: str) -> float:
        """The tenant's weight in the inference queue's round robin."""
        return self(tenant).share

    @classmethod
    def of(cls, default: TenantQuota, options: dict[str, dict[str, str]]) -> TenantQuotas:
        return cls(default, {t: default.with_options(o, f"tenant {t!r}") for t, o in options.items() if o})


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, now

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens and answer 0, or take none and answer the seconds until there are enough
        (never more than ``burst`` are needed: a larger amount waits for a full bucket)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        needed = min(amount, self.burst)
        if self.tokens >= needed:
            self.tokens -= amount  # may go below zero: a request larger than the burst pays it off later
            return 0.0
        return (needed - self.tokens) / self.rate


class RateLimiter:
    """Requests and images per second of each tenant, in one HTTP process (``processes`` of them share
    each tenant's limit evenly)."""

    def __init__(self, quotas: TenantQuotas, processes: int = 1) -> None:
        self.quotas = quotas
        self.processes = processes
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, tenant: str, kind: str, now: float, least_burst: float) -> TokenBucket:
        bucket = self._buckets.get((tenant, kind))
        if bucket is None:
            rate = getattr(self.quotas(tenant), kind) / self.processes
            bucket = self._buckets[tenant, kind] = TokenBucket(rate, max(rate, least_burst), now)
        return bucket

    def request(self, tenant: str, now: float) -> None:
        """Count one request; raises RateLimited over the tenant's requests_per_second."""
        self._take(tenant, "requests_per_second", 1, now, 1)

    def images(self, tenant: str, images: int, now: float, max_per_request: int) -> None:
        """Count a request's images; raises RateLimited over the tenant's images_per_second."""
        self._take(tenant, "images_per_second", images, now, max_per_request)

    def _take(self, tenant: str, kind: str, amount: int, now: float, least_burst: float) -> None:
        wait = self._bucket(tenant, kind, now, least_burst).take(amount, now)
        if wait > 0:
            limit = getattr(self.quotas(tenant), kind)
            raise RateLimited(f"tenant {tenant!r} is over its rate limit {kind}={limit:g}", math.ceil(wait))
