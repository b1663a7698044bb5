"""The OpenAI-compatible audio API through the official `openai` package, against a real
`edged start` with the default models."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import soundfile

from edged.client.textnorm import word_errors
from edged.pipelines.tts.encode import mp3_frame_size
from tests.encoders import UPLOADS, encode, looped_webm, opus_bomb
from tests.test_http_realtime import SENTENCE, wav_bytes, web_server
from tests.test_riva_fidelity import RATE, beckett, spoken, voice  # noqa: F401 - fixtures

MAX_AUDIO_S = 120
"""The server's asr_max_audio_seconds here: a bomb past it is refused within seconds."""
MISSING = "English-US.Nobody"
"""The voice the server's openai_voice_map gives `onyx`: not deployed."""


@pytest.fixture(scope="module")
def web(default_repo: Path) -> Iterator[tuple[str, int]]:
    """`edged start` with the default models and a 2-minute audio limit."""
    with web_server(default_repo, f'asr_max_audio_seconds={MAX_AUDIO_S}\nopenai_voice_map="onyx={MISSING}"\n') as server:
        yield server


@pytest.fixture(scope="module")
def client(web: tuple[str, int]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{web[1]}/v1", api_key="unused", max_retries=0)


def test_models_list_the_deployed_models_with_what_they_do(client: openai.OpenAI) -> None:
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert set(models) == {"moonshine-base-en", "piper-joe-medium"}, models
    asr, tts = models["moonshine-base-en"], models["piper-joe-medium"]
    assert asr["owned_by"] == "edged" and asr["object"] == "model"
    assert (asr["task"], asr["tasks"], asr["languages"]) == ("transcribe", ["transcribe"], ["en-US"])
    assert (tts["task"], tts["voices"], tts["languages"]) == ("speech", ["English-US.Joe"], ["en-US"])


def test_voices_listed_and_openai_names_mapped(client: openai.OpenAI) -> None:
    """GET /v1/audio/voices: the deployed voice with its language, and the table OpenAI's names go
    by (the map's `onyx`, the rest dealt round the one voice); an OpenAI name speaks as its voice."""
    body = client.get("/audio/voices", cast_to=object)
    assert isinstance(body, dict)
    assert body["voices"] == [{"id": "English-US.Joe", "name": "English-US.Joe", "language": "en-US",
                               "model": "piper-joe-medium", "sample_rate": 22050}]
    table = body["openai_voices"]
    assert table.pop("onyx") == MISSING and len(table) == 10 and set(table.values()) == {"English-US.Joe"}

    def pcm(name: str) -> bytes:
        return client.audio.speech.create(model="tts-1", voice=name, input="Seven.", response_format="pcm").content
    echo, joe = len(pcm("echo")), len(pcm("English-US.Joe"))
    assert joe > 0 and abs(echo - joe) < 0.25 * joe  # Piper's durations vary a little from run to run
    with pytest.raises(openai.NotFoundError, match=f"{MISSING}.*openai_voice_map maps 'onyx'"):
        client.audio.speech.create(model="tts-1", voice="onyx", input="Hi.")


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the openai package marks translations so
def test_translation_and_aac_refused_with_what_is_offered(client: openai.OpenAI, voice: Any) -> None:  # noqa: F811 - a fixture imported above
    wav = wav_bytes(spoken(voice, SENTENCE))
    with pytest.raises(openai.BadRequestError, match="No deployed model can translate.*moonshine-base-en") as refused:
        client.audio.translations.create(model="whisper-1", file=("s.wav", wav))
    assert isinstance(refused.value.body, dict) and "\n" not in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="'aac' is not offered.*no AAC encoder.*mp3, opus, wav, pcm, flac"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="aac")


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_every_endpoint_through_the_async_client(web: tuple[str, int], voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """openai.AsyncOpenAI: models, voices, speech (an OpenAI voice name, streamed), transcription
    of that speech, and the translation refusal."""
    wav = wav_bytes(spoken(voice, SENTENCE))

    async def run() -> tuple[set[str], Any, bytes, str, str]:
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{web[1]}/v1", api_key="unused",
                                      max_retries=0) as aclient:
            ids = {m.id async for m in aclient.models.list()}
            voices = await aclient.get("/audio/voices", cast_to=object)
            async with aclient.audio.speech.with_streaming_response.create(
                    model="tts-1", voice="nova", input=SENTENCE) as response:
                mp3 = b"".join([part async for part in response.iter_bytes()])
            said = (await aclient.audio.transcriptions.create(model="whisper-1", file=("s.mp3", mp3))).text
            try:
                await aclient.audio.translations.create(model="whisper-1", file=("s.wav", wav))
                refusal = ""
            except openai.BadRequestError as exc:
                refusal = str(exc)
            return ids, voices, mp3, said, refusal

    ids, voices, mp3, said, refusal = asyncio.run(run())
    assert "piper-joe-medium" in ids and voices["openai_voices"]["nova"] == "English-US.Joe"
    assert mp3_frame_size(mp3) is not None and word_errors(SENTENCE, said)[0] <= 1, said
    assert "No deployed model can translate" in refusal


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


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac", "opus", "pcm"])
def test_speech_formats(client: openai.OpenAI, fmt: str) -> None:
    """Each format decodes to speech of about the PCM's length (the voice's durations vary a little
    from one request to the next)."""
    pcm = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm").content
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt) as response:
        data = b"".join(response.iter_bytes())
        kind = response.headers["content-type"]
    if fmt == "pcm":
        audio, rate = np.frombuffer(data, "<i2") / 32768, 22050
    else:
        if fmt == "wav":  # streamed: the header's sizes are unknown
            data = data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:40] + (len(data) - 44).to_bytes(4, "little") + data[44:]
        audio, rate = soundfile.read(io.BytesIO(data))
    assert rate == (24000 if fmt == "opus" else 22050)
    assert kind == {"mp3": "audio/mpeg", "opus": "audio/ogg", "pcm": "audio/pcm"}.get(fmt, f"audio/{fmt}")
    assert 0.85 < (len(audio) / rate) / (len(pcm) / 2 / 22050) < 1.15, (fmt, len(audio) / rate, len(pcm) / 2 / 22050)
    assert np.sqrt(np.mean(np.square(audio))) > 0.01  # speech, not silence


def test_speech_is_mp3_unless_asked_otherwise(client: openai.OpenAI, voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """No response_format (the openai package sends none unless told): MP3, as OpenAI answers; it
    is recognised back as the sentence."""
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE).content
    assert mp3_frame_size(data) is not None, data[:16]
    audio, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == 22050 and 1.5 < len(audio) / rate < 5
    said = client.audio.transcriptions.create(model="whisper-1", file=("s.mp3", data)).text
    assert word_errors(SENTENCE, said)[0] <= 1, said


def test_speech_speed_and_refusals(client: openai.OpenAI) -> None:
    def length(**kw: Any) -> int:
        return len(client.audio.speech.create(model="tts-1", voice="English-US.Joe", input="One two three four five.",
                                              response_format="pcm", **kw).content)
    assert length(speed=2.0) < 0.7 * length()
    with pytest.raises(openai.BadRequestError, match="mp3, opus"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="wma")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="'Nobody' is not available; voices: English-US.Joe .en-US..*OpenAI"):
        client.audio.speech.create(model="tts-1", voice="Nobody", input="Hi.")
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"ID3 not really audio" * 10))


@pytest.mark.parametrize("ext", list(UPLOADS))
def test_transcription_of_compressed_uploads(client: openai.OpenAI, voice: Any, ext: str) -> None:  # noqa: F811 - a fixture imported above
    """A sentence in edged's voice, encoded by a real encoder, is recognised with the words of its WAV."""
    pcm = spoken(voice, SENTENCE)
    of_wav = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav_bytes(pcm))).text
    data = encode(pcm, RATE, ext)
    said = client.audio.transcriptions.create(model="whisper-1", file=(f"s.{ext}", data)).text
    assert word_errors(of_wav, said)[0] == 0, (ext, of_wav, said)
    assert word_errors(SENTENCE, said)[0] <= 1, said
    events = list(client.audio.transcriptions.create(model="whisper-1", file=(f"s.{ext}", data), stream=True))
    assert events[-1].type == "transcript.text.done" and word_errors(of_wav, events[-1].text)[0] == 0


def _refusal(client: openai.OpenAI, name: str, data: bytes) -> str:
    """The one-line message of the 400 an upload gets."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="whisper-1", file=(name, data))
    message = refused.value.body["message"] if isinstance(refused.value.body, dict) else str(refused.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_bad_uploads_get_one_line_and_leave_the_server_well(client: openai.OpenAI, voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """Truncated and corrupt files of each format, a zip renamed .webm, MP4 (which edged does not
    decode), and small Ogg and WebM files that unpack to past the limit: each a one-line 400
    naming the format; then the server still recognises."""
    pcm = spoken(voice, SENTENCE)
    for ext, name in (("mp3", "MP3"), ("ogg", "Ogg"), ("oga", "Ogg"), ("webm", "WebM")):
        data = encode(pcm, RATE, ext)
        assert name in _refusal(client, f"cut.{ext}", data[:40])
        if ext == "webm":  # cut within its audio: libsndfile decodes what arrived of the others
            assert "WebM file is cut short" in _refusal(client, f"cut.{ext}", data[:len(data) // 2])
        corrupt = data[:16] + bytes(b ^ 0x5A for b in data[16:])  # the right start, garbage after
        assert name in _refusal(client, f"bad.{ext}", corrupt)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", bytes(50_000_000))  # 50 MB of zeros in ~50 KB
    assert "'bomb.webm' is not audio edged can read" in _refusal(client, "bomb.webm", zipped.getvalue())
    assert _refusal(client, "phone.m4a", b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + bytes(2000)) == (
        "MP4 (M4A) audio is not supported; send WAV, FLAC, MP3, Ogg (Vorbis, Opus) or WebM (Opus).")
    long = opus_bomb(MAX_AUDIO_S + 30)
    assert len(long) < 40_000
    assert f"limit of {MAX_AUDIO_S} s" in _refusal(client, "long.ogg", long)
    looped = looped_webm(encode(pcm, RATE, "webm"), (MAX_AUDIO_S + 30) * 50)
    assert f"limit of {MAX_AUDIO_S} s" in _refusal(client, "long.webm", looped)
    said = client.audio.transcriptions.create(model="whisper-1", file=("s.webm", encode(pcm, RATE, "webm"))).text
    assert word_errors(SENTENCE, said)[0] <= 1, said


def test_speech_as_server_sent_events_with_instructions_ignored(client: openai.OpenAI, voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """stream_format=sse: the mp3 in base64 `speech.audio.delta` events, then `speech.audio.done`;
    `instructions` is accepted (and changes nothing)."""
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=SENTENCE, instructions="Speak cheerfully.",
            stream_format="sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[-1:]] == ["speech.audio.done"] and len(events) >= 2
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    data = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert mp3_frame_size(data) is not None
    said = client.audio.transcriptions.create(model="whisper-1", file=("s.mp3", data)).text
    assert word_errors(SENTENCE, said)[0] <= 1, said


def test_bench_formats(web: tuple[str, int], voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """`edged bench formats`' library call, shortened to one round of a sentence: recognised in every
    format with the WAV's words (MP3 within a word), times measured."""
    from edged.client.formatbench import UPLOADS, bench_formats

    pcm = spoken(voice, SENTENCE)
    report = bench_formats(f"http://127.0.0.1:{web[1]}", "", (pcm, RATE), runs=1)
    assert report.clip_s == round(len(pcm) / 2 / RATE, 2) and [u.format for u in report.uploads] == list(UPLOADS)
    for upload in report.uploads:
        assert upload.p50_ms > 0 and upload.wav_p50_ms > 0 and upload.bytes < report.wav_bytes
        assert upload.word_errors <= (1 if upload.format == "mp3" else 0), upload
    assert 0 < report.mp3_first_byte_p50_ms < 5000
    assert "first byte p50" in report.text() and json.loads(report.json())["uploads"][0]["over_wav_ms"] is not None


def test_diarized_json_without_a_speaker_model_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav_bytes(beckett()[:RATE * 4])),
                                           response_format="diarized_json")
    message = caught.value.body["message"] if isinstance(caught.value.body, dict) else str(caught.value)
    assert "models_speaker" in message and "\n" not in message
    plain = client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav_bytes(beckett()[:RATE * 4])),
                                               response_format="verbose_json")
    assert plain.segments and all("speaker" not in (s.model_extra or {}) for s in plain.segments)
