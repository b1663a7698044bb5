"""Voice activity (Silero VAD) and endpointing with Riva's EndpointingConfig semantics.

The VAD gives a speech probability for every 32 ms window of 16 kHz audio. The endpointer
averages it over sliding histories: an utterance starts when the mean over the last
`start_history_ms` reaches `start_threshold`, and ends when the mean over the last
`stop_history_ms` falls below `stop_threshold`. The shorter end-of-utterance pair
(`stop_history_eou_ms`, `stop_threshold_eou`; or that long without a speech window) fires first
and marks the likely end, so the final decode can start before the endpoint confirms it. An utterance of at least `pause_split_ms`
ends at such a likely end when the speech goes on after it (the final decode has started
already), and one longer than `max_utterance_ms` is split at its quietest window (chosen a
second ahead, so that the final decode can start early there too).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edged.backends import Session
from edged.errors import ModelLoadError

_LOGGER = logging.getLogger(__name__)

WINDOW = 512
"""Samples per VAD window at 16 kHz (32 ms)."""
WINDOW_MS = WINDOW * 1000 // 16000
_CONTEXT = 64


@dataclass(frozen=True)
class EndpointParams:
    """Endpointing settings (Riva's EndpointingConfig, plus the forced-split length)."""

    start_history_ms: int = 200
    start_threshold: float = 0.5
    stop_history_ms: int = 700
    stop_threshold: float = 0.35
    stop_history_eou_ms: int = 300
    stop_threshold_eou: float = 0.35
    max_utterance_ms: int = 8000
    pause_split_ms: int = 4000
    """An utterance at least this long ends at a likely end (eou) when speech resumes (0: never)."""
    speech_threshold: float = 0.5
    """A window counts as speech (for trimming and splits) at this probability or above."""

    @classmethod
    def from_manifest(cls, params: dict[str, Any]) -> EndpointParams:
        """Defaults from a model manifest's `endpointing` parameters (unknown keys ignored)."""
        known = {k: type(getattr(cls(), k))(v) for k, v in params.items() if hasattr(cls(), k)}
        return cls(**known)

    def override(self, **given: float) -> EndpointParams:
        """These settings with the given non-zero values replacing their own (0 = keep)."""
        return replace(self, **{k: type(getattr(self, k))(v) for k, v in given.items() if v})


class Vad:
    """Silero VAD over a stream: 512-sample windows with 64 samples of context and LSTM state."""

    def __init__(self, session: Session) -> None:
        names = {i.name for i in session.inputs}
        if not {"input", "state", "sr"} <= names:
            raise ModelLoadError("The VAD network lacks Silero's inputs (input, state, sr); redeploy silero-vad.")
        self.session = session

    def new_state(self) -> VadState:
        """Fresh state for one stream."""
        return VadState()

    def probabilities(self, state: VadState, audio: np.ndarray) -> np.ndarray:
        """Speech probability of every whole window `audio` completes (the rest is kept)."""
        state.pending = np.concatenate([state.pending, audio]) if len(state.pending) else audio
        count = len(state.pending) // WINDOW
        probs = np.empty(count, dtype=np.float32)
        for i in range(count):
            window = state.pending[i * WINDOW:(i + 1) * WINDOW]
            out = self.session.run({
                "input": np.concatenate([state.context, window])[None, :].astype(np.float32),
                "state": state.lstm, "sr": np.array(16000, dtype=np.int64)})
            state.lstm = out["stateN"]
            state.context = window[-_CONTEXT:]
            probs[i] = float(out["output"].reshape(-1)[0])
        state.pending = state.pending[count * WINDOW:]
        return probs


class VadState:
    """One stream's VAD memory."""

    def __init__(self) -> None:
        self.lstm = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(_CONTEXT, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class Event:
    """Something the endpointer saw: 'start', 'eou', 'end', 'pause', 'presplit' or 'split'."""

    kind: str
    window: int
    """For start: first window of the utterance; for eou/end/pause: window after its last
    speech (the next utterance of a pause starts at `Endpointer.start`); for presplit and
    split: where the forced split is (presplit comes about a second before it)."""


class Endpointer:
    """Turns per-window speech probabilities into utterance start, likely end, end and split."""

    def __init__(self, params: EndpointParams) -> None:
        self.params = params
        self._start_n = max(1, params.start_history_ms // WINDOW_MS)
        self._stop_n = max(1, params.stop_history_ms // WINDOW_MS)
        self._eou_n = max(1, min(self._stop_n, params.stop_history_eou_ms // WINDOW_MS))
        self._max_n = max(self._stop_n * 2, params.max_utterance_ms // WINDOW_MS)
        self._pause_n = params.pause_split_ms // WINDOW_MS if params.pause_split_ms > 0 else None
        self._presplit_n = min(self._max_n // 8, 1000 // WINDOW_MS)
        self._history: deque[float] = deque(maxlen=max(self._start_n, self._stop_n))
        self.window = 0
        """Windows seen so far."""
        self.in_speech = False
        self.start = 0
        self.last_speech = 0
        """Window after the last speech window of the open utterance."""
        self._eou_sent = False
        self._split_at: int | None = None
        """Where the open utterance will be split if it reaches max_utterance_ms (once known)."""
        self._probs: list[float] = []
        """Probabilities of the open utterance's windows (for the quietest-point split)."""

    def update(self, prob: float) -> list[Event]:
        """Feed one window's probability; returns what happened at it."""
        events: list[Event] = []
        self._history.append(prob)
        self.window += 1
        recent = list(self._history)
        if not self.in_speech:
            if len(recent) >= self._start_n and np.mean(recent[-self._start_n:]) >= self.params.start_threshold:
                self.in_speech, self._eou_sent, self._split_at = True, False, None
                self.start = self.window - self._start_n
                self._probs = recent[-self._start_n:]
                self.last_speech = self.window
                events.append(Event("start", self.start))
            return events
        self._probs.append(prob)
        if prob >= self.params.speech_threshold:
            if (self._eou_sent and self._pause_n is not None
                    and self.last_speech - self.start >= self._pause_n):
                # Speech goes on after a likely end: end the long utterance there.
                events.append(Event("pause", self.last_speech))
                self._probs = self._probs[self.window - 1 - self.start:]
                self.start, self._split_at = self.window - 1, None
            self.last_speech, self._eou_sent = self.window, False
        # Only the utterance's own windows count towards its end.
        length = self.window - self.start
        if length >= self._stop_n and np.mean(recent[-self._stop_n:]) < self.params.stop_threshold:
            self.in_speech = False
            events.append(Event("end", self.last_speech))
        elif (not self._eou_sent and self.last_speech < self.window and length >= self._eou_n
              and (np.mean(recent[-self._eou_n:]) < self.params.stop_threshold_eou
                   or self.window - self.last_speech >= self._eou_n)):
            self._eou_sent = True
            events.append(Event("eou", self.last_speech))
        elif length >= self._max_n - self._presplit_n and self._split_at is None:
            # Where a forced split will be, a little ahead, so that its final can start early.
            self._split_at = self.quietest(self.start + self._max_n // 2, self.window)
            events.append(Event("presplit", self._split_at))
        elif length >= self._max_n:
            split = self._split_at if self._split_at is not None else self.window - 1
            events.append(Event("split", split))
            self._probs = self._probs[split - self.start:]
            self.start, self._split_at = split, None
            self.last_speech = max(self.last_speech, split)
        return events

    def quietest(self, first: int, end: int) -> int:
        """Window index of the quietest point of the open utterance in windows [first, end)."""
        first = max(first, self.start)
        probs = np.asarray(self._probs[first - self.start:max(first + 1, end) - self.start])
        # Smooth over ~100 ms so a single dip inside a word does not win.
        smooth = np.convolve(probs, np.ones(3) / 3, mode="same")
        return first + int(np.argmin(smooth))
