"""The C heap of a serving process (docs/SERVER.md, "The worker's heap").

glibc's malloc hands the top of its heap back to the OS as soon as more than its trim threshold is
free there, and that threshold follows the largest block freed so far. An inference worker allocates
and frees the same tens of megabytes on every batch (activations, fast weights, decoded parts); when
a batch's blocks end up at the top of the heap they are returned after it and faulted in again, page
by page, by the next one: kernel time taken from inference (figures in docs/SERVER.md).
``keep_freed_heap`` makes a process keep that memory for its next batch instead.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest on 64-bit: blocks up to it come from the heap
HEAP_KEEP_BYTES = 256 << 20  # freed memory kept at the heap's top: several batches' worth


def keep_freed_heap(keep_bytes: int = HEAP_KEEP_BYTES) -> bool:
    """Make this process's malloc keep up to ``keep_bytes`` of freed memory at the top of its heap, and
    serve blocks up to 32 MiB from the heap, instead of returning them to the OS. Fixed values: glibc
    stops adapting both thresholds. True if set; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, keep_bytes))
