"""Runs the recognition work of every open stream on the inference executor, batched.

Each stream hands in one chunk at a time and waits for its results, so the queue holds at
most one item per stream (bounded by the server's stream limit). The loop takes whatever is
queued and runs one cycle of it: the streams' cheap steps (audio decoding, VAD) and the decodes
that finals need, after which every chunk is answered; then the speculative finals the chunks
started (decodes that may become finals), in a call of their own. Interims are optional and run
on a lane of their own, side by side with that loop (or in turns with it where the model has one
lane): a slice at a time, for the streams that have waited longest and are not behind real time,
each reaching its stream with the results of its next chunk. So no chunk waits for another
stream's interim, and interims thin out, rather than finals slowing, when the CPU is short.
Decodes of several streams run as batches where their lengths allow (see AsrModel.decode_jobs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.jobs import DecodeJob, JobKind, JobRunner
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.stream import AsrStream

_LOGGER = logging.getLogger(__name__)

_MAX_ITEMS_PER_CYCLE = 32
# Most (estimated) seconds of interim decoding in one call: streams due meanwhile go next.
_SLICE_S = 0.15
# A stream handled this many seconds later than real time gets no interims until it catches up.
_MAX_LAG_S = 0.3
# Offline recognition feeds a recording this many bytes at a time (about 65 s of 16 kHz 16-bit
# audio), decoding each slice's finals before the next: a long recording's segments are still
# decoded in batches, and memory stays bounded. Measured on a 20 MB recording (daemon, default
# models, 2 cores): peak RSS above idle 4 MiB slices +340 MB, 2 MiB +240, 1 MiB +175; 1 MiB
# slices took about 10 % longer (smaller batches, the lanes meet at each slice's end).
_OFFLINE_SLICE_BYTES = 2 * 1024 * 1024


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
    taken: list[Result] = field(default_factory=list)
    """Results taken while an offline recording was fed (see _feed_offline), answered first."""


class AsrBatcher:
    """One consumer task feeding all streams' work to the inference executor in batches."""

    def __init__(self, run: Callable[..., Awaitable[Any]], run_interims: Callable[..., Awaitable[Any]],
                 max_queue: int = 256, lanes: int = 1, clock: Callable[[], float] = time.monotonic,
                 release_memory: Callable[[], None] = lambda: None) -> None:
        """`run(fn, *args)` runs blocking `fn` on the inference executor and returns its result;
        `run_interims` likewise on the thread interims run on (a pool of one thread, apart from the
        inference executor). With one lane (`lanes`: the calls of the model that may run at once,
        see edged.pipelines.lanes) finals and interims take turns; with more they run side by side.
        `clock`: seconds, for when chunks are handled and interims are due (tests give their own).
        `release_memory`: gives the allocator's free memory back, between an offline recording's
        slices (see edged.service.memory)."""
        self._run_inference = run
        self._clock = clock
        self._run_interims = run_interims
        self._release_memory = release_memory
        self._turns = asyncio.Lock() if lanes < 2 else None
        """Taken by each call when finals and interims take turns on one lane."""
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._interim_task: asyncio.Task[None] | None = None
        self._speculative: list[DecodeJob] = []
        """Speculative final decodes (JobKind.SPECULATIVE) the last cycle's feeding queued."""
        self._active: dict[int, AsrStream] = {}
        """Streams (not offline) fed since they started and not finished: interims are theirs."""
        self._wake = asyncio.Event()

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="edged-asr-batcher")
        if self._interim_task is None or self._interim_task.done():
            self._interim_task = loop.create_task(self._run_interim_lane(), name="edged-asr-interims")

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

    def close(self, stream: AsrStream) -> None:
        """A stream's session ended (finished or not: a client may vanish): no more interims."""
        stream.finished = True
        self._active.pop(id(stream), None)

    async def _submit(self, stream: AsrStream, data: bytes | np.ndarray | None, offline: bool,
                      end_utterance: bool = False) -> list[Result]:
        self._ensure_running()
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(stream, data, offline, future, end_utterance))
        return await future

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < _MAX_ITEMS_PER_CYCLE:
                items.append(self._queue.get_nowait())
            try:
                outcomes = await self._call(self._run_inference, self._required, items)
                # Every item is answered at once: a stream's next chunk is fed as soon as this
                # cycle ends, whatever other streams wait for.
                self._answer(list(zip(items, outcomes)))
                for item, outcome in zip(items, outcomes):
                    if item.offline or item.data is None or item.stream.finished or outcome is not None:
                        self._active.pop(id(item.stream), None)
                    else:
                        self._active[id(item.stream)] = item.stream
                self._wake.set()
                if self._speculative:
                    _deliver(await self._call(self._run_inference, self._speculate))
            except Exception as exc:  # a bug in a cycle must not end the loop for everyone
                _LOGGER.exception("ASR batch failed")
                self._answer([(item, exc) for item in items])

    async def _run_interim_lane(self) -> None:
        """Interims, side by side with the finals: the longest-waiting due streams' first, a
        slice at a time; each reaches its stream with its next results."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while chosen := _choose_interims(list(self._active.values()), self._clock()):
                    await self._call(self._run_interims, self._interims, chosen)
                    _deliver(chosen)
            except Exception:  # a bug must not end interims for everyone
                _LOGGER.exception("ASR interims failed")

    async def _call(self, run: Callable[..., Awaitable[Any]], fn: Callable[..., Any], *args: Any) -> Any:
        """`run(fn, *args)`, in turn with the other calls where there is one lane."""
        if self._turns is None:
            return await run(fn, *args)
        async with self._turns:
            return await run(fn, *args)

    @staticmethod
    def _answer(outcomes: list[tuple[_Item, BaseException | None]]) -> None:
        """On the loop: each item's results (taken here, so that a stream's results, these and
        those decoded between chunks, leave in the order they were taken) or its error. A
        stream with a listener gets its results through it; the others with their answer."""
        for item, outcome in outcomes:
            results = [] if outcome is not None else item.taken + item.stream.take_results()
            if results and item.stream.listener is not None:
                item.stream.listener(results)
                results = []
            if item.future.done():  # the client went away meanwhile (or was answered)
                continue
            if outcome is not None:
                item.future.set_exception(outcome)
            else:
                item.future.set_result(results)

    def _required(self, items: list[_Item]) -> list[BaseException | None]:
        """On the executor: feed every item and decode what it needs (finals); each item's error."""
        now = self._clock()
        t0 = time.perf_counter()
        outcomes: list[BaseException | None] = []
        required: list[DecodeJob] = []
        for item in items:
            stream = item.stream
            with stream.lock:  # the interim lane may be queueing or completing its interim
                try:
                    if item.offline and isinstance(item.data, bytes):
                        item.taken = _feed_offline(stream, item.data, now, self._release_memory)
                    elif item.data is not None:
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
                required.extend(j for j in stream.jobs if j.kind is not JobKind.SPECULATIVE)
                self._speculative.extend(j for j in stream.jobs if j.kind is JobKind.SPECULATIVE)
                stream.jobs.clear()
        _decode(required)
        if _LOGGER.isEnabledFor(logging.DEBUG) and required:
            _LOGGER.debug("ASR cycle: %d items, %s in %.0f ms", len(items),
                          [(j.kind, round(len(j.audio) / MODEL_RATE, 1)) for j in required],
                          1000 * (time.perf_counter() - t0))
        return outcomes

    def _speculate(self) -> list[AsrStream]:
        """On the executor: decode the speculative finals that are still undecoded (a final
        that took one over was decoded with the finals); returns their streams."""
        jobs = [j for j in self._speculative if j.hyp is None]
        self._speculative = []
        _decode(jobs)
        if _LOGGER.isEnabledFor(logging.DEBUG) and jobs:
            _LOGGER.debug("ASR speculative finals: %s", [round(len(j.audio) / MODEL_RATE, 1) for j in jobs])
        return list({id(j.stream): j.stream for j in jobs if isinstance(j.stream, AsrStream)}.values())

    def _interims(self, streams: list[AsrStream]) -> None:
        """On the executor: interims of `streams` (see _choose_interims), kept by each stream
        for its next results."""
        t0 = time.perf_counter()
        interims: list[DecodeJob] = []
        for stream in streams:
            with stream.lock:
                if stream.interim_due(self._clock()):  # still (its chunk may have ended the utterance)
                    stream.queue_interim()
                    interims.extend(stream.jobs)
                    stream.jobs.clear()
        _decode(interims)
        if _LOGGER.isEnabledFor(logging.DEBUG) and interims:
            _LOGGER.debug("ASR interims: %d jobs for %d streams (%.1f s) in %.0f ms", len(interims), len(streams),
                          sum(len(j.audio) for j in interims) / MODEL_RATE, 1000 * (time.perf_counter() - t0))


def _choose_interims(streams: list[AsrStream], now: float) -> list[AsrStream]:
    """The streams whose interims to decode next: of those due and not behind real time,
    longest-waiting first, as many as fit in one slice (estimated; one at least)."""
    due = sorted((s for s in streams if s.lag <= _MAX_LAG_S and s.interim_due(now)), key=lambda s: s.last_interim_at)
    chosen: list[AsrStream] = []
    spent = 0.0
    for stream in due:
        cost = stream.interim_estimate()
        if chosen and spent + cost > _SLICE_S:
            continue
        spent += cost
        chosen.append(stream)
    return chosen


def _deliver(streams: list[AsrStream]) -> None:
    """Hand the results decoded between chunks to the streams' listeners at once (on the loop)."""
    for stream in streams:
        if stream.listener is not None and not stream.finished:
            results = stream.take_results()
            if results:
                stream.listener(results)


def _feed_offline(stream: AsrStream, data: bytes, now: float,
                  release_memory: Callable[[], None]) -> list[Result]:
    """Feed a whole recording a slice at a time, decoding the finals each slice completes and
    taking their results (so the decoded jobs, which hold their audio, go at once), then giving
    the memory the slice freed back (`release_memory`): memory stays bounded by the slice (and
    the longest utterance), whatever the recording's length. Returns the results taken; the
    last slice's finals are left queued, as for any item."""
    taken: list[Result] = []
    for start in range(0, len(data), _OFFLINE_SLICE_BYTES):
        stream.feed(data[start:start + _OFFLINE_SLICE_BYTES], now)
        if start + _OFFLINE_SLICE_BYTES < len(data):
            jobs = list(stream.jobs)
            stream.jobs.clear()
            _decode(jobs)
            taken += stream.take_results()
            release_memory()
    return taken


def _decode(jobs: list[DecodeJob]) -> None:
    """Decode jobs of any streams, each model's together."""
    by_model: dict[int, tuple[JobRunner, list[DecodeJob]]] = {}
    for job in jobs:
        by_model.setdefault(id(job.stream.model), (job.stream.model, []))[1].append(job)
    for model, group in by_model.values():
        model.decode_jobs(group)
