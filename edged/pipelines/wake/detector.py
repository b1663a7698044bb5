"""Wake-word detection on one stream of 16 kHz 16-bit mono audio.

`WakeWordModel` is a deployed microWakeWord model (its TFLite file and settings, loaded once);
`WakeListener` is one client's listening: one feature front end shared by the wake words it
listens for, and an interpreter per wake word (each holds its own streaming state).

As microWakeWord runs: a feature vector every 10 ms (30 ms windows), the model invoked every
`stride` features (3: 30 ms of audio), its probabilities averaged over the last
`sliding_window_size` invocations; a wake word fires where that mean exceeds its
`probability_cutoff`. A wake word that fired is then quiet for `refractory_s`, so one utterance
of it is one detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.pipelines.wake.runtime import microwakeword
from edged.rmir.manifest import Manifest

SAMPLE_RATE = 16000
FEATURE_STEP_MS = 10
"""The front end's step: one feature vector per 10 ms of audio."""
FEATURE_WINDOW_MS = 30
REFRACTORY_S = 2.0
"""How long a wake word that fired stays quiet (the same phrase still sounding)."""


@dataclass(frozen=True)
class WakeWordModel:
    """A deployed microWakeWord model: its name, phrase, files and detection settings."""

    name: str
    phrase: str
    """What is said ("Okay Nabu")."""
    config_path: Path
    """The model's JSON (naming its .tflite beside it)."""
    probability_cutoff: float
    sliding_window_size: int
    languages: tuple[str, ...] = ()

    @classmethod
    def from_deployed(cls, name: str, path: Path, manifest: Manifest) -> WakeWordModel:
        """The model deployed in folder `path` (loads one interpreter, so a broken file fails here)."""
        p = manifest.parameters
        model = cls(name=name, phrase=str(p["wake_word"]), config_path=path / str(p["config_file"]),
                    probability_cutoff=float(p["probability_cutoff"]),
                    sliding_window_size=int(p["sliding_window_size"]),
                    languages=tuple(str(x) for x in p.get("trained_languages", ())))
        model.interpreter().close()
        return model

    def interpreter(self) -> Any:
        """A fresh pymicro-wakeword MicroWakeWord (its own streaming state) on this model's file."""
        return microwakeword().MicroWakeWord.from_config(self.config_path)


@dataclass(frozen=True)
class Detection:
    """A wake word heard: which, where in the stream, how sure."""

    name: str
    phrase: str
    timestamp_ms: int
    """End of the audio that fired it, from the stream's start."""
    probability: float
    """The mean probability over the sliding window."""


@dataclass
class _Word:
    """One wake word's state in a listener."""

    model: WakeWordModel
    interpreter: Any
    """pymicro-wakeword's MicroWakeWord: it gathers `stride` features, invokes, keeps the window."""
    invocations_needed: int
    """Features until its window is full: stride x sliding_window_size."""
    fed: int = 0
    quiet_until_ms: int = -1


class WakeListener:
    """One stream listening for some wake words: `accept(pcm)` gives the detections it holds."""

    def __init__(self, models: list[WakeWordModel], refractory_s: float = REFRACTORY_S,
                 keep_trace: bool = False) -> None:
        mww = microwakeword()
        self._features = mww.MicroWakeWordFeatures()
        self._words: list[_Word] = []
        for model in models:
            interpreter = model.interpreter()
            self._words.append(_Word(model, interpreter, int(interpreter.stride) * model.sliding_window_size))
        self._refractory_ms = int(refractory_s * 1000)
        self.features_seen = 0
        self.trace: list[tuple[str, int, float]] | None = [] if keep_trace else None
        """With keep_trace: (name, timestamp_ms, mean probability) for every invocation."""

    @property
    def audio_ms(self) -> int:
        """Audio consumed so far, in ms (up to the last feature's window end)."""
        return self.features_seen * FEATURE_STEP_MS + (FEATURE_WINDOW_MS - FEATURE_STEP_MS)

    def accept(self, pcm: bytes) -> list[Detection]:
        """The next 16 kHz 16-bit mono audio (any length); the wake words it completes."""
        found: list[Detection] = []
        for features in self._features.process_streaming(pcm):
            self.features_seen += 1
            now_ms = self.audio_ms
            for word in self._words:
                probability = word.interpreter.process_streaming_prob(features)
                word.fed += 1
                # Between invocations (and until the window is full) the package answers 0.0.
                if word.fed % word.interpreter.stride or word.fed < word.invocations_needed:
                    continue
                if self.trace is not None:
                    self.trace.append((word.model.name, now_ms, probability))
                if probability > word.model.probability_cutoff and now_ms >= word.quiet_until_ms:
                    word.quiet_until_ms = now_ms + self._refractory_ms
                    found.append(Detection(word.model.name, word.model.phrase, now_ms, probability))
        return found

    def close(self) -> None:
        """Free the interpreters."""
        for word in self._words:
            word.interpreter.close()
        self._words = []

