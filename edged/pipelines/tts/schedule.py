"""Who runs the voice next when several requests share it: first audio first, then the most urgent.

Each network run (an utterance's encoder, a chunk of its decoder) asks the model's `RunGate` for
a turn with a key; keys order as `(0, request start)` for a request that has produced no audio
yet, then `(1, deadline)` for the others, the deadline being when its listener runs out of audio.
The gate has a slot per lane (`tts_lanes`): a few runs go side by side, a run that shares the
cores on sessions with a lane's share of the threads, so a new request waits for at most the
first of the chunks already running to end, and concurrent streams never oversubscribe the
cores by more than a run or two.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

Key = tuple[int, float]


class RunGate:
    """Grants `slots` concurrent turns, lowest key first (ties: first come)."""

    def __init__(self, slots: int = 1) -> None:
        self._slots = self._free = slots
        self._cond = threading.Condition()
        self._waiting: list[tuple[Key, int]] = []
        self._order = itertools.count()
        self.streams = 0
        """Requests currently streaming from the model."""
        self.starting = 0
        """Those of them still waiting for their first audio."""

    @contextmanager
    def turn(self, key: Key) -> Iterator[bool]:
        """Hold a turn for the duration of the block; it gives whether other turns were held or
        awaited when this one was granted (the run will likely share the cores)."""
        with self._cond:
            entry = (key, next(self._order))
            heapq.heappush(self._waiting, entry)
            while self._free == 0 or self._waiting[0] != entry:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._free -= 1
            shared = self._free < self._slots - 1 or bool(self._waiting)
            self._cond.notify_all()  # with a slot left, the next in line goes too
        try:
            yield shared
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()

    @contextmanager
    def stream(self) -> Iterator[Callable[[], None]]:
        """Count a request as streaming for the duration of the block, and as starting until it
        calls the function it is given (at its first audio)."""
        started = False

        def first_audio() -> None:
            nonlocal started
            if not started:
                started = True
                with self._cond:
                    self.starting -= 1

        with self._cond:
            self.streams += 1
            self.starting += 1
        try:
            yield first_audio
        finally:
            first_audio()
            with self._cond:
                self.streams -= 1


class AsyncRunGate:
    """RunGate's order for asyncio tasks: a server hands the executor one TTS step at a time,
    the most urgent first, so steps never queue in the executor's first-come order."""

    def __init__(self, slots: int = 1) -> None:
        self._free = slots
        self._waiting: list[tuple[Key, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @asynccontextmanager
    async def turn(self, key: Key) -> AsyncIterator[None]:
        """Hold a turn for the duration of the block."""
        if self._free and not self._waiting:
            self._free -= 1
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (key, next(self._order), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted just as the waiter was cancelled: pass it on
                else:
                    self._waiting = [w for w in self._waiting if w[2] is not granted]
                    heapq.heapify(self._waiting)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1


class Pace:
    """One request's audio so far against a listener playing it in real time from its first chunk."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.seconds = 0.0

    def emitted(self, seconds: float) -> None:
        """Count audio handed to the listener."""
        if self.first is None:
            self.first = time.perf_counter()
        self.seconds += seconds

    def ahead(self) -> float:
        """Seconds of audio the listener still has before it runs out (0 before the first chunk)."""
        if self.first is None:
            return 0.0
        return max(0.0, self.first + self.seconds - time.perf_counter())

    def key(self) -> Key:
        """This request's place in the RunGate's order."""
        if self.first is None:
            return (0, self.started)
        return (1, self.first + self.seconds)
