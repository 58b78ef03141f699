"""Versioned schema migrations, one list per backend. A store applies the ones its database lacks when it
opens, in one transaction under a lock (several replicas starting at once apply each exactly once), and
records them in ``schema_migrations``. Add a migration by appending to a list; never edit one that shipped.

Both schemas: ``tenants``; ``tasks`` (``uid`` never reused, ``version``, ``rebuild_version``); ``images``
(each preprocessed image once per tenant, keyed by the SHA-256 of its pixels); ``examples`` (task, label,
the version that added it, the image's digest). PostgreSQL also has ``commit_markers``: one random
token per write, inserted in the write's own transaction, so that a write whose COMMIT answer was lost
can be resolved (``PostgresTaskStore._committed``). Both (migration 3): ``idempotency_keys``, one row
per tenant and ``Idempotency-Key`` of a write, with the request's fingerprint and the task state the write
answered, written in the write's own transaction (``TaskStore.write_examples``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


SQLITE: tuple[Migration, ...] = (
    # The schema before migrations were versioned (IF NOT EXISTS: a no-op on stores created back then).
    Migration(
        1,
        "tenants, tasks, examples",
        (
            "CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, created_at REAL NOT NULL)",
            """CREATE TABLE IF NOT EXISTS tasks (
                uid INTEGER PRIMARY KEY AUTOINCREMENT,
                tenant TEXT NOT NULL REFERENCES tenants(name),
                task_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                rebuild_version INTEGER NOT NULL DEFAULT 0,
                updated_at REAL NOT NULL,
                UNIQUE (tenant, task_id))""",
            """CREATE TABLE IF NOT EXISTS examples (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                task_uid INTEGER NOT NULL REFERENCES tasks(uid) ON DELETE CASCADE,
                label TEXT NOT NULL,
                version INTEGER NOT NULL,
                image BLOB NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS examples_by_task ON examples (task_uid, version)",
            "CREATE INDEX IF NOT EXISTS examples_by_label ON examples (task_uid, label)",
        ),
    ),
    # Images move to their own table, stored once per tenant (``sha256`` is a Python function the
    # migration runner registers on its connection).
    Migration(
        2,
        "images stored once per tenant",
        (
            """CREATE TABLE images (
                tenant TEXT NOT NULL,
                digest BLOB NOT NULL,
                pixels BLOB NOT NULL,
                PRIMARY KEY (tenant, digest)) WITHOUT ROWID""",
            "ALTER TABLE examples RENAME TO examples_v1",
            """CREATE TABLE examples (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                task_uid INTEGER NOT NULL REFERENCES tasks(uid) ON DELETE CASCADE,
                tenant TEXT NOT NULL,
                label TEXT NOT NULL,
                version INTEGER NOT NULL,
                digest BLOB NOT NULL,
                FOREIGN KEY (tenant, digest) REFERENCES images (tenant, digest))""",
            """INSERT OR IGNORE INTO images (tenant, digest, pixels)
                SELECT t.tenant, sha256(e.image), e.image
                FROM examples_v1 e JOIN tasks t ON t.uid = e.task_uid""",
            """INSERT INTO examples (id, task_uid, tenant, label, version, digest)
                SELECT e.id, e.task_uid, t.tenant, e.label, e.version, sha256(e.image)
                FROM examples_v1 e JOIN tasks t ON t.uid = e.task_uid ORDER BY e.id""",
            "DROP TABLE examples_v1",
            "CREATE INDEX examples_by_task ON examples (task_uid, version)",
            "CREATE INDEX examples_by_label ON examples (task_uid, label)",
            "CREATE INDEX examples_by_image ON examples (tenant, digest)",
        ),
    ),
    Migration(
        3,
        "idempotency keys of writes",
        (
            """CREATE TABLE idempotency_keys (
                tenant TEXT NOT NULL,
                key TEXT NOT NULL,
                fingerprint BLOB NOT NULL,
                task_id TEXT NOT NULL,
                result TEXT NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (tenant, key)) WITHOUT ROWID""",
            "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
        ),
    ),
)

POSTGRESQL: tuple[Migration, ...] = (
    Migration(
        1,
        "tenants, tasks, images stored once per tenant, examples",
        (
            "CREATE TABLE tenants (name TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            """CREATE TABLE tasks (
                uid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                tenant TEXT NOT NULL REFERENCES tenants(name),
                task_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                rebuild_version BIGINT NOT NULL DEFAULT 0,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                UNIQUE (tenant, task_id))""",
            """CREATE TABLE images (
                tenant TEXT NOT NULL REFERENCES tenants(name),
                digest BYTEA NOT NULL,
                pixels BYTEA NOT NULL,
                PRIMARY KEY (tenant, digest))""",
            """CREATE TABLE examples (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                task_uid BIGINT NOT NULL REFERENCES tasks(uid) ON DELETE CASCADE,
                tenant TEXT NOT NULL,
                label TEXT NOT NULL,
                version BIGINT NOT NULL,
                digest BYTEA NOT NULL,
                FOREIGN KEY (tenant, digest) REFERENCES images (tenant, digest))""",
            "CREATE INDEX examples_by_task ON examples (task_uid, version)",
            "CREATE INDEX examples_by_label ON examples (task_uid, label)",
            "CREATE INDEX examples_by_image ON examples (tenant, digest)",
        ),
    ),
    Migration(
        2,
        "commit markers: resolve a write whose COMMIT answer was lost, across a database crash",
        (
            "CREATE TABLE commit_markers "
            "(token UUID PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            "CREATE INDEX commit_markers_by_age ON commit_markers (created_at)",
        ),
    ),
    Migration(
        3,
        "idempotency keys of writes",
        (
            # result is NULL only inside the transaction that claimed the key (see write_examples).
            """CREATE TABLE idempotency_keys (
                tenant TEXT NOT NULL,
                key TEXT NOT NULL,
                fingerprint BYTEA NOT NULL,
                task_id TEXT NOT NULL,
                result TEXT,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (tenant, key))""",
            "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
        ),
    ),
)
