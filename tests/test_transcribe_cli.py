"""`edged transcribe FILE` as the README says, with the shipped config.sh and the default models:
from the config's folder, from another folder with -c, and through a daemon already serving."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require_default_packs
from tests.test_server import free_port, start_server, wait_serving


@pytest.fixture(scope="module")
def beckett() -> Path:
    """The speech clip that ships with the Moonshine pack."""
    require_default_packs()
    import moonshine_cpp

    return Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory, default_repo: Path) -> Path:
    """A user's folder after `edged init`: the shipped config.sh (its ports moved off the defaults so
    nothing else on this machine answers there) beside model_repository/ with the default models."""
    folder = tmp_path_factory.mktemp("user") / "edged"
    folder.mkdir()
    text = (REPO_ROOT / "config.sh").read_text(encoding="utf-8")
    ports = {"riva_speech_api_port": free_port(), "metrics_port": free_port(), "http_port": free_port(),
             "wyoming_port": free_port()}
    text += "".join(f"{name}={port}\n" for name, port in ports.items())
    text += 'listen_address="127.0.0.1"\nwyoming_zeroconf=false\n'
    (folder / "config.sh").write_text(text, encoding="utf-8")
    (folder / "model_repository").symlink_to(default_repo, target_is_directory=True)
    return folder


def transcribe(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGED_CONFIG"}
    return subprocess.run([sys.executable, "-m", "edged", "transcribe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def assert_beckett(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    assert "ever tried" in text and "fail better" in text, out.stdout


def test_from_the_config_folder(user_folder: Path, beckett: Path) -> None:
    """`edged transcribe beckett.wav` where config.sh is: a private server finds model_repository."""
    shutil.copy(beckett, user_folder / "beckett.wav")
    out = transcribe(user_folder, "beckett.wav")
    assert_beckett(out)
    assert "using the server" not in out.stderr


def test_from_another_folder_with_c(user_folder: Path, beckett: Path, tmp_path: Path) -> None:
    """`edged transcribe -c path/to/config.sh FILE` from elsewhere: paths still against config.sh's folder."""
    out = transcribe(tmp_path, "-c", str(user_folder / "config.sh"), str(beckett))
    assert_beckett(out)


@pytest.fixture
def daemon(user_folder: Path, tmp_path: Path) -> Iterator[None]:
    """`edged start` from the user's folder, SERVING."""
    config = user_folder / "config.sh"
    proc = start_server(config, tmp_path / "server.log")
    port = int(next(line.split("=")[1] for line in config.read_text().splitlines()[::-1]
                    if line.startswith("riva_speech_api_port=")))
    try:
        wait_serving(proc, port, timeout=120)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.usefixtures("daemon")
def test_uses_the_daemon_already_serving(user_folder: Path, beckett: Path) -> None:
    """With the configured daemon SERVING, transcribe asks it rather than starting its own."""
    out = transcribe(user_folder, str(beckett))
    assert_beckett(out)
    assert "using the server at 127.0.0.1:" in out.stderr
