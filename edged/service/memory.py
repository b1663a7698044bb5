"""Giving memory back to the system after a large request.

glibc's allocator keeps the memory a burst freed (many arenas, one per thread that allocated),
so RSS stays near a large request's peak long after it. `release_free_memory()` asks glibc to
return what it holds free (`malloc_trim`); elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

LARGE_REQUEST_BYTES = 1024 * 1024
"""A request of at least this many bytes of audio gives its memory back when it ends."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> None:
    """Return the allocator's free memory to the system (glibc; a few milliseconds)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
