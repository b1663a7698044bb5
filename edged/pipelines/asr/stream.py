"""One client's recognition stream: audio in, VAD endpointing, decode jobs out, results back.

A stream does the cheap work itself (decoding the audio, VAD) and queues decode jobs; the model
runs the jobs of many streams together (`AsrModel.decode_jobs`) and hands each stream its
hypotheses. `accept`/`finish` do both steps for one stream, for callers without a batcher.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from edged.errors import RequestError
from edged.pipelines.asr.audio import TARGET_RATE, AudioDecoder
from edged.pipelines.asr.endpointing import WINDOW, Endpointer, EndpointParams, Event
from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.results import Result

if TYPE_CHECKING:
    from edged.pipelines.asr.model import AsrModel

_LOGGER = logging.getLogger(__name__)

_PREROLL = int(0.1 * TARGET_RATE)
_TAIL_PAD = int(0.2 * TARGET_RATE)
_MIN_INTERIM = int(0.3 * TARGET_RATE)
# Tokens at the end of an interim hypothesis that are never trusted (the word may be cut off).
_UNSTABLE_TAIL = 2


@dataclass(frozen=True)
class StreamConfig:
    """What one recognition request asks for."""

    encoding: str = ""
    """LINEAR_PCM, MULAW, ALAW, FLAC, or '' to read a WAV/FLAC header."""
    sample_rate: int = 0
    channels: int = 1
    interim_results: bool = False
    punctuation: bool = True
    word_times: bool = False
    endpoint: EndpointParams | None = None
    """None: the model's defaults."""
    interim_interval_ms: int = 480
    max_audio_s: float = 0.0
    """Most seconds of audio accepted (0: no limit)."""
    speculative: bool = True
    """Start the final decode when the end of utterance looks likely (streaming only)."""


def offline_config(config: StreamConfig) -> StreamConfig:
    """The same request for a whole recording: no interims, no speculative finals."""
    return replace(config, interim_results=False, speculative=False)


@dataclass
class DecodeJob:
    """Audio of one utterance (or its open part) to decode, and what to do with the result."""

    stream: AsrStream
    kind: str
    """'interim', 'eou' (speculative final) or 'final'."""
    utterance: int
    audio: np.ndarray
    start: int
    """Stream sample where `audio` starts."""
    fired_at: int
    """Stream samples processed when the job was made."""
    prefix: list[int] = field(default_factory=list)
    hyp: Hypothesis | None = None
    seconds: float = 0.0
    """Wall time of the batch that decoded it."""
    seq: int = 0
    """Order of creation within its stream (results come back in this order)."""


class AsrStream:
    """Recognition state of one client stream (audio format, VAD, open utterance, results)."""

    def __init__(self, model: AsrModel, config: StreamConfig) -> None:
        self.model = model
        self.config = config
        self._audio_in = AudioDecoder(config.encoding, config.sample_rate, config.channels)
        self._vad = model.vad.new_state()
        self._endpointer = Endpointer(config.endpoint or model.endpoint)
        self._audio = np.zeros(0, dtype=np.float32)
        self._base = 0
        """Stream sample index of `_audio[0]`."""
        self._utterance = 0
        self._utt_start = 0
        self._last_interim = 0
        self._interim_cost = 0.0
        self._prev_tokens: list[int] = []
        self._stable: list[int] = []
        self._speculated: DecodeJob | None = None
        self.jobs: list[DecodeJob] = []
        """Decode jobs waiting for `AsrModel.decode_jobs`."""
        self._done: list[DecodeJob] = []
        self._seq = 0
        self.finished = False

    @property
    def samples(self) -> int:
        """16 kHz samples received so far."""
        return self._base + len(self._audio)

    @property
    def in_speech(self) -> bool:
        """Whether the endpointer is inside an utterance (someone is speaking)."""
        return self._endpointer.in_speech

    def accept(self, data: bytes) -> list[Result]:
        """Take the next chunk of client audio; returns the results it completes."""
        self.feed(data)
        self.model.decode_jobs(self.jobs)
        return self.take_results()

    def finish(self) -> list[Result]:
        """End of audio: finalise the open utterance; returns the last results."""
        self.feed_end()
        self.model.decode_jobs(self.jobs)
        return self.take_results()

    def feed(self, data: bytes) -> None:
        """Decode and endpoint a chunk; queues decode jobs (no recognition here)."""
        self._take(self._audio_in.feed(data))
        limit = self.config.max_audio_s
        if limit and self._audio_in.input_seconds > limit:
            raise RequestError(f"The audio is longer than the limit of {limit:g} s per request "
                               "(asr_max_audio_seconds in config.sh).")

    def feed_end(self) -> None:
        """Flush the audio and close the open utterance."""
        self._take(self._audio_in.flush())
        if self._endpointer.in_speech:
            last = self._endpointer.last_speech * WINDOW
            end = min(self.samples, max(last + _TAIL_PAD, self._utt_start + _MIN_INTERIM))
            self._queue_final(end, self.samples)
        self.finished = True

    def _take(self, samples: np.ndarray) -> None:
        """Append 16 kHz samples, run the VAD and the endpointer over them."""
        if not len(samples):
            return
        self._audio = np.concatenate([self._audio, samples])
        for prob in self.model.vad.probabilities(self._vad, samples):
            for event in self._endpointer.update(float(prob)):
                self._on_event(event)
        ep = self._endpointer
        # Interims come every interval, or less often when they take longer than that to make.
        interval = max(self.config.interim_interval_ms / 1000, self._interim_cost)
        if (self.config.interim_results and ep.in_speech
                and self.samples - self._last_interim >= interval * TARGET_RATE
                and self.samples - self._utt_start >= _MIN_INTERIM
                and not any(j.kind == "interim" for j in self.jobs)):
            self._last_interim = self.samples
            self._queue("interim", self.samples, self.samples, prefix=self._stable)
        if not ep.in_speech:
            self._forget(self.samples - ep.params.start_history_ms * TARGET_RATE // 1000 - _PREROLL - WINDOW)

    def _on_event(self, event: Event) -> None:
        at = self._endpointer.window * WINDOW
        if event.kind == "start":
            self._utterance += 1
            self._utt_start = max(self._base, event.window * WINDOW - _PREROLL)
            self._prev_tokens, self._stable, self._speculated = [], [], None
            self._last_interim = at
        elif event.kind == "eou" and self.config.speculative:
            end = min(at, event.window * WINDOW + _TAIL_PAD)
            self._speculated = self._queue("eou", end, at)
        elif event.kind == "end":
            self._queue_final(min(at, event.window * WINDOW + _TAIL_PAD), at)
        elif event.kind == "split":
            split = event.window * WINDOW
            self._queue_final(split, at)
            self._utterance += 1
            self._utt_start = split
            self._prev_tokens, self._stable, self._speculated = [], [], None

    def _queue(self, kind: str, end: int, fired_at: int, prefix: list[int] | None = None) -> DecodeJob:
        audio = self._audio[self._utt_start - self._base:end - self._base].copy()
        self._seq += 1
        job = DecodeJob(self, kind, self._utterance, audio, self._utt_start, fired_at, list(prefix or []),
                        seq=self._seq)
        self.jobs.append(job)
        return job

    def _queue_final(self, end: int, fired_at: int) -> None:
        """Queue the utterance's final decode, reusing the speculative one if the audio is the same."""
        spec = self._speculated
        self._speculated = None
        if spec is not None and spec.utterance == self._utterance and spec.start + len(spec.audio) == end:
            self._seq += 1
            spec.kind, spec.fired_at, spec.seq = "final", fired_at, self._seq
            if spec not in self.jobs:  # already decoded: hand it back as the final
                self.jobs.append(spec)
            return
        self._queue("final", end, fired_at)

    def _forget(self, before: int) -> None:
        """Drop audio before stream sample `before` (outside any utterance)."""
        drop = min(len(self._audio), before - self._base)
        if drop > 0:
            self._audio = self._audio[drop:]
            self._base += drop

    def complete(self, job: DecodeJob) -> None:
        """Take a decoded job back (called by AsrModel.decode_jobs)."""
        if job.kind == "interim" and job.hyp is not None:
            tokens = job.hyp.tokens
            common = 0
            for a, b in zip(self._prev_tokens, tokens):
                if a != b:
                    break
                common += 1
            self._stable = tokens[:max(len(self._stable), min(common, len(tokens) - _UNSTABLE_TAIL))]
            self._prev_tokens = tokens
            self._interim_cost = job.seconds
        self._done.append(job)

    def take_results(self) -> list[Result]:
        """Results of the jobs decoded since the last call, in order; stale interims dropped."""
        done, self._done = sorted(self._done, key=lambda j: j.seq), []
        finals = {j.utterance for j in done if j.kind == "final"}
        results = []
        for job in done:
            if job.kind == "eou" or job.hyp is None:
                continue
            if job.kind == "interim" and (job.utterance in finals or job.utterance != self._utterance
                                          or not self._endpointer.in_speech):
                continue
            result = self.model.result(job, self.config, stable=len(self._stable))
            if result is not None:
                results.append(result)
        return results
