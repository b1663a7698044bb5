"""`edged start` as a real process: health NOT_SERVING while loading, SERVING after, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edged.backends import BackendOptions
from edged.client.health import check_health
from edged.daemon.app import EXIT_BOOT_FAILURE
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef

_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on right now, and not one this test run handed out before (one
    config.sh takes several, which bind only when its server starts)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def write_config(tmp: Path, port: int, extra: str = "") -> Path:
    """A config.sh with its repository in tmp and the API on a loopback port."""
    cfg = tmp / "config.sh"
    cfg.write_text(
        f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
        f'metrics_port={free_port()}\nhttp_port={free_port()}\nwyoming_enabled=false\n{extra}',
        encoding="utf-8",
    )
    return cfg


def health_status(port: int, service: str = "") -> str:
    """The health status name on a loopback port, or the gRPC error code name."""
    return check_health(f"127.0.0.1:{port}", service, timeout=2)


def start_server(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """`python -m edged start -c cfg`, logging to a file."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edged", "start", "-c", str(cfg)], stdout=out, stderr=subprocess.STDOUT
        )


def wait_serving(proc: subprocess.Popen[bytes], port: int, timeout: float = 60) -> list[str]:
    """Poll health until SERVING; returns the statuses seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited before it was ready"
        status = health_status(port)
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "SERVING":
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not SERVING within {timeout} s; saw {seen}")


@contextmanager
def serving(cfg: Path, port: int, timeout: float = 120) -> Iterator[str]:
    """`edged start -c cfg` on a loopback port until the block ends; yields its address. Its
    log (beside cfg) must hold no traceback."""
    log = cfg.parent / "server.log"
    proc = start_server(cfg, log)
    try:
        wait_serving(proc, port, timeout=timeout)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture
def deployed_tiny(tmp_path: Path, tiny_rmir: Path, cpu_target: DeployTarget) -> Path:
    """A repository in tmp_path/repo holding the tiny model, deployed."""
    deploy(RmirRef(tiny_rmir), tmp_path / "repo" / "models", cpu_target, BackendOptions())
    return tmp_path / "repo"


def test_start_serves_health_and_stops_on_sigterm(tmp_path: Path, deployed_tiny: Path) -> None:
    """Health answers SERVING once the model is loaded; SIGTERM ends the process with status 0."""
    port = free_port()
    proc = start_server(write_config(tmp_path, port), tmp_path / "server.log")
    try:
        seen = wait_serving(proc, port)
        assert seen[-1] == "SERVING"
        assert set(seen) <= {"UNAVAILABLE", "NOT_SERVING", "SERVING"}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            resp = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=5)))
            names = {s.name for s in resp.list_services_response.service}
        assert "grpc.health.v1.Health" in names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "Loaded tiny-asr" in log and "Stopped" in log
    assert "Traceback" not in log


def test_sigint_also_stops_cleanly(tmp_path: Path, deployed_tiny: Path) -> None:
    """Ctrl-C in a terminal (SIGINT) stops the server like SIGTERM."""
    port = free_port()
    proc = start_server(write_config(tmp_path, port), tmp_path / "server.log")
    try:
        wait_serving(proc, port)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_nothing_deployed_is_a_boot_failure(tmp_path: Path) -> None:
    """With an empty repository the server exits with the boot-failure code and says what to do."""
    port = free_port()
    proc = start_server(write_config(tmp_path, port), tmp_path / "server.log")
    assert proc.wait(timeout=30) == EXIT_BOOT_FAILURE
    log = (tmp_path / "server.log").read_text()
    assert "edged init" in log
    assert "Traceback" not in log


def test_port_in_use_is_a_boot_failure(tmp_path: Path, deployed_tiny: Path) -> None:
    """A port someone else holds gives the boot-failure code and names the setting to change."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = start_server(write_config(tmp_path, port), tmp_path / "server.log")
        assert proc.wait(timeout=30) == EXIT_BOOT_FAILURE
    log = (tmp_path / "server.log").read_text()
    assert "riva_speech_api_port" in log
    assert "Traceback" not in log


def test_stale_model_is_not_loaded(tmp_path: Path, deployed_tiny: Path) -> None:
    """A deployment made for another CPU is reported and left out, never loaded blindly."""
    record = deployed_tiny / "models" / "tiny-asr" / "deploy.yaml"
    record.write_text(record.read_text().replace("arch: " + os.uname().machine, "arch: elsewhere"))
    port = free_port()
    proc = start_server(write_config(tmp_path, port), tmp_path / "server.log")
    assert proc.wait(timeout=30) == EXIT_BOOT_FAILURE
    log = (tmp_path / "server.log").read_text()
    assert "another device" in log and "edged init" in log


@pytest.mark.parametrize("setting", ["metrics_port", "http_port"])
def test_side_port_in_use_is_a_boot_failure(tmp_path: Path, deployed_tiny: Path, setting: str) -> None:
    """A metrics or HTTP port someone else holds gives the boot-failure code and names its setting."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        cfg = write_config(tmp_path, free_port())
        cfg.write_text(cfg.read_text() + f"{setting}={taken}\n")
        proc = start_server(cfg, tmp_path / "server.log")
        assert proc.wait(timeout=30) == EXIT_BOOT_FAILURE
    log = (tmp_path / "server.log").read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and setting in errors[0] and "Traceback" not in log, log
