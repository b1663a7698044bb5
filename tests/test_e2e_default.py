"""End to end with the real default models: deploy them all, `edged start`, SERVING, clean stop."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.test_server import free_port, start_server, wait_serving


def test_default_models_deploy_and_serve(tmp_path: Path, default_rmirs: dict[str, Path]) -> None:
    """Moonshine, Piper and Silero deploy on this CPU and the daemon loads all three."""
    repo = tmp_path / "repo"
    (repo / "rmir").mkdir(parents=True)
    for path in default_rmirs.values():
        shutil.copy(path, repo / "rmir" / path.name)
    port = free_port()
    cfg = tmp_path / "config.sh"
    cfg.write_text(
        f'model_loc="{repo}"\nuse_existing_rmirs=true\nriva_speech_api_port={port}\n'
        f'listen_address="127.0.0.1"\nmetrics_port={free_port()}\nhttp_port={free_port()}\nwyoming_enabled=false\n',
        encoding="utf-8",
    )
    init = subprocess.run([sys.executable, "-m", "edged", "init", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=600)
    assert init.returncode == 0, init.stdout + init.stderr
    for name in default_rmirs:
        assert f"{name}.rmir" in init.stdout

    listing = subprocess.run([sys.executable, "-m", "edged", "models", "-c", str(cfg), "--json"],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert '"state": "ok"' in listing.stdout and "moonshine-base-en" in listing.stdout

    proc = start_server(cfg, tmp_path / "server.log")
    try:
        wait_serving(proc, port, timeout=120)
        health = subprocess.run([sys.executable, "-m", "edged", "health", "-c", str(cfg)],
                                capture_output=True, text=True, timeout=30)
        assert health.returncode == 0 and "SERVING" in health.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    for name in default_rmirs:
        assert f"Loaded {name}" in log
