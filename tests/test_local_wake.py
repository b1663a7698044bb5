"""The daemon's microphone with wake words (`local_wake_words`), through the real PyAudio →
PortAudio → ALSA path (tests/alsa_fixture.py): `edged start` with recognition, edged's voice, the
wake words and a command hook; the wake phrase and commands are edged's own voice played into
the test microphone.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import riva.client

from edged.client.local import Target, say
from edged.client.status import fetch_status
from edged.client.textnorm import word_errors
from edged.repository.records import DeployTarget
from tests.mic_daemon import mic_daemon, wait_mic
from tests.test_localaudio import _Follower
from tests.test_server import deployed_tiny, free_port, start_server, wait_serving, write_config

RATE = 48000
"""The test microphone's and speaker's rate."""
COMMAND = "Turn on the kitchen lights."
ANSWER = "The kitchen lights are on."
LISTENING = "listening for wake words"

__all__ = ["deployed_tiny"]  # a fixture, used by name


@dataclass
class WakeDaemon:
    address: str
    devices: Any
    hook_seen: Path
    transcripts_file: Path
    log: Path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path], wake_rmirs: dict[str, Path],
           cpu_target: DeployTarget) -> Iterator[WakeDaemon]:
    """edged with ASR, TTS, the Alexa and Okay Nabu wake words on the test microphone and speaker;
    its command hook records what it gets and answers ANSWER."""
    tmp = tmp_path_factory.mktemp("localwake")
    seen = tmp / "hook-seen.jsonl"
    hook = tmp / "hook.py"
    hook.write_text(f"import sys\nopen({str(seen)!r}, 'a').write(sys.stdin.read() + '\\n')\nprint({ANSWER!r})\n")
    transcripts = tmp / "transcripts.jsonl"
    config = (f'local_transcripts_file="{transcripts}"\n'
              'models_wake=( "builtin:wake-alexa" "builtin:wake-okay-nabu" )\n'
              'local_wake_words=( "alexa" )\n'
              f'local_command_hook="{sys.executable} {hook}"\n')
    rmirs = (*default_rmirs.values(), wake_rmirs["wake-alexa"], wake_rmirs["wake-okay-nabu"])
    with mic_daemon(tmp, rmirs, cpu_target, config, LISTENING) as started:
        yield WakeDaemon(started.address, started.devices, seen, transcripts, started.log)


def _voice(address: str, text: str) -> np.ndarray:
    """edged's voice saying `text`, int16 at the microphone's rate."""
    service = riva.client.SpeechSynthesisService(riva.client.Auth(uri=address))
    response = service.synthesize(text, language_code="en-US", sample_rate_hz=RATE)
    return np.frombuffer(response.audio, dtype="<i2").astype(np.int16)


def _quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


def _recognize(address: str, pcm: np.ndarray) -> str:
    service = riva.client.ASRService(riva.client.Auth(uri=address))
    result = service.offline_recognize(pcm.astype("<i2").tobytes(), riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=RATE, language_code="en-US"))
    return " ".join(r.alternatives[0].transcript for r in result.results if r.alternatives)


def _tone_energy(pcm: np.ndarray, hz: float) -> float:
    """The share of `pcm`'s spectrum within 30 Hz of `hz`."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float32))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    return float(spectrum[np.abs(freqs - hz) < 30].sum() / max(spectrum.sum(), 1e-9))


@pytest.mark.timeout(300)
def test_wake_word_then_command_gives_one_tagged_transcript_and_the_hooks_answer_is_spoken(
        daemon: WakeDaemon) -> None:
    wake, command = _voice(daemon.address, "Alexa."), _voice(daemon.address, COMMAND)
    follower = _Follower(daemon.address)
    played_before = len(daemon.devices.played())
    try:
        time.sleep(0.3)
        daemon.devices.feed(np.concatenate([_quiet(0.5), wake, _quiet(0.6), command, _quiet(2.0)]))
        finals = follower.wait_finals(1, timeout=120)
        time.sleep(1.0)  # a second final would come within this
        finals = follower.finals()
    finally:
        follower.close()
    assert len(finals) == 1, [(m.text, m.wake_word) for m in finals]
    heard = finals[0]
    errors, words = word_errors(COMMAND, heard.text)
    print(f"\ncommand heard: {heard.text!r} (WER {errors / words:.0%}), after {heard.wake_word}, "
          f"final {heard.latency_ms:.0f} ms after its endpoint")
    assert heard.wake_word == "wake-alexa" and errors / words <= 0.4
    assert "alexa" not in heard.text.lower()
    records = [json.loads(line) for line in daemon.transcripts_file.read_text().splitlines()]
    assert [(r["text"], r["wake_word"]) for r in records] == [(heard.text, "wake-alexa")]
    # The hook got the transcript; its answer is played after the chime.
    deadline = time.monotonic() + 120
    while not daemon.hook_seen.exists():
        assert time.monotonic() < deadline, "the hook never ran"
        time.sleep(0.1)
    sent = json.loads(daemon.hook_seen.read_text())
    assert sent["text"] == heard.text and sent["wake_word"] == "wake-alexa" and sent["words"]
    while fetch_status(daemon.address)["speaker"]["played"] < 1:
        assert time.monotonic() < deadline, "the answer was never played"
        time.sleep(0.1)
    wait_mic(daemon.address, LISTENING, 30)
    played = daemon.devices.played()[played_before:]
    chime_part, answer_part = played[:int(0.2 * RATE)], played[int(0.2 * RATE):]
    assert _tone_energy(chime_part, 880.0) > 0.2
    spoken = _recognize(daemon.address, np.concatenate([_quiet(0.3), answer_part, _quiet(0.5)]))
    assert word_errors(ANSWER, spoken)[0] <= 1, spoken
    assert "Wake word wake-alexa heard" in daemon.log.read_text()


@pytest.mark.timeout(300)
def test_without_the_wake_word_nothing_is_published(daemon: WakeDaemon) -> None:
    command = _voice(daemon.address, "Okay, turn off all the lights in the house and lock the door.")
    follower = _Follower(daemon.address)
    finals_before = fetch_status(daemon.address)["microphone"]["finals"]
    try:
        time.sleep(0.3)
        feed = daemon.devices.feed(np.concatenate([command, _quiet(2.0)]))
        assert feed.captured.wait(60)
        time.sleep(2.0)
        assert follower.finals() == []
    finally:
        follower.close()
    status = fetch_status(daemon.address)["microphone"]
    assert status["finals"] == finals_before and status["state"] == LISTENING


@pytest.mark.timeout(300)
def test_a_wake_word_while_speaking_stops_the_speaker(daemon: WakeDaemon) -> None:
    wake = _voice(daemon.address, "Alexa.")
    outcome: list[Any] = []
    speaking = threading.Thread(target=lambda: outcome.append(
        say(Target(daemon.address), " ".join([ANSWER] * 12), wait=True)))
    speaking.start()
    deadline = time.monotonic() + 60
    while fetch_status(daemon.address)["speaker"]["state"] != "playing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    daemon.devices.feed(np.concatenate([wake, _quiet(1.0)]))
    speaking.join(timeout=120)
    assert outcome and outcome[0].interrupted, outcome
    print(f"\nbarge-in: {outcome[0].seconds:.1f} s of speech played before the wake word stopped it")
    assert "Barge-in: wake word wake-alexa while speaking" in daemon.log.read_text()
    wait_mic(daemon.address, "hearing a command (wake-alexa)", 5)
    # Nothing said after it: the command ends by itself and wake words are listened for again.
    wait_mic(daemon.address, LISTENING, 60)
    assert "Nothing said after wake word wake-alexa" in daemon.log.read_text()


def test_transcript_json_carries_the_wake_word() -> None:
    """`edged transcripts --json`: the wake word where one opened the utterance, no key otherwise."""
    from edged.client.local import transcript_json
    from edged.proto import edged_pb2

    tagged = json.loads(transcript_json(edged_pb2.Transcript(text="Lights on.", is_final=True,
                                                             wake_word="wake-okay-nabu")))
    assert tagged["text"] == "Lights on." and tagged["wake_word"] == "wake-okay-nabu"
    assert "wake_word" not in json.loads(transcript_json(edged_pb2.Transcript(text="Hello.", is_final=True)))


def test_wake_words_without_a_wake_model_leave_the_microphone_off_with_the_reason(
        tmp_path: Path, deployed_tiny: Path) -> None:
    port = free_port()
    proc = start_server(write_config(tmp_path, port, 'local_mic_enabled=true\nlocal_wake_words=( "alexa" )\n'),
                        tmp_path / "server.log")
    try:
        wait_serving(proc, port)
        state = fetch_status(f"127.0.0.1:{port}")["microphone"]["state"]
        assert state.startswith("off: wake words need a wake-word model; name one in models_wake"), state
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "local_wake_words: wake words need a wake-word model" in log and "Traceback" not in log
