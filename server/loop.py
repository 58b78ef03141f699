"""A LitServe batched loop that blocks while idle and batches whatever queued up while it was busy."""

from __future__ import annotations

import time
from queue import Empty

from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType


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
