"""A deterministic `StreamModel` for scheduler tests: speech is a script of words, each word a
burst of audio at its own level, and the "recogniser" reads the words back from the levels.

The voice activity is the audio's loudness (a window with a sample at or above `SPEECH_LEVEL`
is speech); the decoder reads each run of loud samples at least `MIN_WORD_S` long as the word
of its level. So what a decode says depends only on the audio it was given, as with a real
model, and a test knows exactly what each decode should say. Decodes take the seconds their
`cost` says (no wall clock), and every decode is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.endpointing import WINDOW, EndpointParams, VadState
from edged.pipelines.asr.jobs import DecodeJob, JobKind, StreamConfig
from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.resultmaker import ResultMaker
from edged.pipelines.asr.stream import AsrStream
from edged.pipelines.asr.tokenizer import Tokenizer

WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SPEECH_LEVEL = 0.02
"""Samples at or above this (absolute) are speech."""
_STEP = 0.05
"""Word k (from 0) is a burst at level (k + 1) * _STEP."""
MIN_WORD_S = 0.05
"""A loud run shorter than this is no word (e.g. a word cut at the audio's edge)."""
_FIRST_WORD_ID = 259
"""Token ids below this are Moonshine's special and byte tokens (see Tokenizer)."""
_TOKENIZER = Tokenizer([b""] * _FIRST_WORD_ID + ["\u2581".encode() + w.encode() for w in WORDS], set())


@dataclass(frozen=True)
class Decode:
    """One decode the fake model ran: the job's stream, its kind when decoded, its audio span
    (seconds) and text."""

    stream: object
    kind: JobKind
    start_s: float
    end_s: float
    text: str


def speech(*parts: str | float, gap_s: float = 0.06, word_s: float = 0.3) -> np.ndarray:
    """Float32 audio at MODEL_RATE of words (names from WORDS, `word_s` each, `gap_s` apart)
    and silences (a number: its seconds)."""
    pieces = []
    for part in parts:
        if isinstance(part, str):
            level = (WORDS.index(part) + 1) * _STEP
            pieces += [np.full(int(word_s * MODEL_RATE), level, dtype=np.float32),
                       np.zeros(int(gap_s * MODEL_RATE), dtype=np.float32)]
        else:
            pieces.append(np.zeros(int(part * MODEL_RATE), dtype=np.float32))
    return np.concatenate(pieces)


def pcm(audio: np.ndarray) -> bytes:
    """16-bit little-endian PCM bytes of float32 samples (what a LINEAR_PCM client sends)."""
    return np.round(audio * 32767).astype("<i2").tobytes()


def words_in(audio: np.ndarray) -> list[str]:
    """The words the fake decoder reads in `audio`: each loud run of MIN_WORD_S or more."""
    loud = np.abs(audio) >= SPEECH_LEVEL
    edges = np.flatnonzero(np.diff(np.concatenate([[False], loud, [False]]).astype(np.int8)))
    words = []
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start >= MIN_WORD_S * MODEL_RATE:
            level = float(np.median(np.abs(audio[start:end])))
            words.append(WORDS[min(len(WORDS) - 1, max(0, round(level / _STEP) - 1))])
    return words


class LoudnessVad:
    """Voice activity from loudness: 1.0 for a window with a sample at or above SPEECH_LEVEL."""

    def new_state(self) -> VadState:
        """Fresh state for one stream (only its `pending` samples are used)."""
        return VadState()

    def probabilities(self, state: VadState, audio: np.ndarray) -> np.ndarray:
        """Speech probability of every whole window `audio` completes (the rest is kept)."""
        state.pending = np.concatenate([state.pending, audio])
        count = len(state.pending) // WINDOW
        windows = state.pending[:count * WINDOW].reshape(count, WINDOW)
        state.pending = state.pending[count * WINDOW:]
        return (np.abs(windows).max(axis=1, initial=0.0) >= SPEECH_LEVEL).astype(np.float32)


class FakeModel:
    """A StreamModel whose decodes read words from audio levels (see the module's docstring)."""

    def __init__(self, endpoint: EndpointParams | None = None, cost_per_s: float = 0.05) -> None:
        self.vad = LoudnessVad()
        self.endpoint = endpoint or EndpointParams()
        self.results = ResultMaker(_TOKENIZER, language_code="en-US")
        self.cost_per_s = cost_per_s
        """Seconds a decode takes per second of audio (what `job.seconds` says)."""
        self.seconds_per_sample = cost_per_s / MODEL_RATE
        self.decodes: list[Decode] = []
        self.failure: Exception | None = None
        """Raised by the next `decode_jobs` call that has something to decode (once)."""

    def start_stream(self, config: StreamConfig) -> AsrStream:
        """A new stream of this model."""
        return AsrStream(self, config)

    def decode_jobs(self, jobs: list[DecodeJob]) -> None:
        """Decode the jobs and hand each back to its stream; empties `jobs`."""
        todo, ready = [j for j in jobs if j.hyp is None], [j for j in jobs if j.hyp is not None]
        jobs.clear()
        if todo and self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        for job in ready:
            job.stream.complete(job)
        for job in todo:
            words = words_in(job.audio)
            tokens = [_FIRST_WORD_ID + WORDS.index(w) for w in words]
            job.hyp = Hypothesis(tokens, [0.0] * len(tokens), len(job.audio) // 1280, "eos")
            job.seconds = self.cost_per_s * len(job.audio) / MODEL_RATE
            self.decodes.append(Decode(job.stream, job.kind, job.start / MODEL_RATE, (job.start + len(job.audio)) / MODEL_RATE,
                                       " ".join(words)))
            job.stream.complete(job)

    def decoded(self, kind: JobKind, stream: object = None) -> list[str]:
        """The texts of the decodes of jobs of `kind` (as they were when decoded), of `stream`
        (default: of any)."""
        return [d.text for d in self.decodes if d.kind is kind and stream in (None, d.stream)]
