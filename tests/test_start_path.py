"""The user's path to a serving server: the quick commands (start, status, health without Typer),
the health probe's own encoding and readiness shortcut, and `edged bench start` end to end."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import typer
from grpc_health.v1 import health_pb2

from edged.cli import quick, typer_app
from edged.client.health import check_ready, decode_check_response, encode_check_request
from edged.client.startbench import StartReport, bench_start
from edged.config import load_settings
from tests.conftest import REPO_ROOT
from tests.test_server import free_port, write_config


def _typer_options(name: str) -> set[str]:
    group: Any = typer.main.get_command(typer_app())  # a click Group: its commands by name
    command = group.commands[name]
    return {opt for param in command.params for opt in param.opts if opt != "--help"}


@pytest.mark.parametrize("name", ["start", "status", "health"])
def test_quick_commands_take_typers_options(name: str) -> None:
    """Each quick twin takes exactly the options (primary spellings) its Typer command declares."""
    parser = quick.parsers()[name]
    ours = {opt for action in parser._actions for opt in action.option_strings}
    assert ours == _typer_options(name)


def test_quick_leaves_help_mistakes_and_other_commands_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    """--help, an unknown option, a stray argument or another command: None (Typer answers)."""
    for argv in ([], ["health", "--help"], ["status", "-h"], ["health", "--bogus"], ["start", "extra"],
                 ["start", "--wait", "soon"], ["start", "--no-supervise"], ["init"], ["bench", "start"]):
        assert quick.run(argv) is None, argv


def test_quick_parses_like_typer() -> None:
    """Options are parsed to the same values Typer would give the command."""
    options = vars(quick.parsers()["start"].parse_args(["-d", "--wait=5", "-c", "x.sh"]))
    assert options == {"config": Path("x.sh"), "detach": True, "wait": 5.0, "supervise": False, "overrides": None}
    options = vars(quick.parsers()["start"].parse_args(["--set", "http_port=1", "--set", "wyoming_enabled=false"]))
    assert options["overrides"] == ["http_port=1", "wyoming_enabled=false"]
    options = vars(quick.parsers()["health"].parse_args(["--service", "asr", "--timeout", "1"]))
    assert options == {"config": None, "address": None, "tls_cert": None, "tls_key": None,
                       "service": "asr", "timeout": 1.0}


@pytest.mark.parametrize("service", ["", "asr", "nvidia.riva.asr.RivaSpeechRecognition", "é" * 100])
def test_health_request_encodes_as_protobuf_does(service: str) -> None:
    """The hand-written HealthCheckRequest is byte for byte protobuf's (lengths past 127 included)."""
    assert encode_check_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()


def test_health_response_decodes_as_protobuf_does() -> None:
    """Every ServingStatus, and a response with a field this version does not know."""
    for status in health_pb2.HealthCheckResponse.ServingStatus.values():
        data = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert decode_check_response(data) == health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    assert decode_check_response(b"\x12\x03abc\x08\x01") == "SERVING"


def _answer_once(reply: bytes) -> str:
    """A one-shot HTTP server on a loopback port answering `reply`; its address."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}"


def test_readiness_is_trusted_only_from_edged() -> None:
    """200 and 503 from edged are SERVING and NOT_SERVING, another server's 200 is None (ask gRPC),
    no server at all UNAVAILABLE."""
    head = "HTTP/1.1 {} X\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n"
    assert check_ready(_answer_once(head.format(200, "Server: edged\r\n").encode())) == "SERVING"
    assert check_ready(_answer_once(head.format(503, "Server: edged\r\n").encode())) == "NOT_SERVING"
    assert check_ready(_answer_once(head.format(200, "Server: triton\r\n").encode())) is None
    assert check_ready(f"127.0.0.1:{free_port()}") == "UNAVAILABLE"


@pytest.mark.timeout(120)
def test_bench_start_times_every_path(tmp_path: Path, two_models: Path) -> None:
    """One run by each path: every figure is there, `edged start --detach` returned, and after it
    `edged stop` left nothing running."""
    cfg = write_config(tmp_path, free_port())
    report = bench_start(cfg, load_settings(cfg)[0], runs=1)
    assert isinstance(report, StartReport) and report.runs == 1
    for spread in (report.detach, report.foreground, report.in_process, report.startup, report.health,
                   report.status):
        assert len(spread.runs) == 1 and 0 < spread.low == spread.median == spread.high < 60
    assert report.startup.median < report.in_process.median  # no interpreter or imports in-process
    assert "edged start --detach" in report.text() and '"detach"' in report.json()
    assert not (two_models / "edged.pid").exists()


def test_bench_start_command_refuses_a_busy_port(tmp_path: Path) -> None:
    """`edged bench start` with its server already listening: one clear line, exit 1."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        cfg = write_config(tmp_path, busy.getsockname()[1])
        done = subprocess.run([sys.executable, "-m", "edged", "bench", "start", "-c", str(cfg), "--runs", "1"],
                              capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert done.returncode == 1 and done.stderr.startswith("edged: Something already listens at")
