"""glibc allocator policy of a long-running service process: large buffers are mapped on their own.

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at first) with its own
mapping, returned to the system when freed; but each time such a buffer is freed it raises the
threshold to that buffer's size (up to 32 MiB), so from then on buffers of that size come from the
heap. The sidecar allocates a few of them per export (the request's bytes, its parsed view, a
sealed batch of ~330 KiB), and once they live in the heap, its free space between long-lived
chunks is kept resident: measured (``loadtest/bench_sidecar.py``'s steady load, ``mallinfo2``)
the heap grew from 14 to 21 MiB in 20 s at 2,000 spans/s with 512 spans per request, of which
only ~14.5 MiB were in use. A fixed threshold (set with ``mallopt``, which also turns off the
raising) keeps buffers of 64 KiB and more out of the heap: it then stayed at ~15-16 MiB
(sidecar/README.md, Memory). The cost is a map and an unmap per such buffer, a few per export.

Call :func:`map_large_buffers` once per process, before its work starts. The operator's own
``MALLOC_MMAP_THRESHOLD_`` (glibc's environment variable) wins; elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["MMAP_THRESHOLD_BYTES", "map_large_buffers"]

#: Allocations of at least this many bytes get their own mapping (glibc's ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD_BYTES = 64 * 1024

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def map_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; whether it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not a glibc process
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
