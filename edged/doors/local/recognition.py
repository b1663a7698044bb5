"""Recognition of the daemon's microphone: an ASR session, the clock that dates its results on the
wall, and the task that hands each result on as soon as it is decoded.

Always-on dictation keeps one open while the device is open; wake-word commands open one per
command (`edged.doors.local.wake_commands`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.results import Result
from edged.service.asr import AsrSession, RecognitionRequest

if TYPE_CHECKING:
    from edged.service.asr import AsrService

LOCAL_REQUEST = RecognitionRequest(word_times=True)
"""What the microphone's recognition asks for: the first ASR model, punctuation, word times (and
speaker labels where a speaker model is deployed)."""
_MARKS = 64


@dataclass
class Clock:
    """Maps stream samples to Unix time from the read times of recent blocks.

    A block is read no earlier than its last sample was captured, so the earliest anchor over
    recent blocks is the best estimate (and follows the device's clock drift).
    """

    marks: deque[float] = field(default_factory=lambda: deque(maxlen=_MARKS))

    def mark(self, samples: int, wall: float) -> None:
        self.marks.append(wall - samples / MODEL_RATE)

    def wall(self, seconds: float) -> float:
        return (min(self.marks) if self.marks else time.time()) + seconds


OnResult = Callable[[Result, Clock], object]


class MicRecognition:
    """One ASR session on the microphone's 16 kHz float samples; `on_result` gets every result."""

    def __init__(self, asr: AsrService, on_result: OnResult) -> None:
        self._asr = asr
        self._on_result = on_result
        self._stack = AsyncExitStack()
        self._session: AsrSession | None = None
        self._publisher: asyncio.Task[None] | None = None
        self.clock = Clock()

    async def open(self) -> None:
        """Start the session (ModelStateError while the ASR model is not ready)."""
        request = replace(LOCAL_REQUEST, diarization=bool(self._asr.speaker_models()))
        self._session = await self._stack.enter_async_context(self._asr.session(request, local=True))
        self._publisher = asyncio.get_running_loop().create_task(self._publish(self._session))
        self._stack.callback(self._publisher.cancel)

    async def feed(self, block: np.ndarray, interim: bool) -> None:
        """The next samples; `interim`: make interim results (someone follows them)."""
        assert self._session is not None, "feed before open"
        self.clock.mark(self._session.samples + len(block), time.time())
        self._session.set_interim_results(interim)
        await self._session.feed_samples(block)

    @property
    def in_speech(self) -> bool:
        """Whether someone is speaking now."""
        return self._session is not None and self._session.in_speech

    @property
    def seconds(self) -> float:
        """Audio fed so far."""
        return self._session.seconds if self._session is not None else 0.0

    async def close(self) -> None:
        """End of audio: the last results are handed on, then the session ends."""
        try:
            if self._session is not None:
                await self._session.finish()
                if self._publisher is not None:
                    await self._publisher
        finally:
            self._session = None
            await self._stack.aclose()

    async def _publish(self, session: AsrSession) -> None:
        async for transcript in session.results():
            self._on_result(transcript.result, self.clock)
