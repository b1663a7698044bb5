"""One client's recognition stream: audio in, VAD endpointing, decode jobs out, results back.

A stream does the cheap work itself (decoding the audio, VAD) and queues decode jobs; the
batcher (edged.pipelines.asr.batcher) has the model run the jobs of many streams together
(`StreamModel.decode_jobs`, which hands each stream its hypotheses) and takes the results.
"""

from __future__ import annotations

import logging
import threading
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
    VadState,
)
from edged.pipelines.asr.jobs import DecodeJob, JobKind, JobRunner, StreamConfig
from edged.pipelines.asr.packing import Span, WindowPacker
from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.resultmaker import ResultMaker
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.speculation import EndCause, Speculation, UtteranceEnd
from edged.pipelines.asr.streamstate import InterimTiming, Pace, RecentAudio, Utterance

_LOGGER = logging.getLogger(__name__)

# Audio decoded before the detected start: the VAD's probability rises only after the speech
# does, and Moonshine misses a word cut at its onset. Word times start at most _ONSET before it.
_PREROLL = int(0.5 * MODEL_RATE)
_ONSET = int(0.2 * MODEL_RATE)
_TAIL_PAD = int(0.2 * MODEL_RATE)
_MIN_INTERIM = int(0.3 * MODEL_RATE)
# Interims decode at most this much audio: when the open utterance is longer, the part before
# its quietest point 1 to 2 x _WINDOW_MIN from the end (committing at least _COMMIT_MIN) is
# decoded once and its text kept. Finals decode the whole utterance.
_WINDOW = int(3.0 * MODEL_RATE)
_WINDOW_MIN = int(1.0 * MODEL_RATE)
_COMMIT_MIN = int(1.0 * MODEL_RATE)
# The open utterance's audio goes to `on_utterance_audio` at least this far apart.
_HAND_OVER_STEP = int(0.5 * MODEL_RATE)
# Windows (32 ms) without speech after which an interim waits for the speech to go on.
_PAUSE_WINDOWS = 3


class VoiceActivity(Protocol):
    """Speech probabilities of audio (Silero VAD: edged.pipelines.asr.endpointing.Vad)."""

    def new_state(self) -> VadState:
        """Fresh state for one stream."""

    def probabilities(self, state: VadState, audio: np.ndarray) -> np.ndarray:
        """Speech probability of every whole window (WINDOW samples) `audio` completes."""


class StreamModel(JobRunner, Protocol):
    """What a stream needs of its model (AsrModel): VAD, endpointing defaults, decodes, results."""

    @property
    def vad(self) -> VoiceActivity:
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
        self._audio_in = AudioDecoder(config.encoding, config.sample_rate, config.channels, config.channel,
                                      config.max_held_bytes)
        self._vad = model.vad.new_state()
        self._endpointer = Endpointer(config.endpoint or model.endpoint)
        self._audio = RecentAudio()
        self._utterance = Utterance()
        self._final_end = 0
        """Stream sample where the last final's audio ends (the next utterance starts after it)."""
        self._pace = Pace()
        self._interims = InterimTiming()
        self._speculation = Speculation()
        self._packer = WindowPacker(config.window_samples) if config.window_samples else None
        """Offline, with windows: the utterances whose final decode waits for the next ones."""
        self._last_window: DecodeJob | None = None
        """Offline, with windows: the last window queued (its text prompts the next one's decode)."""
        self.jobs: list[DecodeJob] = []
        """Decode jobs waiting for the model's `decode_jobs`."""
        self._windowing: list[DecodeJob] = []
        """Commit and interim jobs queued and not handed back yet."""
        self._done: list[DecodeJob] = []
        """Jobs handed back whose results are not taken yet."""
        self._seq = 0
        self.finished = False
        self.listener: Callable[[list[Result]], None] | None = None
        """Takes the results decoded between chunks (interims, speculative finals) the moment
        they are ready, on the event loop; without one they wait for the next chunk's results."""
        self.on_utterance_audio: Callable[[int, np.ndarray, bool], None] | None = None
        """Takes the open utterance's audio so far, the stream sample it starts at and whether it is
        all of it: every _HAND_OVER_STEP of speech, and when its final's decode is queued (on the
        batcher's thread), so that work on it (its speaker) goes on as it is spoken."""
        self._handed_over = 0
        """Stream sample up to which the open utterance's audio was handed over."""
        self.lock = threading.RLock()
        """Held by whoever changes the stream: the batcher feeds it on one thread while its
        interims are queued and completed on another."""

    @property
    def samples(self) -> int:
        """16 kHz samples received so far."""
        return self._audio.end

    @property
    def in_speech(self) -> bool:
        """Whether the endpointer is inside an utterance (someone is speaking)."""
        return self._endpointer.in_speech

    @property
    def lag(self) -> float:
        """Seconds this stream is handled later than real time (vs its most punctual chunk)."""
        return self._pace.lag

    @property
    def last_interim_at(self) -> float:
        """Clock of the open utterance's last interim result (or of its start)."""
        return self._interims.last_at

    def feed(self, data: bytes | np.ndarray, now: float) -> None:
        """Decode and endpoint a chunk handled at clock `now` (the batcher's): client bytes in
        the config's encoding, or mono float32 samples at MODEL_RATE as they are (the daemon's
        microphone). Queues the decode jobs of finals (interims: `interim_due`,
        `queue_interim`); no recognition here."""
        self._pace.now = now
        before = self.samples
        self._hear(self._audio_in.feed(data) if isinstance(data, bytes)
                   else np.asarray(data, dtype=np.float32).reshape(-1))
        self._pace.chunk(self.samples - before, self.samples)
        limit = self.config.max_audio_s
        if limit and self._audio_in.input_seconds > limit:
            raise RequestError(f"The audio is longer than the limit of {limit:g} s per request "
                               "(asr_max_audio_seconds in config.sh).")

    def feed_end(self) -> None:
        """Flush the audio and close the open utterance."""
        self._hear(self._audio_in.flush())
        ep = self._endpointer
        if ep.in_speech:
            end = min(self.samples, max(ep.last_speech * WINDOW + _TAIL_PAD, self._utterance.start + _MIN_INTERIM))
            self._queue_final(end, self.samples, UtteranceEnd(EndCause.SPEECH, ep.last_speech))
        if self._packer is not None:
            self._queue_window(self._packer.flush(), self.samples)
        self.finished = True

    def end_utterance(self) -> None:
        """End the open utterance now, as if its endpoint were reached (Riva's force_eou):
        queues its final (a speculative decode that covers it, else a decode of the utterance
        so far), decoded with the stream's next jobs. The stream goes on: the next speech
        starts a new utterance. Nothing happens outside an utterance."""
        event = None if self.finished else self._endpointer.end_now()
        if event is not None:
            self._on_event(event)

    def _hear(self, samples: np.ndarray) -> None:
        """Append 16 kHz samples, run the VAD and the endpointer over them."""
        if not len(samples):
            return
        self._audio.append(samples)
        ep = self._endpointer
        for prob in self.model.vad.probabilities(self._vad, samples):
            for event in ep.update(float(prob)):
                self._on_event(event)
            due = self._speculation.due(ep.window * WINDOW, _TAIL_PAD)
            if due is not None and ep.in_speech and ep.last_speech == due:
                # The likely end's audio and its tail are there, and it is still the end: decode it.
                self._speculate(UtteranceEnd(EndCause.SPEECH, due), due * WINDOW + _TAIL_PAD, ep.window * WINDOW)
        if self.on_utterance_audio is not None and ep.in_speech \
                and self.samples - max(self._handed_over, self._utterance.start) >= _HAND_OVER_STEP:
            self._handed_over = self.samples
            self.on_utterance_audio(self._utterance.start, self._audio.span(self._utterance.start, self.samples), False)
        if not ep.in_speech:
            keep = self.samples - ep.params.start_history_ms * MODEL_RATE // 1000 - _PREROLL - WINDOW
            if self._packer is not None and self._packer.pending is not None:
                keep = min(keep, self._packer.pending.start)
            self._audio.forget(keep)

    def interim_due(self, now: float) -> bool:
        """Whether to make an interim result now: someone is speaking (not pausing) and, if it
        waited for the next chunk, the gap since the last one would exceed the interim interval
        (the expected decode time counted), unless that would keep decoding more than half
        the time."""
        ep = self._endpointer
        # Not in a pause either: it may be the utterance's end, whose decode should not wait.
        if not (self.config.interim_results and ep.in_speech and ep.last_speech >= ep.window - _PAUSE_WINDOWS
                and not self.finished and self.samples - self._utterance.start >= _MIN_INTERIM
                and self.samples > self._interims.queued_at
                and not any(j.kind is JobKind.INTERIM for j in self.jobs)):
            return False
        cost = self.interim_estimate()
        since = now - self._interims.last_at
        # Never busier than half the time with one stream's interims.
        return since >= cost and since + self._pace.chunk_s + cost >= self.config.interim_interval_ms / 1000

    def interim_estimate(self) -> float:
        """Expected seconds to decode an interim of the open utterance now."""
        length = self.samples - self._utterance.window_start
        timing = self._interims
        if timing.cost_samples:
            return timing.cost_s * max(1.0, length / timing.cost_samples)
        return self.model.seconds_per_sample * length

    def queue_interim(self) -> None:
        """Queue an interim decode of the open utterance's window (see _WINDOW) and, if the
        window has grown too long, of the part before its new start (a commit)."""
        self._interims.queued_at = self.samples
        utt = self._utterance
        if self.samples - utt.window_start > _WINDOW:
            first = max(utt.window_start + _COMMIT_MIN, self.samples - 2 * _WINDOW_MIN) // WINDOW
            end = (self.samples - _WINDOW_MIN) // WINDOW
            if end > first:
                cut = self._endpointer.quietest(first, end) * WINDOW
                self._windowing.append(self._queue(JobKind.COMMIT, cut, self.samples, utt.window_start,
                                                   utt.window_tokens))
                utt.window_start = cut
        self._windowing.append(self._queue(JobKind.INTERIM, self.samples, self.samples, utt.window_start,
                                           utt.window_tokens))

    def _on_event(self, event: Event) -> None:
        at = self._endpointer.window * WINDOW
        after_speech = UtteranceEnd(EndCause.SPEECH, event.window)
        if event.kind is EventKind.START:
            onset = event.window * WINDOW
            self._new_utterance(max(self._audio.start, self._final_end, onset - _PREROLL), onset - _ONSET)
        elif event.kind is EventKind.LIKELY_END and self.config.speculative:
            self._speculation.expect(event.window)
        elif event.kind is EventKind.PRESPLIT and self.config.speculative:
            self._speculate(UtteranceEnd(EndCause.SPLIT, event.window), event.window * WINDOW, at)
        elif event.kind is EventKind.END:
            self._queue_final(min(at, event.window * WINDOW + _TAIL_PAD), at, after_speech)
        elif event.kind is EventKind.PAUSE:
            end = self._queue_final(min(at, event.window * WINDOW + _TAIL_PAD), at, after_speech)
            onset = self._endpointer.start * WINDOW
            self._new_utterance(max(end, onset - _PREROLL), onset - _ONSET)
        elif event.kind is EventKind.SPLIT:
            split = event.window * WINDOW
            self._queue_final(split, at, UtteranceEnd(EndCause.SPLIT, event.window))
            self._new_utterance(split, split)

    def _new_utterance(self, start: int, speech_start: int) -> None:
        """Open the next utterance at stream sample `start` (its speech about `speech_start`)."""
        self._utterance = Utterance(self._utterance.number + 1, start, max(start, speech_start), window_start=start)
        self._speculation.reset()
        self._interims.last_at = self._pace.now

    def _queue(self, kind: JobKind, end: int, fired_at: int, start: int | None = None,
               draft: list[int] | None = None) -> DecodeJob:
        """Queue a decode of stream samples [start (the utterance's), end)."""
        utt = self._utterance
        start = utt.start if start is None else start
        if draft is None:
            whole = kind in (JobKind.SPECULATIVE, JobKind.FINAL)
            draft = whole_draft(utt.whole, utt.draft) if whole else utt.draft
        self._seq += 1
        job = DecodeJob(self, kind, utt.number, self._audio.span(start, end), start, fired_at, list(draft),
                        seq=self._seq, speech_start=utt.speech_start)
        self.jobs.append(job)
        return job

    def _speculate(self, end: UtteranceEnd, until: int, fired_at: int) -> None:
        """Queue a speculative final decode of the open utterance up to stream sample `until`,
        for the utterance's end at `end` (see Speculation.add)."""
        replaces_splits = end.cause is EndCause.SPEECH and self._endpointer.ends_at_likely_end()
        job = self._queue(JobKind.SPECULATIVE, until, fired_at)
        self._speculation.add(end, job, self.jobs, replaces_splits)

    def _queue_final(self, until: int, fired_at: int, end: UtteranceEnd) -> int:
        """Queue the utterance's final decode of the audio up to stream sample `until`, for its
        end at `end`; returns where its audio ends. A speculative decode for that end is the
        final (see Speculation.take_final)."""
        tried = self._speculation.tried()
        spec = self._speculation.take_final(end, self._utterance.number)
        if spec is not None:
            _LOGGER.debug("Final at %.2f s reuses a speculative decode (%s)", fired_at / MODEL_RATE,
                          "done" if spec.hyp is not None else "queued")
            self._seq += 1
            spec.kind, spec.fired_at, spec.seq = JobKind.FINAL, fired_at, self._seq
            if spec not in self.jobs:  # already decoded: hand it back as the final
                self.jobs.append(spec)
            self._final_end = spec.start + len(spec.audio)
            self._hand_over(spec, final=True)
            return self._final_end
        _LOGGER.debug("Final at %.2f s: new decode (speculative: %s; the end: %s, %.2f s)",
                      fired_at / MODEL_RATE, tried or "none", end, until / MODEL_RATE)
        if self._packer is not None:
            utt = self._utterance
            self._queue_window(self._packer.add(Span(utt.start, until, utt.speech_start)), fired_at)
            self._final_end = until
            return until
        self._hand_over(self._queue(JobKind.FINAL, until, fired_at), final=True)
        self._final_end = until
        return until

    def _queue_window(self, window: Span | None, fired_at: int) -> None:
        """Queue the final decode of a window of utterances (offline; none: nothing closed)."""
        if window is None:
            return
        self._seq += 1
        job = DecodeJob(self, JobKind.FINAL, self._utterance.number, self._audio.span(window.start, window.end),
                        window.start, fired_at, seq=self._seq, speech_start=window.speech_start,
                        parts=window.parts, previous=self._last_window)
        self._last_window = job
        self.jobs.append(job)
        self._hand_over(job, final=True)

    def _hand_over(self, job: DecodeJob, final: bool) -> None:
        if self.on_utterance_audio is not None:
            self.on_utterance_audio(job.start, job.audio, final)

    def complete(self, job: DecodeJob) -> None:
        """Take a decoded job back (called by the model's `decode_jobs`, on any thread)."""
        with self.lock:
            if job in self._windowing:
                self._windowing.remove(job)
            if job.hyp is not None and job.utterance == self._utterance.number:
                if job.kind in (JobKind.INTERIM, JobKind.SPECULATIVE):  # a speculative final shows as an interim
                    self._interims.last_at = self._pace.now + job.seconds
                if job.kind is JobKind.INTERIM:
                    self._interims.cost_s, self._interims.cost_samples = job.seconds, len(job.audio)
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
        utt = self._utterance
        results = []
        for job in done:
            if job.hyp is None:
                continue
            hyp = job.hyp
            if job.utterance == utt.number:
                if job.kind is JobKind.COMMIT:
                    utt.committed += hyp.tokens
                    utt.committed_logprobs += hyp.logprobs
                elif job.kind is JobKind.INTERIM:  # the committed text, then the window's
                    utt.window_tokens = hyp.tokens
                    hyp = Hypothesis(utt.committed + hyp.tokens, utt.committed_logprobs + hyp.logprobs,
                                     hyp.frames, hyp.stopped)
                    utt.follow(hyp.tokens)
                if job.kind is not JobKind.COMMIT:
                    utt.draft = hyp.tokens
                if job.kind is JobKind.SPECULATIVE:
                    utt.whole = hyp.tokens
            if job.kind is JobKind.COMMIT or (job.kind is JobKind.SPECULATIVE and not self.config.interim_results):
                continue
            if job.kind is not JobKind.FINAL and (job.utterance in finals or job.utterance != utt.number
                                                  or not self._endpointer.in_speech):
                continue
            start = utt.start if job.kind is JobKind.INTERIM else None  # its window's start otherwise
            result = self.model.results.result(job, self.config, len(utt.stable), hyp, start)
            if result is not None:
                results.append(result)
        return results


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
