"""server/litserve_adapter.py against the LitServe installed: fails loudly when an upgrade changes an
internal the adapter relies on (see the adapter's docstring), before a server is ever started."""

from __future__ import annotations

import asyncio
import fcntl
import inspect
import multiprocessing.queues
import queue
import threading
from collections.abc import Iterator
from importlib.metadata import version

import litserve as ls
import numpy as np
import pytest
from litserve.callbacks.base import CallbackRunner
from litserve.loops.base import _SENTINEL_VALUE
from litserve.loops.simple_loops import BatchedLoop
from litserve.server import _LitAPIConnector, response_queue_to_buffer
from litserve.specs.base import LitSpec
from litserve.transport.base import MessageTransport
from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import ResponseBufferItem
from packaging.specifiers import SpecifierSet
from starlette.middleware.gzip import GZipMiddleware

from server.admission import Ticket, equal_shares
from server.litserve_adapter import (
    LITSERVE_VERSIONS,
    REQUEST_PIPE_BYTES,
    DirectQueueServer,
    FairBatchedLoop,
    PipeTransport,
    WorkerBridge,
    remove_builtin_routes,
    set_gzip_level,
)
from server.protocol import ClassifyResult, ClassifyWork, Overloaded, TaskNotFound, WorkerTimeout


def test_installed_litserve_is_a_version_the_adapter_was_written_for() -> None:
    installed = version("litserve")
    assert installed in SpecifierSet(",".join(LITSERVE_VERSIONS)), (
        f"litserve {installed} is outside {LITSERVE_VERSIONS}: check every internal listed in "
        "server/litserve_adapter.py's docstring against it, then widen LITSERVE_VERSIONS and pyproject.toml"
    )


def test_the_internals_the_adapter_uses_are_there() -> None:
    params = list(inspect.signature(BatchedLoop.get_batch_requests).parameters)
    assert params == ["self", "lit_api", "request_queue", "transport"], params
    spec = LitSpec()
    for name in ("response_buffer", "request_queue", "response_queue_id"):
        assert hasattr(spec, name), f"LitSpec has no {name}"
    assert {"event", "response"} <= set(inspect.signature(ResponseBufferItem).parameters)
    server_params = inspect.signature(ls.LitServer).parameters
    assert {"healthcheck_path", "info_path"} <= set(server_params)


class Echo(ls.LitAPI):
    """Answers a ClassifyWork with its version-0 result, or TaskNotFound for task "missing"."""

    def setup(self, device: str) -> None:
        pass

    def batch(self, inputs):
        return inputs

    def unbatch(self, outputs):
        return outputs

    def predict(self, items: list[ClassifyWork]):
        self.batches.append(len(items))
        return [
            TaskNotFound(item.task_id)
            if item.task_id == "missing"
            else ClassifyResult(len(item.images), None, ())
            for item in items
        ]


@pytest.fixture(params=["litserve", "pipe"])
def wired(request) -> Iterator[tuple[WorkerBridge, Echo, MessageTransport]]:
    """The bridge and the loop wired as LitServer wires them, the worker loop in a thread; answers
    travel back through LitServe's own transport, or the server's PipeTransport, and LitServe's
    response-buffer task."""
    api = Echo(
        max_batch_size=8, batch_timeout=0.3, spec=WorkerBridge(), loop=FairBatchedLoop(32, equal_shares)
    )
    api.batches, api.request_timeout = [], 5.0
    api.pre_setup()
    requests = queue.Queue()
    transport = MPQueueTransport(None, [queue.Queue()]) if request.param == "litserve" else PipeTransport(1)
    bridge = api.spec
    bridge.response_buffer, bridge.request_queue, bridge.response_queue_id = {}, requests, 0
    loop = FairBatchedLoop(32, equal_shares)
    worker = threading.Thread(target=loop.run_batched_loop, args=(api, requests, transport, CallbackRunner()))
    worker.start()
    yield bridge, api, transport
    requests.put(_SENTINEL_VALUE)  # how LitServe stops a worker loop
    worker.join(10)
    assert not worker.is_alive(), "the loop did not stop on LitServe's sentinel"


def send(bridge: WorkerBridge, work: ClassifyWork, start_by: float | None = None):
    ticket = Ticket(work.tenant, len(work.images), f"{work.task_id}-{len(work.images)}", start_by=start_by)
    return bridge.send(ticket, work)


def run_with_buffer_task(bridge: WorkerBridge, transport, body):
    async def main():
        apis = _LitAPIConnector([Echo(max_batch_size=2)])
        mover = asyncio.create_task(response_queue_to_buffer(transport, bridge.response_buffer, 0, apis))
        try:
            return await body()
        finally:
            transport.close(send_sentinel=False)
            mover.cancel()

    return asyncio.run(main())


def test_bridge_and_loop_round_trip_through_litserve(wired) -> None:
    bridge, api, transport = wired

    async def body():
        works = [ClassifyWork("t", f"task{n}", np.zeros((n + 1, 2, 2), np.uint8)) for n in range(3)]
        missing = ClassifyWork("t", "missing", np.zeros((1, 2, 2), np.uint8))
        submitted = [send(bridge, work) for work in [*works, missing]]
        return await asyncio.gather(*submitted, return_exceptions=True)

    outcomes = run_with_buffer_task(bridge, transport, body)
    assert outcomes[:3] == [ClassifyResult(n, None, ()) for n in (1, 2, 3)]
    assert isinstance(outcomes[3], TaskNotFound)
    assert api.batches == [4]  # one batch: the loop drained the queue within batch_timeout
    assert bridge.response_buffer == {}


def test_a_request_that_waited_too_long_is_a_worker_timeout(wired) -> None:
    bridge, api, transport = wired
    api.request_timeout = 1e-9  # every request has waited longer than this when the loop takes it

    async def body():
        with pytest.raises(WorkerTimeout):
            await send(bridge, ClassifyWork("t", "late", np.zeros((1, 2, 2), np.uint8)))

    run_with_buffer_task(bridge, transport, body)


def test_work_not_started_by_its_deadline_is_answered_overloaded_without_running(wired) -> None:
    bridge, api, transport = wired

    async def body():
        late = ClassifyWork("t", "late", np.zeros((1, 2, 2), np.uint8))
        with pytest.raises(Overloaded, match="METANET_QUEUE_DEADLINE"):
            await send(bridge, late, start_by=0.0)  # long past, in time.monotonic()

    run_with_buffer_task(bridge, transport, body)
    assert api.batches == []


def test_builtin_routes_are_removed() -> None:
    server = ls.LitServer(Echo(max_batch_size=2), accelerator="cpu")
    builtin = {"/", server.healthcheck_path, server.info_path}
    assert builtin <= {getattr(r, "path", None) for r in server.app.router.routes}
    remove_builtin_routes(server)
    assert not builtin & {getattr(r, "path", None) for r in server.app.router.routes}


def test_gzip_level_is_set_on_litserves_gzip_middleware() -> None:
    server = ls.LitServer(Echo(max_batch_size=2), accelerator="cpu")
    others = [entry for entry in server.middlewares if entry[0] is not GZipMiddleware]
    assert len(others) == len(server.middlewares) - 1  # LitServe adds exactly one GZipMiddleware
    set_gzip_level(server, 4)
    gzip = [kwargs for cls, kwargs in server.middlewares if cls is GZipMiddleware]
    assert gzip == [{"minimum_size": 1000, "compresslevel": 4}]
    assert [entry for entry in server.middlewares if entry[0] is not GZipMiddleware] == others


def test_the_server_queues_go_straight_between_processes() -> None:
    """LitServe made its queues, through its Manager; the server's replace them before any process
    starts (LitServe's shared status stays with the Manager)."""
    server = DirectQueueServer(Echo(max_batch_size=2), accelerator="cpu")
    manager = server._init_manager(2)
    try:
        for request_queue in server.litapi_request_queues.values():
            assert isinstance(request_queue, multiprocessing.queues.Queue)
        assert isinstance(server._transport, PipeTransport) and len(server._transport._pipes) == 2
        server._transport.send(("uid", ("answer",)), consumer_id=1)
        assert asyncio.run(server._transport.areceive(1)) == ("uid", ("answer",))
        # An answer far longer than a pipe's buffer, written while uvicorn's event loop (uvloop, which
        # uvicorn uses where it is installed) waits for it, arrives whole.
        uvloop = pytest.importorskip("uvloop")
        long = ("uid", (np.arange(500_000),))
        writer = threading.Timer(0.2, server._transport.send, (long, 0))
        writer.start()
        received = uvloop.run(server._transport.areceive(0))
        writer.join()
        assert received[0] == "uid" and np.array_equal(received[1][0], long[1][0])
    finally:
        manager.shutdown()


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_a_request_queues_pipe_is_enlarged_to_hold_a_burst_of_parts() -> None:
    """The pipe under the server's request queue (a stdlib queue's ``_writer`` and ``_reader``) holds about
    forty 32-image parts, not two: a worker that reads it between batches sees a burst, and another
    tenant's request sent after it, at its next read."""
    server = DirectQueueServer(Echo(max_batch_size=2), accelerator="cpu")
    manager = server._init_manager(1)
    try:
        for request_queue in server.litapi_request_queues.values():
            assert fcntl.fcntl(request_queue._reader.fileno(), fcntl.F_GETPIPE_SZ) == REQUEST_PIPE_BYTES
        assert REQUEST_PIPE_BYTES >= 40 * 32 * 28 * 28
    finally:
        manager.shutdown()
