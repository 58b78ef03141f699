"""Admission and fairness as plain classes (server/admission.py, server/quotas.py): no server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from server.admission import Admission, FairGate, FairQueue, GateExpired, Ticket, parts
from server.auth import KeyRing
from server.dispatch import Dispatcher, Reservation
from server.protocol import RateLimited
from server.quotas import RateLimiter, TenantQuota, TenantQuotas, TokenBucket

QUOTA = TenantQuota(10, 100, 10_000, requests_per_second=2, images_per_second=100, share=1.0)


def drain(queue: FairQueue, max_images: int = 32, max_items: int = 256) -> list[list[str]]:
    batches = []
    while queue.count:
        batch, expired = queue.pop_batch(0.0, max_images, max_items)
        assert not expired
        batches.append(batch)
    return batches


def test_parts_are_even_and_cover_every_image() -> None:
    assert parts(256, 32) == [range(i, i + 32) for i in range(0, 256, 32)]
    assert [len(r) for r in parts(33, 32)] == [16, 17]
    assert parts(1, 32) == [range(0, 1)]


def test_a_small_request_goes_ahead_of_a_tenants_backlog() -> None:
    queue: FairQueue[str] = FairQueue(quantum=32)
    for i in range(8):
        queue.push(Ticket("heavy", 32, "big", i, 8), f"big{i}")
    queue.push(Ticket("light", 1, "small"), "small")
    batches = drain(queue)
    # The light tenant's one image is the second batch, alone: it waits for one part, not eight.
    assert batches[0] == ["big0"] and batches[1] == ["small"]
    assert [item for batch in batches[2:] for item in batch] == [f"big{i}" for i in range(1, 8)]


def test_tenants_share_by_images_not_by_requests() -> None:
    queue: FairQueue[str] = FairQueue(quantum=32)
    for i in range(4):
        queue.push(Ticket("a", 32, f"a{i}"), f"a{i}")  # four requests of 32 images
    for i in range(128):
        queue.push(Ticket("b", 1, f"b{i}"), f"b{i}")  # 128 requests of one image
    served = {"a": 0, "b": 0}
    for batch in drain(queue)[:4]:
        for item in batch:
            served[item[0]] += 32 if item[0] == "a" else 1
    assert served == {"a": 64, "b": 64}


def test_shares_weigh_the_round_robin() -> None:
    queue: FairQueue[str] = FairQueue(quantum=8, share=lambda tenant: 3.0 if tenant == "gold" else 1.0)
    for i in range(100):
        queue.push(Ticket("gold", 1, f"g{i}"), "gold")
        queue.push(Ticket("free", 1, f"f{i}"), "free")
    first = [item for batch in drain(queue, max_images=8)[:8] for item in batch]
    assert first.count("gold") == 3 * first.count("free") == 48


def test_a_request_not_started_by_its_deadline_expires_with_all_its_parts() -> None:
    queue: FairQueue[str] = FairQueue(quantum=32)
    queue.push(Ticket("a", 32, "late", 0, 2, start_by=1.0), "late0")
    queue.push(Ticket("a", 32, "late", 1, 2, start_by=1.0), "late1")
    queue.push(Ticket("b", 32, "on-time", 0, 2, start_by=5.0), "on-time0")
    queue.push(Ticket("b", 32, "on-time", 1, 2, start_by=5.0), "on-time1")
    batch, expired = queue.pop_batch(now=2.0, max_images=32, max_items=16)
    assert expired == ["late0", "late1"] and batch == ["on-time0"]
    # A started request's later parts run after its deadline.
    batch, expired = queue.pop_batch(now=9.0, max_images=32, max_items=16)
    assert expired == [] and batch == ["on-time1"]
    assert queue.count == 0 and queue.images == 0


def test_expired_work_is_refused_wherever_it_waits() -> None:
    queue: FairQueue[str] = FairQueue(quantum=32)
    for i in range(4):
        queue.push(Ticket("a", 32, f"a{i}", start_by=10.0), f"a{i}")
    queue.push(Ticket("a", 32, "late", start_by=1.0), "late")  # behind four others of its tenant
    batch, expired = queue.pop_batch(now=2.0, max_images=32, max_items=16)
    assert expired == ["late"] and batch == ["a0"]
    assert queue.count == 3 and queue.images == 96


def test_admission_refuses_a_tenant_over_its_share_and_lets_another_in() -> None:
    admission = Admission(deadline=2.0, quantum=32, initial_rate=100.0)  # 200 images within the deadline
    admission.sent("heavy", 256, now=0.0)
    admission.sent("other", 32, now=0.0)
    refusal = admission.check("heavy")
    assert refusal is not None and refusal.over_share and refusal.queued_images == 256
    # Fair queueing: its 256 images, the other's 32 and the running batch before it starts.
    assert refusal.wait == pytest.approx((32 + 256 + 32) / 100)
    assert refusal.retry_after == pytest.approx(refusal.wait - 0.8 * 2.0)  # work fills 80% of the deadline
    assert admission.check("light") is None  # a tenant with nothing queued starts within one batch
    assert admission.check("other") is None


def test_admission_alone_over_the_deadline_is_over_its_share() -> None:
    admission = Admission(deadline=1.0, quantum=32, initial_rate=100.0)
    admission.sent("only", 200, now=0.0)
    refusal = admission.check("only")
    assert refusal is not None and refusal.over_share


def test_admission_within_its_share_but_too_late_is_overloaded() -> None:
    admission = Admission(deadline=1.0, quantum=32, initial_rate=100.0)
    for tenant in range(10):  # ten tenants with 10 images each: each holds exactly its share
        admission.sent(f"t{tenant}", 10, now=0.0)
    refusal = admission.check("t0")
    assert refusal is not None and not refusal.over_share  # 503: the server, not the tenant
    assert refusal.wait == pytest.approx((32 + 10 + 9 * 10) / 100)


def test_admission_measures_the_rate_answers_come_back_at() -> None:
    admission = Admission(deadline=1.0, quantum=32, initial_rate=1000.0, rate_window=0.5)
    admission.sent("t", 32 * 40, now=0.0)
    for i in range(1, 41):  # 32 images answered every 0.1 s: 320 images/s
        admission.answered("t", 32, now=i * 0.1)
    assert admission.rate == pytest.approx(320, rel=0.01)
    assert admission.queued_images == 0
    # Idle time does not count: the next answer measures only from when its work was sent.
    admission.sent("t", 64, now=100.0)
    admission.answered("t", 32, now=100.1)
    assert admission.rate == pytest.approx(320, rel=0.01)
    admission.answered("t", 32, now=100.2)
    # Answers that did no work (a refusal, an error) do not measure the rate.
    admission.sent("t", 32, now=200.0)
    admission.answered("t", 32, now=200.001, served=False)
    assert admission.rate == pytest.approx(320, rel=0.01)
    # A lone small request measures its round trip, not what the workers can do: slow or fast, it
    # does not count (a slow one would get the next burst refused, a fast one would let too much in).
    admission.sent("t", 1, now=150.0)
    admission.answered("t", 1, now=150.05)  # 20 images/s
    admission.sent("t", 1, now=160.0)
    admission.answered("t", 1, now=160.0005)  # 2,000 images/s
    assert admission.rate == pytest.approx(320, rel=0.01)
    admission.sent("t", 32, now=170.0)
    admission.answered("t", 32, now=170.05)  # a whole batch, 640 images/s: it counts
    assert 320 < admission.rate < 640


def test_token_bucket_refuses_with_the_wait_until_enough() -> None:
    bucket = TokenBucket(rate=10, burst=10, now=0.0)
    assert bucket.take(10, now=0.0) == 0
    assert bucket.take(5, now=0.0) == pytest.approx(0.5)
    assert bucket.take(5, now=0.5) == 0
    assert bucket.take(50, now=0.5) == pytest.approx(1.0)  # more than the burst waits for a full bucket


def test_rate_limiter_names_the_limit_and_keeps_tenants_apart() -> None:
    limiter = RateLimiter(TenantQuotas(QUOTA))
    limiter.request("a", now=0.0)
    limiter.request("a", now=0.0)
    with pytest.raises(RateLimited, match="requests_per_second=2") as refused:
        limiter.request("a", now=0.0)
    assert refused.value.retry_after == 1
    limiter.request("b", now=0.0)  # another tenant's bucket
    limiter.images("a", 256, now=0.0, max_per_request=256)  # a full request fits the burst
    with pytest.raises(RateLimited, match="images_per_second=100"):
        limiter.images("a", 1, now=0.0, max_per_request=256)


def test_keys_file_options_give_a_tenant_its_own_quota(tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# tenants\nalice:k1 max_tasks=3 share=2\nbob:k2\n")
    keys = KeyRing.load("carol:k3 images_per_second=50", keys_file)
    quotas = TenantQuotas.of(QUOTA, keys.options)
    assert quotas("alice").max_tasks == 3 and quotas("alice").share == 2.0
    assert quotas("bob") == QUOTA
    assert quotas("carol").images_per_second == 50
    assert keys.tenant_for("Bearer k1") == "alice"
    with pytest.raises(ValueError, match="unknown option 'max_task'"):
        TenantQuotas.of(QUOTA, KeyRing.load("dan:k4 max_task=1").options)
    with pytest.raises(ValueError, match="expected name=value"):
        KeyRing.load("dan:k4 max_tasks")


def test_fair_gate_lets_one_chunk_through_at_a_time_and_other_tenants_between_chunks() -> None:
    async def scenario() -> tuple[list[str], int]:
        gate = FairGate(quantum=32)
        order: list[str] = []
        inside = most = 0

        async def request(name: str, tenant: str, chunks: int) -> None:
            nonlocal inside, most
            ticket = Ticket(tenant, 32 if chunks > 1 else 1, name)
            await gate.enter(ticket)
            for i in range(chunks):  # as Dispatcher.decoding does: one chunk after the other
                if i:
                    await gate.pass_on(ticket)
                inside += 1
                most = max(most, inside)
                order.append(f"{name}-{i}")
                await asyncio.sleep(0.001)  # the chunk decoding
                inside -= 1
            gate.leave()

        big = [asyncio.create_task(request(f"r{r}", "big", 4)) for r in range(1, 5)]
        await asyncio.sleep(0.0005)  # r1's first chunk holds the gate, r2-r4's wait
        await request("small", "small", 1)
        await asyncio.gather(*big)
        return order, most

    order, most = asyncio.run(scenario())
    assert most == 1
    assert sorted(order) == sorted([f"r{r}-{i}" for r in range(1, 5) for i in range(4)] + ["small-0"])
    # First in, first out would put it after the four chunks ahead of it; the big tenant's turn is one
    # chunk (32 images), so the small request goes through after at most the chunk decoding and one more.
    assert order.index("small-0") <= 2


def test_fair_gate_refuses_a_waiter_past_its_deadline_and_skips_a_cancelled_one() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        gate = FairGate(quantum=32)
        order: list[str] = []
        await gate.enter(Ticket("a", 1, "holder"))
        late = asyncio.create_task(gate.enter(Ticket("b", 1, "late", start_by=time.monotonic() - 1)))
        gone = asyncio.create_task(gate.enter(Ticket("c", 1, "gone")))
        after = asyncio.create_task(gate.enter(Ticket("d", 1, "after")))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        gate.leave()  # "late" expired, "gone" was cancelled: "after" goes through
        await after
        order.append("after")
        expired = False
        try:
            await late
        except GateExpired:
            expired = True
        gate.leave()
        await gate.enter(Ticket("e", 1, "free"))  # the gate is open again: no wait
        return expired, order

    assert asyncio.run(scenario()) == (True, ["after"])


def test_fair_gate_finishes_a_started_request_before_its_tenants_next() -> None:
    async def scenario() -> list[str]:
        gate = FairGate(quantum=32)
        order: list[str] = []

        async def request(name: str) -> None:
            await gate.enter(Ticket("t", 32, name))
            for i in range(3):
                if i:
                    await gate.pass_on(Ticket("t", 32, name))
                order.append(f"{name}-{i}")
                await asyncio.sleep(0.001)
            gate.leave()

        await asyncio.gather(*(request(name) for name in ("a", "b")))
        return order

    # Chunk by chunk in turn, both would finish at the end; "a" finishes first instead.
    assert asyncio.run(scenario()) == ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]


def test_a_request_cancelled_between_its_chunks_does_not_release_the_gate_it_passed_on() -> None:
    """A client that goes away while its request waits for its next chunk's turn must not let a third
    request through while the one it passed the gate to still decodes."""
    dispatcher = Dispatcher(None, Admission(deadline=60.0, quantum=32, initial_rate=100.0), None, 60.0, 256)

    async def scenario() -> list[str]:
        inside: list[str] = []
        release = asyncio.Event()

        def chunk(name: str) -> Callable[[], str]:
            def decode() -> str:
                inside.append(name)
                return name

            return decode

        def reservation(tenant: str) -> Reservation:
            return Reservation(dispatcher.admission, tenant, 64, time.monotonic(), time.monotonic() + 60)

        gone = asyncio.create_task(
            dispatcher.decoding(reservation("a"))([(32, chunk("a0")), (32, chunk("a1"))])
        )
        await asyncio.sleep(0)  # "a" holds the gate, decoding a0 on the decode thread
        await dispatcher.decode_gate.enter(Ticket("b", 32, "b"))  # "b" waits, then gets the turn after a0
        gone.cancel()  # "a" waits for a1's turn: its client went away
        await asyncio.gather(gone, return_exceptions=True)
        third = asyncio.create_task(dispatcher.decode_gate.enter(Ticket("c", 32, "c")))
        await asyncio.sleep(0.05)
        assert not third.done()  # "b" still holds the gate
        dispatcher.decode_gate.leave()  # "b" is done
        await third
        dispatcher.decode_gate.leave()
        release.set()
        return inside

    assert asyncio.run(scenario()) == ["a0"]
