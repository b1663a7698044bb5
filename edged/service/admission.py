"""Admission control: a stream gets a slot only while its service has one free and memory is not short.

Memory is short when less than `memory_reserve_mb` is available on the machine, or when the
server's own RSS is past its high-water mark (`memory_high_water_mb`; the allocator's free memory
is given back first, and the stream is refused only if that does not bring RSS under the mark).

The speech services wrap each request or stream in `async with ctx.admission.stream("asr", limit):`;
when the server is full it raises ResourceExhaustedError at once (never queues), with the limit in
the message, and each door answers with its own status for it (gRPC: RESOURCE_EXHAUSTED). A
draining server (`drain()`, before a Kubernetes pod stops) refuses new streams with DrainingError
(gRPC: UNAVAILABLE, so a client retries elsewhere) while the open ones go on.

A slot also watches its client (`Slot`): a stream whose client sends nothing it owes, or reads
nothing it was sent, for longer than its idle timeout is ended, so no client can hold a slot by
going quiet. The session is told first (`Slot.on_idle`: it ends its results with
IdleTimeoutError, which the door answers with its own status); a holder that has not let go a
moment later (its client reads nothing, so the answer never leaves) is cancelled.

Admission also keeps the load gauges the autoscaler reads: `edged_active_streams{service}`,
`edged_stream_capacity{service}` and `edged_load_ratio`, the busiest service's open streams over
its limit (see `load_ratio`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from edged.errors import DrainingError, IdleTimeoutError, ResourceExhaustedError
from edged.service import metrics

_LOGGER = logging.getLogger(__name__)

IDLE_CHECK_S = 0.5
"""How often a slot looks at its client's clocks."""
IDLE_CANCEL_GRACE_S = 1.0
"""How long a session told it is idle has to let its slot go before its holder is cancelled."""


class Waiting(enum.Enum):
    """What a stream may wait on its client for."""

    SEND = "send"
    """The client's next audio or text (it has not said it is done)."""
    READ = "read"
    """The client to take what was sent to it (a write that does not return)."""


class Slot:
    """One stream's admission slot, and the clocks of what it waits on its client for.

    A session calls `waiting(Waiting.SEND)` while it waits for its client's next input and
    `waiting(Waiting.READ)` while a door writes to its client; time the server spends working is
    never idle. Past `idle_timeout_s` on either clock, `on_idle` is called with the error to end
    the session with; if the slot is still held IDLE_CANCEL_GRACE_S later, the task that took it
    is cancelled."""

    def __init__(self, service: str, idle_timeout_s: float, setting: str) -> None:
        self.service = service
        self.idle_timeout_s = idle_timeout_s
        self.setting = setting
        self.on_idle: Callable[[IdleTimeoutError], None] | None = None
        self._since: dict[Waiting, float] = {}
        self._holder = asyncio.current_task()
        self._expired_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        if idle_timeout_s > 0:
            self._timer = asyncio.get_running_loop().call_later(IDLE_CHECK_S, self._check)

    def start_waiting(self, on: Waiting) -> None:
        """From now on the stream waits on its client for `on` (until `stop_waiting`)."""
        self._since.setdefault(on, time.monotonic())

    def stop_waiting(self, on: Waiting) -> None:
        """The client did what the stream waited for."""
        self._since.pop(on, None)

    @contextmanager
    def waiting(self, on: Waiting) -> Iterator[None]:
        """The body waits on the client for `on`."""
        self.start_waiting(on)
        try:
            yield
        finally:
            self.stop_waiting(on)

    @contextmanager
    def busy(self, on: Waiting) -> Iterator[None]:
        """The body is the server's work on what the client sent: `on` is not waited for
        meanwhile, and is again after."""
        self.stop_waiting(on)
        try:
            yield
        finally:
            self.start_waiting(on)

    def idle(self, now: float) -> Waiting | None:
        """What the client has kept the stream waiting for longer than the idle timeout, if anything."""
        for on, since in self._since.items():
            if now - since > self.idle_timeout_s:
                return on
        return None

    def release(self) -> None:
        """The slot is given back: stop watching."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(IDLE_CHECK_S, self._check)
        if self._expired_at is not None:
            if now - self._expired_at >= IDLE_CANCEL_GRACE_S and self._holder is not None:
                _LOGGER.info("An idle %s stream did not end when told; cancelling it", self.service)
                self._holder.cancel()
                self.release()
            return
        on = self.idle(now)
        if on is None:
            return
        self._expired_at = now
        metrics.IDLE_ENDED.labels(self.service, on.value).inc()
        doing = "sent nothing" if on is Waiting.SEND else "read nothing"
        error = IdleTimeoutError(f"The client {doing} for {self.idle_timeout_s:g} s; the {self.service} stream "
                                 f"was ended ({self.setting}).")
        _LOGGER.info("Ending an idle %s stream: its client %s for %g s", self.service, doing, self.idle_timeout_s)
        if self.on_idle is not None:
            self.on_idle(error)


def high_water_mb(setting: int | None, ready_rss_mb: float, budget_left_mb: float) -> float:
    """The high-water mark `memory_high_water_mb` gives (None: `auto`, the RSS when the server
    became ready plus what the models' budget had left then; 0: none)."""
    if setting is not None:
        return float(setting)
    return ready_rss_mb + max(0.0, budget_left_mb)


class Admission:
    """Counts open streams per service and refuses new ones beyond a limit or under memory pressure."""

    def __init__(self, reserve_mb: float, available_mb: Callable[[], float], high_water_mb: float = 0.0,
                 rss_mb: Callable[[], float] = lambda: 0.0, release_memory: Callable[[], None] = lambda: None) -> None:
        """`available_mb` and `rss_mb` read the machine's available memory and the server's RSS;
        `release_memory` gives the allocator's free memory back; `high_water_mb` 0: RSS unchecked."""
        self._reserve_mb = reserve_mb
        self._available_mb = available_mb
        self.high_water_mb = high_water_mb
        """The server's RSS (MiB) past which new streams are refused; 0: no such check."""
        self._rss_mb = rss_mb
        self._release_memory = release_memory
        self.active: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.draining = False
        self._none_open = asyncio.Event()
        """Set as the last open stream ends (awaited by `settled`)."""

    def set_limit(self, service: str, limit: int) -> None:
        """Declare `service`'s stream limit (0: none) so its capacity shows before its first stream."""
        if limit:
            self.limits[service] = limit
            metrics.STREAM_CAPACITY.labels(service=service).set(limit)
        metrics.ACTIVE_STREAMS.labels(service=service).set(self.active.get(service, 0))
        self._publish_load()

    def load_ratio(self) -> float:
        """The busiest limited service's open streams over its limit: 0 idle, 1 full (the next
        stream of that service is refused). The maximum, not a sum over services, because one full
        service refuses clients while another is idle; services without a limit do not count."""
        return max((self.active.get(s, 0) / n for s, n in self.limits.items() if n), default=0.0)

    def _publish_load(self) -> None:
        metrics.LOAD_RATIO.set(self.load_ratio())

    def drain(self) -> None:
        """Refuse new streams from now on (DrainingError); open ones go on to their end."""
        if not self.draining:
            _LOGGER.info("Draining: refusing new streams, %d open one(s) go on", self.total)
        self.draining = True

    def resume(self) -> None:
        """Take new streams again (undo `drain`)."""
        if self.draining:
            _LOGGER.info("Drain undone: taking new streams again")
        self.draining = False

    @property
    def total(self) -> int:
        """Streams open across all services."""
        return sum(self.active.values())

    async def settled(self, timeout_s: float) -> bool:
        """Wait until no stream is open (their sessions have ended, clean-up included), at most
        `timeout_s`; whether none is. A stopping server waits here after its doors have cancelled
        their calls, before it shuts the pools that a stream's clean-up still uses."""
        if self.total:
            self._none_open.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._none_open.wait(), timeout_s)
        return not self.total

    def check_memory(self) -> None:
        """ResourceExhaustedError if less than the reserve is available, or if the server's RSS is
        past the high-water mark even after giving back the allocator's free memory."""
        free = self._available_mb()
        if free < self._reserve_mb:
            metrics.REFUSED.labels(reason="memory").inc()
            raise ResourceExhaustedError(
                f"Memory is short ({free:.0f} MB available, memory_reserve_mb={self._reserve_mb:.0f}); "
                "try again later.")
        if not self.high_water_mb or self._rss_mb() < self.high_water_mb:
            return
        self._release_memory()
        rss = self._rss_mb()
        if rss >= self.high_water_mb:
            metrics.REFUSED.labels(reason="memory").inc()
            raise ResourceExhaustedError(
                f"The server's memory is past its high-water mark ({rss:.0f} MB in use, "
                f"memory_high_water_mb={self.high_water_mb:.0f}); try again later.")

    def refuse_if_draining(self, service: str) -> None:
        """DrainingError while draining: a service calls this before anything else about a new
        request, so the client is sent elsewhere whatever it asked for."""
        if self.draining:
            metrics.REFUSED.labels(reason="draining").inc()
            raise DrainingError(
                f"The server is draining before it stops: no new {service} streams; "
                "connect to another replica.")

    @asynccontextmanager
    async def stream(self, service: str, limit: int = 0, idle_timeout_s: float = 0.0,
                     idle_setting: str = "") -> AsyncIterator[Slot]:
        """Hold one of `service`'s `limit` slots (0: no count limit) for the body's duration;
        the slot ends a stream whose client keeps it waiting past `idle_timeout_s` (0: never),
        naming `idle_setting` (see `Slot`)."""
        if limit and self.limits.get(service) != limit:
            self.set_limit(service, limit)
        self.refuse_if_draining(service)
        active = self.active.get(service, 0)
        if limit and active >= limit:
            metrics.REFUSED.labels(reason="streams").inc()
            raise ResourceExhaustedError(
                f"The server is full: {active} {service} streams open, the limit is {limit}; "
                "try again later.")
        self.check_memory()
        self.active[service] = active + 1
        metrics.ACTIVE_STREAMS.labels(service=service).inc()
        self._publish_load()
        started = time.monotonic()
        slot = Slot(service, idle_timeout_s, idle_setting)
        try:
            yield slot
        finally:
            slot.release()
            self.active[service] -= 1
            if not self.total:
                self._none_open.set()
            metrics.ACTIVE_STREAMS.labels(service=service).dec()
            self._publish_load()
            _LOGGER.debug("%s stream closed after %.2f s", service, time.monotonic() - started)
