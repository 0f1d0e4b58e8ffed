"""The sidecar process fixes glibc's mmap threshold (sentinel/malloc_policy.py, issue 16).

Run in child interpreters: the allocator's settings are per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loadtest.procs import ROOT, child_env

_CHILD = r"""
import ctypes, json
from sentinel.malloc_policy import map_large_buffers

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mapped_after_a_freed_buffer(size):
    bytearray(4 * size)  # made and freed: raises glibc's own threshold above `size`, unless it is fixed
    before = libc.mallinfo2().hblks
    buffer = bytearray(size)
    return libc.mallinfo2().hblks > before

applied = map_large_buffers()
print(json.dumps({"applied": applied, "mapped": mapped_after_a_freed_buffer(200_000)}))
"""


def _child(extra: dict[str, str]) -> dict[str, bool]:
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=child_env(extra), capture_output=True,
                         text=True, timeout=60, check=True)
    result: dict[str, bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc only")
def test_buffers_of_64_kib_and_more_stay_mapped_on_their_own() -> None:
    assert _child({}) == {"applied": True, "mapped": True}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_operators_own_threshold_wins() -> None:
    assert _child({"MALLOC_MMAP_THRESHOLD_": "1048576"}) == {"applied": False, "mapped": False}
