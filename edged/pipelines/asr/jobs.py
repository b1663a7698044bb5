"""What a recognition request asks for (StreamConfig) and the decode jobs streams hand the model.

A job names its stream only through `JobOwner`, and the stream its model only through
`JobRunner`, so that streams, results and the model import this module, not one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

import numpy as np

from edged.pipelines.asr.endpointing import EndpointParams
from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.whisper.recogniser import Language


@dataclass(frozen=True)
class StreamConfig:
    """What one recognition request asks for."""

    encoding: str = ""
    """LINEAR_PCM, MULAW, ALAW, FLAC, or '' to read a WAV/FLAC header."""
    sample_rate: int = 0
    channels: int = 1
    """Channels of headerless audio (a WAV or FLAC header says for itself)."""
    channel: int = 0
    """The channel of the audio (from 0) this stream recognises (Riva: the first, unless each
    channel is recognised apart, in a stream of its own)."""
    interim_results: bool = False
    punctuation: bool = True
    profanity_filter: bool = False
    """Mask profane words in transcripts and words (edged.pipelines.asr.profanity)."""
    word_times: bool = False
    endpoint: EndpointParams | None = None
    """None: the model's defaults."""
    interim_interval_ms: int = 480
    max_audio_s: float = 0.0
    """Most seconds of audio accepted (0: no limit)."""
    max_held_bytes: int = 0
    """Most bytes of a FLAC stream held until its end, where it is decoded whole (0: no limit)."""
    speculative: bool = True
    """Start the final decode when the end of utterance looks likely (streaming only)."""
    max_alternatives: int = 1
    """Most transcripts a final offers (Riva's max_alternatives): its own, then the further
    hypotheses the decoder gives (Hypothesis.alternatives)."""
    boost: tuple[tuple[str, float], ...] = ()
    """Phrases to favour and their boost scores (Riva's SpeechContext). For the decoder: greedy
    decoding does not read them."""
    language: Language = field(default_factory=Language)
    """What a multilingual model writes: the language (empty: identified per utterance) and task."""
    window_samples: int = 0
    """Offline: consecutive utterances are decoded together, in windows of up to this many
    samples cut in the silences between them (edged.pipelines.asr.packing); 0: each alone."""


def offline_config(config: StreamConfig, window_samples: int = 0) -> StreamConfig:
    """The same request for a whole recording: no interims, no speculative finals; utterances
    decoded in windows of up to `window_samples` (0: each alone)."""
    return replace(config, interim_results=False, speculative=False, window_samples=window_samples)


class JobRunner(Protocol):
    """What decodes jobs (AsrModel)."""

    def decode_jobs(self, jobs: list[DecodeJob]) -> None:
        """Decode the jobs, hand each back to its stream (`JobOwner.complete`); empties `jobs`."""


class JobOwner(Protocol):
    """What a job's stream offers the model (AsrStream)."""

    @property
    def config(self) -> StreamConfig:
        """The stream's request."""

    @property
    def model(self) -> JobRunner:
        """What decodes the stream's jobs."""

    def complete(self, job: DecodeJob) -> None:
        """Take a decoded job back."""


class JobKind(str, Enum):
    """What a decode job is for."""

    INTERIM = "interim"
    """The open utterance's text so far (its window; the text before it is committed)."""
    COMMIT = "commit"
    """The part of the open utterance before an interim's window, decoded once and kept."""
    SPECULATIVE = "speculative"
    """A final decoded ahead, where the utterance's end looks likely; it becomes the final if
    the end comes there (and shows as an interim meanwhile)."""
    FINAL = "final"
    """The utterance's final text."""


@dataclass(eq=False)  # jobs are compared by identity (they hold arrays)
class DecodeJob:
    """Audio of one utterance (or its open part) to decode, and what to do with the result."""

    stream: JobOwner
    kind: JobKind
    utterance: int
    audio: np.ndarray
    start: int
    """Stream sample where `audio` starts."""
    fired_at: int
    """Stream samples processed when the job was made."""
    draft: list[int] = field(default_factory=list)
    """Tokens of the utterance's latest hypothesis (checked by the decoder, see Recogniser.decode)."""
    hyp: Hypothesis | None = None
    seconds: float = 0.0
    """Wall time of the batch that decoded it."""
    seq: int = 0
    """Order of creation within its stream (results come back in this order)."""
    speech_start: int = 0
    """Stream sample where the speech starts (about): no word starts before it."""
    parts: tuple[tuple[int, int], ...] = ()
    """Offline, a window of several utterances': [start, end) of each, in stream samples."""
    previous: DecodeJob | None = None
    """Offline, an utterance window's: the window before it, whose text is read before this
    one's (Whisper's previous-text prompt), so decoded first; dropped once this one is decoded."""
