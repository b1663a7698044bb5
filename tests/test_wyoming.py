"""The Wyoming door through the wyoming package's own client against a real `edged start`.

describe lists the models and the voice; real speech (moonshine-cpp's beckett.wav) is
transcribed with streaming transcript chunks before the transcript; synthesis recognises back
to its text; two clients at once; bad input answered with an error event and no stream left
open; zeroconf discovery where multicast works here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from wyoming.asr import (
    Transcribe,
    Transcript,
    TranscriptChunk,
    TranscriptStart,
    TranscriptStop,
)
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from edged.client.textnorm import word_errors
from edged.pipelines.tts.segment import complete_sentences
from edged.proto import edged_pb2, edged_pb2_grpc
from tests.test_asr_server import beckett_path, pcm_of
from tests.test_server import free_port, start_server, wait_serving

BECKETT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."
SENTENCE = "The quick brown fox jumps over the lazy dog."
CHUNK_BYTES = 3200  # 100 ms at 16 kHz, 16-bit


@dataclass(frozen=True)
class Daemon:
    grpc_port: int
    wyoming_port: int
    log: Path


def _start(tmp: Path, default_repo: Path, name: str, extra: str) -> tuple[subprocess.Popen[bytes], Daemon]:
    port, wport = free_port(), free_port()
    cfg = tmp / f"{name}.sh"
    cfg.write_text(f'model_loc="{default_repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nhttp_enabled=false\nwyoming_port={wport}\n{extra}", encoding="utf-8")
    log = tmp / f"{name}.log"
    proc = start_server(cfg, log)
    wait_serving(proc, port, timeout=120)
    return proc, Daemon(port, wport, log)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def daemon(default_repo: Path) -> Iterator[Daemon]:
    """`edged start` with Wyoming on a loopback port, zeroconf off."""
    proc, d = _start(default_repo.parent, default_repo, "server", "wyoming_zeroconf=false\n")
    try:
        yield d
    finally:
        _stop(proc)
    log = d.log.read_text()
    assert "Traceback" not in log, log[-3000:]


async def _read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), timeout=60)
    assert event is not None, "the server closed the connection"
    return event


async def _transcribe(port: int, pcm: bytes, rate: int = 16000, width: int = 2) -> tuple[str, list[Event]]:
    """Send audio in chunks; the transcript and every event before it."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=1).event())
        step = CHUNK_BYTES * width // 2
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=rate, width=width, channels=1, audio=pcm[i:i + step]).event())
        await client.write_event(AudioStop().event())
        events: list[Event] = []
        while True:
            event = await _read(client)
            assert not Error.is_type(event.type), event.data
            events.append(event)
            if Transcript.is_type(event.type):
                assert TranscriptStop.is_type((await _read(client)).type)
                return Transcript.from_event(event).text, events


async def _synthesize(port: int, text: str) -> tuple[bytes, int]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text=text).event())
        start = AudioStart.from_event(await _read(client))
        audio = b""
        while True:
            event = await _read(client)
            if AudioStop.is_type(event.type):
                return audio, start.rate
            assert AudioChunk.is_type(event.type), event
            audio += AudioChunk.from_event(event).audio


def _resample_16k(pcm: bytes, rate: int) -> bytes:
    import numpy as np
    import soxr

    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768
    out = soxr.resample(samples, rate, 16000)
    return (np.clip(out, -1, 1) * 32767).astype(np.int16).tobytes()


def _asr_streams(grpc_port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        status = edged_pb2_grpc.EdgedStub(channel).Status(edged_pb2.StatusRequest(), timeout=5)
    return sum(s.active for s in status.streams)


def _open_asr_streams(grpc_port: int) -> int:
    """The ASR streams still open once the server has had up to 10 s to close them."""
    for _ in range(50):
        if (open_streams := _asr_streams(grpc_port)) == 0:
            return 0
        time.sleep(0.2)
    return open_streams


def _wer(reference: str, text: str) -> float:
    errors, words = word_errors(reference, text)
    return errors / words


def test_sentences_split_at_their_ends() -> None:
    """Streamed text (synthesize-chunk) is cut where the synthesiser cuts sentences."""
    assert complete_sentences("Hello there. How are you? I am fi") == (["Hello there.", "How are you?"], "I am fi")
    assert complete_sentences("No end yet") == ([], "No end yet")
    # What normalisation reads out ("Dr.", "p.m.") ends no sentence, as in the whole-text path.
    assert complete_sentences("Call Dr. Smith at 5 p.m. today. Then") == (["Call Dr. Smith at 5 p.m. today."], "Then")
    assert complete_sentences('He said "stop." Then\n\nmore') == (['He said "stop."', "Then"], "more")


def test_describe_lists_models_and_voice(daemon: Daemon) -> None:
    async def run() -> Info:
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await _read(client))

    info = asyncio.run(run())
    assert [m.name for m in info.asr[0].models] == ["moonshine-base-en"]
    assert info.asr[0].models[0].languages == ["en-US"]
    assert info.asr[0].supports_transcript_streaming and info.asr[0].installed
    assert "piper-joe-medium" in [v.name for v in info.tts[0].voices]
    assert info.tts[0].supports_synthesize_streaming
    assert "Moonshine" in info.asr[0].models[0].attribution.name


def test_transcribes_real_speech_with_streaming_chunks(daemon: Daemon) -> None:
    pcm, rate = pcm_of(beckett_path())
    text, events = asyncio.run(_transcribe(daemon.wyoming_port, pcm, rate))
    assert _wer(BECKETT, text) <= 0.2, text
    types = [e.type for e in events]
    assert TranscriptStart.is_type(types[0]), types
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    assert chunks and types.index("transcript-chunk") < types.index("transcript")
    assert "".join(chunks).strip() == text


def test_synthesis_recognises_back(daemon: Daemon) -> None:
    audio, rate = asyncio.run(_synthesize(daemon.wyoming_port, SENTENCE))
    assert len(audio) > rate  # more than half a second of 16-bit audio
    pcm = bytes(8000) + _resample_16k(audio, rate) + bytes(32000)
    text, _ = asyncio.run(_transcribe(daemon.wyoming_port, pcm))
    assert _wer(SENTENCE, text) <= 0.2, text


def test_streaming_synthesis_speaks_each_sentence(daemon: Daemon) -> None:
    async def run() -> tuple[list[str], bytes, int]:
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(SynthesizeStart().event())
            for piece in ("The quick brown fox ", "jumps over the lazy dog. Then it ", "sleeps"):
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(Synthesize(text="ignored while streaming").event())
            await client.write_event(SynthesizeStop().event())
            types, audio, rate = [], b"", 0
            while True:
                event = await _read(client)
                types.append(event.type)
                if AudioStart.is_type(event.type):
                    rate = AudioStart.from_event(event).rate
                if AudioChunk.is_type(event.type):
                    audio += AudioChunk.from_event(event).audio
                if SynthesizeStopped.is_type(event.type):
                    return types, audio, rate

    types, audio, rate = asyncio.run(run())
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"], types
    assert types.count("audio-start") == 1
    pcm = bytes(8000) + _resample_16k(audio, rate) + bytes(32000)
    text, _ = asyncio.run(_transcribe(daemon.wyoming_port, pcm))
    assert _wer("The quick brown fox jumps over the lazy dog. Then it sleeps.", text) <= 0.25, text


def test_two_clients_at_once(daemon: Daemon) -> None:
    pcm, rate = pcm_of(beckett_path())

    async def both() -> list[tuple[str, list[Event]]]:
        return list(await asyncio.gather(_transcribe(daemon.wyoming_port, pcm, rate),
                                         _transcribe(daemon.wyoming_port, pcm, rate)))

    for text, _ in asyncio.run(both()):
        assert _wer(BECKETT, text) <= 0.2, text


def test_bad_input_is_answered_and_leaves_no_stream(daemon: Daemon) -> None:
    pcm, rate = pcm_of(beckett_path())

    async def run() -> list[Error]:
        errors = []
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Event(type="no-such-event"))
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(320)).event())
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(AudioStart(rate=16000, width=3, channels=1).event())
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(AudioChunk(rate=16000, width=3, channels=1, audio=bytes(480)).event())
            await client.write_event(AudioStop().event())
            await client.write_event(Synthesize(text="").event())
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(Event(type="audio-start", data={"width": 2}))  # no rate
            errors.append(Error.from_event(await _read(client)))
        # bytes that are no Wyoming event at all, an event announcing more than the server reads,
        # a header line with no end: an error event, then the connection ends (the server does not)
        for sent in (b'{"data": {}}\n[1, 2]\n', b'{"type": "audio-chunk", "payload_length": 2147483648}\n',
                     b'{"type": "audio-chunk", "data_length": -1}\n', b"{" + b" " * 100_000):
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.wyoming_port)
            writer.write(sent)
            await writer.drain()
            got = await asyncio.wait_for(reader.read(), timeout=10)
            writer.close()
            header, _, rest = got.partition(b"\n")
            framing_error = json.loads(header)
            assert framing_error["type"] == "error" and len(rest) == framing_error["data_length"], got
            errors.append(Error(**json.loads(rest)))
        # a client that goes away in the middle of its audio
        client = AsyncTcpClient("127.0.0.1", daemon.wyoming_port)
        await client.connect()
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        await client.write_event(TranscriptStart().event())  # not a request: answered with an error
        for i in range(0, len(pcm) // 2, CHUNK_BYTES):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i:i + CHUNK_BYTES]).event())
        await client.disconnect()
        return errors

    errors = asyncio.run(run())
    assert all(e.text and "\n" not in e.text for e in errors), errors
    assert [e.code for e in errors] == ["bad-request", "audio-format", "audio-format", "bad-request",
                                         "bad-request"] + ["bad-request"] * 4, errors
    assert "max_message_mb" in errors[6].text and "data_length" in errors[7].text, errors
    assert _open_asr_streams(daemon.grpc_port) == 0
    text, _ = asyncio.run(_transcribe(daemon.wyoming_port, pcm, rate))  # still answers
    assert _wer(BECKETT, text) <= 0.2, text
    assert "Traceback" not in daemon.log.read_text()


def test_full_server_answers_resource_exhausted(default_repo: Path) -> None:
    """With asr_max_streams=1, a second Wyoming stream gets a resource-exhausted error event."""
    proc, d = _start(default_repo.parent, default_repo, "full",
                     "wyoming_zeroconf=false\nasr_max_streams=1\nasr_stream_idle_timeout_s=4\n"
                     "wyoming_allowed_clients=127.0.0.0/8,::1\ntts_stream_idle_timeout_s=3\n")  # this machine: served
    try:
        async def run() -> tuple[Error, Error, Event | None, Event]:
            async with AsyncTcpClient("127.0.0.1", d.wyoming_port) as first, \
                    AsyncTcpClient("127.0.0.1", d.wyoming_port) as second:
                await first.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                assert TranscriptStart.is_type((await _read(first)).type)
                await second.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                refused = Error.from_event(await _read(second))
                # The first client now sends nothing: past the idle timeout it is told, and let go.
                idle = Error.from_event(await _read(first))
                after = await asyncio.wait_for(first.read_event(), timeout=10)
                await second.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                return refused, idle, after, await _read(second)

        refused, idle, after, served = asyncio.run(run())
        assert refused.code == "resource-exhausted" and "limit is 1" in refused.text, refused
        assert idle.code == "timeout" and "asr_stream_idle_timeout_s" in idle.text, idle
        assert after is None, after  # the connection was closed
        assert TranscriptStart.is_type(served.type), served
        assert _open_asr_streams(d.grpc_port) == 0

        async def quiet_synthesis() -> tuple[Error, Event | None]:
            async with AsyncTcpClient("127.0.0.1", d.wyoming_port) as client:
                await client.write_event(SynthesizeStart().event())  # then no text
                idle = Error.from_event(await _read(client))
                return idle, await asyncio.wait_for(client.read_event(), timeout=10)

        idle_tts, after_tts = asyncio.run(quiet_synthesis())
        assert idle_tts.code == "timeout" and "tts_stream_idle_timeout_s" in idle_tts.text, idle_tts
        assert after_tts is None
    finally:
        _stop(proc)


def test_a_client_wyoming_allowed_clients_does_not_list_is_turned_away(default_repo: Path) -> None:
    """With wyoming_allowed_clients set, a client from elsewhere gets a forbidden error, then the door closes."""
    proc, d = _start(default_repo.parent, default_repo, "allowlist",
                     "wyoming_zeroconf=false\nwyoming_allowed_clients=192.0.2.0/24\n")
    try:
        async def run() -> tuple[Error, Event | None]:
            # The door closes without reading what the client sent, so the close may reach the
            # client as a reset (seen on Python 3.10): either way the connection is over.
            client = AsyncTcpClient("127.0.0.1", d.wyoming_port)
            await client.connect()
            try:
                await client.write_event(Describe().event())
                refused = Error.from_event(await _read(client))
                try:
                    after = await asyncio.wait_for(client.read_event(), timeout=10)
                except ConnectionResetError:
                    after = None
                return refused, after
            finally:
                with contextlib.suppress(ConnectionError):
                    await client.disconnect()

        refused, after = asyncio.run(run())
        assert refused.code == "forbidden" and "wyoming_allowed_clients" in refused.text, refused
        assert after is None
    finally:
        _stop(proc)
    log = d.log.read_text()
    assert "wyoming_allowed_clients" in log and "Traceback" not in log, log


def test_sigterm_with_an_open_wyoming_stream(default_repo: Path) -> None:
    """SIGTERM while a client streams: the daemon ends its connection and exits cleanly."""
    pcm, rate = pcm_of(beckett_path())
    proc, d = _start(default_repo.parent, default_repo, "sigterm", "wyoming_zeroconf=false\nshutdown_grace_s=2\n")
    try:
        async def run() -> Event | None:
            async with AsyncTcpClient("127.0.0.1", d.wyoming_port) as client:
                await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[:32000]).event())
                assert TranscriptStart.is_type((await _read(client)).type)
                proc.terminate()
                event: Event | None = await asyncio.wait_for(client.read_event(), timeout=30)
                while event is not None and TranscriptChunk.is_type(event.type):
                    event = await asyncio.wait_for(client.read_event(), timeout=30)
                return event

        assert asyncio.run(run()) is None  # the connection ends
        assert proc.wait(timeout=30) == 0
    finally:
        _stop(proc)
    log = d.log.read_text()
    assert "Stopped" in log and "Traceback" not in log, log[-3000:]


def test_port_in_use_is_one_line_boot_error(default_repo: Path) -> None:
    tmp = default_repo.parent
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        wport = busy.getsockname()[1]
        cfg = tmp / "busy.sh"
        cfg.write_text(f'model_loc="{default_repo}"\nriva_speech_api_port={free_port()}\nlisten_address="127.0.0.1"\n'
                       f"metrics_port=0\nhttp_enabled=false\nwyoming_port={wport}\nwyoming_zeroconf=false\n", encoding="utf-8")
        proc = start_server(cfg, tmp / "busy.log")
        assert proc.wait(timeout=60) != 0
    log = (tmp / "busy.log").read_text()
    assert f"Cannot listen on 127.0.0.1:{wport} for Wyoming" in log, log
    assert "Traceback" not in log, log


def _multicast_works() -> str:
    """Empty if zeroconf can run here, else why not."""
    try:
        from zeroconf import Zeroconf
        zc = Zeroconf()
        zc.close()
    except Exception as exc:  # noqa: BLE001 - any failure means no multicast here
        return f"zeroconf cannot run here: {type(exc).__name__}: {exc}"
    return ""


def test_zeroconf_advertises(default_repo: Path) -> None:
    if reason := _multicast_works():
        pytest.skip(reason)
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

    proc, d = _start(default_repo.parent, default_repo, "zeroconf", "wyoming_zeroconf=true\n")
    try:
        async def browse() -> list[str]:
            found: list[str] = []
            aiozc = AsyncZeroconf()

            def on_change(zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
                if state_change is ServiceStateChange.Added:
                    found.append(name)

            browser = AsyncServiceBrowser(aiozc.zeroconf, "_wyoming._tcp.local.", handlers=[on_change])
            for _ in range(50):
                if any(n.startswith("edged-") for n in found):
                    break
                await asyncio.sleep(0.2)
            await browser.async_cancel()
            await aiozc.async_close()
            return found

        found = asyncio.run(browse())
        log = d.log.read_text()
        if not found and "Cannot advertise Wyoming" in log:
            pytest.skip("multicast is unavailable here: " + log.split("Cannot advertise Wyoming", 1)[1][:200])
        assert any(n.startswith("edged-") for n in found), (found, log[-2000:])
    finally:
        _stop(proc)
