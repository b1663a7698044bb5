"""Enrolled speakers: voices with names, kept in the model repository (`speakers/enrolled.json`).

The store holds each name's embedding (the unit mean of its enrolment clips' embeddings), the
speaker model that made it and the seconds of speech behind it. It is written whole to a temporary
file beside it and renamed over it, so a crash leaves the old store or the new one, never half of
one. Embeddings are voice prints: they are never logged.

A voice is an enrolled speaker's when its embedding is at least its speaker model's
`known_threshold` alike (SpeakerEncoder.known_threshold).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged.errors import EdgedError, RequestError, UnknownSpeakerError
from edged.pipelines.asr.audio import MODEL_RATE, decode_all
from edged.pipelines.speaker.encoder import SpeakerEncoder, unit

MIN_SPEECH_S = 3.0
"""Speech an enrolment needs, over all its clips."""
_FRAME = MODEL_RATE * 30 // 1000
_SPEECH_RMS = 10 ** (-45 / 20)
"""A 30 ms frame louder than -45 dBFS counts as speech (an enrolment clip is a close recording)."""
_NAME = re.compile(r"^[\w][\w .'-]{0,63}$")
STORE_PATH = Path("speakers") / "enrolled.json"
"""The store, under the model repository."""


class SpeakerStoreError(EdgedError):
    """The store cannot be read (or written); it is left as it is."""


@dataclass(frozen=True)
class Enrolled:
    """One enrolled speaker."""

    name: str
    embedding: np.ndarray
    model: str
    """The speaker model that made the embedding."""
    seconds: float
    """Speech behind the embedding."""


def check_name(name: str) -> str:
    """`name` stripped; RequestError unless it is 1 to 64 letters, digits, spaces, . ' - or _."""
    name = name.strip()
    if not _NAME.match(name):
        raise RequestError(f"Speaker name {name[:70]!r} is not allowed; use 1 to 64 letters, digits, spaces, "
                           "dots, apostrophes, hyphens or underscores, starting with a letter or digit.")
    return name


def speech_seconds(audio: np.ndarray) -> float:
    """Seconds of 30 ms frames of `audio` (16 kHz) loud enough to be speech."""
    count = len(audio) // _FRAME
    if not count:
        return 0.0
    frames = audio[:count * _FRAME].reshape(count, _FRAME)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return float(np.sum(rms > _SPEECH_RMS)) * _FRAME / MODEL_RATE


def enrolment(encoder: SpeakerEncoder, clips: list[tuple[str, bytes]],
              min_speech_s: float = MIN_SPEECH_S) -> tuple[np.ndarray, float]:
    """The embedding of a speaker's clips (name, WAV or FLAC bytes) and its seconds of speech;
    RequestError naming the clip that cannot be read or is silent, or if there is too little speech."""
    audios, total = [], 0.0
    for name, data in clips:
        try:
            audio = decode_all(data, "", 0)
        except EdgedError as exc:
            raise RequestError(f"{name}: {exc}") from None
        seconds = speech_seconds(audio)
        if seconds == 0.0:
            raise RequestError(f"{name} is silent (nothing louder than -45 dBFS); record the speaker talking.")
        audios.append(audio)
        total += seconds
    if total < min_speech_s:
        names = ", ".join(name for name, _ in clips)
        raise RequestError(f"{names} has {total:.1f} s of speech; a speaker needs at least {min_speech_s:g} s "
                           "(give longer or more clips).")
    embeddings = encoder.embed_many(audios)
    weights = np.array([len(a) for a in audios], dtype=np.float64)
    return unit((embeddings * weights[:, None]).sum(axis=0)), total


class SpeakerStore:
    """The enrolled speakers of a model repository."""

    def __init__(self, model_loc: Path) -> None:
        self.path = Path(model_loc) / STORE_PATH

    def load(self) -> dict[str, Enrolled]:
        """The enrolled speakers by name (none if there is no store); SpeakerStoreError if it is corrupt."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            speakers = {name: Enrolled(name, unit(np.asarray(entry["embedding"], dtype=np.float32)),
                                       str(entry["model"]), float(entry["seconds"]))
                        for name, entry in raw["speakers"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            kind = type(exc).__name__
            raise SpeakerStoreError(f"The speaker store {self.path} is unreadable ({kind}); nothing was changed: "
                                    "restore it from a backup or remove it to start again.") from None
        dims = {e.embedding.shape for e in speakers.values()}
        if len(dims) > 1 or any(len(shape) != 1 for shape in dims):
            raise SpeakerStoreError(f"The speaker store {self.path} holds embeddings of different shapes; "
                                    "nothing was changed: remove it to start again.")
        return speakers

    def save(self, speakers: dict[str, Enrolled]) -> None:
        """Write the store whole: to a temporary file beside it, then renamed over it."""
        body = {"version": 1, "speakers": {
            s.name: {"model": s.model, "seconds": round(s.seconds, 2),
                     "embedding": [round(float(x), 6) for x in s.embedding]} for s in speakers.values()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".enrolled-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(body, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def enrol(self, name: str, embedding: np.ndarray, model: str, seconds: float) -> None:
        """Add (or replace) a speaker."""
        speakers = self.load()
        speakers[name] = Enrolled(name, embedding, model, seconds)
        self.save(speakers)

    def remove(self, name: str) -> None:
        """Remove a speaker; UnknownSpeakerError naming the enrolled ones if there is none by that name."""
        speakers = self.load()
        if name not in speakers:
            known = ", ".join(sorted(speakers)) or "none"
            raise UnknownSpeakerError(f"No speaker {name!r} is enrolled; enrolled speakers: {known}.")
        del speakers[name]
        self.save(speakers)

    def for_model(self, model: str) -> dict[str, np.ndarray]:
        """The embeddings of the speakers enrolled with speaker model `model`, by name."""
        return {name: s.embedding for name, s in self.load().items() if s.model == model}
