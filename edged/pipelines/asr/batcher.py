"""Runs the recognition work of every open stream on one inference executor, batched.

Each stream hands in one chunk at a time and waits for its results, so the queue holds at
most one item per stream (bounded by the server's stream limit). The loop takes whatever is
queued, runs the streams' cheap steps (audio decoding, VAD) and then their decode jobs together
in one executor call: when several streams have audio ready, their encoder and decoder steps
run as one batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edged.pipelines.asr.model import AsrModel
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.stream import (
    AsrStream,
    DecodeJob,
    StreamConfig,
    offline_config,
)

_LOGGER = logging.getLogger(__name__)

_MAX_ITEMS_PER_CYCLE = 32


@dataclass
class _Item:
    """One chunk (or the end, or a whole offline recording) of one stream, and who waits for it."""

    stream: AsrStream
    data: bytes | None
    """Audio; None for the end of the stream."""
    offline: bool
    future: asyncio.Future[list[Result]]


class AsrBatcher:
    """One consumer task feeding all streams' work to the inference executor in batches."""

    def __init__(self, run: Callable[..., Awaitable[Any]], max_queue: int = 256) -> None:
        """`run(fn, *args)` runs blocking `fn` on the inference executor and returns its result."""
        self._run_inference = run
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="edged-asr-batcher")

    async def feed(self, stream: AsrStream, data: bytes) -> list[Result]:
        """Give a stream its next chunk; returns the results it completed."""
        return await self._submit(stream, data, offline=False)

    async def finish(self, stream: AsrStream) -> list[Result]:
        """End a stream; returns its last results."""
        return await self._submit(stream, None, offline=False)

    async def recognize(self, model: AsrModel, data: bytes, config: StreamConfig) -> list[Result]:
        """Offline recognition of a whole recording, on the same executor as the streams."""
        stream = model.start_stream(offline_config(config))
        return await self._submit(stream, data, offline=True)

    async def _submit(self, stream: AsrStream, data: bytes | None, offline: bool) -> list[Result]:
        self._ensure_running()
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(stream, data, offline, future))
        return await future

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < _MAX_ITEMS_PER_CYCLE:
                items.append(self._queue.get_nowait())
            try:
                outcomes = await self._run_inference(self._cycle, items)
            except Exception as exc:  # a bug in a cycle must not end the loop for everyone
                _LOGGER.exception("ASR batch failed")
                outcomes = [exc] * len(items)
            for item, outcome in zip(items, outcomes):
                if item.future.done():  # the client went away meanwhile
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _cycle(self, items: list[_Item]) -> list[list[Result] | BaseException]:
        """On the executor: feed every item, decode all their jobs together, collect results."""
        outcomes: list[list[Result] | BaseException | None] = []
        by_model: dict[int, tuple[AsrModel, list[DecodeJob]]] = {}
        for item in items:
            stream = item.stream
            try:
                if item.data is not None:
                    stream.feed(item.data)
                if item.data is None or item.offline:
                    stream.feed_end()
            except Exception as exc:  # bad audio or a limit: only this item fails
                stream.jobs.clear()
                outcomes.append(exc)
                continue
            outcomes.append(None)
            model, jobs = by_model.setdefault(id(stream.model), (stream.model, []))
            jobs.extend(stream.jobs)
            stream.jobs.clear()
        for model, jobs in by_model.values():
            model.decode_jobs(jobs)
        return [o if o is not None else item.stream.take_results() for item, o in zip(items, outcomes)]
