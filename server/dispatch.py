"""``Dispatcher``: how an HTTP process sends the routes' work to the inference workers: rate limits and
admission first (server/quotas.py, server/admission.py), then each request as tickets, a classify in
parts of at most ``queue_quantum`` images, and the parts' answers put back together."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from server import metrics
from server.admission import Admission, FairGate, GateExpired, Refusal, Ticket, parts
from server.litserve_adapter import WorkerBridge
from server.protocol import (
    ClassifyResult,
    ClassifyWork,
    Overloaded,
    OverShare,
    Result,
    ServiceError,
    SupportResult,
    SupportWork,
    TaskBuilding,
    Work,
)
from server.quotas import RateLimiter

T = TypeVar("T")
SEND_MARGIN = 0.1
"""Seconds before its deadline at which an unanswered classify is refused: the time to send the refusal,
so that the client has it within the deadline."""


class Reservation:
    """Images of an admitted request counted as queued while it is decoded (``Dispatcher.admit``), and
    the request's deadline to start (``start_by``, a ``time.monotonic`` time)."""

    def __init__(self, admission: Admission, tenant: str, images: int, now: float, start_by: float) -> None:
        self.admission, self.tenant, self.images = admission, tenant, images
        self.request = uuid.uuid4().hex
        self.start_by = start_by
        admission.sent(tenant, images, now)
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.answered(self.tenant, self.images, time.monotonic(), served=False)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _forget(task: asyncio.Future) -> None:
    """Done callback of abandoned work: its outcome is nobody's (retrieved, so asyncio does not log it)."""
    if not task.cancelled():
        task.exception()


class Dispatcher:
    """One per HTTP process. ``refuse_early`` and ``admit`` raise a ServiceError (with Retry-After) for a
    request that must not go to the workers; ``support`` and ``classify`` run one that may."""

    def __init__(
        self,
        bridge: WorkerBridge,
        admission: Admission,
        limiter: RateLimiter,
        build_wait: float,
        max_images_per_request: int,
    ) -> None:
        self.bridge = bridge
        self.admission = admission
        self.limiter = limiter
        self.build_wait = build_wait
        self.max_images_per_request = max_images_per_request
        self.decode_gate = FairGate(admission.quantum, admission.share)
        self._decode_thread: ThreadPoolExecutor | None = None  # made in the HTTP process, on first use

    def refuse_early(self, tenant: str, queued: bool) -> None:
        """Before the body is read: the tenant's request rate, and for work for the queue (``queued``)
        whether it could start within the deadline (that does not depend on the body)."""
        self.limiter.request(tenant, time.monotonic())
        if queued and (refusal := self.admission.check(tenant)) is not None:
            raise self._refused(refusal)

    def admit(self, tenant: str, images: int, arrived: float) -> Reservation:
        """Once the image count is known, before the images are decoded: the tenant's image rate, and
        whether the request can be answered within the deadline. The images count as queued from here
        (so that a burst of requests decoding at once cannot all pass): ``support`` or ``classify``
        takes the reservation over, and leaving its ``with`` block ends it in any case. The request's
        deadline counts from ``arrived`` (when its headers were read)."""
        now = time.monotonic()
        self.limiter.images(tenant, images, now, self.max_images_per_request)
        start_by = arrived + self.admission.deadline
        if (refusal := self.admission.check(tenant, images, within=start_by - now)) is not None:
            raise self._refused(refusal)
        return Reservation(self.admission, tenant, images, now, start_by)

    def decoding(
        self, reservation: Reservation
    ) -> Callable[[list[tuple[int, Callable[[], T]]]], Awaitable[list[T]]]:
        """``run(chunks)`` for ``decode_images``: each chunk of the request's images decodes on this process's
        one decode thread when ``decode_gate`` lets it through (one chunk at a time, tenants in turn, a
        request's chunks before its tenant's later requests); a request whose first chunk has not started
        by its deadline is refused."""

        async def run(chunks: list[tuple[int, Callable[[], T]]]) -> list[T]:
            tenant, request = reservation.tenant, reservation.request
            try:
                await self.decode_gate.enter(
                    Ticket(tenant, chunks[0][0], request, start_by=reservation.start_by)
                )
            except GateExpired:
                raise self._late(tenant) from None
            holding = True
            try:
                if self._decode_thread is None:
                    self._decode_thread = ThreadPoolExecutor(1, thread_name_prefix="decode")
                results = []
                for i, (images, decode) in enumerate(chunks):
                    if i:  # started: no deadline
                        holding = False  # cancelled while waiting, it does not hold the gate
                        await self.decode_gate.pass_on(Ticket(tenant, images, request))
                        holding = True
                    results.append(
                        await asyncio.get_running_loop().run_in_executor(self._decode_thread, decode)
                    )
                return results
            finally:
                if holding:
                    self.decode_gate.leave()

        return run

    def _late(self, tenant: str, missed: str = "start") -> ServiceError:
        """The refusal of a request that did not ``missed`` ("start", "be answered") by its deadline."""
        if (refusal := self.admission.check(tenant)) is not None:
            return self._refused(refusal)
        deadline = self.admission.deadline
        return Overloaded(f"the request did not {missed} within {deadline:g} s (METANET_QUEUE_DEADLINE)", 1.0)

    def _refused(self, refusal: Refusal) -> ServiceError:
        deadline = self.admission.deadline
        waits = f"it would wait {refusal.wait:.1f} s to start (METANET_QUEUE_DEADLINE={deadline:g})"
        if refusal.over_share:
            return OverShare(
                f"this tenant has {refusal.queued_images} images queued, more than its share of the "
                f"inference queue; {waits}",
                refusal.retry_after,
            )
        return Overloaded(f"the inference workers are at capacity: {waits}", refusal.retry_after)

    async def support(self, work: SupportWork, reservation: Reservation) -> SupportResult:
        ticket = Ticket(work.tenant, len(work.images), reservation.request, start_by=reservation.start_by)
        reservation.release()
        return await self._send(ticket, work)

    async def classify(self, work: ClassifyWork, reservation: Reservation) -> ClassifyResult:
        """The images in parts, answered together. Parts answered from different versions of the task (a
        support landed between them) are asked again, so that all predictions use one version.

        A classify not answered by its deadline (from its arrival) is refused like one that could not
        start, unless it is waiting for its task's memory to be built (``build_wait`` bounds that). Its
        parts are left to finish, or to be dropped by the worker if they have not started by then, and
        count as queued until they have: admission must not let new work in on capacity that the
        abandoned parts still hold. The admission estimate makes this rare."""
        reservation.release()  # the parts count themselves from here (no await in between)
        building = False

        def waits_for_build() -> None:
            nonlocal building
            building = True

        answering = asyncio.ensure_future(self._classify(work, reservation, waits_for_build))
        left = reservation.start_by - SEND_MARGIN - time.monotonic()
        done, _ = await asyncio.wait({answering}, timeout=max(left, 0.0))
        if done or building:
            return await answering
        answering.add_done_callback(_forget)
        raise self._late(work.tenant, "be answered")

    async def _classify(
        self, work: ClassifyWork, reservation: Reservation, building: Callable[[], None]
    ) -> ClassifyResult:
        request, start_by = reservation.request, reservation.start_by
        ranges = parts(len(work.images), self.admission.quantum)
        pieces = [replace(work, images=work.images[r.start : r.stop]) for r in ranges]
        count = len(ranges)
        tickets = [Ticket(work.tenant, len(r), request, i, count, start_by) for i, r in enumerate(ranges)]
        results: list[ClassifyResult] = await self._gather(tickets, pieces, building)
        for _ in range(3):
            newest = max(result.version for result in results)
            stale = [i for i, result in enumerate(results) if result.version != newest]
            if not stale:
                break
            again = await self._gather(
                [self._started(tickets[i]) for i in stale], [pieces[i] for i in stale], building
            )
            for i, result in zip(stale, again, strict=True):
                results[i] = result
        return ClassifyResult(
            max(result.version for result in results),
            results[0].novelty_threshold,
            tuple(prediction for result in results for prediction in result.predictions),
        )

    @staticmethod
    def _started(ticket: Ticket) -> Ticket:
        """The ticket of a part sent again: a request of its own that has started."""
        return replace(ticket, request=uuid.uuid4().hex, part=0, parts=1, start_by=None)

    async def _gather(self, tickets: list[Ticket], works: list[Work], building: Callable[[], None]) -> list:
        outcomes = await asyncio.gather(
            *(self._send(t, w, building) for t, w in zip(tickets, works, strict=True)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    async def _send(self, ticket: Ticket, work: Work, building: Callable[[], None] = lambda: None) -> Result:
        """The worker's answer; while the task's memory is being built (``TaskBuilding``: a worker never
        waits for a build), ask again, every 20 ms at first and then every 250 ms, for up to
        ``build_wait`` seconds (``building`` is called when it starts waiting)."""
        give_up, pause = time.monotonic() + self.build_wait, 0.02
        while True:
            try:
                return await self._send_once(ticket, work)
            except TaskBuilding:
                building()
                if time.monotonic() + pause > give_up:
                    raise
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.25)
            ticket = self._started(ticket)

    async def _send_once(self, ticket: Ticket, work: Work) -> Result:
        admission = self.admission
        admission.sent(ticket.tenant, ticket.images, time.monotonic())
        metrics.QUEUE_IMAGES.set(admission.queued_images)
        served = False
        try:
            result = await self.bridge.send(ticket, work)
            served = True
            return result
        except Overloaded as exc:  # the worker found it had not started by its deadline
            retry = max(1.0, admission.wait(ticket.tenant) - admission.deadline)
            raise Overloaded(exc.message, retry) from None
        finally:
            admission.answered(ticket.tenant, ticket.images, time.monotonic(), served)
            metrics.QUEUE_IMAGES.set(admission.queued_images)
            metrics.QUEUE_RATE.set(admission.rate)
