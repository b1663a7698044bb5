"""Admission control: a stream gets a slot only while its service has one free and memory is not short.

The speech services wrap each request or stream in `async with ctx.admission.stream("asr", limit):`;
when the server is full it raises ResourceExhaustedError at once (never queues), with the limit in
the message, and each door answers with its own status for it (gRPC: RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from edged.errors import ResourceExhaustedError
from edged.service import metrics

_LOGGER = logging.getLogger(__name__)


class Admission:
    """Counts open streams per service and refuses new ones beyond a limit or under memory pressure."""

    def __init__(self, reserve_mb: float, available_mb: Callable[[], float]) -> None:
        self._reserve_mb = reserve_mb
        self._available_mb = available_mb
        self.active: dict[str, int] = {}
        self.limits: dict[str, int] = {}

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

    @asynccontextmanager
    async def stream(self, service: str, limit: int = 0) -> AsyncIterator[None]:
        """Hold one of `service`'s `limit` slots (0: no count limit) for the body's duration."""
        if limit:
            self.limits[service] = limit
        active = self.active.get(service, 0)
        if limit and active >= limit:
            metrics.REFUSED.labels(reason="streams").inc()
            raise ResourceExhaustedError(
                f"The server is full: {active} {service} streams open, the limit is {limit}; "
                "try again later.")
        self.check_memory()
        self.active[service] = active + 1
        metrics.ACTIVE_STREAMS.labels(service=service).inc()
        started = time.monotonic()
        try:
            yield
        finally:
            self.active[service] -= 1
            metrics.ACTIVE_STREAMS.labels(service=service).dec()
            _LOGGER.debug("%s stream closed after %.2f s", service, time.monotonic() - started)
