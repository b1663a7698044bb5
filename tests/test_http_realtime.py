"""Riva's realtime WebSocket API through nvidia-riva-client's own `riva.client.realtime` clients,
against a real `edged start` with the default models (the HTTP door on a free port)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets
from riva.client.asr import AudioChunkFileIterator
from riva.client.realtime import RealtimeClientASR, RealtimeClientTTS

from edged.client.textnorm import word_errors
from tests.test_riva_fidelity import (  # noqa: F401 - fixtures
    RARE_SENTENCE,
    RARE_WORD,
    RATE,
    beckett,
    spoken,
    voice,
)
from tests.test_server import free_port, serving

SENTENCE = "The quick brown fox jumps over the lazy dog."


@contextlib.contextmanager
def web_server(default_repo: Path, settings: str = "") -> Iterator[tuple[str, int]]:
    """`edged start` with the default models and the HTTP door (config.sh lines `settings` added);
    yields (gRPC address, HTTP port)."""
    tmp = default_repo.parent
    port, http = free_port(), free_port()
    cfg = tmp / "config-http.sh"
    cfg.write_text(f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nwyoming_enabled=false\nhttp_port={http}\n{settings}", encoding="utf-8")
    with serving(cfg, port) as address:
        yield address, http


@pytest.fixture(scope="module")
def web(default_repo: Path) -> Iterator[tuple[str, int]]:
    """`edged start` with the default models; yields (gRPC address, HTTP port)."""
    with web_server(default_repo) as server:
        yield server


def asr_args(http: int, **kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "server": f"127.0.0.1:{http}", "endpoint": "/v1/realtime", "query_params": "intent=transcription",
        "use_ssl": False, "ssl_root_cert": None, "ssl_client_cert": None, "ssl_client_key": None, "mint_api_key": None,
        "mic": True, "language_code": "en-US", "model_name": None, "prompt": None, "sample_rate_hz": RATE, "num_channels": 1,
        "max_alternatives": 1, "automatic_punctuation": True, "word_time_offsets": True, "profanity_filter": False,
        "no_verbatim_transcripts": None, "speaker_diarization": False, "boosted_lm_words": None, "boosted_lm_score": 1.0,
        "start_history": -1, "start_threshold": -1.0, "stop_history": -1, "stop_threshold": -1.0, "stop_history_eou": -1,
        "stop_threshold_eou": -1.0, "custom_configuration": None}
    base.update(kw)
    return argparse.Namespace(**base)


def wav_bytes(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return out.getvalue()


async def transcribe(args: argparse.Namespace, audio: bytes, size: int = 3200,
                     force_eou: list[bool] | None = None) -> list[dict[str, Any]]:
    """Run RealtimeClientASR over `audio`; the server's events (recorded as the client reads them)."""
    client = RealtimeClientASR(args)
    await client.connect()
    events: list[dict[str, Any]] = []
    recv = client.websocket.recv

    async def recording() -> Any:
        message = await recv()
        events.append(json.loads(message))
        return message

    client.websocket.recv = recording  # type: ignore[method-assign]
    chunks = [audio[i:i + size] for i in range(0, len(audio), size)]
    await asyncio.gather(client.send_audio_chunks(chunks, force_eou), client.receive_responses())
    await client.disconnect()
    return events


def finals(events: list[dict[str, Any]]) -> str:
    """The utterances' finals joined; checks that the last event (is_last_result) carries them all."""
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert completed[-1]["is_last_result"] and not any(e["is_last_result"] for e in completed[:-1])
    text = " ".join(e["transcript"].strip() for e in completed[:-1] if e["transcript"].strip())
    assert completed[-1]["transcript"] == text, (completed[-1], text)
    return text


def test_transcription_of_pcm16_with_interims_and_words(web: tuple[str, int], voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """pcm16 chunks as from a microphone: interim deltas, then a final with words_info and is_last_result."""
    events = asyncio.run(transcribe(asr_args(web[1]), spoken(voice, SENTENCE)))
    kinds = [e["type"] for e in events]
    assert "conversation.item.input_audio_transcription.delta" in kinds
    assert events[-1]["is_last_result"] is True
    text = finals(events)
    assert word_errors(SENTENCE, text)[0] <= 1, text
    completed = [e for e in events if e["type"].endswith(".completed") and e["transcript"]]
    words = completed[0]["words_info"]["words"]
    assert words and all(w["end_time"] >= w["start_time"] for w in words)


def test_transcription_of_a_wav_file(web: tuple[str, int]) -> None:
    """input_audio_format none: a whole file with its header, as the stock file client sends it."""
    events = asyncio.run(transcribe(asr_args(web[1], mic=False, word_time_offsets=False), wav_bytes(beckett()),
                                    size=16000))
    text = finals(events).lower()
    assert "ever tried" in text and "fail better" in text, text
    assert not any("words_info" in e for e in events)


def test_the_last_event_carries_the_whole_transcript_as_riva_scripts_keep_it(web: tuple[str, int],
                                                                            tmp_path: Path) -> None:
    """As `realtime_asr_client.py` uses the library: a WAV file's chunks (AudioChunkFileIterator),
    then `final_transcript` and `save_responses`, which keep the last completed event's text."""
    wav = tmp_path / "beckett.wav"
    wav.write_bytes(wav_bytes(beckett()))
    client = RealtimeClientASR(asr_args(web[1], mic=False, word_time_offsets=False))

    async def run() -> None:
        await client.connect()
        await asyncio.gather(client.send_audio_chunks(AudioChunkFileIterator(str(wav), 1600, delay_callback=None)),
                             client.receive_responses())
        await client.disconnect()

    asyncio.run(run())
    text = client.final_transcript.lower()
    assert "ever tried" in text and "fail better" in text and text.count("fail better") == 1, text
    client.save_responses(str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == client.final_transcript


def riva_script(name: str) -> Path:
    """A stock script of nvidia-riva/python-clients (not in the nvidia-riva-client wheel) from a
    checkout that EDGED_RIVA_CLIENTS names; skips without one."""
    root = os.environ.get("EDGED_RIVA_CLIENTS", "")
    script = Path(root) / "scripts" / name
    if not root or not script.is_file():
        pytest.skip(f"set EDGED_RIVA_CLIENTS to a checkout of nvidia-riva/python-clients to run scripts/{name}")
    return script


def test_the_stock_realtime_asr_client_prints_and_saves_the_transcript(web: tuple[str, int], tmp_path: Path) -> None:
    """NVIDIA's own `realtime_asr_client.py --input-file beckett.wav --output-text out.txt`."""
    script = riva_script("asr/realtime_asr_client.py")
    wav = tmp_path / "beckett.wav"
    wav.write_bytes(wav_bytes(beckett()))
    out = tmp_path / "out.txt"
    run = subprocess.run([sys.executable, str(script), "--input-file", str(wav), "--output-text", str(out),
                          "--server", f"127.0.0.1:{web[1]}"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    final = [line.split("Final Transcript: ", 1)[1] for line in (run.stdout + run.stderr).splitlines()
             if "Final Transcript: " in line]
    assert len(final) == 1 and "ever tried" in final[0].lower() and "fail better" in final[0].lower(), run.stderr
    assert out.read_text(encoding="utf-8") == final[0]


def test_the_stock_realtime_tts_client_writes_speech(web: tuple[str, int], tmp_path: Path) -> None:
    """NVIDIA's own `realtime_tts_client.py --input-file lines.txt --output out.wav` with its defaults
    (44.1 kHz, LINEAR_PCM, the language's first voice): the WAV it writes says both lines,
    recognised back over gRPC."""
    import riva.client

    script = riva_script("tts/realtime_tts_client.py")
    lines = tmp_path / "lines.txt"
    lines.write_text(f"{SENTENCE}\n{LATENCY_SENTENCES[1]}\n", encoding="utf-8")
    out = tmp_path / "out.wav"
    run = subprocess.run([sys.executable, str(script), "--input-file", str(lines), "--output", str(out),
                          "--server", f"127.0.0.1:{web[1]}"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    with wave.open(str(out), "rb") as w:
        rate, seconds = w.getframerate(), w.getnframes() / w.getframerate()
    assert rate == 44100 and 3 < seconds < 10, (rate, seconds, run.stderr[-2000:])
    service = riva.client.ASRService(riva.client.Auth(uri=web[0]))
    config = riva.client.RecognitionConfig(language_code="en-US", max_alternatives=1,
                                           enable_automatic_punctuation=True)
    response = service.offline_recognize(out.read_bytes(), config)
    text = " ".join(r.alternatives[0].transcript for r in response.results)
    assert word_errors(f"{SENTENCE} {LATENCY_SENTENCES[1]}", text)[0] <= 2, text


def test_force_eou_ends_an_utterance(web: tuple[str, int], voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """runtime_config.force_eou on an append ends the utterance there, as over gRPC."""
    audio = spoken(voice, SENTENCE)[: RATE * 2 * 2]  # cut mid-sentence, no trailing silence
    size = 3200
    n = (len(audio) + size - 1) // size
    events = asyncio.run(transcribe(asr_args(web[1]), audio + bytes(size), size,
                                    force_eou=[i == n - 1 for i in range(n + 1)]))
    done = [e for e in events if e["type"].endswith(".completed") and e["transcript"]]
    assert done and not done[0]["is_last_result"], events[-3:]


def test_word_boosting_and_profanity_filter_as_over_grpc(web: tuple[str, int], voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """The stock client's boosted_lm_words change the text as gRPC's speech_contexts do."""
    audio = spoken(voice, RARE_SENTENCE)
    plain = finals(asyncio.run(transcribe(asr_args(web[1]), audio)))
    assert RARE_WORD not in plain.lower(), plain
    boosted = finals(asyncio.run(transcribe(asr_args(web[1], boosted_lm_words=["Kubrix"], boosted_lm_score=20.0),
                                            audio)))
    assert RARE_WORD in boosted.lower(), boosted


def test_synthesis_streams_speech(web: tuple[str, int]) -> None:
    """RealtimeClientTTS: the session updates, speech.data chunks arrive, the last completion ends it."""
    voices = requests.get(f"http://127.0.0.1:{web[1]}/v1/audio/list_voices", timeout=10).json()
    assert "English-US.Joe" in voices["en-US"]["voices"], voices
    args = argparse.Namespace(
        server=f"127.0.0.1:{web[1]}", endpoint="/v1/realtime", query_params="intent=synthesize", use_ssl=False,
        ssl_root_cert=None, ssl_client_cert=None, ssl_client_key=None, mint_api_key=None,
        voice="English-US.Joe", language_code="en-US", sample_rate_hz=22050, encoding=None,
        custom_dictionary=None, zero_shot_audio_prompt_file=None, custom_configuration=None)

    async def run() -> list[bytes]:
        client = RealtimeClientTTS(args)
        await client.connect()

        async def texts() -> Any:
            for t in ("Hello there. ", None, "This is edged speaking.", None):
                yield t

        chunks: list[bytes] = []
        await asyncio.gather(client.send_text(texts()), client.receive_audio(chunks))
        assert not client.error_occurred
        await client.disconnect()
        return chunks

    chunks = asyncio.run(run())
    seconds = sum(len(c) for c in chunks) / 2 / 22050
    assert len(chunks) >= 2 and 1.5 < seconds < 8, seconds


def test_bad_events_get_error_events_and_the_server_carries_on(web: tuple[str, int]) -> None:
    """Malformed JSON, an unknown event and bad base64 are answered with `error` events."""
    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(f"ws://127.0.0.1:{web[1]}/v1/realtime?intent=transcription") as ws:
            got = [json.loads(await ws.recv())]
            for message in ("{not json", json.dumps({"type": "no.such.event"}),
                            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}),
                            json.dumps({"type": "transcription_session.update",
                                        "session": {"input_audio_format": "mp3"}})):
                await ws.send(message)
                got.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(bytes(3200)).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.done"}))
            got.append(json.loads(await ws.recv()))
            return got

    got = asyncio.run(run())
    assert got[0]["type"] == "conversation.created"
    assert [e["type"] for e in got[1:5]] == ["error"] * 4
    messages = [e["error"]["message"] for e in got[1:5]]
    assert "JSON" in messages[0] and "no.such.event" in messages[1] and "base64" in messages[2]
    assert "mp3" in messages[3]
    assert got[5]["is_last_result"] is True
    bad = requests.get(f"http://127.0.0.1:{web[1]}/v1/realtime?intent=dance", timeout=10)
    assert bad.status_code == 400 and "intent" in bad.json()["error"]["message"]


LATENCY_SENTENCES = ("The quick brown fox jumps over the lazy dog.",
                     "Please call me back when you have a moment to talk.",
                     "It will rain in the north tomorrow, and snow in the mountains.")
CHUNK_S = 0.1


def _grpc_final_latency(address: str, audio: bytes, speech_end_s: float) -> float:
    """Seconds from the end of speech (streamed in real time) to the first final over gRPC."""
    import time

    import riva.client

    service = riva.client.ASRService(riva.client.Auth(uri=address))
    config = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=RATE, language_code="en-US",
        max_alternatives=1, enable_automatic_punctuation=True), interim_results=True)
    size = int(RATE * 2 * CHUNK_S)
    start = time.monotonic()

    def paced() -> Iterator[bytes]:
        for i in range(0, len(audio), size):
            time.sleep(max(0.0, start + i / 2 / RATE - time.monotonic()))
            yield audio[i:i + size]

    for response in service.streaming_response_generator(paced(), config):
        if any(r.is_final for r in response.results):
            return time.monotonic() - start - speech_end_s
    raise AssertionError("no final over gRPC")


async def _ws_final_latency(http: int, audio: bytes, speech_end_s: float) -> float:
    """The same over the realtime WebSocket (pcm16 appends and commits every chunk)."""
    import time

    async with websockets.connect(f"ws://127.0.0.1:{http}/v1/realtime?intent=transcription") as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {}}))
        await ws.recv()
        size = int(RATE * 2 * CHUNK_S)
        start = time.monotonic()

        async def send() -> None:
            for i in range(0, len(audio), size):
                await asyncio.sleep(max(0.0, start + i / 2 / RATE - time.monotonic()))
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(audio[i:i + size]).decode()}))
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

        sender = asyncio.get_running_loop().create_task(send())
        try:
            while True:
                event = json.loads(await ws.recv())
                if event["type"].endswith(".completed") and event.get("transcript"):
                    return time.monotonic() - start - speech_end_s
        finally:
            sender.cancel()


def test_final_latency_over_websocket_is_grpcs(web: tuple[str, int], voice: Any) -> None:  # noqa: F811 - a fixture imported above
    """The same clips streamed in real time: the WebSocket's finals come as soon as gRPC's."""
    grpc_s, ws_s = [], []
    for sentence in LATENCY_SENTENCES:
        audio = spoken(voice, sentence)
        speech_end_s = len(audio) / 2 / RATE - 2.0  # spoken() ends with 2 s of silence
        grpc_s.append(_grpc_final_latency(web[0], audio, speech_end_s))
        ws_s.append(asyncio.run(_ws_final_latency(web[1], audio, speech_end_s)))
    print(f"final latency after end of speech (s): gRPC {[round(x, 3) for x in grpc_s]}, "
          f"WebSocket {[round(x, 3) for x in ws_s]}")
    # The fastest of each (load from elsewhere only ever adds), within half again plus a margin:
    # a door that waited for the client's next chunk, or for the stream's end, would be seconds late.
    assert min(ws_s) < 1.5 * min(grpc_s) + 0.15, (grpc_s, ws_s)


def test_first_audio_over_websocket_is_grpcs(web: tuple[str, int]) -> None:
    """Time to the first speech chunk of the same texts: realtime WebSocket against gRPC's synthesize_online."""
    import time

    import riva.client

    texts = ("Good morning, the meeting starts at nine.", "Turn left at the next corner, then go straight on.",
             "Your package will arrive on Thursday afternoon.")
    service = riva.client.SpeechSynthesisService(riva.client.Auth(uri=web[0]))

    def grpc_first(text: str) -> float:
        start = time.monotonic()
        for _ in service.synthesize_online(text, voice_name="English-US.Joe", sample_rate_hz=22050):
            return time.monotonic() - start
        raise AssertionError("no audio over gRPC")

    async def ws_first(text: str) -> float:
        async with websockets.connect(f"ws://127.0.0.1:{web[1]}/v1/realtime?intent=synthesize") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "synthesize_session.update", "session": {}}))
            await ws.recv()
            start = time.monotonic()
            await ws.send(json.dumps({"type": "input_text.append", "text": text}))
            await ws.send(json.dumps({"type": "input_text.commit"}))
            while json.loads(await ws.recv())["type"] != "conversation.item.speech.data":
                pass
            return time.monotonic() - start

    grpc_s, ws_s = [], []
    for t in texts:  # alternating, so that neither door gets a quieter machine
        grpc_s.append(grpc_first(t))
        ws_s.append(asyncio.run(ws_first(t)))
    print(f"first audio (s): gRPC {[round(x, 3) for x in grpc_s]}, WebSocket {[round(x, 3) for x in ws_s]}")
    # The fastest of each (load from elsewhere only ever adds), within half again plus a margin:
    # a door that held the first audio back (until the synthesis ended, say) would be later.
    assert min(ws_s) < 1.5 * min(grpc_s) + 0.1, (grpc_s, ws_s)


def test_appended_lines_keep_their_sentences_apart() -> None:
    """The stock TTS script's stripped lines are joined with a space between sentences, while a
    model's token stream (its own spaces, "3" "." "14") is joined as sent."""
    from edged.doors.web.realtime import appended_text

    assert appended_text(["Hello there.", "This is a second line."]) == "Hello there. This is a second line."
    assert appended_text(["Pi is 3", ".", "14", " and", " rising!", " Yes"]) == "Pi is 3.14 and rising! Yes"
