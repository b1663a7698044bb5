"""One client's recognition stream: audio in, VAD endpointing, decode jobs out, results back.

A stream does the cheap work itself (decoding the audio, VAD) and queues decode jobs; the model
runs the jobs of many streams together (`StreamModel.decode_jobs`) and hands each stream its
hypotheses. `accept`/`finish` do both steps for one stream, for callers without a batcher.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from edged.errors import RequestError
from edged.pipelines.asr.audio import MODEL_RATE, AudioDecoder
from edged.pipelines.asr.endpointing import (
    WINDOW,
    Endpointer,
    EndpointParams,
    Event,
    EventKind,
    Vad,
)
from edged.pipelines.asr.jobs import DecodeJob, JobKind, JobRunner, StreamConfig
from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.resultmaker import ResultMaker
from edged.pipelines.asr.results import Result

_LOGGER = logging.getLogger(__name__)

# Audio decoded before the detected start: the VAD's probability rises only after the speech
# does, and Moonshine misses a word cut at its onset. Word times start at most _ONSET before it.
_PREROLL = int(0.5 * MODEL_RATE)
_ONSET = int(0.2 * MODEL_RATE)
_TAIL_PAD = int(0.2 * MODEL_RATE)
# A speculative decode whose audio goes this far past the final's last speech window is the final.
_COVER = int(0.1 * MODEL_RATE)
_MIN_INTERIM = int(0.3 * MODEL_RATE)
# Interims decode at most this much audio: when the open utterance is longer, the part before
# its quietest point 1 to 2 x _WINDOW_MIN from the end (committing at least _COMMIT_MIN) is
# decoded once and its text kept. Finals decode the whole utterance.
_WINDOW = int(3.0 * MODEL_RATE)
_WINDOW_MIN = int(1.0 * MODEL_RATE)
_COMMIT_MIN = int(1.0 * MODEL_RATE)
# Windows (32 ms) without speech after which an interim waits for the speech to go on.
_PAUSE_WINDOWS = 3
# Tokens at the end of an interim hypothesis that are never trusted (the word may be cut off).
_UNSTABLE_TAIL = 2


class StreamModel(JobRunner, Protocol):
    """What a stream needs of its model (AsrModel): VAD, endpointing defaults, decodes, results."""

    @property
    def vad(self) -> Vad:
        """The VAD network (each stream keeps its own state)."""

    @property
    def endpoint(self) -> EndpointParams:
        """Endpointing when the request sets none."""

    @property
    def seconds_per_sample(self) -> float:
        """Recent decode wall time per sample of audio."""

    @property
    def results(self) -> ResultMaker:
        """Builds Results from decoded jobs."""


class AsrStream:
    """Recognition state of one client stream (audio format, VAD, open utterance, results)."""

    def __init__(self, model: StreamModel, config: StreamConfig) -> None:
        self.model = model
        self.config = config
        self._audio_in = AudioDecoder(config.encoding, config.sample_rate, config.channels, config.channel)
        self._vad = model.vad.new_state()
        self._endpointer = Endpointer(config.endpoint or model.endpoint)
        self._audio = np.zeros(0, dtype=np.float32)
        self._base = 0
        """Stream sample index of `_audio[0]`."""
        self._utterance = 0
        self._utt_start = 0
        self._utt_end = 0
        """Stream sample where the last final's audio ends (the next utterance starts after it)."""
        self._speech_start = 0
        self._now = 0.0
        """Wall clock (time.monotonic) of the chunk being handled."""
        self._chunk_s = 0.0
        """Audio seconds of the last chunk (the longest wait for the next one in real time)."""
        self._offset = math.inf
        self.lag = 0.0
        """Seconds this stream is handled later than real time (vs its most punctual chunk)."""
        self.last_interim_at = 0.0
        """Wall clock of the open utterance's last interim result (or of its start)."""
        self._interim_cost = 0.0
        self._interim_samples = 0
        self._prev_tokens: list[int] = []
        self._draft: list[int] = []
        """Tokens of the open utterance's latest hypothesis (interim or speculative)."""
        self._whole: list[int] = []
        """Tokens of the open utterance's latest whole decode (a speculative final's)."""
        self._window_start = 0
        """Stream sample where interims start decoding (the text before it is committed)."""
        self._window_tokens: list[int] = []
        self._committed: list[int] = []
        self._committed_logprobs: list[float] = []
        self._stable: list[int] = []
        self._speculated: list[tuple[tuple[str, int], DecodeJob]] = []
        """The open utterance's speculative decodes, each with what its end is: ("speech",
        window after the last speech) or ("split", window of a forced split)."""
        self._speculate_at: int | None = None
        """Window after the last speech of a likely end whose decode waits for its tail."""
        self.jobs: list[DecodeJob] = []
        """Decode jobs waiting for the model's `decode_jobs`."""
        self._windowing: list[DecodeJob] = []
        """Commit and interim jobs queued and not handed back yet."""
        self._interim_at = 0
        """Samples received when the last interim was queued (the next needs new audio)."""
        self._done: list[DecodeJob] = []
        self._seq = 0
        self.finished = False
        self.listener: Callable[[list[Result]], None] | None = None
        """Takes the results decoded between chunks (interims, speculative finals) the moment
        they are ready, on the event loop; without one they wait for the next chunk's results."""
        self.lock = threading.RLock()
        """Held by whoever changes the stream: the batcher feeds it on one thread while its
        interims are queued and completed on another."""

    @property
    def samples(self) -> int:
        """16 kHz samples received so far."""
        return self._base + len(self._audio)

    @property
    def in_speech(self) -> bool:
        """Whether the endpointer is inside an utterance (someone is speaking)."""
        return self._endpointer.in_speech

    def accept(self, data: bytes, now: float | None = None) -> list[Result]:
        """Take the next chunk of client audio (at wall clock `now`); returns the results it completes."""
        self.feed(data, now)
        if self.interim_due(self._now):
            self.queue_interim()
        self.model.decode_jobs(self.jobs)
        return self.take_results()

    def finish(self) -> list[Result]:
        """End of audio: finalise the open utterance; returns the last results."""
        self.feed_end()
        self.model.decode_jobs(self.jobs)
        return self.take_results()

    def feed(self, data: bytes | np.ndarray, now: float | None = None) -> None:
        """Decode and endpoint a chunk handled at wall clock `now`: client bytes in the config's
        encoding, or mono float32 samples at MODEL_RATE as they are (the daemon's microphone).
        Queues the decode jobs of finals (interims: `interim_due`, `queue_interim`); no
        recognition here."""
        self._now = time.monotonic() if now is None else now
        before = self.samples
        self._take(self._audio_in.feed(data) if isinstance(data, bytes)
                   else np.asarray(data, dtype=np.float32).reshape(-1))
        if self.samples > before:
            self._chunk_s = (self.samples - before) / MODEL_RATE
            offset = self._now - self.samples / MODEL_RATE
            self._offset = min(self._offset, offset)
            self.lag = offset - self._offset
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
            self._queue_final(end, self.samples, ("speech", self._endpointer.last_speech))
        self.finished = True

    def end_utterance(self) -> None:
        """End the open utterance now, as if its endpoint were reached (Riva's force_eou):
        queues its final (a speculative decode that covers it, else a decode of the utterance
        so far), decoded with the stream's next jobs. The stream goes on: the next speech
        starts a new utterance. Nothing happens outside an utterance."""
        event = None if self.finished else self._endpointer.end_now()
        if event is not None:
            self._on_event(event)

    def _take(self, samples: np.ndarray) -> None:
        """Append 16 kHz samples, run the VAD and the endpointer over them."""
        if not len(samples):
            return
        self._audio = np.concatenate([self._audio, samples])
        ep = self._endpointer
        for prob in self.model.vad.probabilities(self._vad, samples):
            for event in ep.update(float(prob)):
                self._on_event(event)
            due = self._speculate_at
            if due is not None and ep.window * WINDOW >= due * WINDOW + _TAIL_PAD:
                # The likely end's audio with its tail is there: decode it (if still the end).
                self._speculate_at = None
                if ep.in_speech and ep.last_speech == due:
                    self._speculate(("speech", due), due * WINDOW + _TAIL_PAD, ep.window * WINDOW)
        if not ep.in_speech:
            self._forget(self.samples - ep.params.start_history_ms * MODEL_RATE // 1000 - _PREROLL - WINDOW)

    def interim_due(self, now: float) -> bool:
        """Whether to make an interim result now: someone is speaking (not pausing) and, if it
        waited for the next chunk, the gap since the last one would exceed the interim interval
        (the expected decode time counted), unless that would keep decoding more than half
        the time."""
        ep = self._endpointer
        # Not in a pause either: it may be the utterance's end, whose decode should not wait.
        if not (self.config.interim_results and ep.in_speech and ep.last_speech >= ep.window - _PAUSE_WINDOWS
                and not self.finished and self.samples - self._utt_start >= _MIN_INTERIM
                and self.samples > self._interim_at
                and not any(j.kind is JobKind.INTERIM for j in self.jobs)):
            return False
        cost = self.interim_estimate()
        since = now - self.last_interim_at
        # Never busier than half the time with one stream's interims.
        return since >= cost and since + self._chunk_s + cost >= self.config.interim_interval_ms / 1000

    def interim_estimate(self) -> float:
        """Expected seconds to decode an interim of the open utterance now."""
        length = self.samples - self._window_start
        if self._interim_samples:
            return self._interim_cost * max(1.0, length / self._interim_samples)
        return self.model.seconds_per_sample * length

    def queue_interim(self) -> None:
        """Queue an interim decode of the open utterance's window (see _WINDOW) and, if the
        window has grown too long, of the part before its new start (a commit)."""
        self._interim_at = self.samples
        if self.samples - self._window_start > _WINDOW:
            first = max(self._window_start + _COMMIT_MIN, self.samples - 2 * _WINDOW_MIN) // WINDOW
            end = (self.samples - _WINDOW_MIN) // WINDOW
            if end > first:
                cut = self._endpointer.quietest(first, end) * WINDOW
                self._windowing.append(self._queue(JobKind.COMMIT, cut, self.samples, self._window_start,
                                                   self._window_tokens))
                self._window_start = cut
        self._windowing.append(self._queue(JobKind.INTERIM, self.samples, self.samples, self._window_start,
                                           self._window_tokens))

    def _on_event(self, event: Event) -> None:
        at = self._endpointer.window * WINDOW
        if event.kind is EventKind.START:
            onset = event.window * WINDOW
            self._new_utterance(max(self._base, self._utt_end, onset - _PREROLL), onset - _ONSET)
        elif event.kind is EventKind.LIKELY_END and self.config.speculative:
            self._speculate_at = event.window
        elif event.kind is EventKind.PRESPLIT and self.config.speculative:
            self._speculate(("split", event.window), event.window * WINDOW, at)
        elif event.kind is EventKind.END:
            self._queue_final(min(at, event.window * WINDOW + _TAIL_PAD), at, ("speech", event.window))
        elif event.kind is EventKind.PAUSE:
            end = self._queue_final(min(at, event.window * WINDOW + _TAIL_PAD), at, ("speech", event.window))
            onset = self._endpointer.start * WINDOW
            self._new_utterance(max(end, onset - _PREROLL), onset - _ONSET)
        elif event.kind is EventKind.SPLIT:
            split = event.window * WINDOW
            self._queue_final(split, at, ("split", event.window))
            self._new_utterance(split, split)

    def _new_utterance(self, start: int, speech_start: int) -> None:
        """Open the next utterance at stream sample `start` (its speech about `speech_start`)."""
        self._utterance += 1
        self._utt_start = start
        self._speech_start = max(start, speech_start)
        self._prev_tokens, self._stable, self._draft, self._whole, self._speculated = [], [], [], [], []
        self._speculate_at = None
        self._window_start, self._window_tokens, self._committed, self._committed_logprobs = start, [], [], []
        self.last_interim_at = self._now

    def _queue(self, kind: JobKind, end: int, fired_at: int, start: int | None = None,
               draft: list[int] | None = None) -> DecodeJob:
        """Queue a decode of stream samples [start (the utterance's), end)."""
        start = self._utt_start if start is None else start
        audio = self._audio[start - self._base:end - self._base].copy()
        self._seq += 1
        if draft is None:
            whole = kind in (JobKind.SPECULATIVE, JobKind.FINAL)
            draft = whole_draft(self._whole, self._draft) if whole else self._draft
        job = DecodeJob(self, kind, self._utterance, audio, start, fired_at, list(draft), seq=self._seq,
                        speech_start=self._speech_start)
        self.jobs.append(job)
        return job

    def _speculate(self, key: tuple[str, int], end: int, fired_at: int) -> None:
        """Queue a speculative final decode of the open utterance up to `end` (see `_speculated`).

        One of the same kind that is still waiting for the decoder is replaced: the newer one
        covers more speech. A likely end of an utterance that ends there whatever follows
        (Endpointer.ends_at_likely_end) also drops a waiting forced split's decode, which can no
        longer be the final: the split would come later.
        """
        kinds = {key[0]}
        if key[0] == "speech" and self._endpointer.ends_at_likely_end():
            kinds.add("split")
        replaced = [j for k, j in self._speculated if k[0] in kinds and j.hyp is None and j in self.jobs]
        for old in replaced:
            self.jobs.remove(old)
        self._speculated = [(k, j) for k, j in self._speculated if j not in replaced]
        self._speculated.append((key, self._queue(JobKind.SPECULATIVE, end, fired_at)))

    def _reusable(self, key: tuple[str, int]) -> DecodeJob | None:
        """The speculative decode that can be the final ending at `key`: one with the same end,
        or, for an end after speech, one whose audio covers the last speech window and
        `_COVER` more (what the final adds after it is not speech, e.g. a short noise that
        moved the end a little)."""
        for spec_key, job in reversed(self._speculated):
            if job.utterance != self._utterance:
                continue
            if spec_key == key or (key[0] == spec_key[0] == "speech"
                                   and job.start + len(job.audio) >= key[1] * WINDOW + _COVER):
                return job
        return None

    def _queue_final(self, end: int, fired_at: int, key: tuple[str, int]) -> int:
        """Queue the utterance's final decode of the audio up to `end`; returns where it ends.

        A speculative decode is the final when it ends at the same place (see `_reusable`).
        """
        spec = self._reusable(key)
        tried = [(k, round((j.start + len(j.audio)) / MODEL_RATE, 2)) for k, j in self._speculated]
        self._speculated, self._speculate_at = [], None
        if spec is not None:
            _LOGGER.debug("Final at %.2f s reuses a speculative decode (%s)", fired_at / MODEL_RATE,
                          "done" if spec.hyp is not None else "queued")
            self._seq += 1
            spec.kind, spec.fired_at, spec.seq = JobKind.FINAL, fired_at, self._seq
            if spec not in self.jobs:  # already decoded: hand it back as the final
                self.jobs.append(spec)
            self._utt_end = spec.start + len(spec.audio)
            return self._utt_end
        _LOGGER.debug("Final at %.2f s: new decode (speculative: %s; the end: %s, %.2f s)",
                      fired_at / MODEL_RATE, tried or "none", key, end / MODEL_RATE)
        self._queue(JobKind.FINAL, end, fired_at)
        self._utt_end = end
        return end

    def _forget(self, before: int) -> None:
        """Drop audio before stream sample `before` (outside any utterance)."""
        drop = min(len(self._audio), before - self._base)
        if drop > 0:
            self._audio = self._audio[drop:]
            self._base += drop

    def complete(self, job: DecodeJob) -> None:
        """Take a decoded job back (called by the model's `decode_jobs`, on any thread)."""
        with self.lock:
            if job in self._windowing:
                self._windowing.remove(job)
            if job.hyp is not None and job.utterance == self._utterance:
                if job.kind in (JobKind.INTERIM, JobKind.SPECULATIVE):  # a speculative final shows as an interim
                    self.last_interim_at = self._now + job.seconds
                if job.kind is JobKind.INTERIM:
                    self._interim_cost, self._interim_samples = job.seconds, len(job.audio)
            self._done.append(job)

    def take_results(self) -> list[Result]:
        """Results of the jobs decoded since the last call, in order; stale interims dropped
        (on any thread, as `complete`)."""
        with self.lock:
            return self._take_results()

    def _take_results(self) -> list[Result]:
        # A speculative decode handed back and not yet taken may come back again as the final.
        done, self._done = sorted({id(j): j for j in self._done}.values(), key=lambda j: j.seq), []
        # The interim lane hands back a window's commit and interim one by one: an interim is
        # taken only after its commit (its text is the committed text, then the window's).
        if self._windowing:
            first = min(j.seq for j in self._windowing)
            self._done = [j for j in done if j.kind in (JobKind.COMMIT, JobKind.INTERIM) and j.seq > first]
            done = [j for j in done if j not in self._done]
        finals = {j.utterance for j in done if j.kind is JobKind.FINAL}
        results = []
        for job in done:
            if job.hyp is None:
                continue
            hyp = job.hyp
            if job.utterance == self._utterance:
                if job.kind is JobKind.COMMIT:
                    self._committed += hyp.tokens
                    self._committed_logprobs += hyp.logprobs
                elif job.kind is JobKind.INTERIM:  # the committed text, then the window's
                    self._window_tokens = hyp.tokens
                    hyp = Hypothesis(self._committed + hyp.tokens, self._committed_logprobs + hyp.logprobs,
                                     hyp.frames, hyp.stopped)
                    self._follow(hyp.tokens)
                if job.kind is not JobKind.COMMIT:
                    self._draft = hyp.tokens
                if job.kind is JobKind.SPECULATIVE:
                    self._whole = hyp.tokens
            if job.kind is JobKind.COMMIT or (job.kind is JobKind.SPECULATIVE and not self.config.interim_results):
                continue
            if job.kind is not JobKind.FINAL and (job.utterance in finals or job.utterance != self._utterance
                                                  or not self._endpointer.in_speech):
                continue
            start = self._utt_start if job.kind is JobKind.INTERIM else None  # its window's start otherwise
            result = self.model.results.result(job, self.config, len(self._stable), hyp, start)
            if result is not None:
                results.append(result)
        return results

    def _follow(self, tokens: list[int]) -> None:
        """Update the stable prefix from a new interim hypothesis."""
        common = 0
        for a, b in zip(self._prev_tokens, tokens):
            if a != b:
                break
            common += 1
        self._stable = tokens[:max(len(self._stable), min(common, len(tokens) - _UNSTABLE_TAIL))]
        self._prev_tokens = tokens


def whole_draft(whole: list[int], latest: list[int]) -> list[int]:
    """A draft for a decode of a whole utterance: its latest whole decode (`whole`, a speculative
    final's tokens), then what the latest hypothesis (`latest`, usually an interim's) has after
    the whole decode's last two tokens (or after as many tokens, if they are not in it).

    Interims piece the text together from windows decoded apart (see AsrStream.queue_interim),
    so their words drift from a whole decode's; a draft that starts from a whole decode is
    followed for longer. Measured on an evalcorpus utterance of 6.6 s: 21 -> 10 decoder calls.
    """
    if not whole or latest == whole:
        return latest
    after = next((i + 2 for i in range(len(latest) - 2, -1, -1) if latest[i:i + 2] == whole[-2:]), len(whole))
    return whole + latest[after:]
