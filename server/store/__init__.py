"""The task store: the durable source of truth for support examples, behind one interface (``TaskStore``)
with two backends chosen by URL (``open_store``): SQLite, embedded and the default, and PostgreSQL, shared
by any number of server replicas (docs/SERVER.md, "Task store")."""

from __future__ import annotations

from server.store.base import (
    IDEMPOTENCY_TTL,
    StoreCounts,
    TaskSnapshot,
    TaskState,
    TaskStore,
    TaskVersion,
    Written,
)
from server.store.sqlite import SQLiteTaskStore

__all__ = [
    "IDEMPOTENCY_TTL",
    "Written",
    "StoreCounts",
    "TaskSnapshot",
    "TaskVersion",
    "TaskState",
    "SQLiteTaskStore",
    "TaskStore",
    "open_store",
]


def open_store(
    url: str,
    image_shape: tuple[int, int] = (28, 28),
    migrate: bool = True,
    idempotency_ttl: float = IDEMPOTENCY_TTL,
) -> TaskStore:
    """The store at ``url``: ``sqlite:///relative/path.sqlite3``, ``sqlite:////absolute/path.sqlite3`` or
    ``postgresql://user:password@host:port/database`` (``postgres://`` too). ``migrate`` brings the schema
    up to date first (PostgreSQL: waiting up to ``startup_timeout`` seconds for the database to answer).
    ``image_shape`` is the model's preprocessed image size, the shape of every stored image;
    ``idempotency_ttl`` how many seconds a write's idempotency key is remembered."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"not a SQLite URL (sqlite:///path): {url!r}")
        return SQLiteTaskStore(rest[1:], image_shape, idempotency_ttl=idempotency_ttl)
    if sep and scheme in ("postgresql", "postgres"):
        from server.store.postgres import PostgresTaskStore

        return PostgresTaskStore(url, image_shape, migrate=migrate, idempotency_ttl=idempotency_ttl)
    raise ValueError(f"unsupported task store URL {url!r}: use sqlite:///path or postgresql://...")
