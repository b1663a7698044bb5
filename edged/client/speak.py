"""Speech synthesis for the command line: with a local model or a server, to a WAV file or speaker.

Long documents go paragraph by paragraph (each paragraph sentence by sentence inside the
pipeline), and audio goes to the file chunk by chunk: nothing holds a whole chapter's audio.
"""

from __future__ import annotations

import html
import logging
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edged.config import Settings
from edged.errors import ConfigError, TtsError, UnknownVoiceError
from edged.pipelines.pools import Pools
from edged.pipelines.tts import AudioChunk, SynthesisRequest, TtsModel
from edged.pipelines.tts.limits import SynthesisLimits
from edged.pipelines.tts.ssml import Boundary, Item, is_ssml
from edged.pipelines.tts.synthesizer import subvoices, voice_names

_LOGGER = logging.getLogger(__name__)


def paragraphs(path: Path) -> Iterator[str]:
    """A text file's paragraphs (blank-line separated), read lazily."""
    try:
        with open(path, encoding="utf-8") as f:
            lines: list[str] = []
            for line in f:
                if line.strip():
                    lines.append(line.strip())
                elif lines:
                    yield " ".join(lines)
                    lines = []
            if lines:
                yield " ".join(lines)
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from None


class Speaker(Protocol):
    """Where audio comes from: a local model or a server."""

    def speak(self, texts: Iterable[str], sample_rate: int, voice: str, rate: float) -> Iterator[AudioChunk]:
        """Chunks for each text in turn."""
        ...


def load_local_tts(settings: Settings, pools: Pools, voice: str = "") -> TtsModel:
    """The deployed speech synthesis model in the configured repository that has `voice` (any
    name TtsModel takes; empty: the first), loaded (its lanes on `pools`)."""
    from edged.backends import BackendOptions
    from edged.backends.probe import probe
    from edged.loader import load_model
    from edged.repository.records import current_target, list_models

    target = current_target(probe(), settings.backend)
    names: list[str] = []
    for model in list_models(settings.model_loc / "models", target):
        if model.manifest and model.manifest.pipeline == "speech_synthesis":
            known = voice_names(model.name, model.manifest.parameters)
            if not voice or voice.lower() in known:
                options = BackendOptions.from_settings(settings)
                return TtsModel(load_model(model, options), pools, SynthesisLimits.from_settings(settings))
            family, subs = subvoices(model.name, model.manifest.parameters)
            names += [f"{family}.{s}" for s in subs]
    if voice and names:
        raise UnknownVoiceError(f"Voice {voice!r} is not available; voices: {', '.join(names)}.")
    raise TtsError(f"No speech synthesis model is deployed in {settings.model_loc / 'models'}; "
                   "run `edged init`.")


@dataclass
class LocalSpeaker:
    """Synthesis in this process."""

    model: TtsModel

    def speak(self, texts: Iterable[str], sample_rate: int, voice: str, rate: float) -> Iterator[AudioChunk]:
        """One pipeline stream over all texts (each checked), so the audio flows on between them."""
        model = self.model
        texts = iter(texts)
        first = next(texts, None)
        if first is None:
            return
        plan = model.check(SynthesisRequest(first, voice, sample_rate, rate=rate))

        def items() -> Iterator[Item]:
            yield from plan.items
            for text in texts:
                yield Boundary()
                yield from model.check(SynthesisRequest(text, voice, sample_rate, rate=rate)).items

        yield from model.stream(items(), sample_rate or model.sample_rate, plan.speaker, rate=rate)


@dataclass
class RemoteSpeaker:
    """Synthesis on an edged (or Riva) server through nvidia-riva-client."""

    address: str

    def speak(self, texts: Iterable[str], sample_rate: int, voice: str, rate: float) -> Iterator[AudioChunk]:
        """SynthesizeOnline per text; a rate other than 1 is sent as SSML prosody."""
        import grpc
        import riva.client

        service = riva.client.SpeechSynthesisService(riva.client.Auth(uri=self.address))
        rate_hz = sample_rate or 22050
        for text in texts:
            if rate != 1.0:
                if is_ssml(text):
                    raise ConfigError("--rate cannot be combined with SSML; use <prosody rate> in it.")
                text = f'<speak><prosody rate="{rate * 100:g}%">{html.escape(text)}</prosody></speak>'
            try:
                # A voice named speaks its own language; without one, Riva's default language.
                for response in service.synthesize_online(text, voice_name=voice or None,
                                                          language_code="" if voice else "en-US",
                                                          sample_rate_hz=rate_hz):
                    yield AudioChunk(response.audio, rate_hz, response.meta.text)
            except grpc.RpcError as exc:
                raise TtsError(f"The server at {self.address} refused: {exc.details()}") from None


def write_wav(chunks: Iterable[AudioChunk], path: Path) -> float:
    """Stream chunks into a 16-bit mono WAV file; returns the seconds written."""
    seconds = 0.0
    writer: Any = None
    try:
        for chunk in chunks:
            if writer is None:
                writer = wave.open(str(path), "wb")  # noqa: SIM115 - opened at the first chunk, closed in finally
                writer.setnchannels(1)
                writer.setsampwidth(2)
                writer.setframerate(chunk.sample_rate)
            writer.writeframes(chunk.pcm)
            seconds += chunk.seconds
    finally:
        if writer is not None:
            writer.close()
    return seconds


def play(chunks: Iterable[AudioChunk]) -> float:
    """Play chunks on the default output device through PyAudio; returns the seconds played."""
    try:
        import pyaudio
    except ImportError:
        raise ConfigError("--play needs PyAudio: pip install 'edged[audio]'.") from None
    audio = pyaudio.PyAudio()
    stream = None
    seconds = 0.0
    try:
        for chunk in chunks:
            if stream is None:
                stream = audio.open(format=pyaudio.paInt16, channels=1, rate=chunk.sample_rate, output=True)
            stream.write(chunk.pcm)
            seconds += chunk.seconds
    finally:
        if stream is not None:
            stream.stop_stream()
            stream.close()
        audio.terminate()
    return seconds
