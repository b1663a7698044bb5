"""Lanes: independent network calls of one pipeline step run side by side, one per lane.

On a small CPU, one ONNX Runtime call spread over every core scales poorly (measured on
2 cores: the Piper decoder 1.35x faster with 2 threads than with 1, a Moonshine decoder
step no faster at all), while two calls of one thread each run almost twice as fast as
one after the other. So sessions get `cores / lanes` threads, and a step with several
independent calls (the utterances of a batch) runs them on the lanes at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from edged.pipelines.pools import Pools

T = TypeVar("T")
R = TypeVar("R")


class Lanes:
    """Runs independent calls side by side: one on the calling thread, the rest on a pool."""

    def __init__(self, count: int, pools: Pools, name: str) -> None:
        """`count` lanes; the pool of the other `count - 1` is `pools`' `<name>-lane`."""
        self.count = max(1, count)
        self._pool = pools.get(f"{name}-lane", self.count - 1) if self.count > 1 else None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`[fn(x) for x in items]`, up to `count` at a time, each lane taking the next item
        when it is free; the first exception is raised once every call has ended."""
        todo = list(items)
        if self._pool is None or len(todo) < 2:
            return [fn(x) for x in todo]
        results: list[R | None] = [None] * len(todo)
        errors: list[BaseException] = []
        order = iter(range(len(todo)))
        lock = threading.Lock()

        def lane() -> None:
            while True:
                with lock:
                    i = next(order, None)
                    if i is None or errors:
                        return
                try:
                    results[i] = fn(todo[i])
                except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                    with lock:
                        errors.append(exc)

        others = [self._pool.submit(lane) for _ in range(min(self.count, len(todo)) - 1)]
        lane()
        for f in others:
            # A lane still queued behind other work is not waited for (the items are all
            # taken): the pool may be busy with calls that wait for what this caller holds.
            if not f.cancel():
                f.result()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]  # no lane failed, so every slot holds its result
