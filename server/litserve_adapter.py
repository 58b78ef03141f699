"""Everything the server takes from LitServe beyond its public API, in one module.

Why not the public API alone: benchmarks/litserve_public.py serves the same routes from it (one LitAPI
per worker route in one LitServer, LitServe's batching, this server's worker code) and measures both
over HTTP (docs/SERVER.md, "LitServe's public API, measured"). Path parameters, tenants and per-item
errors do get through (a FastAPI dependency as ``decode_request``'s argument type; an error value that
``encode_response`` answers as a ``JSONResponse``; an ``HTTPException`` instead fails every request of
its batch). What it lacks: its HTTP side only queues a request and awaits one answer, so it cannot
refuse by queue depth, split a classify into parts, or ask again while a task's memory builds (20
concurrent 256-image classifies: all queued, up to 44 s, and another tenant's 1-image classify waited
44 s, against 13 refused with Retry-After, at most 5.9 s, and 0.6 s here; a classify right after a
support answered 503 ``task_building`` where this server waits); its loop serves in arrival order and
polls its queue (idle: 1.1 CPU cores busy, 0.2 with a 1 ms ``batch_timeout``, 0 here; 1- and 32-image
classify p50 +45% and +78% on the same settings, within 10% with the 1 ms timeout); each LitAPI has
workers of its own, so support and classify hold two copies of the model (+500 MiB) and of each task's
memory; and its own ``/``, ``/health`` and ``/info`` cannot be replaced.

Written against LitServe 0.2.19 up to (not including) 0.3 (``LITSERVE_VERSIONS``, also pinned in
pyproject.toml). It relies on these internals, each checked by tests/server/test_litserve_adapter.py so
that an upgrade that changes one fails there, loudly, instead of somewhere in a running server:

- a ``LitSpec`` gets ``response_buffer`` (uid -> ``ResponseBufferItem``), ``request_queue`` and
  ``response_queue_id`` from the server; a request is the tuple
  ``(response_queue_id, uid, enqueued_at, payload)`` on that queue (here the payload is a
  ``(Ticket, work item)`` pair), its answer arrives in the buffer as
  ``(output, LitAPIStatus)``, with HTTP 504 as the error of a request that waited too long;
- ``BatchedLoop.get_batch_requests(lit_api, request_queue, transport)`` returns ``(batch, timed_out)``,
  ``_SENTINEL_VALUE`` on the queue asks the loop to stop by raising ``_StopLoopError``, and a loop
  acknowledges each request it takes with ``LitAPIStatus.START``;
- ``LitServer`` registers ``/``, ``healthcheck_path`` and ``info_path`` on its FastAPI app, keeps
  each worker's ``WorkerSetupStatus`` in ``workers_setup_status``, and lists the middlewares it adds to
  each HTTP process's app as ``(class, kwargs)`` in ``middlewares``, Starlette's ``GZipMiddleware``
  among them (at zlib's slowest level, 9, unless told otherwise);
- ``LitServer._init_manager(num_api_servers)`` creates the request queue of each API path in
  ``litapi_request_queues`` and the answers' ``MessageTransport`` in ``_transport`` (``send(item,
  consumer_id)`` in the workers, ``areceive(consumer_id)`` in HTTP process ``consumer_id``) before any
  worker or HTTP process starts, and those get them from there; LitServe's answer task drops ``None``
  and stops for good if ``areceive`` raises;
- and from the standard library: a ``multiprocessing.Queue`` writes its pipe through ``_writer``
  (``enlarge_pipe`` raises that pipe's size).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable
from queue import Empty
from typing import Any

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.specs.base import LitSpec
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem, WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from server import metrics
from server.admission import FairQueue, Ticket
from server.protocol import Outcome, Overloaded, Result, ServiceError, Work, WorkerFailed, WorkerTimeout

LITSERVE_VERSIONS = (">=0.2.19", "<0.3")


class WorkerBridge(LitSpec):
    """Sends work items to the inference workers and awaits their answers (no routes of its own:
    LitServe forwards only a request body to its workers, so the HTTP routes build the work items, and
    ``server.dispatch`` sends them)."""

    def __init__(self) -> None:
        super().__init__()
        self.api_path = "/_worker"  # names the worker queue; no route is served there

    def decode_request(self, request: Work, context_kwargs: dict | None = None) -> Work:
        return request

    def encode_response(self, output: Outcome, context_kwargs: dict | None = None) -> Outcome:
        return output

    async def send(self, ticket: Ticket, work: Work) -> Result:
        """The worker's result for ``work`` (scheduled by ``ticket``); raises the ServiceError the worker
        answered with."""
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), (ticket, work)))
            await event.wait()
        finally:  # also when the client went away: a late answer for uid is then dropped
            buffered = self.response_buffer.pop(uid)
        output, status = buffered.response
        if status == LitAPIStatus.ERROR:  # the loop itself failed, outside any one item
            if getattr(output, "status_code", None) == 504:
                raise WorkerTimeout("the request waited too long for an inference worker")
            raise WorkerFailed("inference worker failed")
        if isinstance(output, ServiceError):
            raise output
        return output


class FairBatchedLoop(BatchedLoop):
    """Dynamic batching, fair between tenants, without idle polling.

    LitServe's stock batched loop polls its queue every millisecond (or spins when ``batch_timeout`` is
    0) and serves requests in arrival order. This loop blocks only while it holds no work; otherwise it
    takes everything already on the shared queue into its ``FairQueue`` (waiting at most
    ``batch_timeout`` for more) and hands the worker the next batch by deficit round robin over tenants,
    of at most ``quantum`` images beyond its first item. A lone request pays no batching delay; a
    request not started by its ticket's deadline is answered ``Overloaded`` without being run.
    """

    def __init__(self, quantum: int, share: Callable[[str], float]) -> None:
        super().__init__()
        self.quantum = quantum
        self.share = share
        self.held: FairQueue | None = None  # made in the worker process

    def get_batch_requests(self, lit_api, request_queue, transport):
        if self.held is None:
            self.held = FairQueue(self.quantum, self.share)
        held = self.held
        deadline = None
        while True:
            if not held.count:  # nothing to do: block (bounded, so shutdown sentinels are seen)
                block, timeout = True, 1.0
            else:
                if deadline is None:
                    deadline = time.monotonic() + lit_api.batch_timeout
                timeout = deadline - time.monotonic()
                block = timeout > 0 and held.count < lit_api.max_batch_size
            try:
                item = request_queue.get(block=block, timeout=timeout if block else None)
            except Empty:
                if not held.count:
                    return [], []
                break
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, (ticket, work) = item
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )
            held.push(ticket, (response_queue_id, uid, timestamp, work))
        now = time.monotonic()
        taken, expired = held.pop_batch(now, self.quantum, lit_api.max_batch_size)
        metrics.WORKER_QUEUE_IMAGES.set(held.images)
        for response_queue_id, uid, timestamp, _ in expired:
            metrics.EXPIRED.inc()
            late = Overloaded(
                f"the request did not start within {now - timestamp:.1f} s (METANET_QUEUE_DEADLINE)"
            )
            self.put_response(
                transport, response_queue_id, uid, late, LitAPIStatus.OK, LoopResponseType.REGULAR
            )
        batch, timed_out = [], []
        for response_queue_id, uid, timestamp, work in taken:
            if lit_api.request_timeout not in (-1, False) and now - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                batch.append((response_queue_id, uid, work))
        return batch, timed_out


class PipeTransport(MessageTransport):
    """Answers from the workers to each HTTP process on a pipe of its own, read by the HTTP process's
    event loop when the pipe is readable.

    A worker writes an answer straight into the pipe (a lock per pipe keeps the answers of several
    workers whole; a full pipe makes the worker wait for the reader). Unlike LitServe's transport, no
    thread sits between the pipe and the event loop.
    """

    def __init__(self, consumers: int) -> None:
        spawn = mp.get_context("spawn")  # workers are spawned; HTTP processes fork and inherit the pipes
        self._pipes = [spawn.Pipe(duplex=False) for _ in range(consumers)]  # (reader, writer) each
        self._locks = [spawn.Lock() for _ in range(consumers)]

    def send(self, item: Any, consumer_id: int) -> None:
        with self._locks[consumer_id]:
            self._pipes[consumer_id][1].send(item)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        reader = self._pipes[consumer_id][0]
        while not reader.poll():
            await _readable(reader.fileno())
        # uvloop leaves a watched descriptor non-blocking; an answer longer than the pipe's buffer is
        # then read in pieces as the worker writes them.
        os.set_blocking(reader.fileno(), True)
        return reader.recv()

    def close(self, send_sentinel: bool = True) -> None:
        """Nothing to release: the pipes close with the processes (the HTTP processes' reading tasks
        are cancelled at shutdown)."""


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class DirectQueueServer(ls.LitServer):
    """A LitServer whose requests and answers go straight between the HTTP processes and the workers.

    LitServe's own queues are proxies to a ``multiprocessing.Manager`` process: every put and get is a
    round trip to that third process (and a get of an empty queue is one too), and each answer then
    crosses a thread into the event loop. Here requests travel on a pipe-backed ``multiprocessing``
    queue (a feeder thread writes it, so a put never blocks the HTTP event loop) and answers on a
    ``PipeTransport``. The Manager still holds LitServe's shared status dictionary and events.
    """

    def _init_manager(self, num_api_servers: int):
        manager = super()._init_manager(num_api_servers)
        spawn = mp.get_context("spawn")
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = queue = spawn.Queue()
            enlarge_pipe(queue._writer.fileno())
        self._transport = PipeTransport(num_api_servers)
        return manager


REQUEST_PIPE_BYTES = 1 << 20


def enlarge_pipe(fd: int, size: int = REQUEST_PIPE_BYTES) -> None:
    """Let the pipe under a request queue hold ``size`` bytes (Linux; elsewhere, or over the system's
    limit, it keeps its default).

    The queue is first-in-first-out and a worker reads it only between batches, taking all that the
    pipe holds into its ``FairQueue``. A default pipe (64 KiB) holds two or three 32-image parts, so a
    burst of one tenant's parts would wait in the sending process and keep another tenant's one-image
    request behind it, out of the worker's sight, for as many batches as the burst has parts; 1 MiB
    holds about forty. (A thread reading the queue all the time would take the GIL from inference.)"""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def remove_builtin_routes(server: ls.LitServer) -> None:
    """Drop LitServe's own ``/``, health and info routes (plain text, untyped) so the app serves ours."""
    builtin = {"/", server.healthcheck_path, server.info_path}
    app = server.app
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in builtin]


def set_gzip_level(server: ls.LitServer, level: int) -> None:
    """Compress gzip answers at ``level`` (1 fastest .. 9 smallest) instead of LitServe's 9."""
    server.middlewares = [
        (cls, {**kwargs, "compresslevel": level}) if cls is GZipMiddleware else (cls, kwargs)
        for cls, kwargs in server.middlewares
    ]


class WorkerReadiness:
    """Whether every inference worker has finished ``setup`` (loaded the model), as a callable.

    LitServe keeps the workers' status in a ``multiprocessing.Manager`` dictionary: each read is a
    blocking round trip to the manager process, on the event loop. So the answer is read at most once
    per ``ttl`` seconds (a worker that fails shows within that), not on every ``/health``."""

    def __init__(self, server: ls.LitServer, ttl: float = 1.0) -> None:
        self.server = server
        self.ttl = ttl
        self._ready = False
        self._read_at = -math.inf

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            status = dict(self.server.workers_setup_status)  # one round trip
            self._ready = bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())
            self._read_at = now
        return self._ready
