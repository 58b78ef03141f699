"""The task store's interface: the durable source of truth for support examples (docs/SERVER.md,
"How it works"). Fast weights, memory keys and FAISS indexes are derived from what is stored here."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from server.protocol import QuotaExceeded


@dataclass(frozen=True)
class TaskState:
    """One task at one version.

    ``uid`` names this incarnation of the task (never reused, so a task deleted and created again is a new
    one); ``rebuild_version`` is the last version that removed examples: derived memory from an older
    version cannot be extended, only rebuilt.
    """

    uid: int
    task_id: str
    version: int
    rebuild_version: int
    labels: dict[str, int]  # label -> example count, in order of first appearance

    @property
    def num_examples(self) -> int:
        return sum(self.labels.values())


@dataclass(frozen=True)
class TaskVersion:
    """Which incarnation of a task (``TaskState.uid``) at which version: all a worker needs to know
    that the memory it holds is current."""

    uid: int
    version: int


@dataclass(frozen=True)
class TaskSnapshot:
    """A task state and the examples added after ``since_version``, oldest first."""

    state: TaskState
    since_version: int
    images: np.ndarray  # uint8 [n, H, W]
    labels: list[str]


@dataclass(frozen=True)
class StoreCounts:
    tenants: int
    tasks: int
    examples: int
    images: int  # distinct images: an image sent again (to any task of its tenant) is stored once


@dataclass(frozen=True)
class StorageQuota:
    """What one tenant may hold in the task store (docs/API.md, "Quotas")."""

    max_tasks: int
    max_examples: int
    max_stored_bytes: int  # bytes of its distinct preprocessed images (each stored once per tenant)

    def check(self, tenant: str, tasks: int, examples: int, stored_bytes: int) -> None:
        """Raise QuotaExceeded, naming the limit, if a write would leave the tenant with more than this."""
        for name, value, limit in (
            ("max_tasks", tasks, self.max_tasks),
            ("max_examples", examples, self.max_examples),
            ("max_stored_bytes", stored_bytes, self.max_stored_bytes),
        ):
            if value > limit:
                raise QuotaExceeded(f"tenant {tenant!r} would hold {value} (over its quota {name}={limit})")


@dataclass(frozen=True)
class Written:
    """What a write of examples answered: the task's state after it, or, when ``replayed``, the state an
    earlier write with the same idempotency key answered (this one wrote nothing)."""

    state: TaskState
    replayed: bool = False


IDEMPOTENCY_TTL = 24 * 3600.0
"""Seconds an idempotency key is remembered by default (``METANET_IDEMPOTENCY_TTL``)."""


def request_fingerprint(kind: str, task_id: str, labels: list[str], digests: list[bytes]) -> bytes:
    """SHA-256 naming a write's request: a key sent again with another fingerprint is an error."""
    h = hashlib.sha256(json.dumps([kind, task_id, labels]).encode())
    for digest in digests:
        h.update(digest)
    return h.digest()


def state_to_json(state: TaskState) -> str:
    return json.dumps(
        {
            "uid": state.uid,
            "task_id": state.task_id,
            "version": state.version,
            "rebuild_version": state.rebuild_version,
            "labels": list(state.labels.items()),
        }
    )


def state_from_json(text: str) -> TaskState:
    d = json.loads(text)
    return TaskState(d["uid"], d["task_id"], d["version"], d["rebuild_version"], dict(d["labels"]))


def image_digest(image: np.ndarray) -> bytes:
    """SHA-256 of a preprocessed image's pixels: the key under which a tenant's image is stored once."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()


def pixels_to_images(pixels: list[bytes], image_shape: tuple[int, int]) -> np.ndarray:
    """Stored pixel rows as uint8 [n, H, W] (writable, as torch.as_tensor prefers)."""
    return np.frombuffer(bytearray(b"".join(pixels)), dtype=np.uint8).reshape(-1, *image_shape)


class TaskStore(ABC):
    """Tenants, tasks, versions, labels and preprocessed support images.

    Every backend gives the same guarantees: a write is one transaction (all or nothing) that is durable
    when it returns; each write to a task makes exactly one new version, also under concurrent writers
    in other processes or on other machines; a snapshot is consistent (one version, its examples).
    """

    image_shape: tuple[int, int]

    def check_images(self, images: np.ndarray, labels: list[str]) -> None:
        if len(images) != len(labels) or images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError("images must be uint8 [n, *image_shape] with one label each")

    def add_examples(
        self,
        tenant: str,
        task_id: str,
        images: np.ndarray,
        labels: list[str],
        max_examples: int,
        quota: StorageQuota | None = None,
    ) -> TaskState:
        """Durably add examples (creating the task if needed) as one new version; all or nothing. Raises
        ExampleLimit over ``max_examples`` in the task and QuotaExceeded over the tenant's ``quota``,
        checked in the write's transaction."""
        return self.write_examples(tenant, task_id, images, labels, max_examples, quota=quota).state

    @abstractmethod
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
        """``add_examples``, and:

        - ``idempotency_key``: stored with the write in its transaction (per tenant). While the key is
          younger than the store's ``idempotency_ttl``, a write with the same key and the same request
          (task id, labels, images) writes nothing and answers the first write's state (``replayed``);
          with another request it raises ``IdempotencyKeyReused``. The key is looked up first: a replay
          is not refused by ``max_examples`` or ``quota``.
        - ``new_task``: the write creates the task; raises ``TaskExists`` if it exists already.
        """

    @abstractmethod
    def get_task(self, tenant: str, task_id: str) -> TaskState | None: ...

    @abstractmethod
    def current_version(self, tenant: str, task_id: str) -> TaskVersion | None:
        """The task's uid and version, None if it does not exist: one indexed read whatever the task's
        size (``get_task`` also counts its examples per label)."""

    @abstractmethod
    def snapshot(self, tenant: str, task_id: str, since_version: int = 0) -> TaskSnapshot | None:
        """The current state and the examples added after ``since_version``, read consistently."""

    @abstractmethod
    def forget_label(self, tenant: str, task_id: str, label: str) -> TaskState | None:
        """Remove every example of ``label`` as one new version; None if the task is unknown."""

    @abstractmethod
    def delete_task(self, tenant: str, task_id: str) -> bool:
        """Remove the task and everything stored for it; False if it did not exist."""

    @abstractmethod
    def list_tasks(self, tenant: str) -> list[TaskState]:
        """The tenant's tasks, most recently changed first."""

    @abstractmethod
    def label_examples(self, tenant: str, task_id: str) -> tuple[TaskState, dict[str, np.ndarray]] | None:
        """The task's state and the first stored image (uint8 [H, W]) of every label, in label order,
        read consistently; None if the task is unknown."""

    @abstractmethod
    def counts(self) -> StoreCounts: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached."""

    @abstractmethod
    def schema_version(self) -> int:
        """The newest migration applied to the store."""

    @abstractmethod
    def close(self) -> None:
        """Release this process's connections (the store stays usable: they reopen on the next call)."""
