"""The thread pools of a process, with one owner: made by name on first ask, shut down together, once.

The daemon makes one `Pools` and hands it down (the inference executor, the ASR interim lane,
the TTS steps, each model's lanes); an offline tool or a test makes its own (`with Pools() as
pools:`). Shutdown goes through the pools in the order they were made, which puts callers first:
the service pools are made with the services, a model's lane pool when the model is, and work on
a lane is only ever submitted from a service pool's thread. So once a pool is shut and its
threads have ended, nothing submits to the pools after it. The wait is bounded: a call that
runs on is left to end alone, and its thread named.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

_LOGGER = logging.getLogger(__name__)

STOP_WAIT_S = 5.0
"""Longest `shutdown` waits, in all, for the calls still running on the pools."""


@dataclass
class _Pool:
    """One named executor and the worker threads it has started."""

    executor: ThreadPoolExecutor
    workers: int
    threads: list[threading.Thread] = field(default_factory=list)


class Pools:
    """Named thread pools (threads `edged-<name>_<n>`), made on first ask and shut down once."""

    def __init__(self) -> None:
        self._pools: dict[str, _Pool] = {}
        """By name, in the order they were made."""
        self._lock = threading.Lock()
        self._closed = False

    def get(self, name: str, workers: int) -> ThreadPoolExecutor:
        """The pool `name` of `workers` threads (started as work comes), made on the first ask;
        ValueError if it exists with another size, RuntimeError once the pools are shut down."""
        if workers < 1:
            raise ValueError(f"Pool {name!r} needs at least one thread, not {workers}.")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"Pool {name!r} asked for after the pools were shut down.")
            pool = self._pools.get(name)
            if pool is None:
                threads: list[threading.Thread] = []
                executor = ThreadPoolExecutor(workers, thread_name_prefix=f"edged-{name}",
                                              initializer=lambda: threads.append(threading.current_thread()))
                pool = self._pools[name] = _Pool(executor, workers, threads)
            elif pool.workers != workers:
                raise ValueError(f"Pool {name!r} has {pool.workers} thread(s); asked for {workers}.")
            return pool.executor

    def names(self) -> list[str]:
        """The pools made so far, in order."""
        with self._lock:
            return list(self._pools)

    def shutdown(self, wait_s: float = STOP_WAIT_S) -> list[str]:
        """Drop queued work and let running calls end, pool by pool in the order they were made,
        within `wait_s` in all; returns the names of the threads still running then (none normally).
        Later calls do nothing."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            pools = list(self._pools.values())
        deadline = time.monotonic() + wait_s
        for pool in pools:
            pool.executor.shutdown(wait=False, cancel_futures=True)
            for thread in pool.threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        running = [t.name for pool in pools for t in pool.threads if t.is_alive()]
        if running:
            _LOGGER.warning("Calls still running after %.0f s on threads %s; they end alone",
                            wait_s, ", ".join(running))
        return running

    def __enter__(self) -> Pools:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()
