"""The daemon's microphone and speaker (edged.v1 Speak, Transcripts, SetMicrophone, status)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import riva.client

from edged.client.local import Target, say, set_microphone, stop_speaking
from edged.client.status import fetch_status
from edged.client.textnorm import word_errors
from edged.errors import EdgedError
from edged.proto import edged_pb2, edged_pb2_grpc
from edged.repository.records import DeployTarget
from tests.mic_daemon import mic_daemon
from tests.test_asr_server import BECKETT_TEXT, beckett_path
from tests.test_server import (
    deployed_tiny,
    free_port,
    start_server,
    wait_serving,
    write_config,
)

MIC_NAME = "edged_test_mic"

__all__ = ["deployed_tiny"]  # a fixture, used by name


def test_microphone_and_speaker_off_by_default(tmp_path: Path, deployed_tiny: Path) -> None:
    """Without local_mic_enabled/local_speaker_enabled the calls fail with the setting to change."""
    port = free_port()
    proc = start_server(write_config(tmp_path, port), tmp_path / "server.log")
    try:
        wait_serving(proc, port)
        address = f"127.0.0.1:{port}"
        status = fetch_status(address)
        assert status["microphone"]["state"] == "off" and status["speaker"]["state"] == "off"
        with pytest.raises(EdgedError, match="local_speaker_enabled=true"):
            say(Target(address), "hello")
        with pytest.raises(EdgedError, match="local_mic_enabled=true"):
            set_microphone(Target(address), muted=True)
        with grpc.insecure_channel(address) as channel:
            stream = edged_pb2_grpc.EdgedStub(channel).Transcripts(edged_pb2.TranscriptsRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stream))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "local_mic_enabled=true" in info.value.details()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# -- through the real PyAudio → PortAudio → ALSA path (tests/alsa_fixture.py) -----------------

SPOKEN = "The quick brown fox jumps over the lazy dog and runs away into the green forest."


@dataclass
class Daemon:
    """A running `edged start` with the default models, the test microphone and speaker."""

    address: str
    devices: Any
    transcripts_file: Path
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path],
           cpu_target: DeployTarget) -> Iterator[Daemon]:
    """edged with ASR, TTS, the microphone and the speaker, on ALSA test devices."""
    tmp = tmp_path_factory.mktemp("localaudio")
    transcripts = tmp / "transcripts.jsonl"
    with mic_daemon(tmp, default_rmirs.values(), cpu_target, f'local_transcripts_file="{transcripts}"\n',
                    "listening", timeout=30) as started:
        yield Daemon(started.address, started.devices, transcripts, started.proc, started.log)


class _Follower:
    """Collects Transcripts from the daemon in a thread."""

    def __init__(self, address: str, interim: bool = False) -> None:
        self.messages: list[Any] = []
        self.arrivals: dict[int, float] = {}
        """time.monotonic() at which each message (by id) arrived."""
        self._channel = grpc.insecure_channel(address)
        self._call = edged_pb2_grpc.EdgedStub(self._channel).Transcripts(
            edged_pb2.TranscriptsRequest(interim_results=interim))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._call:
                self.arrivals[id(message)] = time.monotonic()
                self.messages.append(message)
        except grpc.RpcError:
            pass

    def finals(self) -> list[Any]:
        return [m for m in self.messages if m.is_final]

    def wait_finals(self, count: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.finals()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.finals()

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


def _quiet(devices: Any, seconds: float) -> None:
    """Silence on the microphone for `seconds` (so an utterance ends)."""
    assert devices.feed(np.zeros(int(seconds * devices.mic_rate), dtype=np.int16)).captured.wait(60)


@pytest.mark.timeout(300)
def test_microphone_transcribes_to_subscribers_log_and_file(daemon: Daemon) -> None:
    """What the microphone hears comes out as finals (WER bound) with interims, on every channel."""
    follower = _Follower(daemon.address, interim=True)
    try:
        time.sleep(0.3)
        daemon.devices.feed(beckett_path())
        _quiet(daemon.devices, 2.0)
        finals = follower.wait_finals(1, timeout=30)
        text = " ".join(m.text for m in finals)
        errors, words = word_errors(BECKETT_TEXT, text)
        print(f"\nmicrophone heard: {text!r}; WER {errors / words:.1%}; final latency "
              f"{[round(m.latency_ms) for m in finals]} ms after the endpoint")
        assert errors / words <= 0.2
        assert any(not m.is_final for m in follower.messages), "no interim results"
        for message in finals:
            assert message.start_s < message.end_s <= time.time()
            assert [w.start_s for w in message.words] == sorted(w.start_s for w in message.words)
    finally:
        follower.close()
    lines = [json.loads(line) for line in daemon.transcripts_file.read_text().splitlines()]
    assert " ".join(line["text"] for line in lines).strip() == text.strip()
    assert all(line["words"] and line["time"] for line in lines)
    assert "Heard: " in daemon.log.read_text()
    status = fetch_status(daemon.address)["microphone"]
    assert status["device"].startswith(MIC_NAME) and status["device_rate"] == 48000
    assert status["finals"] >= len(finals) and status["overflows"] == 0


@pytest.mark.timeout(300)
def test_speak_plays_on_the_speaker(daemon: Daemon) -> None:
    """Speak with wait: the speaker plays audio whose transcript is the text; first audio is prompt."""
    target = Target(daemon.address)
    before = len(daemon.devices.played())
    response = say(target, SPOKEN, wait=True)
    assert not response.interrupted and response.seconds > 2.0
    print(f"\nSpeak: first audio after {response.first_audio_ms:.0f} ms, {response.seconds:.2f} s")
    deadline = time.monotonic() + 10
    while len(daemon.devices.played()) - before < response.seconds * 48000 * 0.95:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The played audio starts with the first word; a microphone would have heard quiet before it.
    lead_in = np.zeros(int(0.3 * 48000), np.int16)
    played = np.concatenate([lead_in, daemon.devices.played()[before:]])
    service = riva.client.ASRService(riva.client.Auth(uri=daemon.address))
    result = service.offline_recognize(played.astype("<i2").tobytes(), riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=48000, language_code="en-US",
        enable_automatic_punctuation=True))
    heard = " ".join(r.alternatives[0].transcript for r in result.results if r.alternatives)
    errors, words = word_errors(SPOKEN, heard)
    # The voice samples its prosody afresh each time, so an occasional word is misheard: 3 of 16.
    assert errors / words <= 0.2, heard
    assert fetch_status(daemon.address)["speaker"]["played"] >= 1


@pytest.mark.timeout(120)
def test_interrupt_and_stop_cut_playback(daemon: Daemon) -> None:
    """A Speak with interrupt stops the one playing; StopSpeaking drops the queue."""
    target = Target(daemon.address)
    long_text = " ".join([SPOKEN] * 6)
    first = say(target, long_text, wait=False)
    second = say(target, long_text, wait=False)
    assert second.queued == 1 and first.id < second.id
    time.sleep(1.0)
    status = stop_speaking(target)
    assert status.queued == 0
    third = say(target, "Done.", interrupt=True, wait=True)
    assert not third.interrupted and third.seconds < 2.0


def test_mute_and_unmute(daemon: Daemon) -> None:
    """Muting closes the microphone; unmuting opens it again."""
    target = Target(daemon.address)
    status = set_microphone(target, muted=True)
    assert status.muted
    deadline = time.monotonic() + 10
    while fetch_status(daemon.address)["microphone"]["state"] != "muted":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    set_microphone(target, muted=False)
    while fetch_status(daemon.address)["microphone"]["state"] != "listening":
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.timeout(600)
def test_microphone_on_evalcorpus_clips(daemon: Daemon, evalcorpus: Path) -> None:
    """Real read speech through the microphone: WER bound; latency from the end of each clip."""
    manifest = evalcorpus / "manifest.jsonl"
    clips = [json.loads(line) for line in manifest.read_text().splitlines()][:6]
    follower = _Follower(daemon.address)
    after_clip: list[float] = []
    try:
        for clip in clips:
            seen = len(follower.finals())
            feed = daemon.devices.feed(manifest.parent / clip["audio"])
            assert daemon.devices.feed(np.zeros(daemon.devices.mic_rate * 2, dtype=np.int16)).captured.wait(120)
            # On a busy machine recognition may lag: let it catch up before the next clip.
            quiet_since, count = time.monotonic(), len(follower.finals())
            while time.monotonic() - quiet_since < 1.0:
                time.sleep(0.1)
                if len(follower.finals()) != count:
                    quiet_since, count = time.monotonic(), len(follower.finals())
            finals = follower.finals()[seen:]
            if finals and feed.captured_at is not None:
                after_clip.append(1000 * (follower.arrivals[id(finals[-1])] - feed.captured_at))
    finally:
        follower.close()
    finals = follower.finals()
    errors, words = word_errors(" ".join(c["text"] for c in clips), " ".join(m.text for m in finals))
    after_endpoint = [m.latency_ms for m in finals]
    print(f"\nmicrophone on {len(clips)} clips: WER {errors / words:.1%}; finals after their endpoint "
          f"p50 {np.percentile(after_endpoint, 50):.0f} / p95 {np.percentile(after_endpoint, 95):.0f} ms; "
          f"last final after the clip's last sample p50 {np.percentile(after_clip, 50):.0f} / "
          f"max {max(after_clip):.0f} ms")
    assert errors / words <= 0.15


@pytest.mark.timeout(180)
def test_dictate_streams_this_machines_microphone(daemon: Daemon, tmp_path: Path) -> None:
    """`edged dictate` into a pipe: finals only, one per line, also appended to --output."""
    from tests.alsa_fixture import MIC, AlsaTestDevices

    devices = AlsaTestDevices(tmp_path)  # the client's own microphone, not the daemon's
    try:
        listing = subprocess.run([sys.executable, "-m", "edged", "dictate", "--list-devices"],
                                 env=devices.env, capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and MIC in listing.stdout
        devices.feed(beckett_path())
        devices.feed(np.zeros(devices.mic_rate * 2, dtype=np.int16))
        out = tmp_path / "dictated.txt"
        run = subprocess.run(
            [sys.executable, "-m", "edged", "dictate", "--server", daemon.address, "--device", MIC,
             "--output", str(out), "--duration", "14"],
            env=devices.env, capture_output=True, text=True, timeout=120)
    finally:
        devices.close()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines and all(line.strip() for line in lines) and "\r" not in run.stdout
    errors, words = word_errors(BECKETT_TEXT, " ".join(lines))
    assert errors / words <= 0.2, lines
    assert out.read_text().splitlines() == lines


def test_dictate_unknown_device_is_one_clear_line(tmp_path: Path) -> None:
    """A microphone that does not exist: exit 1 and one line listing the ones that do."""
    pytest.importorskip("pyaudio", reason="PyAudio is not installed (pip install 'edged[audio]')")
    from tests.alsa_fixture import MIC, AlsaTestDevices

    devices = AlsaTestDevices(tmp_path)
    try:
        run = subprocess.run([sys.executable, "-m", "edged", "dictate", "--server", "127.0.0.1:9",
                              "--device", "no-such-mic"], env=devices.env, capture_output=True, text=True,
                             timeout=60)
    finally:
        devices.close()
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("edged:")]
    assert len(errors) == 1 and "no-such-mic" in errors[0] and MIC in errors[0], run.stderr
    assert "Traceback" not in run.stderr
