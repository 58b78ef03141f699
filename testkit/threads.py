"""Functions run in threads whose exceptions (failed assertions too) are raised in the caller, so that
they fail the test instead of being printed and lost."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def in_threads(fn: Callable[..., T], args: Iterable[tuple]) -> Iterator[list[Future[T]]]:
    """Start ``fn(*a)`` for each ``a`` in ``args``, one thread each, for the body of the ``with``; on
    leaving it, wait for every thread, then raise the first exception any of them raised."""
    calls = list(args)
    with ThreadPoolExecutor(max(len(calls), 1)) as pool:
        futures = [pool.submit(fn, *a) for a in calls]
        yield futures
    for future in futures:
        future.result()


def run_concurrently(fn: Callable[..., T], args: Iterable[tuple]) -> list[T]:
    """``fn(*a)`` for each ``a`` in ``args``, all at once, one thread each: their results in order,
    or the first exception any of them raised once all have finished."""
    with in_threads(fn, args) as futures:
        pass
    return [future.result() for future in futures]
