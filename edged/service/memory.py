"""Giving memory back to the system after a large request.

glibc's allocator keeps the memory a burst freed (many arenas, one per thread that allocated),
so RSS stays near a large request's peak long after it. `release_free_memory()` asks glibc to
return what it holds free (`malloc_trim`), and `limit_allocator_arenas()`, called before the
daemon starts its threads, keeps the threads from holding an arena each (a 20 MB Recognize
peaked 250 MB higher with one arena per inference thread); elsewhere (musl, macOS) both do
nothing. Recognition runs ONNX Runtime without its own arena for the same reason
(edged.loader.ARENA_FREE_PIPELINES).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import psutil

LARGE_REQUEST_BYTES = 1024 * 1024
"""A request of at least this many bytes of audio gives its memory back when it ends."""
ALLOCATOR_ARENAS = 2
"""glibc malloc arenas the daemon's threads share (glibc's default: 8 per core)."""
_M_ARENA_MAX = -8
"""mallopt's parameter number for the arena count (malloc.h)."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _libc_function(name: str) -> Callable[..., int] | None:
    libc = _libc()
    function: Callable[..., int] | None = getattr(libc, name, None) if libc is not None else None
    return function


def rss_mb() -> float:
    """This process's resident memory (RSS), in MiB."""
    return float(psutil.Process().memory_info().rss) / 2**20


def release_free_memory() -> None:
    """Return the allocator's free memory to the system (glibc; a few milliseconds)."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def limit_allocator_arenas(count: int = ALLOCATOR_ARENAS) -> bool:
    """Have glibc's threads share `count` malloc arenas (threads started later are bound by it);
    False where the allocator has no such setting."""
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(_M_ARENA_MAX, count) == 1


TRIM_STEP_MB = 32.0
"""RSS growth past where the last trim left it that makes `AllocatorTrim` trim again."""


class AllocatorTrim:
    """Gives the allocator's free memory back after a burst: glibc keeps what a large request
    freed (buffers below its mmap threshold, which rises after each large free) until trimmed.
    The daemon asks `due()` at each tick and trims off the event loop; a trim that frees nothing
    (the memory is in use) moves the mark up, so it is not repeated every tick."""

    def __init__(self, rss: Callable[[], float] = rss_mb, step_mb: float = TRIM_STEP_MB) -> None:
        self._rss = rss
        self._step_mb = step_mb
        self._mark_mb = rss()
        """RSS after the last trim (or the lowest seen since)."""

    def due(self) -> bool:
        """Whether RSS has grown `step_mb` past the mark."""
        now = self._rss()
        self._mark_mb = min(self._mark_mb, now)
        return now > self._mark_mb + self._step_mb

    def trim(self) -> None:
        """Trim now (a few milliseconds; call it off the event loop) and set the mark."""
        release_free_memory()
        self._mark_mb = self._rss()
