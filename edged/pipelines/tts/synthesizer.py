"""TtsModel: a loaded voice that turns a request into a stream of PCM chunks at the asked rate."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edged.audio.resample import StreamResampler, float_to_pcm16, resample
from edged.errors import TtsRequestError, UnknownVoiceError
from edged.loader import LoadedModel
from edged.pipelines.tts.phonemes import phonemize_text
from edged.pipelines.tts.segment import Utterance, utterances
from edged.pipelines.tts.ssml import Break, Item, Span, Style, is_ssml, parse_ssml
from edged.pipelines.tts.voice import VoiceConfig, VoiceNetwork

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


_FIXED_DURATION_SHARE = 0.27
"""Share of a VITS utterance's length that length_scale does not stretch: every phoneme id
(pads included) lasts at least one frame after the duration predictor's ceiling. Measured on
en_US-joe-medium: 0.5, 1 and 2 give 2.85, 4.38 and 7.70 s for one 95-phoneme sentence."""
_MIN_LENGTH_SCALE = 0.1


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


@dataclass(frozen=True)
class Voice:
    """A name clients can ask for, and the speaker id it selects."""

    name: str
    speaker: int


class TtsModel:
    """A loaded Piper voice: shared by every request, each request a generator of chunks."""

    def __init__(self, model: LoadedModel, max_text_chars: int = 10000) -> None:
        params = model.manifest.parameters
        self.name = model.name
        self.language_code = model.manifest.language_code
        self.config = VoiceConfig.load(model.path / str(params["voice_config"]))
        self.network = VoiceNetwork(model.sessions["voice"], self.config)
        self.max_text_chars = max_text_chars
        self.family, self.subvoices = subvoices(model.name, params)
        self._names: dict[str, int] = {f"{self.family}.{s}".lower(): i for s, i in self.subvoices.items()}
        for alias in [params.get("voice_name", ""), self.family, model.name,
                      *params.get("voice_aliases", [])]:
            if alias:
                self._names.setdefault(str(alias).lower(), 0)

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

    def check(self, request: SynthesisRequest) -> int:
        """Validate a request before any work; returns the speaker id."""
        if not request.text.strip():
            raise TtsRequestError("The text to synthesise is empty.")
        if len(request.text) > self.max_text_chars:
            raise TtsRequestError(
                f"The text is {len(request.text)} characters long; the limit is "
                f"{self.max_text_chars} (tts_max_text_chars in config.sh).")
        if request.sample_rate and not MIN_RATE_HZ <= request.sample_rate <= MAX_RATE_HZ:
            raise TtsRequestError(
                f"Sample rate {request.sample_rate} Hz is not supported; ask for {MIN_RATE_HZ} "
                f"to {MAX_RATE_HZ} Hz (0 gives the voice's {self.sample_rate} Hz).")
        if not 0.25 <= request.rate <= 4.0:
            raise TtsRequestError(f"Speaking rate {request.rate:g} is outside 0.25 to 4.")
        speaker = self.speaker(request.voice_name)
        if speaker is None:
            raise UnknownVoiceError(
                f"Voice {request.voice_name!r} is not available; voices: "
                f"{', '.join(v.name for v in self.voices())}.")
        return speaker

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        """Validate now (TtsRequestError), then stream chunks: the first after the first clause."""
        speaker = self.check(request)
        return self.stream(self.parse(request.text), request.sample_rate or self.sample_rate, speaker,
                           request.custom_dictionary, request.rate)

    @staticmethod
    def parse(text: str) -> list[Item]:
        """SSML (text starting with <speak>) or plain text as pipeline items; TtsRequestError if invalid."""
        return parse_ssml(text) if is_ssml(text) else [Span(text)]

    def stream(self, items: Iterable[Item], rate_hz: int, speaker: int = 0,
               dictionary: Mapping[str, str] | None = None, rate: float = 1.0) -> Iterator[AudioChunk]:
        """Chunks for parsed items, lazily (long documents never sit whole in memory)."""
        resampler = StreamResampler(self.sample_rate, rate_hz)
        for unit in utterances(_apply_dictionary(items, dictionary or {})):
            if isinstance(unit, Break):
                audio = np.zeros(round(unit.seconds * self.sample_rate), dtype=np.float32)
                text = ""
            else:
                audio = self._speak(unit, speaker, rate)
                text = unit.text
            out = resampler.process(audio)
            if len(out):
                yield AudioChunk(float_to_pcm16(out), rate_hz, text)
        tail = resampler.process(np.zeros(0, dtype=np.float32), last=True)
        if len(tail):
            yield AudioChunk(float_to_pcm16(tail), rate_hz)

    def _speak(self, unit: Utterance, speaker: int, rate: float) -> np.ndarray:
        """One network run, with the unit's style applied."""
        t0 = time.perf_counter()
        voice = self.config.espeak_voice
        ipa = " ".join(s.text.strip() if s.kind == "ipa" else phonemize_text(s.text, voice)
                       for s in unit.spans)
        ids = self.config.phoneme_ids.ids(ipa)
        style: Style = unit.style
        # Pitch: synthesise `pitch` times longer, then squeeze back to the original length, which
        # raises the pitch by that factor while the duration stays as the rate asks.
        length = self.config.length_scale * length_scale_for(style.pitch / (style.rate * rate))
        audio = self.network.infer(ids, length, speaker)
        if style.pitch != 1.0:
            audio = resample(audio, round(self.sample_rate * style.pitch), self.sample_rate)
        if style.gain != 1.0:
            audio = np.clip(audio * style.gain, -1.0, 1.0)
        _LOGGER.debug("Synthesised %d phonemes (%.2f s of audio) in %.3f s", len(ids),
                      len(audio) / self.sample_rate, time.perf_counter() - t0)
        return audio
