"""The daemon with the real default models: start to SERVING, idle memory and CPU, status."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from edged.backends import BackendOptions
from edged.client.health import check_health
from edged.client.status import fetch_status
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from tests.test_server import free_port, write_config

IDLE_RSS_LIMIT = 1.0e9
IDLE_CPU_LIMIT = 0.01
START_LIMIT_S = 20.0
"""Generous: the machine running the suite may be busy; the 3 s target is measured on its own."""


@pytest.mark.timeout(300)
def test_default_models_start_and_idle(tmp_path: Path, default_rmirs: dict[str, Path],
                                       cpu_target: DeployTarget) -> None:
    """`edged start` serves Moonshine, Piper and Silero; idle it holds ≤ 1 GB and ≤ 1 % of a core."""
    for rmir in default_rmirs.values():
        deploy(RmirRef(rmir), tmp_path / "repo" / "models", cpu_target, BackendOptions())
    port = free_port()
    cfg = write_config(tmp_path, port)
    t0 = time.monotonic()
    with open(tmp_path / "server.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "start", "-c", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        while check_health(f"127.0.0.1:{port}", "", 1) != "SERVING":
            assert proc.poll() is None and time.monotonic() - t0 < START_LIMIT_S
            time.sleep(0.02)
        start_s = time.monotonic() - t0
        time.sleep(2)
        process = psutil.Process(proc.pid)
        before, w0 = process.cpu_times(), time.monotonic()
        time.sleep(5)
        after, w1 = process.cpu_times(), time.monotonic()
        cpu = (after.user + after.system - before.user - before.system) / (w1 - w0)
        rss = process.memory_info().rss
        status = fetch_status(f"127.0.0.1:{port}")
        print(f"\nstart to SERVING {start_s:.2f} s, idle RSS {rss / 1e6:.0f} MB, "
              f"idle CPU {cpu * 100:.2f} % of a core")
        assert {m["name"]: m["state"] for m in status["models"]} == {
            "silero-vad": "loaded", "moonshine-base-en": "loaded", "piper-joe-medium": "loaded"}
        assert status["services"]["asr"] == "SERVING" and status["services"]["tts"] == "SERVING"
        assert rss <= IDLE_RSS_LIMIT
        assert cpu <= IDLE_CPU_LIMIT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
