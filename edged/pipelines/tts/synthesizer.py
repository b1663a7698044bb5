"""TtsModel: a loaded voice that turns a request into a stream of PCM chunks at the asked rate.

Each utterance runs the voice's encoder once, then its flow and decoder chunk by chunk (see
VoiceNetwork): a request's first chunk is a few frames, made by running the flow on just what
they need; later chunks grow with the audio the listener has ahead, bounded so that concurrent
requests take turns (RunGate: a request's first audio first, then the most urgent). The voice has
`lanes` runs in flight at once: several requests' chunks side by side, or a request streaming
alone its next chunks together, on the model's lane threads."""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edged.audio.resample import StreamResampler, float_to_pcm16
from edged.backends.base import cpu_cores
from edged.errors import TtsError, TtsRequestError, UnknownVoiceError
from edged.loader import LoadedModel
from edged.pipelines.pools import Pools
from edged.pipelines.tts.limits import AudioBudget, AudioLimit, SynthesisLimits
from edged.pipelines.tts.phonemes import phoneme_runs, phonemize_text
from edged.pipelines.tts.schedule import Key, Pace, RunGate
from edged.pipelines.tts.segment import Utterance, utterances
from edged.pipelines.tts.ssml import RATE_RANGE, Break, Item, Span, Style, effective_rate, is_ssml, parse_ssml
from edged.pipelines.tts.voice import Latent, VoiceConfig, VoiceNetwork

_LOGGER = logging.getLogger(__name__)

MIN_RATE_HZ, MAX_RATE_HZ = 8000, 96000


@dataclass(frozen=True)
class SynthesisRequest:
    """What to say and how: text or SSML, voice, output rate (0 = the voice's own), dictionary."""

    text: str
    voice_name: str = ""
    sample_rate: int = 0
    custom_dictionary: Mapping[str, str] = field(default_factory=dict)
    rate: float = 1.0
    """Speaking-rate factor on top of SSML prosody (2.0 is twice as fast)."""
    max_audio: AudioLimit | None = None
    """The most audio its answer can carry, where less than tts_max_audio_s (a door's message size)."""


@dataclass(frozen=True)
class Plan:
    """A request checked before any work: what it says, who says it, and the most audio it may make."""

    items: tuple[Item, ...]
    speaker: int
    limit: AudioLimit


@dataclass(frozen=True)
class AudioChunk:
    """Little-endian 16-bit mono PCM at `sample_rate`, and the text it speaks."""

    pcm: bytes
    sample_rate: int
    text: str = ""

    @property
    def seconds(self) -> float:
        """Duration of the chunk."""
        return len(self.pcm) / 2 / self.sample_rate


FIRST_CHUNK_FRAMES = 16
"""Frames of a request's first chunk (0.19 s at 22.05 kHz): its first audio waits only for them.
While other requests also wait for their first audio it is that times their number per lane: its
listener must not run out while the others' first chunks take their turns (they go first)."""
MAX_FIRST_CHUNK_FRAMES = 64
"""Bound of that growth (0.74 s): first audio still within a few tenths of a second."""
MAX_CHUNK_FRAMES = 384
"""Largest chunk of one stream alone (fewer chunks, less decoder context decoded twice); with
its context and a short rest it stays within the voice's max_run_frames (1024)."""
SHARED_CHUNK_FRAMES = 96
"""Largest chunk while several requests stream: a new one waits at most that long for its turn."""
HEADROOM = 2.0
"""A chunk may take at most 1/HEADROOM of the time its listener still has audio for..."""
REST_HEADROOM = 1.25
"""...but a stream alone decodes the whole rest of its utterance at once if that takes at most
1/REST_HEADROOM of it: few seams (their context decoded twice) for a small risk of a stall."""
MIN_SPLIT_FRAMES = 48
"""Smallest part when a stream alone splits the rest of its utterance among the free lanes: below
it the context decoded twice costs more than the second lane gains."""

SILENCE = 0.01
"""Amplitude below which an utterance's edge counts as silence (-40 dBFS)."""
TIGHT_EDGES_S = (0.01, 0.03)
"""Silence kept before a tight start and after a tight end (see Utterance)."""

_FIXED_DURATION_SHARE = 0.27
"""Share of a VITS utterance's length that length_scale does not stretch: every phoneme id
(pads included) lasts at least one frame after the duration predictor's ceiling. Measured on
en_US-joe-medium: 0.5, 1 and 2 give 2.85, 4.38 and 7.70 s for one 95-phoneme sentence."""
_MIN_LENGTH_SCALE = 0.1


def _cut_leading(audio: np.ndarray, keep: int) -> tuple[np.ndarray, bool]:
    """Audio from `keep` samples before its first loud one, and whether it was all silence."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE)
    return (audio[max(0, int(loud[0]) - keep):], False) if len(loud) else (audio[:0], True)


def _cut_trailing(audio: np.ndarray, keep: int) -> np.ndarray:
    """Audio up to `keep` samples after its last loud one."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE)
    return audio[:int(loud[-1]) + 1 + keep] if len(loud) else audio[:0]


def _silence(samples: int, most: int) -> Iterator[np.ndarray]:
    """`samples` of silence in pieces of at most `most` (a long break is several chunks, each
    small enough for any message size)."""
    for start in range(0, samples, most):
        yield np.zeros(min(most, samples - start), dtype=np.float32)


def length_scale_for(stretch: float) -> float:
    """The length_scale that makes an utterance `stretch` times as long as at 1.0."""
    return max(_MIN_LENGTH_SCALE, (stretch - _FIXED_DURATION_SHARE) / (1 - _FIXED_DURATION_SHARE))


def parse_custom_dictionary(text: str) -> dict[str, str]:
    """Riva's custom_dictionary: "word  ipa" entries separated by commas (talk.py's format)."""
    entries: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        parts = entry.strip().split(None, 1)
        if len(parts) != 2:
            raise TtsRequestError(
                f"custom_dictionary entry {entry.strip()!r} needs a word, two spaces and its IPA.")
        entries[parts[0]] = parts[1].strip()
    return entries


def _apply_dictionary(items: Iterable[Item], dictionary: Mapping[str, str]) -> Iterator[Item]:
    """Cut text spans around dictionary words, which become IPA spans."""
    if not dictionary:
        yield from items
        return
    lowered = {k.lower(): v for k, v in dictionary.items()}
    pattern = re.compile(r"(?<![\w'])(" + "|".join(
        re.escape(w) for w in sorted(dictionary, key=len, reverse=True)) + r")(?![\w'])", re.IGNORECASE)
    for item in items:
        if not isinstance(item, Span) or item.kind == "ipa":
            yield item
            continue
        pos = 0
        for m in pattern.finditer(item.text):
            if m.start() > pos:
                yield Span(item.text[pos:m.start()], item.style, item.kind)
            yield Span(lowered[m[1].lower()], item.style, "ipa")
            pos = m.end()
        if pos < len(item.text):
            yield Span(item.text[pos:], item.style, item.kind)


def subvoices(model_name: str, parameters: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
    """Riva's voice naming from manifest parameters: ("English-US", {"Joe": 0}).

    A Riva voice is `family.subvoice`; a multi-speaker Piper voice has one subvoice per speaker.
    """
    full = str(parameters.get("voice_name") or model_name)
    family, _, default_sub = full.rpartition(".") if "." in full else (full, "", full)
    speakers = [str(s) for s in parameters.get("subvoices") or []]
    return family, {s: i for i, s in enumerate(speakers)} if speakers else {default_sub: 0}


def voice_names(model_name: str, parameters: Mapping[str, Any]) -> dict[str, int]:
    """Every name (lower-cased) a client may ask a voice model for, with the speaker it selects:
    its full voice names ("english-us.joe"), its voice name and family, the model's name and the
    Piper file names (aliases) for the first speaker."""
    family, subs = subvoices(model_name, parameters)
    names = {f"{family}.{s}".lower(): i for s, i in subs.items()}
    for alias in [parameters.get("voice_name", ""), family, model_name, *parameters.get("voice_aliases", [])]:
        if alias:
            names.setdefault(str(alias).lower(), 0)
    return names


@dataclass(frozen=True)
class Voice:
    """A name clients can ask for, and the speaker id it selects."""

    name: str
    speaker: int


class TtsModel:
    """A loaded Piper voice: shared by every request, each request a generator of chunks."""

    def __init__(self, model: LoadedModel, pools: Pools, limits: SynthesisLimits | None = None) -> None:
        """`pools` holds the thread pool of its lanes (one per voice name, kept across reloads)."""
        params = model.manifest.parameters
        self.name = model.name
        self.manifest = model.manifest
        self.language_code = model.manifest.language_code
        if "voice_config" not in params:
            raise TtsError(f"Model {model.name} is not a Piper voice (its manifest names no voice_config).")
        self.config = VoiceConfig.load(model.path / str(params["voice_config"]))
        self.network = VoiceNetwork(model.sessions, self.config, params, model.lane_sessions)
        self.limits = limits or SynthesisLimits()
        self.lanes = max(1, model.lanes)
        """Network runs in flight at once (decoder runs side by side on the lane decoder)."""
        self._gate = RunGate(self.lanes)
        self._alone_depth = min(self.lanes, cpu_cores())
        """A stream alone splits the rest of an utterance in at most one part per core."""
        self._pool = pools.get(f"tts-{model.name}-lane", self.lanes) if self.lanes > 1 else None
        """Runs a stream's chunks beyond the one its own thread waits for."""
        self._frame_seconds = 0.001
        """Decoder seconds per frame (context included), as recently measured: sizes the chunks."""
        self.family, self.subvoices = subvoices(model.name, params)
        self._names = voice_names(model.name, params)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run every stage once (espeak's start, the networks' first runs), so that requests do
        not pay for them."""
        t0 = time.perf_counter()
        for _ in self.stream([Span("Test 1, done.")], self.sample_rate):
            pass
        _LOGGER.debug("TTS warm-up took %.2f s", time.perf_counter() - t0)

    @property
    def sample_rate(self) -> int:
        """The voice's native rate."""
        return self.config.sample_rate

    def voices(self) -> list[Voice]:
        """The full voice names ("English-US.Joe"), one per subvoice."""
        return [Voice(f"{self.family}.{s}", i) for s, i in self.subvoices.items()]

    def speaker(self, voice_name: str) -> int | None:
        """The speaker id a voice name selects here; None if this model lacks it."""
        return self._names.get(voice_name.lower()) if voice_name else 0

    def check(self, request: SynthesisRequest) -> Plan:
        """Validate a request before any work (TtsRequestError, UnknownVoiceError); its plan."""
        text = request.text
        if not text.strip():
            raise TtsRequestError("The text to synthesise is empty.")
        if len(text) > self.limits.max_text_chars:
            raise TtsRequestError(
                f"The text is {len(text)} characters long; the limit is "
                f"{self.limits.max_text_chars} (tts_max_text_chars in config.sh).")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TtsRequestError(f"The text is not valid Unicode (character {exc.start + 1} is a lone "
                                  "surrogate).") from None
        if request.sample_rate and not MIN_RATE_HZ <= request.sample_rate <= MAX_RATE_HZ:
            raise TtsRequestError(
                f"Sample rate {request.sample_rate} Hz is not supported; ask for {MIN_RATE_HZ} "
                f"to {MAX_RATE_HZ} Hz (0 gives the voice's {self.sample_rate} Hz).")
        if not RATE_RANGE[0] <= request.rate <= RATE_RANGE[1]:
            raise TtsRequestError(f"Speaking rate {request.rate:g} is outside {RATE_RANGE[0]:g} to {RATE_RANGE[1]:g}.")
        speaker = self.speaker(request.voice_name)
        if speaker is None:
            raise UnknownVoiceError(
                f"Voice {request.voice_name!r} is not available; voices: "
                f"{', '.join(v.name for v in self.voices())}.")
        items = tuple(self.parse(text))
        silence = sum(i.seconds for i in items if isinstance(i, Break))
        if silence == 0 and not any(isinstance(i, Span) and i.text.strip() for i in items):
            raise TtsRequestError("The SSML has no text to speak and no break: it is empty.")
        limit = self.audio_limit(request)
        if silence > limit.seconds:
            raise TtsRequestError(limit.refusal)
        return Plan(items, speaker, limit)

    def audio_limit(self, request: SynthesisRequest) -> AudioLimit:
        """The most audio a request may make: tts_max_audio_s, or its own `max_audio` if tighter."""
        return AudioLimit.of_duration(self.limits.max_audio_s).tighter(request.max_audio)

    def synthesize(self, request: SynthesisRequest, plan: Plan | None = None,
                   ) -> Generator[AudioChunk, None, None]:
        """Validate now (TtsRequestError) unless `plan` is its check's, then stream chunks: the
        first holds the first frames of the first clause (~0.2 s), the next as many as keep a
        real-time listener fed; TtsRequestError from the chunk whose utterance would go past the
        request's audio limit."""
        plan = plan or self.check(request)
        return self.stream(plan.items, request.sample_rate or self.sample_rate, plan.speaker,
                           request.custom_dictionary, request.rate, AudioBudget(plan.limit))

    def parse(self, text: str) -> list[Item]:
        """SSML (text starting with <speak>) or plain text as pipeline items; TtsRequestError if
        invalid or if its breaks add up to more than tts_max_breaks_s."""
        if not is_ssml(text):
            return [Span(text)]
        return parse_ssml(text, self.limits.max_breaks_s, "tts_max_breaks_s in config.sh", self.config.english)

    def stream(self, items: Iterable[Item], rate_hz: int, speaker: int = 0,
               dictionary: Mapping[str, str] | None = None, rate: float = 1.0,
               budget: AudioBudget | None = None) -> Generator[AudioChunk, None, None]:
        """Chunks for parsed items, lazily (long documents never sit whole in memory), within
        `budget` (none: unbounded)."""
        budget = budget or AudioBudget(None)
        resampler = StreamResampler(self.sample_rate, rate_hz)
        pace = Pace()
        with self._gate.stream() as first_audio:
            for unit in utterances(_apply_dictionary(items, dictionary or {}), self.config.english):
                if isinstance(unit, Break):
                    budget.take(unit.seconds)
                    pieces: Iterable[np.ndarray] = _silence(round(unit.seconds * self.sample_rate),
                                                            self.sample_rate)
                    text = ""
                else:
                    pieces = self._speak(unit, speaker, rate, pace, budget)
                    text = unit.text
                for audio in pieces:
                    out = resampler.process(audio)
                    if len(out):
                        chunk = AudioChunk(float_to_pcm16(out), rate_hz, text)
                        pace.emitted(chunk.seconds)
                        first_audio()
                        text = ""
                        yield chunk
            tail = resampler.process(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                yield AudioChunk(float_to_pcm16(tail), rate_hz)

    def _chunk_frames(self, pace: Pace, remaining: int, queued: float = 0.0, parts: int = 1) -> int:
        """Frames to decode next: few for a request's first audio, then as many as its listener's
        lead allows (`queued`: seconds of audio already being decoded ahead of this chunk),
        bounded, smaller while other requests wait for their turns. A stream alone with the lead
        for the whole rest decodes it at once, in up to `parts` runs side by side."""
        context = 2 * self.network.seam_context
        if pace.first is None:
            sharing = math.ceil(self._gate.starting / self.lanes)
            size = min(FIRST_CHUNK_FRAMES * max(1, sharing), MAX_FIRST_CHUNK_FRAMES)
        else:
            alone = self._gate.streams <= 1
            ahead = pace.ahead() + queued
            if alone and remaining + context <= self.network.max_run_frames:
                parts = max(1, min(parts, remaining // MIN_SPLIT_FRAMES))
                part = math.ceil(remaining / parts)
                if (part + context // 2) * self._frame_seconds * REST_HEADROOM <= ahead:
                    return part
            cap = MAX_CHUNK_FRAMES if alone else SHARED_CHUNK_FRAMES
            lead = ahead / HEADROOM / self._frame_seconds - context
            size = min(max(int(lead), FIRST_CHUNK_FRAMES), cap)
        # A short rest goes along: its own run would decode more context than frames.
        return remaining if remaining - size < context else size

    def _depth(self, pace: Pace) -> int:
        """How many of a stream's chunks may be decoded at once: one (its first audio, or while
        other requests share the voice), or one per lane for a stream alone."""
        return self._alone_depth if pace.first is not None and self._gate.streams <= 1 else 1

    def _decode(self, latent: Latent, start: int, stop: int, key: Key, side_by_side: bool,
                ahead: bool | None = None) -> np.ndarray:
        """Audio of frames [start, stop) in the voice's turn for `key`, after the flow (`prepare`
        with `ahead`, in the same turn; None: it already ran); on the lane decoder if
        `side_by_side` or if other runs hold or await turns."""
        with self._gate.turn(key) as shared:
            if ahead is not None:
                self.network.prepare(latent, stop, ahead)
            t1 = time.perf_counter()
            audio = self.network.decode(latent, start, stop, side_by_side or shared)
            seam = self.network.seam_context
            run = min(latent.frames, stop + seam) - max(0, start - seam)
            self._frame_seconds = 0.7 * self._frame_seconds + 0.3 * (time.perf_counter() - t1) / run
        return audio

    def _speak(self, unit: Utterance, speaker: int, rate: float, pace: Pace,
               budget: AudioBudget | None = None) -> Iterator[np.ndarray]:
        """One utterance's audio in chunks, with the unit's style applied; a long one in runs
        (phoneme_runs), each run's audio taken from the budget (if any) before it is decoded."""
        budget = budget or AudioBudget(None)
        ipa = " ".join(s.text.strip() if s.kind == "ipa" else self._phonemes(s.text) for s in unit.spans)
        runs = phoneme_runs(ipa)
        for i, (phonemes, joined) in enumerate(runs):
            tight_start = runs[i - 1][1] if i else unit.tight_start
            tight_end = joined if i < len(runs) - 1 else unit.tight_end
            yield from self._run(self.config.phoneme_ids.ids(phonemes), unit.style, speaker, rate, pace,
                                 budget, tight_start, tight_end)

    def _phonemes(self, text: str) -> str:
        """A text span's phonemes: espeak-ng's IPA in the voice's language, or, for a voice trained
        on letters (phoneme_type "text"), its lower-cased letters."""
        if self.config.phoneme_type == "text":
            return text.strip().lower()
        return phonemize_text(text, self.config.espeak_voice)

    def _run(self, ids: list[int], style: Style, speaker: int, rate: float, pace: Pace, budget: AudioBudget,
             tight_start: bool, tight_end: bool) -> Iterator[np.ndarray]:
        """One run of the voice: its encoder, then its frames decoded chunk by chunk."""
        t0 = time.perf_counter()
        # Pitch: synthesise `pitch` times longer, then squeeze back to the original length, which
        # raises the pitch by that factor while the duration stays as the rate asks.
        length = self.config.length_scale * length_scale_for(style.pitch / effective_rate(style.rate, rate))
        with self._gate.turn(pace.key()):
            latent = self.network.encode(ids, length, speaker)
        budget.take(self.network.seconds(latent) / style.pitch)
        shift = StreamResampler(round(self.sample_rate * style.pitch), self.sample_rate) \
            if style.pitch != 1.0 else None
        frame_audio = self.network.hop / self.sample_rate / style.pitch
        start, frames, samples = 0, latent.frames, 0
        leading = tight_start  # still cutting the leading silence
        # Chunks being decoded on the lanes, in order: (frames, audio), the audio made inline or
        # by a lane thread.
        inflight: deque[tuple[int, Future[np.ndarray]]] = deque()
        try:
            while start < frames or inflight:
                while start < frames and len(inflight) < self._depth(pace):
                    queued = sum(n for n, _ in inflight) * frame_audio
                    stop = start + self._chunk_frames(pace, frames - start, queued,
                                                      self._depth(pace) - len(inflight))
                    key = pace.key() if pace.first is None else (1, pace.key()[1] + queued)
                    # The flow on the rest of the utterance at once (fewer seams) while the stream
                    # is alone; while others wait for their turns, on just what this chunk needs.
                    ahead = pace.first is not None and self._gate.streams <= 1
                    depth = self._depth(pace)
                    if self._pool is None or (not inflight and depth == 1):
                        # Inline: the voice's turns stay in the gate's order, no lane thread between.
                        done: Future[np.ndarray] = Future()
                        done.set_result(self._decode(latent, start, stop, key, False, ahead))
                        inflight.append((stop - start, done))
                    else:
                        if latent.ready < min(frames, stop + self.network.seam_context):
                            with self._gate.turn(key):  # before lanes read the frames
                                self.network.prepare(latent, stop, ahead)
                        inflight.append((stop - start, self._pool.submit(
                            self._decode, latent, start, stop, key, depth > 1)))
                    start = stop
                    if inflight[-1][1].done():
                        break  # decoded inline: hand it over before planning the next
                _, future = inflight.popleft()
                audio = future.result()
                last = start >= frames and not inflight
                if shift is not None:
                    audio = shift.process(audio, last=last)
                if style.gain != 1.0:
                    audio = np.clip(audio * style.gain, -1.0, 1.0)
                if leading:
                    audio, leading = _cut_leading(audio, round(TIGHT_EDGES_S[0] * self.sample_rate))
                if tight_end and last:
                    audio = _cut_trailing(audio, round(TIGHT_EDGES_S[1] * self.sample_rate))
                samples += len(audio)
                if len(audio):
                    yield audio
        finally:  # a request that ends early: its runs not started never start, the others end
            for _, future in inflight:
                future.cancel()
            wait([future for _, future in inflight])
        _LOGGER.debug("Synthesised %d phonemes (%.2f s of audio) in %.3f s", len(ids),
                      samples / self.sample_rate, time.perf_counter() - t0)
