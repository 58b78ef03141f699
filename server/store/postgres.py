"""``PostgresTaskStore``: one PostgreSQL database shared by any number of server replicas.

- psycopg 3 with a connection pool per process (created lazily, so a process forked or spawned after the
  store was built opens its own).
- Writes are one transaction each. Writes to one task serialize on its ``tasks`` row (``UPDATE ...
  RETURNING`` takes the row lock), so every write makes exactly one new version whichever replica runs it.
  Images are stored once per tenant: adds hold a shared per-tenant advisory lock, forget and delete (the
  only writers that remove images) an exclusive one, so no image is removed while an add references it.
- Reads that need a consistent view (a task's state and its examples) run in one REPEATABLE READ, READ
  ONLY transaction: a read started after a write was acknowledged, on any replica, sees it.
- Outages: a failed call raises ``StoreUnavailable`` at once (the API answers 503); while the
  database stays unreachable calls fail fast, and one call per ``PROBE_SECONDS`` tries a fresh connection.
  When it succeeds the pool is rebuilt and the replica is back, with nothing to restart.
- A write whose COMMIT answer is lost (connection dropped, database crashed) is resolved by its commit
  marker, a random token the write inserted in its own transaction: once the database answers again the
  store inserts the same token itself. If that conflicts, the write committed; if it goes in, the write
  did not commit and now never can (its own insert of the token would conflict). Transaction ids cannot
  answer this: PostgreSQL reuses the ids of transactions a crash lost before they reached the WAL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from server.protocol import (
    ExampleLimit,
    IdempotencyKeyReused,
    LabelNotFound,
    StoreOutcomeUnknown,
    StoreUnavailable,
    TaskExists,
)
from server.store.base import (
    IDEMPOTENCY_TTL,
    StorageQuota,
    StoreCounts,
    TaskSnapshot,
    TaskState,
    TaskStore,
    TaskVersion,
    Written,
    image_digest,
    pixels_to_images,
    request_fingerprint,
    state_from_json,
    state_to_json,
)
from server.store.migrations import POSTGRESQL

logger = logging.getLogger("metanet.store")
T = TypeVar("T")

PROBE_SECONDS = 0.5  # while the database is unreachable, how often one call tries to reconnect
MARKER_SECONDS = 3600  # how long a write's commit marker is kept (its outcome is resolved within seconds)
# libpq settings a URL may override: fail fast on a dead host, notice a silent one within seconds.
LIBPQ_DEFAULTS = {
    "application_name": "metanet-server",
    "connect_timeout": "3",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, PoolClosed)


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


MIGRATION_LOCK = _lock_key("metanet:migrations")


@dataclass(frozen=True)
class PoolOptions:
    """Options of the store taken from the URL's query (the rest of the URL goes to libpq)."""

    pool_max_size: int = 4  # connections per server process
    pool_timeout: float = 5.0  # seconds a call waits for a free connection
    startup_timeout: float = 60.0  # seconds the server waits at start for the database to answer


def parse_url(url: str) -> tuple[str, PoolOptions]:
    """``postgresql://user:password@host:port/db?sslmode=...&pool_max_size=8`` -> libpq conninfo, options."""
    parts = urlsplit(url)
    ours = {f for f in PoolOptions.__dataclass_fields__}
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = PoolOptions(**{k: float(v) if k != "pool_max_size" else int(v) for k, v in query if k in ours})
    libpq_url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in ours])))
    params = conninfo_to_dict(libpq_url)  # raises ProgrammingError on a malformed URL or unknown option
    return make_conninfo(**{**LIBPQ_DEFAULTS, **params}), options


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


class PostgresTaskStore(TaskStore):
    """PostgreSQL task store (PostgreSQL 13 or newer); safe to share between threads and processes."""

    def __init__(
        self,
        url: str,
        image_shape: tuple[int, int] = (28, 28),
        migrate: bool = True,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
    ) -> None:
        self.url = redacted(url)
        self.idempotency_ttl = idempotency_ttl
        self.conninfo, self.options = parse_url(url)
        self.image_shape = image_shape
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._down = False
        self._next_probe = 0.0
        self._probe_lock = threading.Lock()
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()
        if migrate:
            self._migrate()

    # Connections, outages and recovery.

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def _migrate(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        while True:
            try:
                conn = self._connect()
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"task store {self.url} unreachable: {exc}") from exc
                logger.warning("waiting for the task store %s: %s", self.url, str(exc).strip())
                time.sleep(1.0)
        with conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))  # replicas starting at once
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            for migration in POSTGRESQL:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                logger.info(
                    "task store %s: applied migration %d (%s)", self.url, migration.version, migration.name
                )
            newer = sorted(applied - {m.version for m in POSTGRESQL})
            if newer:
                logger.warning("task store %s has migrations this server does not know: %s", self.url, newer)

    def _get_pool(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ConnectionPool(
                    self.conninfo,
                    kwargs={"autocommit": True},
                    min_size=1,
                    max_size=self.options.pool_max_size,
                    timeout=self.options.pool_timeout,
                    reconnect_timeout=2.0,
                    name=f"metanet-store-{os.getpid()}",
                    open=True,
                )
                self._pool_pid = os.getpid()
            return self._pool

    def _drop_pool(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            # Connections in use are closed when they come back; don't wait for the pool's workers here.
            threading.Thread(target=pool.close, kwargs={"timeout": 5.0}, daemon=True).start()

    def _reachable(self) -> bool:
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def _check_up(self) -> None:
        """Fail fast while the store is known to be down; let one call per PROBE_SECONDS try again."""
        if not self._down:
            return
        with self._probe_lock:
            if not self._down:
                return
            if time.monotonic() < self._next_probe:
                raise StoreUnavailable(f"task store {self.url} unreachable")
            if not self._reachable():
                self._next_probe = time.monotonic() + PROBE_SECONDS
                raise StoreUnavailable(f"task store {self.url} unreachable")
            self._drop_pool()  # its connections died with the old server; open fresh ones
            self._down = False
            logger.warning("task store %s reachable again", self.url)

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        """After a failed call: is the store down, or did just that connection fail?"""
        if not self._reachable():
            with self._probe_lock:
                if not self._down:
                    logger.error("task store %s unreachable: %s", self.url, str(exc).strip())
                self._down = True
                self._next_probe = time.monotonic() + PROBE_SECONDS
        return StoreUnavailable(f"task store unavailable: {type(exc).__name__}")

    def _call(self, work: Callable[[psycopg.Connection], T]) -> T:
        self._check_up()
        try:
            with self._get_pool().connection() as conn:
                return work(conn)
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from exc

    def _read(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work`` in one consistent read-only snapshot."""

        def run(conn: psycopg.Connection) -> T:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return work(conn)

        return self._call(run)

    def _write(self, tenant: str, exclusive: bool, work: Callable[[psycopg.Connection], T]) -> T:
        """``work`` in one transaction holding the tenant's image lock (shared for adds, exclusive for
        removals) and a new commit marker; if the connection is lost during COMMIT, find out whether it
        committed."""
        marker = uuid.uuid4()

        def run(conn: psycopg.Connection) -> T:
            committing = False
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO commit_markers (token) VALUES (%s)", (marker,))
                    lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
                    conn.execute(f"SELECT {lock}(%s)", (_lock_key(f"metanet:tenant:{tenant}"),))
                    result = work(conn)
                    committing = True
            except psycopg.OperationalError as exc:
                if committing and self._committed(marker, exc):
                    return result
                raise
            self._purge_markers(conn)
            return result

        return self._call(run)

    def _committed(self, marker: uuid.UUID, exc: BaseException) -> bool:
        """Whether the write with commit ``marker``, whose COMMIT failed with ``exc``, committed: insert the
        marker ourselves (waiting for the write if it is still running). Asks until the pool timeout and
        raises StoreOutcomeUnknown if the database does not answer."""
        deadline = time.monotonic() + self.options.pool_timeout
        while time.monotonic() < deadline:
            try:
                with self._connect() as conn:
                    timeout = f"{self.options.pool_timeout}s"  # a write still running is waited for
                    conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))
                    fenced = conn.execute(
                        "INSERT INTO commit_markers (token) VALUES (%s) "
                        "ON CONFLICT DO NOTHING RETURNING token",
                        (marker,),
                    ).fetchone()
            except psycopg.OperationalError:
                time.sleep(PROBE_SECONDS)
                continue
            committed = fenced is None
            logger.warning(
                "connection lost during COMMIT of the write with marker %s: it %s",
                marker,
                "committed" if committed else "did not commit",
            )
            return committed
        self._failed(exc)
        raise StoreOutcomeUnknown(
            "the task store became unreachable while committing: the change may or may not have been made"
        ) from exc

    def _purge_markers(self, conn: psycopg.Connection) -> None:
        """Delete commit markers older than MARKER_SECONDS (only a write still being resolved needs its
        marker) and expired idempotency keys (expiry is also checked on read), at most once per
        MARKER_SECONDS per process. Never fails the write that calls it."""
        now = time.monotonic()
        with self._purge_lock:
            if now < self._next_purge:
                return
            self._next_purge = now + MARKER_SECONDS
        try:
            conn.execute(
                "DELETE FROM commit_markers WHERE created_at < now() - make_interval(secs => %s)",
                (MARKER_SECONDS,),
            )
            conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(secs => %s)",
                (self.idempotency_ttl,),
            )
        except psycopg.Error as exc:
            logger.info("commit markers not purged (next try in %d s): %s", MARKER_SECONDS, exc)

    # The TaskStore interface.

    @staticmethod
    def _labels(conn: psycopg.Connection, uid: int) -> dict[str, int]:
        rows = conn.execute(
            "SELECT label, count(*) FROM examples WHERE task_uid = %s GROUP BY label ORDER BY min(id)", (uid,)
        ).fetchall()
        return dict(rows)

    def _state(self, conn: psycopg.Connection, tenant: str, task_id: str) -> TaskState | None:
        row = conn.execute(
            "SELECT uid, version, rebuild_version FROM tasks WHERE tenant = %s AND task_id = %s",
            (tenant, task_id),
        ).fetchone()
        if row is None:
            return None
        uid, version, rebuild_version = row
        return TaskState(uid, task_id, version, rebuild_version, self._labels(conn, uid))

    def _check_quota(
        self, conn: psycopg.Connection, tenant: str, digests: list[bytes], quota: StorageQuota
    ) -> None:
        # One quota-checked write per tenant at a time, so that two cannot both pass the check.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"metanet:quota:{tenant}"),))
        (tasks,) = conn.execute("SELECT count(*) FROM tasks WHERE tenant = %s", (tenant,)).fetchone()
        (examples,) = conn.execute("SELECT count(*) FROM examples WHERE tenant = %s", (tenant,)).fetchone()
        (images,) = conn.execute("SELECT count(*) FROM images WHERE tenant = %s", (tenant,)).fetchone()
        unique = list(set(digests))
        (stored,) = conn.execute(
            "SELECT count(*) FROM images WHERE tenant = %s AND digest = ANY(%s)", (tenant, unique)
        ).fetchone()
        pixels = self.image_shape[0] * self.image_shape[1]
        # A task row this write created is already counted.
        quota.check(tenant, tasks, examples + len(digests), (images + len(unique) - stored) * pixels)

    def _claim_key(
        self, conn: psycopg.Connection, tenant: str, key: str, fingerprint: bytes, task_id: str
    ) -> TaskState | None:
        """Claim ``key`` for this write (a row with no result yet, committed with the write), or answer
        the state a live earlier write with the key answered. A write holding the key uncommitted makes
        this wait for its outcome (the primary key's insert waits), so concurrent repeats write once."""
        claimed = conn.execute(
            "INSERT INTO idempotency_keys (tenant, key, fingerprint, task_id) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tenant, key) DO NOTHING RETURNING 1",
            (tenant, key, fingerprint, task_id),
        ).fetchone()
        if claimed is not None:
            return None
        row = conn.execute(
            "SELECT fingerprint, result, created_at > now() - make_interval(secs => %s) "
            "FROM idempotency_keys WHERE tenant = %s AND key = %s FOR UPDATE",
            (self.idempotency_ttl, tenant, key),
        ).fetchone()
        if row[2]:
            if bytes(row[0]) != fingerprint:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was sent before with another request: use a new key"
                )
            return state_from_json(row[1])
        conn.execute(  # expired: this write takes the key over
            "UPDATE idempotency_keys SET fingerprint = %s, task_id = %s, result = NULL, created_at = now() "
            "WHERE tenant = %s AND key = %s",
            (fingerprint, task_id, tenant, key),
        )
        return None

    def write_examples(
        self,
        tenant: str,
        task_id: str,
        images: np.ndarray,
        labels: list[str],
        max_examples: int,
        idempotency_key: str | None = None,
        new_task: bool = False,
        quota: StorageQuota | None = None,
    ) -> Written:
        self.check_images(images, labels)
        digests = [image_digest(image) for image in images]
        bump = (
            "UPDATE tasks SET version = version + 1, updated_at = now() "
            "WHERE tenant = %s AND task_id = %s RETURNING uid, version, rebuild_version"
        )

        fingerprint = request_fingerprint("import" if new_task else "support", task_id, labels, digests)
        exists = TaskExists(f"task {task_id!r} exists: delete it first or import under another id")

        def work(conn: psycopg.Connection) -> Written:
            if idempotency_key is not None:
                earlier = self._claim_key(conn, tenant, idempotency_key, fingerprint, task_id)
                if earlier is not None:
                    return Written(earlier, replayed=True)
            row = conn.execute(bump, (tenant, task_id)).fetchone()  # takes the task's row lock
            if row is not None and new_task:
                raise exists
            if row is None:
                conn.execute("INSERT INTO tenants (name) VALUES (%s) ON CONFLICT DO NOTHING", (tenant,))
                row = conn.execute(
                    "INSERT INTO tasks (tenant, task_id, version) VALUES (%s, %s, 1) "
                    "ON CONFLICT (tenant, task_id) DO NOTHING RETURNING uid, version, rebuild_version",
                    (tenant, task_id),
                ).fetchone()
                if row is None:  # another replica created it first (and has committed)
                    if new_task:
                        raise exists
                    row = conn.execute(bump, (tenant, task_id)).fetchone()
            uid, version, rebuild_version = row
            (stored,) = conn.execute("SELECT count(*) FROM examples WHERE task_uid = %s", (uid,)).fetchone()
            if stored + len(labels) > max_examples:
                raise ExampleLimit(
                    f"task holds {stored} examples; {len(labels)} more exceed the limit of {max_examples}"
                )
            if quota is not None:
                self._check_quota(conn, tenant, digests, quota)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO images (tenant, digest, pixels) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    [(tenant, d, image.tobytes()) for d, image in zip(digests, images, strict=True)],
                )
                cur.executemany(
                    "INSERT INTO examples (task_uid, tenant, label, version, digest) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [(uid, tenant, label, version, d) for label, d in zip(labels, digests, strict=True)],
                )
            written = TaskState(uid, task_id, version, rebuild_version, self._labels(conn, uid))
            if idempotency_key is not None:
                conn.execute(
                    "UPDATE idempotency_keys SET result = %s WHERE tenant = %s AND key = %s",
                    (state_to_json(written), tenant, idempotency_key),
                )
            return Written(written)

        return self._write(tenant, exclusive=False, work=work)

    def get_task(self, tenant: str, task_id: str) -> TaskState | None:
        return self._read(lambda conn: self._state(conn, tenant, task_id))

    def current_version(self, tenant: str, task_id: str) -> TaskVersion | None:
        def work(conn: psycopg.Connection) -> TaskVersion | None:  # one statement: autocommit reads it whole
            row = conn.execute(
                "SELECT uid, version FROM tasks WHERE tenant = %s AND task_id = %s", (tenant, task_id)
            ).fetchone()
            return None if row is None else TaskVersion(*row)

        return self._call(work)

    def snapshot(self, tenant: str, task_id: str, since_version: int = 0) -> TaskSnapshot | None:
        def work(conn: psycopg.Connection) -> TaskSnapshot | None:
            state = self._state(conn, tenant, task_id)
            if state is None:
                return None
            rows = conn.execute(
                "SELECT e.label, i.pixels FROM examples e JOIN images i USING (tenant, digest) "
                "WHERE e.task_uid = %s AND e.version > %s ORDER BY e.id",
                (state.uid, since_version),
            ).fetchall()
            images = pixels_to_images([r[1] for r in rows], self.image_shape)
            return TaskSnapshot(state, since_version, images, [r[0] for r in rows])

        return self._read(work)

    @staticmethod
    def _drop_unused_images(conn: psycopg.Connection, tenant: str, digests: list[bytes]) -> None:
        conn.execute(
            "DELETE FROM images i WHERE i.tenant = %s AND i.digest = ANY(%s) AND NOT EXISTS "
            "(SELECT 1 FROM examples e WHERE e.tenant = i.tenant AND e.digest = i.digest)",
            (tenant, list(set(digests))),
        )

    def forget_label(self, tenant: str, task_id: str, label: str) -> TaskState | None:
        def work(conn: psycopg.Connection) -> TaskState | None:
            row = conn.execute(
                "SELECT uid FROM tasks WHERE tenant = %s AND task_id = %s FOR UPDATE", (tenant, task_id)
            ).fetchone()
            if row is None:
                return None
            digests = conn.execute(
                "DELETE FROM examples WHERE task_uid = %s AND label = %s RETURNING digest", (row[0], label)
            ).fetchall()
            if not digests:
                raise LabelNotFound(f"task {task_id!r} has no label {label!r}")
            self._drop_unused_images(conn, tenant, [d for (d,) in digests])
            conn.execute(
                "UPDATE tasks SET version = version + 1, rebuild_version = version + 1, updated_at = now() "
                "WHERE uid = %s",
                row,
            )
            return self._state(conn, tenant, task_id)

        return self._write(tenant, exclusive=True, work=work)

    def delete_task(self, tenant: str, task_id: str) -> bool:
        def work(conn: psycopg.Connection) -> bool:
            row = conn.execute(
                "SELECT uid FROM tasks WHERE tenant = %s AND task_id = %s FOR UPDATE", (tenant, task_id)
            ).fetchone()
            if row is None:
                return False
            digests = conn.execute(
                "DELETE FROM examples WHERE task_uid = %s RETURNING digest", row
            ).fetchall()
            conn.execute("DELETE FROM tasks WHERE uid = %s", row)
            self._drop_unused_images(conn, tenant, [d for (d,) in digests])
            return True

        return self._write(tenant, exclusive=True, work=work)

    def list_tasks(self, tenant: str) -> list[TaskState]:
        def work(conn: psycopg.Connection) -> list[TaskState]:
            ids = conn.execute(
                "SELECT task_id FROM tasks WHERE tenant = %s ORDER BY updated_at DESC, uid DESC", (tenant,)
            ).fetchall()
            return [self._state(conn, tenant, task_id) for (task_id,) in ids]

        return self._read(work)

    def label_examples(self, tenant: str, task_id: str) -> tuple[TaskState, dict[str, np.ndarray]] | None:
        def work(conn: psycopg.Connection) -> tuple[TaskState, dict[str, np.ndarray]] | None:
            state = self._state(conn, tenant, task_id)
            if state is None:
                return None
            rows = conn.execute(
                "SELECT e.label, i.pixels FROM examples e JOIN images i USING (tenant, digest) WHERE e.id IN "
                "(SELECT min(id) FROM examples WHERE task_uid = %s GROUP BY label) ORDER BY e.id",
                (state.uid,),
            ).fetchall()
            pixels = pixels_to_images([r[1] for r in rows], self.image_shape)
            return state, {label: image for (label, _), image in zip(rows, pixels, strict=True)}

        return self._read(work)

    def counts(self) -> StoreCounts:
        row = self._call(
            lambda conn: conn.execute(
                "SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM tasks), "
                "(SELECT count(*) FROM examples), (SELECT count(*) FROM images)"
            ).fetchone()
        )
        return StoreCounts(*row)

    def ping(self) -> None:
        self._call(lambda conn: conn.execute("SELECT 1 FROM tasks LIMIT 1").fetchall())

    def schema_version(self) -> int:
        query = "SELECT max(version) FROM schema_migrations"
        return self._call(lambda conn: conn.execute(query).fetchone()[0])

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()
