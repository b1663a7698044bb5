"""The daemon as a Wyoming satellite (`wyoming_satellite_enabled`): the test plays Home Assistant's
side with the `wyoming` package's client, while edged's voice says the wake phrase and a command
into the test microphone (tests/alsa_fixture.py, as in tests/test_local_wake.py).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import riva.client
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import PauseSatellite, RunSatellite

from edged.client.status import fetch_status
from edged.client.textnorm import word_errors
from edged.repository.records import DeployTarget
from tests.mic_daemon import mic_daemon, wait_mic
from tests.test_local_wake import COMMAND, LISTENING, RATE, _quiet, _tone_energy, _voice
from tests.test_server import deployed_tiny, free_port, start_server, wait_serving, write_config

TONE_HZ = 660.0
"""The pitch of the 'spoken answer' the test sends back as Home Assistant."""
MIC_RATE = 16000
LONG_ANSWER_S = 8

__all__ = ["deployed_tiny"]  # a fixture, used by name


@dataclass
class SatelliteDaemon:
    address: str
    satellite_port: int
    devices: Any
    log: Path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path], wake_rmirs: dict[str, Path],
           cpu_target: DeployTarget) -> Iterator[SatelliteDaemon]:
    """edged with ASR, TTS and the Alexa wake word on the test microphone and speaker, serving as
    a Wyoming satellite."""
    tmp = tmp_path_factory.mktemp("satellite")
    satellite_port = free_port()
    config = ('models_wake=( "builtin:wake-alexa" )\nlocal_wake_words=( "alexa" )\n'
              'local_wake_chime=false\nwyoming_zeroconf=false\n'
              f'wyoming_satellite_enabled=true\nwyoming_satellite_port={satellite_port}\n')
    with mic_daemon(tmp, (*default_rmirs.values(), wake_rmirs["wake-alexa"]), cpu_target, config,
                    LISTENING) as started:
        yield SatelliteDaemon(started.address, satellite_port, started.devices, started.log)


async def _next(client: AsyncTcpClient, timeout: float = 30.0) -> Event:
    event = await asyncio.wait_for(client.read_event(), timeout)
    assert event is not None, "the satellite closed the connection"
    return event


async def _run_satellite(client: AsyncTcpClient) -> None:
    """Home Assistant's opening: describe, then run-satellite."""
    await client.write_event(Describe().event())
    info = Info.from_event(await _next(client))
    assert info.satellite is not None and info.satellite.active_wake_words == ["wake-alexa"], info
    await client.write_event(RunSatellite().event())
    assert (await _next(client)).type == "satellite-connected"


async def _await_pipeline(client: AsyncTcpClient) -> AudioStart:
    """run-pipeline, streaming-started and audio-start of a command (checked); its audio-start."""
    pipeline = RunPipeline.from_event(await _next(client, 60))
    assert (pipeline.start_stage, pipeline.end_stage, pipeline.wake_word_name, pipeline.restart_on_end) == \
        (PipelineStage.ASR, PipelineStage.TTS, "wake-alexa", False), pipeline
    assert (await _next(client)).type == "streaming-started"
    return AudioStart.from_event(await _next(client))


def _tone(rate: int, seconds: float) -> bytes:
    """TONE_HZ as 16-bit mono PCM."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype("<i2").tobytes()


def _recognize16(address: str, pcm: bytes) -> str:
    service = riva.client.ASRService(riva.client.Auth(uri=address))
    result = service.offline_recognize(pcm, riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=MIC_RATE, language_code="en-US"))
    return " ".join(r.alternatives[0].transcript for r in result.results if r.alternatives)


@pytest.mark.timeout(300)
def test_a_wake_word_streams_the_command_to_home_assistant_and_its_answer_plays(daemon: SatelliteDaemon) -> None:
    wake, command = _voice(daemon.address, "Alexa."), _voice(daemon.address, COMMAND)
    finals_before = fetch_status(daemon.address)["microphone"]["finals"]
    played_before = len(daemon.devices.played())

    async def home_assistant() -> tuple[AudioStart, bytes, list[str]]:
        async with AsyncTcpClient("127.0.0.1", daemon.satellite_port) as client:
            await _run_satellite(client)
            daemon.devices.feed(np.concatenate([_quiet(0.5), wake, _quiet(0.6), command, _quiet(1.0)]))
            start = await _await_pipeline(client)
            audio = bytearray()
            wanted = int((len(command) / RATE + 1.3) * MIC_RATE * 2)
            while len(audio) < wanted:  # the command, as Home Assistant's VAD would wait for it
                chunk = AudioChunk.from_event(await _next(client))
                assert (chunk.rate, chunk.width, chunk.channels) == (start.rate, start.width, start.channels)
                audio += chunk.audio
            await client.write_event(Transcript(text=COMMAND).event())
            ends: list[str] = []
            while not ends or ends[-1] != "streaming-stopped":
                event = await _next(client)
                if event.type != "audio-chunk":
                    ends.append(event.type)
            # Home Assistant's spoken answer: a tone, at the rate of its TTS.
            tone = _tone(22050, 1.0)
            await client.write_event(AudioStart(rate=22050, width=2, channels=1).event())
            for i in range(0, len(tone), 4410):
                await client.write_event(AudioChunk(rate=22050, width=2, channels=1, audio=tone[i:i + 4410]).event())
            await client.write_event(AudioStop().event())
            assert (await _next(client)).type == "played"
            await _barge_in(client, wake)
            return start, bytes(audio), ends

    async def _barge_in(client: AsyncTcpClient, wake: np.ndarray) -> None:
        """A long answer, and the wake word while it plays: it stops, and the next command streams."""
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for _ in range(LONG_ANSWER_S):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=_tone(16000, 1.0)).event())
        await client.write_event(AudioStop().event())
        await asyncio.sleep(1.0)
        fed = time.monotonic()
        daemon.devices.feed(np.concatenate([wake, _quiet(1.0)]))
        seen: dict[str, float] = {}
        while not {"played", "audio-start"} <= seen.keys():  # in either order
            event = await _next(client, LONG_ANSWER_S)
            seen.setdefault(event.type, time.monotonic() - fed)
            if event.type == "run-pipeline":
                assert RunPipeline.from_event(event).wake_word_name == "wake-alexa"
        assert [t for t in seen if t != "audio-chunk"] in (
            ["played", "run-pipeline", "streaming-started", "audio-start"],
            ["run-pipeline", "played", "streaming-started", "audio-start"],
            ["run-pipeline", "streaming-started", "played", "audio-start"],
            ["run-pipeline", "streaming-started", "audio-start", "played"]), seen
        assert seen["played"] < LONG_ANSWER_S - 2, seen
        print(f"\nbarge-in: the answer stopped {seen['played']:.1f} s after the wake word began")
        await client.write_event(Transcript(text="").event())
        while (await _next(client)).type != "streaming-stopped":
            pass

    start, audio, ends = asyncio.run(home_assistant())
    assert (start.rate, start.width, start.channels) == (MIC_RATE, 2, 1)
    assert ends == ["audio-stop", "streaming-stopped"], ends
    heard = _recognize16(daemon.address, audio)
    errors, words = word_errors(COMMAND, heard)
    print(f"\nstreamed {len(audio) / 2 / MIC_RATE:.1f} s of the command; recognised: {heard!r}")
    assert errors / words <= 0.4, heard
    played = daemon.devices.played()[played_before:]
    assert len(played) >= int(0.8 * RATE) and _tone_energy(played, TONE_HZ) > 0.5
    # Home Assistant had the command: nothing was recognised or published here.
    wait_mic(daemon.address, LISTENING, 30)  # under load the test microphone may stall and reopen first
    assert fetch_status(daemon.address)["microphone"]["finals"] == finals_before
    assert "Streaming the command after wake-alexa to the satellite client" in daemon.log.read_text()


def _wait_local_final(daemon: SatelliteDaemon, finals_before: int) -> None:
    """Wait for the microphone to publish a final of its own (a command recognised here)."""
    deadline = time.monotonic() + 120
    while fetch_status(daemon.address)["microphone"]["finals"] == finals_before:
        assert time.monotonic() < deadline, "the command was not recognised locally"
        time.sleep(0.2)
    wait_mic(daemon.address, LISTENING, 30)


@pytest.mark.timeout(300)
def test_paused_or_gone_the_microphone_goes_back_to_local_commands(daemon: SatelliteDaemon) -> None:
    wake, command = _voice(daemon.address, "Alexa."), _voice(daemon.address, COMMAND)
    spoken = np.concatenate([_quiet(0.3), wake, _quiet(0.6), command, _quiet(2.0)])

    async def pause_then_vanish() -> None:
        client = AsyncTcpClient("127.0.0.1", daemon.satellite_port)
        await client.connect()
        await _run_satellite(client)
        await client.write_event(PauseSatellite().event())
        finals_before = fetch_status(daemon.address)["microphone"]["finals"]
        daemon.devices.feed(spoken)
        await asyncio.to_thread(_wait_local_final, daemon, finals_before)  # paused: recognised here
        await client.write_event(Ping(text="paused").event())
        assert (await _next(client)).type == "pong"  # and nothing was streamed meanwhile
        await client.write_event(RunSatellite().event())
        assert (await _next(client)).type == "satellite-connected"
        daemon.devices.feed(spoken)
        await _await_pipeline(client)
        assert (await _next(client)).type == "audio-chunk"
        await client.disconnect()  # gone mid-stream, without a word

    asyncio.run(pause_then_vanish())
    wait_mic(daemon.address, LISTENING, 30)
    # No client now: the next wake word and command are recognised and published here.
    finals_before = fetch_status(daemon.address)["microphone"]["finals"]
    daemon.devices.feed(spoken)
    _wait_local_final(daemon, finals_before)
    assert "Satellite client gone; wake-word commands are recognised here again" in daemon.log.read_text()


@pytest.mark.timeout(120)
def test_unknown_events_are_ignored_a_broken_frame_is_refused_and_a_new_client_replaces_the_old(
        daemon: SatelliteDaemon) -> None:
    async def clients() -> None:
        async with AsyncTcpClient("127.0.0.1", daemon.satellite_port) as first:
            await _run_satellite(first)
            await first.write_event(Event(type="frobnicate", data={"x": 1}))
            await first.write_event(Ping(text="still there").event())
            pong = await _next(first)  # the unknown event got no answer: the pong comes first
            assert (pong.type, pong.data.get("text")) == ("pong", "still there")
            async with AsyncTcpClient("127.0.0.1", daemon.satellite_port) as second:
                await _run_satellite(second)
                assert await asyncio.wait_for(first.read_event(), 10) is None  # replaced: closed
                assert second._writer is not None
                second._writer.write(b"this is not json\n")
                error = await _next(second)
                assert (error.type, error.data.get("code")) == ("error", "bad-request"), error
                assert error.data["text"] == "An event header is not JSON."
                assert await asyncio.wait_for(second.read_event(), 10) is None

    asyncio.run(clients())
    log = daemon.log.read_text()
    assert "A new satellite client replaces the one before" in log and "Traceback" not in log
    wait_mic(daemon.address, LISTENING, 10)


def test_satellite_without_wake_words_stays_off_with_one_log_line(tmp_path: Path, deployed_tiny: Path) -> None:
    port, satellite_port = free_port(), free_port()
    proc = start_server(write_config(tmp_path, port, f"wyoming_satellite_enabled=true\nwyoming_satellite_port="
                                                     f"{satellite_port}\nwyoming_zeroconf=false\n"),
                        tmp_path / "server.log")
    try:
        wait_serving(proc, port)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", satellite_port), timeout=5).close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "wyoming_satellite_enabled=true needs the microphone with wake words" in log
    assert "Traceback" not in log
