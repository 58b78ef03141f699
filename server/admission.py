"""Admission and fairness of inference work (docs/SERVER.md, "Admission and fairness"). Plain classes:
no HTTP, no processes, no clock of their own (every method that needs the time is given it).

- ``Admission`` runs in each HTTP process. It counts the images it has sent to the inference workers
  and not yet had answered, per tenant, and the rate at which answers come back; from these it tells
  at once whether a new request can start within the deadline, and if not refuses it with the
  seconds after which a retry should succeed (``Refusal``). A tenant with nothing queued always
  starts within about one batch, whatever the others hold: only a tenant's own backlog (beyond its
  share) gets it refused.
- ``FairQueue`` runs in each inference worker. It holds the work the worker has taken from the shared
  queue, one first-in-first-out line per tenant, and hands out batches by deficit round robin
  weighed by images: on its turn a tenant may take up to ``quantum * share`` images, so a tenant with
  thousands of images queued delays another tenant's one-image request by at most one turn. Work
  that was not started by its ``Ticket``'s deadline is handed back as expired instead.

- ``FairGate`` runs in each HTTP process, around its one image-decoding thread: one chunk of images
  decodes at a time, the waiting chunks in ``FairQueue`` order, so a small request's turn comes after
  at most one chunk of a big one and the event loop shares the interpreter with one thread only.

Large classify requests are split into parts of at most ``quantum`` images (``parts``), so that one
request's images interleave with other tenants' requests; a part is one work item with a ``Ticket``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def equal_shares(tenant: str) -> float:
    """Every tenant weighs the same (a module-level function, so that it travels to spawned workers)."""
    return 1.0


@dataclass(frozen=True)
class Ticket:
    """What a worker needs to schedule one work item: whose it is, how many images it weighs, and which
    part of which request it is. ``start_by`` (a ``time.monotonic`` time) is the request's deadline to
    start; once one of its parts has started, the others run whenever their turn comes."""

    tenant: str
    images: int
    request: str
    part: int = 0
    parts: int = 1
    start_by: float | None = None


def parts(n: int, size: int) -> list[range]:
    """``range(n)`` in consecutive pieces of at most ``size``, as even as possible."""
    count = max(1, math.ceil(n / size))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(count)]


class FairQueue(Generic[T]):
    """Work items by tenant, handed out in batches by deficit round robin over tenants, weighed by images.

    ``share(tenant)`` is the tenant's weight (1 by default): on its turn it may take ``quantum * share``
    images. Items of one tenant keep their order. Not thread-safe (a worker's loop owns it)."""

    def __init__(self, quantum: int, share: Callable[[str], float] = equal_shares) -> None:
        if quantum < 1:
            raise ValueError("quantum must be at least one image")
        self.quantum = quantum
        self.share = share
        self._lines: dict[str, deque[tuple[Ticket, T]]] = {}
        self._round: deque[str] = deque()  # tenants with queued items; the first one has the turn
        self._deficit: dict[str, float] = {}
        self._turn: str | None = None  # the tenant whose turn has begun (it got its quantum)
        self._started: set[str] = set()  # requests with a part started and parts still queued
        self._refused: set[str] = set()  # requests with a part expired and parts still queued
        self.images = 0
        self.count = 0

    def push(self, ticket: Ticket, item: T, first: bool = False) -> None:
        """Queue ``item`` at the end of its tenant's line, or at its head (``first``: the continuation of
        work that has started, which goes before the tenant's later requests)."""
        line = self._lines.get(ticket.tenant)
        if line is None:
            line = self._lines[ticket.tenant] = deque()
            self._round.append(ticket.tenant)
            self._deficit[ticket.tenant] = 0.0
        if first:
            line.appendleft((ticket, item))
        else:
            line.append((ticket, item))
        self.images += ticket.images
        self.count += 1

    def pop_batch(self, now: float, max_images: int, max_items: int) -> tuple[list[T], list[T]]:
        """The next batch (at least one item if any is queued, at most ``max_items`` items and, beyond its
        first item, ``max_images`` images) and the items that expired on the way: not started by their
        ticket's ``start_by``."""
        batch: list[T] = []
        expired = self._sweep(now)
        images = 0
        while self._round and len(batch) < max_items:
            tenant = self._round[0]
            if self._turn != tenant:
                self._deficit[tenant] += self.quantum * self.share(tenant)
                self._turn = tenant
            line = self._lines[tenant]
            ticket, item = line[0]
            if self._expired(ticket, now):
                self._take(tenant, line, started=False)
                expired.append(item)
                continue
            if ticket.images > self._deficit[tenant]:  # its turn is over; the rest of its deficit waits
                self._round.rotate(-1)
                self._turn = None
                continue
            if batch and images + ticket.images > max_images:
                break  # the turn goes on in the next batch
            self._deficit[tenant] -= ticket.images
            self._take(tenant, line, started=True)
            batch.append(item)
            images += ticket.images
        return batch, expired

    def _sweep(self, now: float) -> list[T]:
        """Take out every item, wherever it waits, whose request did not start by its deadline: it is
        refused one batch after its deadline at the latest, not when its turn would have come."""
        if not any(self._expired(ticket, now) for line in self._lines.values() for ticket, _ in line):
            return []
        expired: list[T] = []
        for tenant in list(self._lines):
            line = self._lines[tenant]
            kept = deque()
            for ticket, item in line:
                if self._expired(ticket, now):
                    expired.append(item)
                    self.images -= ticket.images
                    self.count -= 1
                    if ticket.part + 1 < ticket.parts:
                        self._refused.add(ticket.request)
                    else:
                        self._refused.discard(ticket.request)
                else:
                    kept.append((ticket, item))
            if kept:
                self._lines[tenant] = kept
            else:
                del self._lines[tenant], self._deficit[tenant]
                self._round.remove(tenant)
                if self._turn == tenant:
                    self._turn = None
        return expired

    def _expired(self, ticket: Ticket, now: float) -> bool:
        if ticket.request in self._refused:
            return True
        if ticket.request in self._started or ticket.start_by is None:
            return False
        return now > ticket.start_by

    def _take(self, tenant: str, line: deque[tuple[Ticket, T]], started: bool) -> None:
        """Remove the head of ``tenant``'s line: started, or refused as expired (and its later parts too)."""
        ticket, _ = line.popleft()
        self.images -= ticket.images
        self.count -= 1
        if ticket.part + 1 < ticket.parts:
            (self._started if started else self._refused).add(ticket.request)
        else:
            self._started.discard(ticket.request)
            self._refused.discard(ticket.request)
        if not line:
            del self._lines[tenant], self._deficit[tenant]
            self._round.remove(tenant)
            self._turn = None


@dataclass(frozen=True)
class Refusal:
    """A request that cannot start within the deadline. ``over_share``: its tenant already holds more than
    its share of the queue (429); otherwise the server is at capacity (503).
    ``retry_after``: seconds until the queue ahead of it should have drained enough."""

    over_share: bool
    retry_after: float
    wait: float  # the estimated seconds before it would start (or be answered, given its size)
    queued_images: int  # the tenant's images queued or running


class Admission:
    """One HTTP process's view of the inference queue: images sent and not yet answered, per tenant, and
    the rate answers come back at (images per second, an exponential average over ``rate_window``
    seconds of busy time, starting from ``initial_rate``; a small answer with nothing else queued
    does not count).

    A request's wait to start is estimated as fair queueing would serve it: the tenant's own queued
    images first, and meanwhile each other tenant's up to the same amount (scaled by the shares)."""

    def __init__(
        self,
        deadline: float,
        quantum: int,
        initial_rate: float,
        share: Callable[[str], float] = equal_shares,
        rate_window: float = 2.0,
        headroom: float = 0.8,
    ) -> None:
        self.deadline = deadline
        self.headroom = headroom
        self.quantum = quantum
        self.rate = initial_rate
        self.share = share
        self.rate_window = rate_window
        self.queued: dict[str, int] = {}
        self._busy_since: float | None = None

    @property
    def queued_images(self) -> int:
        return sum(self.queued.values())

    def wait(self, tenant: str) -> float:
        """Seconds before a new request of ``tenant`` would start."""
        mine = self.queued.get(tenant, 0)
        weight = self.share(tenant)
        ahead = min(self.quantum, self.queued_images) + mine  # the batch running, then its own images
        for other, images in self.queued.items():
            if other != tenant:
                ahead += min(images, mine * self.share(other) / weight)
        return ahead / self.rate

    def fair_share(self, tenant: str) -> float:
        """Images of queue the tenant may hold: its share of what the workers answer within the deadline,
        divided among the tenants with work queued (itself included)."""
        weights = sum(self.share(t) for t in self.queued if t != tenant) + self.share(tenant)
        return self.deadline * self.rate * self.share(tenant) / weights

    def check(self, tenant: str, images: int = 0, within: float | None = None) -> Refusal | None:
        """None if a new request of ``tenant`` with ``images`` images can start, and be answered, within
        ``headroom`` of ``within`` seconds (default: the deadline), else why not (``images`` 0: whether
        any request could start)."""
        # Work is let in only up to ``headroom`` of the time left: the rest is for the estimate's error,
        # since a classify that misses its deadline is refused with its work done for nothing.
        limit = self.headroom * (self.deadline if within is None else within)
        wait = self.wait(tenant) + images / self.rate
        if wait <= limit:
            return None
        queued = self.queued.get(tenant, 0)
        return Refusal(queued > self.fair_share(tenant), max(wait - limit, 0.0), wait, queued)

    def sent(self, tenant: str, images: int, now: float) -> None:
        """``images`` of ``tenant`` went to the workers."""
        if self._busy_since is None:
            self._busy_since = now
        self.queued[tenant] = self.queued.get(tenant, 0) + images

    def answered(self, tenant: str, images: int, now: float, served: bool = True) -> None:
        """The workers answered ``images`` of ``tenant``; ``served``: they did the work (not a refusal or an
        error), so the answer measures the rate."""
        left = self.queued.get(tenant, 0) - images
        if left > 0:
            self.queued[tenant] = left
        else:
            self.queued.pop(tenant, None)
        if served and self._busy_since is not None and images > 0:
            # A small answer with nothing else queued measures a round trip, not what the workers can
            # do (a 1-image classify can come back in under a millisecond, and a lone one that waited
            # for something else comes back late): only answers of a busy stretch, or of a whole batch,
            # count. Time-weighted: over a busy stretch the average tends to images answered / seconds.
            if self.queued or images >= self.quantum:
                elapsed = max(now - self._busy_since, 1e-4)
                weight = 1.0 - math.exp(-elapsed / self.rate_window)
                self.rate += weight * (images / elapsed - self.rate)
            self._busy_since = now
        if not self.queued:
            self._busy_since = None


class GateExpired(Exception):
    """A ``FairGate`` waiter whose ticket's ``start_by`` passed before its turn."""


class FairGate:
    """An asyncio gate that lets one holder through at a time; the others wait in ``FairQueue`` order
    (deficit round robin over tenants, by the images on their tickets). A waiter not let through by its
    ticket's ``start_by`` gets ``GateExpired``. Usage: ``await gate.enter(ticket)``, ``await
    gate.pass_on(next_ticket)`` between parts of one piece of work, and ``gate.leave()`` once done (in a
    ``finally``)."""

    def __init__(self, quantum: int, share: Callable[[str], float] = equal_shares) -> None:
        self._waiting: FairQueue[asyncio.Future[None]] = FairQueue(quantum, share)
        self._held = False

    @property
    def waiting_images(self) -> int:
        return self._waiting.images

    async def enter(self, ticket: Ticket) -> None:
        """Wait for the turn of ``ticket``, then hold the gate."""
        if not self._held and not self._waiting.count:
            self._held = True
            return
        await self._wait(ticket, first=False)

    async def pass_on(self, ticket: Ticket) -> None:
        """The holder, with more to do (``ticket``), lets the next waiter through and waits for its own
        next turn, ahead of its tenant's other waiters: a request's chunks are not interleaved with its
        tenant's later requests, so each request finishes as early as it can."""
        await self._wait(ticket, first=True, hand_over=True)

    async def _wait(self, ticket: Ticket, first: bool, hand_over: bool = False) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.push(ticket, waiter, first=first)
        if hand_over:
            self.leave()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.leave()  # the gate was handed over just as the waiter was cancelled: pass it on
            raise

    def leave(self) -> None:
        """The holder is done: the next waiter (skipping cancelled ones) goes through, or the gate opens."""
        while True:
            batch, expired = self._waiting.pop_batch(time.monotonic(), self._waiting.quantum, 1)
            for waiter in expired:
                if not waiter.done():
                    waiter.set_exception(GateExpired())
            if not batch:
                self._held = False
                return
            if not batch[0].done():
                batch[0].set_result(None)
                return
