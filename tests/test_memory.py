"""The allocator's memory given back after a burst (`AllocatorTrim`), on this process's glibc."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from edged.service.memory import AllocatorTrim


def test_trim_is_due_after_growth_and_not_again_when_nothing_is_freed() -> None:
    readings = iter([500.0, 540.0, 540.0, 541.0, 520.0, 553.0, 560.0])
    trim = AllocatorTrim(rss=lambda: next(readings), step_mb=32)  # mark 500
    assert trim.due()  # 540: past 500 + 32
    trim.trim()  # nothing freed: the mark moves to 540 (the trim itself is real, and harmless)
    assert not trim.due()  # 541
    assert not trim.due()  # 520: the mark follows RSS down
    assert trim.due()  # 553 > 520 + 32


_BURST = """
import ctypes, ctypes.util
from edged.service.memory import AllocatorTrim, release_free_memory, rss_mb
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 64 KiB blocks on the heap, as after a large free
libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free() alone gives nothing back
release_free_memory()
before = rss_mb()
blocks = [libc.malloc(64 * 1024) for _ in range(1600)]  # 100 MiB
for block in blocks:
    ctypes.memset(block, 1, 64 * 1024)
for block in reversed(blocks):
    libc.free(block)
kept = rss_mb() - before
AllocatorTrim(rss=lambda: before).trim()
print(kept, kept - (rss_mb() - before))
"""


@pytest.mark.skipif(not ctypes.util.find_library("c"), reason="needs glibc's malloc_trim")
def test_freed_small_buffers_go_back_to_the_system_when_trimmed() -> None:
    """What glibc keeps after many freed allocations below its mmap threshold comes back at a
    trim (in a process of its own: the test sets the allocator's thresholds)."""
    out = subprocess.run([sys.executable, "-c", _BURST], capture_output=True, text=True, timeout=60, check=True)
    kept, returned = map(float, out.stdout.split())
    assert kept > 80 and returned > 80, (kept, returned)
