"""Streams driven through the production `AsrBatcher` on a test clock, deterministically.

The batcher's calls run on the event loop (`inline`) instead of on executor threads, and its
clock is one the test sets (`Clock`): each chunk is fed at the time its audio would arrive in
real time, however fast the test runs, so interims and lags come out the same on every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.batcher import AsrBatcher
from edged.pipelines.asr.jobs import DecodeJob
from edged.pipelines.asr.model import AsrModel
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.stream import AsrStream

T = TypeVar("T")


class Clock:
    """Seconds the test sets (`t`); the batcher reads them as it would time.monotonic."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def inline(fn: Callable[..., T], *args: Any) -> T:
    """Run a batcher call on the loop, at once (no executor thread: the order is fixed)."""
    return fn(*args)


def inline_batcher(clock: Clock, lanes: int = 1) -> AsrBatcher:
    """A batcher whose finals and interims run on the loop, on `clock`."""
    return AsrBatcher(inline, run_interims=inline, lanes=lanes, clock=clock)


def steady_decodes(model: AsrModel, monkeypatch: pytest.MonkeyPatch, seconds_per_s: float = 0.05) -> None:
    """Have a real model's decodes report `seconds_per_s` per second of audio instead of their
    wall time, so that when interims are due (which counts decode times) does not depend on
    how busy the machine is."""
    decode_batch = model._decode_batch

    def steady(group: list[DecodeJob]) -> tuple[Any, float]:
        return decode_batch(group)[0], seconds_per_s * sum(len(j.audio) for j in group) / MODEL_RATE

    monkeypatch.setattr(model, "_decode_batch", steady)


async def settle() -> None:
    """Let the batcher's tasks run what is ready (the interim lane after a cycle, say)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def paced(batcher: AsrBatcher, clock: Clock, stream: AsrStream, data: bytes, bytes_per_s: int,
                chunk_s: float = 0.16, start_s: float = 0.0) -> list[Result]:
    """Every result of `data` streamed in chunks of `chunk_s`, each fed when its audio would
    have arrived in real time from `start_s` on `clock`, then the end: the results pushed to
    the stream's listener between chunks and those answered, in the order they came."""
    results: list[Result] = []
    stream.listener = results.extend
    chunk = int(bytes_per_s * chunk_s) // 4 * 4
    for i in range(0, len(data), chunk):
        clock.t = start_s + (i + chunk) / bytes_per_s
        results += await batcher.feed(stream, data[i:i + chunk])
        await settle()
    results += await batcher.finish(stream)
    return results


def stream_results(start: Callable[[], AsrStream], data: bytes, bytes_per_s: int, chunk_s: float = 0.16) -> list[Result]:
    """`paced` for one new stream (`start()`) through a batcher of its own."""
    clock = Clock()
    return asyncio.run(paced(inline_batcher(clock), clock, start(), data, bytes_per_s, chunk_s))


def offline_results(stream: AsrStream, data: bytes) -> list[Result]:
    """A whole recording recognised at once by `stream` (of an offline_config), as the service does."""
    return asyncio.run(inline_batcher(Clock()).recognize(stream, data))
