"""The HTTP door refuses what it cannot serve with one clear line and stays up: too many sessions
(the services' admission limits), oversized bodies and messages, audio it cannot decode, idle
conversations, a missing API key."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import websockets

from tests.test_http_realtime import asr_args, transcribe, wav_bytes
from tests.test_riva_fidelity import beckett
from tests.test_server import deployed_tiny, free_port, serving  # noqa: F401 - deployed_tiny: a fixture

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def tight(default_repo: Path) -> Iterator[int]:
    """`edged start` with one ASR stream, 1 MiB messages, a 3 s idle timeout and an API key; its HTTP port."""
    tmp = default_repo.parent
    port, http = free_port(), free_port()
    cfg = tmp / "config-tight.sh"
    cfg.write_text(f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f'metrics_port=0\nwyoming_enabled=false\nhttp_port={http}\nasr_max_streams=1\nmax_message_mb=1\n'
                   f'asr_stream_idle_timeout_s=3\napi_key="{KEY}"\n', encoding="utf-8")
    with serving(cfg, port) as _:
        yield http


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_api_key_is_required(tight: int) -> None:
    """Without the key: 401 on HTTP and a refused WebSocket; with a minted secret the stock client works."""
    bad = requests.post(f"http://127.0.0.1:{tight}/v1/realtime/transcription_sessions", json={}, timeout=10)
    assert bad.status_code == 401 and "api_key" in bad.json()["detail"]
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async def connect() -> None:
            await websockets.connect(f"ws://127.0.0.1:{tight}/v1/realtime?intent=transcription")
        asyncio.run(connect())
    events = asyncio.run(transcribe(asr_args(tight, mint_api_key=KEY, mic=False), wav_bytes(beckett()), 16000))
    assert "fail better" in " ".join(e.get("transcript", "") for e in events).lower()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{tight}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_too_many_sessions_are_refused_and_counted(tight: int) -> None:
    """A second transcription beyond asr_max_streams=1 gets a rate-limit error event, then a clean close."""
    async def run() -> tuple[dict[str, Any], Any]:
        url = f"ws://127.0.0.1:{tight}/v1/realtime?intent=transcription"
        update = json.dumps({"type": "transcription_session.update", "session": {}})
        async with websockets.connect(url, additional_headers=headers()) as first:
            await first.recv()
            for _ in range(2):  # a second update reopens the session in the same slot
                await first.send(update)
                assert json.loads(await first.recv())["type"] == "transcription_session.updated"
            status = requests.get(f"http://127.0.0.1:{tight}/v1/edged/status", headers=headers(), timeout=10).json()  # noqa: ASYNC210 - the server runs in another process
            async with websockets.connect(url, additional_headers=headers()) as second:
                await second.recv()
                await second.send(update)
                refused = json.loads(await second.recv())
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await second.recv()
                return refused, status

    refused, status = asyncio.run(run())
    assert refused["type"] == "error" and refused["error"]["type"] == "rate_limit_error", refused
    assert "1" in refused["error"]["message"]
    asr = next(s for s in status["streams"] if s["service"] == "asr")
    assert asr["active"] == 1 and asr["limit"] == 1
    after = requests.get(f"http://127.0.0.1:{tight}/v1/edged/status", headers=headers(), timeout=10).json()
    assert not next(s for s in after["streams"] if s["service"] == "asr").get("active"), after["streams"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{tight}/v1", api_key=KEY, max_retries=0)
    assert "fail better" in client.audio.transcriptions.create(model="x", file=("b.wav", wav_bytes(beckett()))).text.lower()


def test_oversized_bodies_and_messages(tight: int) -> None:
    """A body or a WebSocket message over max_message_mb: 413 / a closed socket, one line, server unharmed."""
    big = bytes(2 * 2**20)
    r = requests.post(f"http://127.0.0.1:{tight}/v1/audio/transcriptions", headers=headers(),
                      files={"file": ("big.wav", big)}, timeout=30)
    assert r.status_code == 413 and "max_message_mb" in r.json()["error"]["message"]

    async def run() -> Any:
        async with websockets.connect(f"ws://127.0.0.1:{tight}/v1/realtime?intent=transcription",
                                      additional_headers=headers(), max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(big).decode()}))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            return closed.value

    closed = asyncio.run(run())
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    assert requests.get(f"http://127.0.0.1:{tight}/v1/models", headers=headers(), timeout=10).ok


def test_undecodable_audio_and_idle_conversations(tight: int) -> None:
    """A file that is no WAV or FLAC ends the conversation with an invalid_request error; so does silence
    from the client for asr_stream_idle_timeout_s; audio held uncommitted beyond max_message_mb is
    refused chunk by chunk; unknown routes get this door's JSON errors."""
    async def run(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        got = []
        async with websockets.connect(f"ws://127.0.0.1:{tight}/v1/realtime?intent=transcription",
                                      additional_headers=headers()) as ws:
            for m in messages:
                await ws.send(json.dumps(m))
            try:
                while True:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            except websockets.exceptions.ConnectionClosed:
                return got

    garbage = base64.b64encode(b"ID3 this is not audio at all" * 100).decode()
    got = asyncio.run(run([{"type": "transcription_session.update", "session": {"input_audio_format": "none"}},
                           {"type": "input_audio_buffer.append", "audio": garbage},
                           {"type": "input_audio_buffer.commit"}]))
    assert got[-1]["type"] == "error" and got[-1]["error"]["type"] == "invalid_request_error", got
    chunk = base64.b64encode(bytes(400_000)).decode()  # 533 kB messages, under the 1 MiB message limit
    appended = asyncio.run(run([{"type": "input_audio_buffer.append", "audio": chunk}] * 3))
    refusals = [e for e in appended if e["type"] == "error" and "max_message_mb" in e["error"]["message"]]
    assert len(refusals) == 1 and "dropped" in refusals[0]["error"]["message"], appended
    idle = asyncio.run(run([]))
    assert idle[-1]["type"] == "error" and "asr_stream_idle_timeout_s" in idle[-1]["error"]["message"]
    missing = requests.get(f"http://127.0.0.1:{tight}/v1/nothing", headers=headers(), timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_sigterm_with_an_open_websocket_stops_cleanly(tmp_path: Path, deployed_tiny: Path) -> None:  # noqa: F811 - a fixture imported above
    """The HTTP door closes its open conversations (1001, going away) at shutdown; the daemon exits 0."""
    import signal

    from tests.test_server import start_server, wait_serving, write_config

    port = free_port()
    cfg = write_config(tmp_path, port)
    http = next(int(line.split("=")[1]) for line in cfg.read_text().splitlines() if line.startswith("http_port="))
    proc = start_server(cfg, tmp_path / "server.log")
    try:
        wait_serving(proc, port)

        async def run() -> int:
            async with websockets.connect(f"ws://127.0.0.1:{http}/v1/realtime?intent=synthesize") as ws:
                assert json.loads(await ws.recv())["type"] == "conversation.created"
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 30)
                return closed.value.rcvd.code if closed.value.rcvd else -1

        assert asyncio.run(run()) == 1001
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in (tmp_path / "server.log").read_text()
