"""Admission control: a stream gets a slot only while its service has one free and memory is not short.

The speech services wrap each request or stream in `async with ctx.admission.stream("asr", limit):`;
when the server is full it raises ResourceExhaustedError at once (never queues), with the limit in
the message, and each door answers with its own status for it (gRPC: RESOURCE_EXHAUSTED). A
draining server (`drain()`, before a Kubernetes pod stops) refuses new streams with DrainingError
(gRPC: UNAVAILABLE, so a client retries elsewhere) while the open ones go on.

Admission also keeps the load gauges the autoscaler reads: `edged_active_streams{service}`,
`edged_stream_capacity{service}` and `edged_load_ratio`, the busiest service's open streams over
its limit (see `load_ratio`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from edged.errors import DrainingError, ResourceExhaustedError
from edged.service import metrics

_LOGGER = logging.getLogger(__name__)


class Admission:
    """Counts open streams per service and refuses new ones beyond a limit or under memory pressure."""

    def __init__(self, reserve_mb: float, available_mb: Callable[[], float]) -> None:
        self._reserve_mb = reserve_mb
        self._available_mb = available_mb
        self.active: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.draining = False

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

    def check_memory(self) -> None:
        """ResourceExhaustedError if less than the reserve is available."""
        free = self._available_mb()
        if free < self._reserve_mb:
            metrics.REFUSED.labels(reason="memory").inc()
            raise ResourceExhaustedError(
                f"Memory is short ({free:.0f} MB available, memory_reserve_mb={self._reserve_mb:.0f}); "
                "try again later.")

    def refuse_if_draining(self, service: str) -> None:
        """DrainingError while draining: a service calls this before anything else about a new
        request, so the client is sent elsewhere whatever it asked for."""
        if self.draining:
            metrics.REFUSED.labels(reason="draining").inc()
            raise DrainingError(
                f"The server is draining before it stops: no new {service} streams; "
                "connect to another replica.")

    @asynccontextmanager
    async def stream(self, service: str, limit: int = 0) -> AsyncIterator[None]:
        """Hold one of `service`'s `limit` slots (0: no count limit) for the body's duration."""
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
        try:
            yield
        finally:
            self.active[service] -= 1
            metrics.ACTIVE_STREAMS.labels(service=service).dec()
            self._publish_load()
            _LOGGER.debug("%s stream closed after %.2f s", service, time.monotonic() - started)
