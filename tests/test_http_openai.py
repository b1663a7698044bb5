"""The OpenAI-compatible audio API through the official `openai` package, against a real
`edged start` with the default models."""

from __future__ import annotations

import io
from typing import Any

import openai
import pytest
import soundfile

from edged.client.textnorm import word_errors
from tests.test_http_realtime import SENTENCE, wav_bytes, web  # noqa: F401 - fixtures
from tests.test_riva_fidelity import beckett, spoken, voice  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def client(web: tuple[str, int]) -> openai.OpenAI:  # noqa: F811 - a fixture imported above
    return openai.OpenAI(base_url=f"http://127.0.0.1:{web[1]}/v1", api_key="unused", max_retries=0)


def test_models_list_the_deployed_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"moonshine-base-en", "piper-joe-medium"} <= ids, ids


def test_transcription_formats(client: openai.OpenAI, voice: Any) -> None:  # noqa: F811 - a fixture imported above
    wav = wav_bytes(beckett())
    text = client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav), language="en",
                                              prompt="ignored").text
    assert "ever tried" in text.lower() and "fail better" in text.lower(), text
    plain = client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav), response_format="text")
    assert str(plain).strip() == text
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("b.wav", wav), response_format="verbose_json",
        timestamp_granularities=["word", "segment"])
    assert verbose.segments and verbose.words and 9 < verbose.duration < 11
    assert all(s.end >= s.start for s in verbose.segments)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav), response_format="srt")
    assert "00:00:0" in str(srt) and " --> " in str(srt)
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav), response_format="vtt")
    assert str(vtt).startswith("WEBVTT")
    spoken_wav = wav_bytes(spoken(voice, SENTENCE))
    said = client.audio.transcriptions.create(model="moonshine-base-en", file=("s.wav", spoken_wav)).text
    assert word_errors(SENTENCE, said)[0] <= 1, said


def test_transcription_stream(client: openai.OpenAI) -> None:
    events = list(client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav_bytes(beckett())),
                                                     stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2 and events[-1].type == "transcript.text.done"
    assert events[-1].text == "".join(deltas)


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus", "pcm"])
def test_speech_formats(client: openai.OpenAI, fmt: str) -> None:
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="Hello from edged.", response_format=fmt) as response:
        data = b"".join(response.iter_bytes())
    if fmt == "pcm":
        seconds = len(data) / 2 / 22050
    else:
        if fmt == "wav":  # streamed: the header's sizes are unknown
            data = data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:40] + (len(data) - 44).to_bytes(4, "little") + data[44:]
        audio, rate = soundfile.read(io.BytesIO(data))
        seconds = len(audio) / rate
    assert 0.5 < seconds < 4, (fmt, seconds)


def test_speech_speed_and_refusals(client: openai.OpenAI) -> None:
    def length(**kw: Any) -> int:
        return len(client.audio.speech.create(model="tts-1", voice="English-US.Joe", input="One two three four five.",
                                              response_format="pcm", **kw).content)
    assert length(speed=2.0) < 0.7 * length()
    with pytest.raises(openai.BadRequestError, match="mp3"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="mp3")
    with pytest.raises(openai.NotFoundError, match="Voice"):
        client.audio.speech.create(model="tts-1", voice="Nobody", input="Hi.")
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"ID3 not really audio" * 10))
