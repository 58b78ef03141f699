"""Everything the server takes from LitServe beyond its public API, in one module.

Written against LitServe 0.2.19 up to (not including) 0.3 (``LITSERVE_VERSIONS``, also pinned in
pyproject.toml). It relies on these internals, each checked by tests/server/test_litserve_adapter.py so
that an upgrade that changes one fails there, loudly, instead of somewhere in a running server:

- a ``LitSpec`` gets ``response_buffer`` (uid -> ``ResponseBufferItem``), ``request_queue`` and
  ``response_queue_id`` from the server; a request is the tuple
  ``(response_queue_id, uid, enqueued_at, payload)`` on that queue, its answer arrives in the buffer as
  ``(output, LitAPIStatus)``, with HTTP 504 as the error of a request that waited too long;
- ``BatchedLoop.get_batch_requests(lit_api, request_queue, transport)`` returns ``(batch, timed_out)``,
  ``_SENTINEL_VALUE`` on the queue asks the loop to stop by raising ``_StopLoopError``, and a loop
  acknowledges each request it takes with ``LitAPIStatus.START``;
- ``LitServer`` registers ``/``, ``healthcheck_path`` and ``info_path`` on its FastAPI app, and keeps
  each worker's ``WorkerSetupStatus`` in ``workers_setup_status``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from queue import Empty

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem, WorkerSetupStatus

from server.protocol import Outcome, Result, ServiceError, TaskBuilding, Work, WorkerFailed, WorkerTimeout

LITSERVE_VERSIONS = (">=0.2.19", "<0.3")


class WorkerBridge(LitSpec):
    """Submits work items to the inference workers and awaits their answers (no routes of its own:
    LitServe forwards only a request body to its workers, so the HTTP routes build the work items)."""

    def __init__(self) -> None:
        super().__init__()
        self.api_path = "/_worker"  # names the worker queue; no route is served there

    def decode_request(self, request: Work, context_kwargs: dict | None = None) -> Work:
        return request

    def encode_response(self, output: Outcome, context_kwargs: dict | None = None) -> Outcome:
        return output

    async def submit(self, work: Work, wait_for_build: float = 0.0) -> Result:
        """The worker's result for ``work``; raises the ServiceError the worker answered with. While the
        work's task memory is building (``TaskBuilding``: a worker never waits for a build itself), ask
        again, every 20 ms at first and then every 250 ms, for up to ``wait_for_build`` seconds."""
        deadline, pause = time.monotonic() + wait_for_build, 0.02
        while True:
            try:
                return await self._submit_once(work)
            except TaskBuilding:
                if time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.25)

    async def _submit_once(self, work: Work) -> Result:
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), work))
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


class DrainingBatchedLoop(BatchedLoop):
    """Dynamic batching without idle polling.

    LitServe's stock batched loop polls its queue every millisecond (or spins when ``batch_timeout`` is
    0). This loop blocks for the first request, then takes every request already queued, up to
    ``max_batch_size``, waiting at most ``batch_timeout`` for more. A lone request pays no batching delay;
    requests that arrive while a batch runs form the next batch.
    """

    def get_batch_requests(self, lit_api, request_queue, transport):
        batch, timed_out = [], []
        deadline = None
        while len(batch) < lit_api.max_batch_size:
            if deadline is None:  # nothing yet: block (bounded, so shutdown sentinels are seen)
                block, timeout = True, 1.0
            else:
                remaining = deadline - time.monotonic()
                block, timeout = remaining > 0, max(remaining, 0.0)
            try:
                item = request_queue.get(block=block, timeout=timeout if block else None)
            except Empty:
                if deadline is None:
                    return [], []
                break
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, payload = item
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )
            if (
                lit_api.request_timeout not in (-1, False)
                and time.monotonic() - timestamp > lit_api.request_timeout
            ):
                timed_out.append((response_queue_id, uid))
            else:
                batch.append((response_queue_id, uid, payload))
            if deadline is None:
                deadline = time.monotonic() + lit_api.batch_timeout
        return batch, timed_out


def remove_builtin_routes(server: ls.LitServer) -> None:
    """Drop LitServe's own ``/``, health and info routes (plain text, untyped) so the app serves ours."""
    builtin = {"/", server.healthcheck_path, server.info_path}
    app = server.app
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in builtin]


def workers_ready(server: ls.LitServer) -> bool:
    """Every inference worker has finished ``setup`` (loaded the model)."""
    status = server.workers_setup_status
    return bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())
