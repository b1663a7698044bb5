"""The small state objects an AsrStream keeps: its recent audio, the pace of its chunks, the
timing of its interims and the open utterance with its text so far."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE

# Tokens at the end of an interim hypothesis that are never trusted (the word may be cut off).
_UNSTABLE_TAIL = 2


class RecentAudio:
    """The stream's 16 kHz audio that an utterance may still need, by stream sample index
    (older audio is forgotten)."""

    def __init__(self) -> None:
        self._samples = np.zeros(0, dtype=np.float32)
        self.start = 0
        """Stream sample index of the oldest sample kept."""

    @property
    def end(self) -> int:
        """Samples received so far (the stream index after the last)."""
        return self.start + len(self._samples)

    def append(self, samples: np.ndarray) -> None:
        """Add the next samples."""
        self._samples = np.concatenate([self._samples, samples])

    def span(self, start: int, end: int) -> np.ndarray:
        """A copy of stream samples [start, end)."""
        return self._samples[start - self.start:end - self.start].copy()

    def forget(self, before: int) -> None:
        """Drop the audio before stream sample `before`."""
        drop = min(len(self._samples), before - self.start)
        if drop > 0:
            self._samples = self._samples[drop:]
            self.start += drop


@dataclass
class Pace:
    """When a stream's chunks are handled, against the audio they carry."""

    now: float = 0.0
    """Clock (the batcher's: time.monotonic) of the chunk being handled."""
    chunk_s: float = 0.0
    """Audio seconds of the last chunk (the longest wait for the next one in real time)."""
    offset: float = math.inf
    """Least (clock - audio seconds received) of any chunk: the stream's most punctual one."""
    lag: float = 0.0
    """Seconds this stream is handled later than real time (vs its most punctual chunk)."""

    def chunk(self, added: int, received: int) -> None:
        """The chunk handled at `now` added `added` samples, `received` in all."""
        if added:
            self.chunk_s = added / MODEL_RATE
            offset = self.now - received / MODEL_RATE
            self.offset = min(self.offset, offset)
            self.lag = offset - self.offset


@dataclass
class InterimTiming:
    """When the open utterance's interims were made and what they cost."""

    last_at: float = 0.0
    """Clock of the utterance's last interim result (or of its start)."""
    queued_at: int = 0
    """Samples received when the last interim was queued (the next needs new audio)."""
    cost_s: float = 0.0
    """Seconds the last interim's decode took, for ..."""
    cost_samples: int = 0
    """... this many samples of audio (0: none decoded yet)."""


@dataclass
class Utterance:
    """The open utterance (between utterances, the last one): its audio and its text so far."""

    number: int = 0
    start: int = 0
    """Stream sample where its audio starts (some before its speech: see stream._PREROLL)."""
    speech_start: int = 0
    """Stream sample where its speech starts (about): no word starts before it."""
    window_start: int = 0
    """Stream sample where interims start decoding (the text before it is committed)."""
    window_tokens: list[int] = field(default_factory=list)
    """Tokens of the window's last interim."""
    committed: list[int] = field(default_factory=list)
    """Tokens of the audio before the window, decoded once and kept (COMMIT jobs)."""
    committed_logprobs: list[float] = field(default_factory=list)
    draft: list[int] = field(default_factory=list)
    """Tokens of the latest hypothesis (interim or speculative)."""
    whole: list[int] = field(default_factory=list)
    """Tokens of the latest whole decode (a speculative final's)."""
    stable: list[int] = field(default_factory=list)
    """The start of the interims' text that is not expected to change."""
    previous: list[int] = field(default_factory=list)
    """Tokens of the last interim (what `stable` is checked against)."""

    def follow(self, tokens: list[int]) -> None:
        """Update the stable prefix from a new interim hypothesis."""
        common = 0
        for a, b in zip(self.previous, tokens):
            if a != b:
                break
            common += 1
        self.stable = tokens[:max(len(self.stable), min(common, len(tokens) - _UNSTABLE_TAIL))]
        self.previous = tokens
