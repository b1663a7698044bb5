"""`edged start` with the microphone and the speaker on the ALSA test devices (tests/alsa_fixture.py):
deployed, started, waited for until the microphone is in the state asked, and at the end stopped with
SIGTERM and checked to exit cleanly, with no traceback in its log. The local audio, wake word and
satellite tests each start theirs through `mic_daemon`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edged.backends import BackendOptions
from edged.client.status import fetch_status
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from tests.conftest import require_default_packs
from tests.test_server import free_port, wait_serving, write_config


@dataclass
class MicDaemon:
    address: str
    devices: Any
    """The AlsaTestDevices: what is played into the microphone, what the speaker played."""
    proc: subprocess.Popen[bytes]
    log: Path


def wait_mic(address: str, state: str, timeout: float) -> None:
    """Until the daemon's microphone is in `state` (its `edged status` words); fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (now := fetch_status(address)["microphone"]["state"]) != state:
        assert time.monotonic() < deadline, now
        time.sleep(0.1)


@contextmanager
def mic_daemon(tmp: Path, rmirs: Iterable[Path], cpu_target: DeployTarget, config: str,
               mic_state: str, timeout: float = 60,
               before_start: Callable[[Path], None] | None = None) -> Iterator[MicDaemon]:
    """The daemon serving `rmirs`, with the test microphone and speaker and `config` (config.sh
    lines) besides, once its microphone is in `mic_state`; `before_start` is given its config.sh
    first (to enrol a speaker, say)."""
    pytest.importorskip("pyaudio", reason="PyAudio is not installed (pip install 'edged[audio]')")
    require_default_packs()
    from tests.alsa_fixture import MIC, SPEAKER, AlsaTestDevices

    for rmir in rmirs:
        deploy(RmirRef(rmir), tmp / "repo" / "models", cpu_target, BackendOptions())
    (tmp / "snd").mkdir()
    devices = AlsaTestDevices(tmp / "snd")
    port = free_port()
    cfg = write_config(tmp, port, f'local_mic_enabled=true\nlocal_mic_device="{MIC}"\n'
                                  f'local_speaker_enabled=true\nlocal_speaker_device="{SPEAKER}"\n{config}')
    if before_start is not None:
        before_start(cfg)
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "start", "-c", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=devices.env)
    try:
        wait_serving(proc, port, timeout=120)
        address = f"127.0.0.1:{port}"
        wait_mic(address, mic_state, timeout)
        yield MicDaemon(address, devices, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        devices.close()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
