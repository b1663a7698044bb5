"""OpenAI's Realtime API for transcription through the `openai` package's own realtime client
(`client.realtime.connect(extra_query={"intent": "transcription"})`, async and sync), against a
real `edged start` with the default models, streaming edged's own speech as pcm16 at 24 kHz."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from openai.types.realtime import SessionCreatedEvent

from edged.client.textnorm import word_errors
from edged.pipelines.tts import SynthesisRequest
from tests.test_http_realtime import web_server
from tests.test_riva_fidelity import voice  # noqa: F401 - a fixture

PCM_RATE = 24000
FIRST = "The quick brown fox jumps over the lazy dog."
SECOND = "Please call me back when you have a moment to talk."
CHUNK = PCM_RATE * 2 // 10  # 100 ms of pcm16
MAX_MB = 1
"""The server's max_message_mb: the bound on audio held between commits."""


@pytest.fixture(scope="module")
def http(default_repo: Path) -> Iterator[int]:
    """`edged start` with the default models and max_message_mb=1; yields its HTTP port."""
    with web_server(default_repo, f"max_message_mb={MAX_MB}\n") as (_, port):
        yield port


def speech24(voice: Any, text: str, silence_s: float = 1.5) -> bytes:  # noqa: F811 - the fixture's type
    """pcm16 at 24 kHz of `text` in edged's voice, with `silence_s` of silence after."""
    audio = b"".join(c.pcm for c in voice.synthesize(SynthesisRequest(text, sample_rate=PCM_RATE)))
    return bytes(PCM_RATE // 4 * 2) + audio + bytes(int(PCM_RATE * silence_s) * 2)


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


def session(turn_detection: dict[str, Any] | None) -> Any:
    """A session.update's session as OpenAI's docs write it (a model edged does not deploy)."""
    return {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": PCM_RATE},
        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
        "turn_detection": turn_detection}}}


def test_async_client_with_server_vad_gets_each_utterance(http: int, voice: Any) -> None:  # noqa: F811 - a fixture
    """Two sentences streamed in 100 ms appends, no commit: server VAD (edged's endpointing) ends
    each, with speech_started, speech_stopped, committed, deltas and completed on one item."""
    audio = speech24(voice, FIRST) + speech24(voice, SECOND)

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="unused")
        events: list[Any] = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session=session({"type": "server_vad", "silence_duration_ms": 500}))

            async def send() -> None:
                for i in range(0, len(audio), CHUNK):
                    await conn.input_audio_buffer.append(audio=b64(audio[i:i + CHUNK]))

            sender = asyncio.get_running_loop().create_task(send())
            async for event in conn:
                events.append(event)
                assert event.type != "error", event
                if sum(e.type == "conversation.item.input_audio_transcription.completed" for e in events) == 2:
                    break
            await sender
        return events

    events = asyncio.run(asyncio.wait_for(run(), 60))
    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and kinds[1] == "session.updated", kinds[:3]
    created = events[0]
    assert isinstance(created, SessionCreatedEvent), created
    assert created.session.id == events[1].session.id and created.session.id, (created, events[1])
    assert created.session.audio.input.format.rate == PCM_RATE and created.session.type == "transcription"
    assert events[1].session.audio.input.format.rate == PCM_RATE
    completed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    for expected, done in zip((FIRST, SECOND), completed, strict=True):
        assert word_errors(expected, done.transcript)[0] <= 1, done.transcript
        mine = [e.type for e in events if getattr(e, "item_id", None) == done.item_id]
        assert mine[0] == "input_audio_buffer.speech_started", mine
        assert mine[-3:] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                             "conversation.item.input_audio_transcription.completed"], mine
        deltas = "".join(e.delta for e in events if e.type.endswith(".delta") and e.item_id == done.item_id)
        assert deltas and word_errors(deltas, done.transcript)[0] <= 3, (deltas, done.transcript)
    committed = [e for e in events if e.type == "input_audio_buffer.committed"]
    assert committed[0].previous_item_id is None and committed[1].previous_item_id == completed[0].item_id
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    first_s = len(speech24(voice, FIRST)) / 2 / PCM_RATE
    assert 0 < stopped[0].audio_end_ms / 1000 < first_s < stopped[1].audio_end_ms / 1000, stopped


def test_sync_client_without_turn_detection_transcribes_each_commit(http: int, voice: Any) -> None:  # noqa: F811 - a fixture
    """turn_detection null: the audio is held until input_audio_buffer.commit, which ends the utterance."""
    audio = speech24(voice, FIRST, silence_s=0.0)  # no trailing silence: only the commit ends it
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="unused")
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        conn.session.update(session=session(None))
        for i in range(0, len(audio), CHUNK):
            conn.input_audio_buffer.append(audio=b64(audio[i:i + CHUNK]))
        conn.input_audio_buffer.commit()
        events = []
        for event in conn:
            events.append(event)
            if event.type in ("conversation.item.input_audio_transcription.completed", "error"):
                break
    kinds = [e.type for e in events]
    assert "input_audio_buffer.speech_started" not in kinds, kinds  # no VAD events without turn detection
    committed = next(e for e in events if e.type == "input_audio_buffer.committed")
    assert events[-1].type == "conversation.item.input_audio_transcription.completed", events[-1]
    assert events[-1].item_id == committed.item_id
    assert word_errors(FIRST, events[-1].transcript)[0] <= 1, events[-1].transcript
    assert events[-1].usage.type == "duration" and events[-1].usage.seconds > 1


def test_bad_events_get_one_line_errors_and_the_session_goes_on(http: int, voice: Any) -> None:  # noqa: F811 - a fixture
    """An unknown event, a speech session, malformed base64, an empty commit and appends past
    max_message_mb each get an OpenAI `error` event; the same connection then transcribes."""
    audio = speech24(voice, FIRST, silence_s=0.0)
    second = np.zeros(PCM_RATE * 2 // 4, dtype=np.int16).tobytes()  # 0.25 s

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="unused")
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session={"type": "realtime"})  # speech-to-speech: not served
            await conn.session.update(session=session(None))
            await conn.send({"type": "response.create"})
            await conn.input_audio_buffer.append(audio="%%% not base64")
            await conn.input_audio_buffer.commit()  # nothing held yet
            big = bytes(MAX_MB * 2**20 // 2)
            for _ in range(3):  # 1.5 MiB held without a commit: the third append is refused
                await conn.input_audio_buffer.append(audio=b64(big))
            await conn.input_audio_buffer.clear()
            for i in range(0, len(audio), CHUNK):
                await conn.input_audio_buffer.append(audio=b64(audio[i:i + CHUNK]))
            await conn.input_audio_buffer.append(audio=b64(second))
            await conn.session.update(session=session({"type": "server_vad"}))  # too late: audio was sent
            await conn.input_audio_buffer.commit()
            events = []
            async for event in conn:
                events.append(event)
                if event.type == "conversation.item.input_audio_transcription.completed":
                    break
            return events

    events = asyncio.run(asyncio.wait_for(run(), 60))
    errors = [e.error.message for e in events if e.type == "error"]
    assert all("\n" not in m for m in errors), errors
    assert len(errors) == 6, errors
    assert "transcription" in errors[0] and "response.create" in errors[1] and "base64" in errors[2], errors
    assert "empty" in errors[3] and "max_message_mb" in errors[4] and "once audio" in errors[5], errors
    assert all(e.event_id for e in events if e.type == "error")
    assert word_errors(FIRST, events[-1].transcript)[0] <= 1, events[-1].transcript


def test_riva_clients_are_still_served_beside(http: int) -> None:
    """The first event picks the dialect: Riva's transcription_session.update gets Riva's answer."""
    import json

    import websockets

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(f"ws://127.0.0.1:{http}/v1/realtime?intent=transcription") as ws:
            got = [json.loads(await ws.recv())]
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {}}))
            got.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "session.update", "session": {}}))  # OpenAI's: not Riva's
            got.append(json.loads(await ws.recv()))
            return got

    got = asyncio.run(run())
    assert [e["type"] for e in got] == ["conversation.created", "transcription_session.updated", "error"], got
    assert got[1]["session"]["input_audio_params"]["sample_rate_hz"] == 16000


def test_an_openai_client_without_the_sdk_headers_is_told_by_its_first_event(http: int) -> None:
    """No OpenAI SDK header: Riva's greeting first, then the first event (session.update) picks
    OpenAI's dialect, which announces its session before the update's answer."""
    import json

    import websockets

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(f"ws://127.0.0.1:{http}/v1/realtime?intent=transcription") as ws:
            got = [json.loads(await ws.recv())]
            await ws.send(json.dumps({"type": "session.update", "session": session(None)}))
            got += [json.loads(await ws.recv()), json.loads(await ws.recv())]
            return got

    got = asyncio.run(run())
    assert [e["type"] for e in got] == ["conversation.created", "session.created", "session.updated"], got
    assert got[1]["session"]["id"] == got[2]["session"]["id"], got
    assert got[2]["session"]["audio"]["input"]["turn_detection"] is None, got


def mulaw(pcm: bytes) -> bytes:
    """pcm16 as G.711 mu-law bytes (the segment encoder of ITU-T G.711)."""
    s = np.clip(np.frombuffer(pcm, dtype=np.int16).astype(np.int32), -32635, 32635)
    magnitude = np.abs(s) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(np.where(s < 0, 0x80, 0) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def test_beta_client_with_g711_is_served_its_own_session_events(http: int, voice: Any) -> None:  # noqa: F811 - a fixture
    """`client.beta.realtime.connect` (its OpenAI-Beta header) with transcription_session.update and
    g711_ulaw at 8 kHz: transcription_session.updated in the flat beta shape, then the utterance."""
    pcm = b"".join(c.pcm for c in voice.synthesize(SynthesisRequest(FIRST, sample_rate=8000)))
    audio = mulaw(bytes(8000 // 4 * 2) + pcm + bytes(8000 * 3 // 2 * 2))

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="unused",
                                    websocket_base_url=f"ws://127.0.0.1:{http}/v1")  # the beta's default is wss
        events: list[Any] = []
        async with client.beta.realtime.connect(model="gpt-4o-transcribe",
                                                extra_query={"intent": "transcription"}) as conn:
            await conn.transcription_session.update(session={
                "input_audio_format": "g711_ulaw", "input_audio_transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}})
            for i in range(0, len(audio), 800):  # 100 ms of 8 kHz mu-law
                await conn.input_audio_buffer.append(audio=b64(audio[i:i + 800]))
            async for event in conn:
                events.append(event)
                if event.type in ("conversation.item.input_audio_transcription.completed", "error"):
                    break
        return events

    events = asyncio.run(asyncio.wait_for(run(), 60))
    updated = next(e for e in events if e.type == "transcription_session.updated")
    created = events[0]  # the beta types have no class for it: the client keeps its session a dict
    assert created.type == "transcription_session.created", events[:2]
    assert created.session["id"] == updated.session.id and updated.session.id, (created, updated)
    assert created.session["object"] == "realtime.transcription_session", created
    assert created.session["input_audio_format"] == "pcm16" and created.session["turn_detection"], created
    assert updated.session.input_audio_format == "g711_ulaw", updated
    assert updated.session.turn_detection.silence_duration_ms == 500, updated
    assert events[-1].type == "conversation.item.input_audio_transcription.completed", events[-1]
    assert word_errors(FIRST, events[-1].transcript)[0] <= 1, events[-1].transcript
