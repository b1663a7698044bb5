"""The daemon's microphone with a speaker model, through the real PyAudio → PortAudio → ALSA path
(tests/alsa_fixture.py): commands after a wake word carry their speaker, and with
`local_speaker_only` a command in a voice not named there is logged and dropped."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.audio.resample import resample
from edged.pipelines.tts import TtsModel
from edged.repository.records import DeployTarget
from tests.mic_daemon import mic_daemon
from tests.test_local_wake import LISTENING, RATE, WakeDaemon, _quiet, _voice
from tests.test_localaudio import _Follower
from tests.test_riva_fidelity import spoken, voice  # noqa: F401 - voice is a fixture
from tests.test_speaker_encoder import espeak_voice

OWNER_SAYS = ("The weather today is mild with a light breeze from the west. "
              "Please remember to water the plants on the balcony this evening.")
COMMAND = "Turn on the kitchen lights."
COMMAND_ENDS = ("Heard after wake-alexa", "not in local_speaker_only", "Nothing said after wake word")
"""The log lines one of which ends a command."""


def _wav(path: Path, pcm: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path], wake_rmirs: dict[str, Path],
           speaker_rmir: Path, cpu_target: DeployTarget, voice: TtsModel) -> Iterator[WakeDaemon]:  # noqa: F811
    """edged with ASR, TTS, the Alexa wake word and the speaker model on the test microphone;
    edged's voice enrolled as `owner` (`edged speakers enroll`), local_speaker_only=owner."""
    tmp = tmp_path_factory.mktemp("localspeakers")
    seen = tmp / "hook-seen.jsonl"
    hook = tmp / "hook.py"
    hook.write_text(f"import sys\nopen({str(seen)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    transcripts = tmp / "transcripts.jsonl"
    config = (f'local_transcripts_file="{transcripts}"\n'
              'models_wake=( "builtin:wake-alexa" )\nlocal_wake_words=( "alexa" )\n'
              'local_speaker_only=( "owner" )\n'
              f'local_command_hook="{sys.executable} {hook}"\n')
    clip = _wav(tmp / "owner.wav", spoken(voice, OWNER_SAYS), 16000)

    def enrol_owner(cfg: Path) -> None:
        enrolled = subprocess.run([sys.executable, "-m", "edged", "speakers", "enroll", "owner", str(clip),
                                   "-c", str(cfg)], capture_output=True, text=True, timeout=120)
        assert enrolled.returncode == 0, enrolled.stderr

    rmirs = (*default_rmirs.values(), wake_rmirs["wake-alexa"], speaker_rmir)
    with mic_daemon(tmp, rmirs, cpu_target, config, LISTENING, before_start=enrol_owner) as started:
        yield WakeDaemon(started.address, started.devices, seen, transcripts, started.log)


def _say_command(daemon: WakeDaemon, command: np.ndarray) -> list[Any]:
    """"Alexa." in edged's voice, then `command`, into the microphone: the finals published
    (once the wake word was heard and the command is over)."""
    follower = _Follower(daemon.address)
    try:
        time.sleep(0.3)
        logged = len(daemon.log.read_text())
        wake = _voice(daemon.address, "Alexa.")
        daemon.devices.feed(np.concatenate([_quiet(0.5), wake, _quiet(0.6), command, _quiet(2.0)]))
        deadline = time.monotonic() + 90
        while not any(line in daemon.log.read_text()[logged:] for line in COMMAND_ENDS):
            assert time.monotonic() < deadline, daemon.log.read_text()[logged:]
            time.sleep(0.1)
        assert daemon.log.read_text()[logged:].count("Wake word wake-alexa heard") == 1
        time.sleep(0.5)
        return follower.finals()
    finally:
        follower.close()


@pytest.mark.timeout(300)
def test_the_owners_command_is_labelled_and_another_voice_is_dropped(daemon: WakeDaemon) -> None:
    finals = _say_command(daemon, _voice(daemon.address, COMMAND))
    assert [m.speaker for m in finals] == ["owner"], [(m.text, m.speaker) for m in finals]
    records = [json.loads(line) for line in daemon.transcripts_file.read_text().splitlines()]
    assert [r["speaker"] for r in records] == ["owner"]
    deadline = time.monotonic() + 60
    while not daemon.hook_seen.exists():
        assert time.monotonic() < deadline, "the hook never ran"
        time.sleep(0.1)
    assert json.loads(daemon.hook_seen.read_text())["speaker"] == "owner"

    stranger = resample(espeak_voice(COMMAND, "en+f3"), 16000, RATE)
    finals = _say_command(daemon, (np.clip(stranger, -1, 1) * 32767).astype(np.int16))
    assert finals == [], [(m.text, m.speaker) for m in finals]
    dropped = [line for line in daemon.log.read_text().splitlines() if "not in local_speaker_only" in line]
    assert len(dropped) == 1 and "Dropped a command after wake-alexa from A" in dropped[0], dropped
    assert len(daemon.transcripts_file.read_text().splitlines()) == 1
