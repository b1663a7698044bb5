"""Runs the recognition work of every open stream on one inference executor, batched.

Each stream hands in one chunk at a time and waits for its results, so the queue holds at
most one item per stream (bounded by the server's stream limit). The loop takes whatever is
queued and runs one cycle of it in two executor calls: first the streams' cheap steps (audio
decoding, VAD) and the decodes that finals need (all of them), after which the chunks that
completed a final are answered; then interims, which are optional: only for streams that are
not behind real time, longest-waiting first, and only as many as fit in the cycle's time
budget, so that streams keep up with real time however many there are. Decodes of several
streams run as batches where their lengths allow (see AsrModel.decode_jobs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.budget import InterimBudget
from edged.pipelines.asr.jobs import DecodeJob, JobRunner
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.stream import AsrStream

_LOGGER = logging.getLogger(__name__)

_MAX_ITEMS_PER_CYCLE = 32
# A stream handled this many seconds later than real time gets no interims until it catches up.
_MAX_LAG_S = 0.3


@dataclass
class _Item:
    """One chunk (or the end, or a whole offline recording) of one stream, and who waits for it."""

    stream: AsrStream
    data: bytes | np.ndarray | None
    """Audio (client bytes, or float32 samples at the model's rate); None for the end of the stream."""
    offline: bool
    future: asyncio.Future[list[Result]]
    end_utterance: bool = False
    """End the open utterance after this chunk (Riva's force_eou)."""


class AsrBatcher:
    """One consumer task feeding all streams' work to the inference executor in batches."""

    def __init__(self, run: Callable[..., Awaitable[Any]], max_queue: int = 256) -> None:
        """`run(fn, *args)` runs blocking `fn` on the inference executor and returns its result."""
        self._run_inference = run
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._speculative: list[DecodeJob] = []
        """Speculative final decodes (kind 'eou') the last cycle's feeding queued."""

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="edged-asr-batcher")

    async def feed(self, stream: AsrStream, data: bytes | np.ndarray, end_utterance: bool = False) -> list[Result]:
        """Give a stream its next chunk (client bytes, or float32 samples at the model's rate);
        returns the results it completed. `end_utterance`: the open utterance ends after it."""
        return await self._submit(stream, data, offline=False, end_utterance=end_utterance)

    async def finish(self, stream: AsrStream) -> list[Result]:
        """End a stream; returns its last results."""
        return await self._submit(stream, None, offline=False)

    async def recognize(self, stream: AsrStream, data: bytes) -> list[Result]:
        """Offline recognition of a whole recording by a new stream (of an `offline_config`),
        on the same executor as the streams."""
        return await self._submit(stream, data, offline=True)

    async def _submit(self, stream: AsrStream, data: bytes | np.ndarray | None, offline: bool,
                      end_utterance: bool = False) -> list[Result]:
        self._ensure_running()
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(stream, data, offline, future, end_utterance))
        return await future

    async def _run(self) -> None:
        budget = InterimBudget(time.monotonic())
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < _MAX_ITEMS_PER_CYCLE:
                items.append(self._queue.get_nowait())
            try:
                budget.tick(time.monotonic())
                t0 = time.perf_counter()
                outcomes = await self._run_inference(self._required, items)
                # Every item is answered now: a stream's next chunk is fed as soon as this cycle
                # ends, whatever other streams wait for. Interims made below reach their stream
                # with its next chunk's results.
                self._answer(list(zip(items, outcomes)))
                if self._speculative:
                    await self._run_inference(self._speculate)
                budget.required(time.perf_counter() - t0)
                budget.tick(time.monotonic())
                streams = [item.stream for item, o in zip(items, outcomes)
                           if not item.offline and not isinstance(o, BaseException)]
                chosen = _choose_interims(streams, time.monotonic(), budget.allowance())
                if chosen:
                    t0 = time.perf_counter()
                    await self._run_inference(self._interims, chosen)
                    budget.spent(time.perf_counter() - t0)
            except Exception as exc:  # a bug in a cycle must not end the loop for everyone
                _LOGGER.exception("ASR batch failed")
                self._answer([(item, exc) for item in items])

    @staticmethod
    def _answer(outcomes: list[tuple[_Item, list[Result] | BaseException]]) -> None:
        for item, outcome in outcomes:
            if item.future.done():  # the client went away meanwhile (or was answered)
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _required(self, items: list[_Item]) -> list[list[Result] | BaseException]:
        """On the executor: feed every item and decode what it needs (finals); its results."""
        now = time.monotonic()
        t0 = time.perf_counter()
        outcomes: list[list[Result] | BaseException | None] = []
        required: list[DecodeJob] = []
        for item in items:
            stream = item.stream
            try:
                if item.data is not None:
                    stream.feed(item.data, now)
                if item.end_utterance:
                    stream.end_utterance()
                if item.data is None or item.offline:
                    stream.feed_end()
            except Exception as exc:  # noqa: BLE001 - bad audio or a limit: only this item fails
                stream.jobs.clear()
                outcomes.append(exc)
                continue
            outcomes.append(None)
            # Speculative finals wait for a call of their own (_speculate), after the finals.
            required.extend(j for j in stream.jobs if j.kind != "eou")
            self._speculative.extend(j for j in stream.jobs if j.kind == "eou")
            stream.jobs.clear()
        _decode(required)
        if _LOGGER.isEnabledFor(logging.DEBUG) and required:
            _LOGGER.debug("ASR cycle: %d items, %s in %.0f ms", len(items),
                          [(j.kind, round(len(j.audio) / MODEL_RATE, 1)) for j in required],
                          1000 * (time.perf_counter() - t0))
        return [o if o is not None else item.stream.take_results() for item, o in zip(items, outcomes)]

    def _speculate(self) -> None:
        """On the executor: decode the speculative finals that are still undecoded (a final
        that took one over was decoded with the finals); their streams take the results
        with their next chunk's."""
        jobs = [j for j in self._speculative if j.hyp is None]
        self._speculative = []
        _decode(jobs)
        if _LOGGER.isEnabledFor(logging.DEBUG) and jobs:
            _LOGGER.debug("ASR speculative finals: %s", [round(len(j.audio) / MODEL_RATE, 1) for j in jobs])

    @staticmethod
    def _interims(streams: list[AsrStream]) -> None:
        """On the executor: interims of `streams` (see _choose_interims), kept by each stream
        for its next results."""
        t0 = time.perf_counter()
        interims: list[DecodeJob] = []
        for stream in streams:
            stream.queue_interim()
            interims.extend(stream.jobs)
            stream.jobs.clear()
        _decode(interims)
        if _LOGGER.isEnabledFor(logging.DEBUG) and interims:
            _LOGGER.debug("ASR interims: %d jobs for %d streams (%.1f s) in %.0f ms", len(interims), len(streams),
                          sum(len(j.audio) for j in interims) / MODEL_RATE, 1000 * (time.perf_counter() - t0))


def _choose_interims(streams: list[AsrStream], now: float, allowance: float) -> list[AsrStream]:
    """The streams that get an interim in this cycle: of those due and not behind real time,
    longest-waiting first, as many as `allowance` (estimated seconds) holds, one at least if
    the allowance is not nil."""
    if allowance <= 0:
        return []
    due = sorted({id(s): s for s in streams if s.lag <= _MAX_LAG_S and s.interim_due(now)}.values(),
                 key=lambda s: s.last_interim_at)
    chosen: list[AsrStream] = []
    spent = 0.0
    for stream in due:
        cost = stream.interim_estimate()
        if chosen and spent + cost > allowance:
            continue
        spent += cost
        chosen.append(stream)
    return chosen


def _decode(jobs: list[DecodeJob]) -> None:
    """Decode jobs of any streams, each model's together."""
    by_model: dict[int, tuple[JobRunner, list[DecodeJob]]] = {}
    for job in jobs:
        by_model.setdefault(id(job.stream.model), (job.stream.model, []))[1].append(job)
    for model, group in by_model.values():
        model.decode_jobs(group)
