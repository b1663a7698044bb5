"""The quickstart scripts (Riva's riva_init/start/stop/clean.sh) against a tiny model repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.test_server import free_port

QUICKSTART = Path(__file__).resolve().parent.parent / "quickstart"


def run_script(name: str, cfg: Path, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """Run quickstart/NAME with EDGED_CONFIG set and this interpreter's `edged` on PATH."""
    env = {**os.environ, "EDGED_CONFIG": str(cfg), "EDGED_START_TIMEOUT": "60"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(QUICKSTART / name), *args], env=env, stdin=stdin,
        capture_output=True, text=True, timeout=120,
    )


def test_init_start_stop_clean(tmp_path: Path, tiny_rmir: Path) -> None:
    """init deploys, start waits for SERVING, stop ends it, clean asks and then deletes."""
    repo = tmp_path / "repo"
    (repo / "rmir").mkdir(parents=True)
    shutil.copy(tiny_rmir, repo / "rmir" / tiny_rmir.name)
    cfg = tmp_path / "config.sh"
    cfg.write_text(
        f'model_loc="{repo}"\nuse_existing_rmirs=true\n'
        f'riva_speech_api_port={free_port()}\nlisten_address="127.0.0.1"\nmetrics_port={free_port()}\nhttp_port={free_port()}\nwyoming_enabled=false\n',
        encoding="utf-8",
    )
    init = run_script("edged_init.sh", cfg)
    assert init.returncode == 0, init.stderr
    assert "tiny-asr" in init.stdout and "deployed" in init.stdout

    start = run_script("edged_start.sh", cfg)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert "SERVING" in start.stdout
        pid = int((repo / "edged.pid").read_text())
        os.kill(pid, 0)  # running
    finally:
        stop = run_script("edged_stop.sh", cfg)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not (repo / "edged.pid").exists()
    assert "Stopped" in (repo / "edged.log").read_text()

    refused = run_script("edged_clean.sh", cfg)  # no terminal, no -y: must not delete
    assert refused.returncode == 1 and "-y" in refused.stderr
    assert (repo / "models" / "tiny-asr" / "deploy.yaml").is_file()

    cleaned = run_script("edged_clean.sh", cfg, "-y")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (repo / "models").exists() and not (repo / "rmir").exists()


def test_start_reports_a_boot_failure(tmp_path: Path) -> None:
    """With nothing deployed, edged_start.sh fails at once and shows the log's reason."""
    cfg = tmp_path / "config.sh"
    cfg.write_text(
        f'model_loc="{tmp_path / "repo"}"\nriva_speech_api_port={free_port()}\nlisten_address="127.0.0.1"\n'
        f'metrics_port={free_port()}\nhttp_port={free_port()}\nwyoming_enabled=false\n',
        encoding="utf-8",
    )
    start = run_script("edged_start.sh", cfg)
    assert start.returncode == 1
    assert "edged init" in start.stderr


def test_missing_config_is_one_clear_line(tmp_path: Path) -> None:
    """A config path that does not exist gets one line saying how to make one."""
    result = run_script("edged_init.sh", tmp_path / "nope.sh")
    assert result.returncode == 1
    assert "edged config --example" in result.stderr
