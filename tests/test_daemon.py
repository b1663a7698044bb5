"""The daemon under faults: supervisor restarts, draining at SIGTERM, stream limits, memory budget,
a corrupt network, the HTTP metrics port, lazy loading and idle unloading (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from edged.client.status import fetch_status
from edged.daemon.exits import EXIT_BOOT_FAILURE
from edged.proto import edged_pb2, edged_pb2_grpc
from tests.conftest import REPO_ROOT
from tests.server_harness import MAX_STREAMS, METHOD
from tests.test_server import free_port, health_status, wait_serving, write_config

pytestmark = pytest.mark.timeout(60)


def set_memory(repo: Path, model: str, memory_mb: float) -> None:
    """Rewrite the load memory a deploy measured for `model`."""
    path = repo / "models" / model / "deploy.yaml"
    record = yaml.safe_load(path.read_text())
    record["load"]["memory_mb"] = memory_mb
    path.write_text(yaml.safe_dump(record))


def start_harness(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """The server with the test-only Hold servicer (tests/server_harness.py)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.server_harness", str(cfg)],
                                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def edged(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the edged command line."""
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def status(port: int) -> dict[str, Any]:
    """The server's status as `edged status --json` shows it."""
    return fetch_status(f"127.0.0.1:{port}")


def models_by_name(port: int) -> dict[str, dict[str, Any]]:
    """Status of each model, by name."""
    return {m["name"]: m for m in status(port)["models"]}


def hold_calls(port: int, payloads: list[bytes]) -> tuple[grpc.Channel, list[Future[Any]]]:
    """Start one Hold call per payload, all at once."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    hold = channel.unary_unary(METHOD)
    return channel, [hold.future(p, timeout=30) for p in payloads]


def outcome(future: Future[Any]) -> str:
    """OK or the status code name of a finished call."""
    try:
        future.result()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM and wait."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_lets_open_streams_finish(tmp_path: Path, two_models: Path) -> None:
    """Streams open at SIGTERM finish within the grace period; new ones are refused; exit 0."""
    port = free_port()
    proc = start_harness(write_config(tmp_path, port, "shutdown_grace_s=10\n"), tmp_path / "log")
    try:
        wait_serving(proc, port)
        channel, calls = hold_calls(port, [b"2"] * 3)
        deadline = time.monotonic() + 10
        while status(port)["streams"].get("test", {}).get("active") != 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 10
        assert [outcome(c) for c in calls] == ["OK"] * 3
        channel.close()
    finally:
        stop(proc)
    log = (tmp_path / "log").read_text()
    assert "draining 3 stream(s)" in log and "Stopped" in log and "Traceback" not in log


def test_fifty_streams_with_eight_slots(tmp_path: Path, two_models: Path) -> None:
    """50 concurrent streams, max 8: 8 served, 42 RESOURCE_EXHAUSTED, no crash, memory bounded."""
    port = free_port()
    proc = start_harness(write_config(tmp_path, port), tmp_path / "log")
    try:
        wait_serving(proc, port)
        rss_before = status(port)["memory"]["rss_mb"]
        channel, calls = hold_calls(port, [b"1.5"] * 50)
        outcomes = [outcome(c) for c in calls]
        assert outcomes.count("OK") == MAX_STREAMS
        assert outcomes.count("RESOURCE_EXHAUSTED") == 50 - MAX_STREAMS
        refused = next(c for c in calls if outcome(c) != "OK")
        assert "the limit is 8" in refused.exception().details()  # type: ignore[union-attr]
        channel.close()
        after = status(port)
        assert after["health"] == "SERVING" and after["streams"]["test"] == {"active": 0, "limit": 8}
        assert after["memory"]["rss_mb"] < rss_before + 50
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(tmp_path)}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'edged_refused_streams_total{reason="streams"} 42.0' in text
    finally:
        assert stop(proc) == 0


def metrics_port(tmp: Path) -> int:
    """The metrics_port write_config chose."""
    for line in (tmp / "config.sh").read_text().splitlines():
        if line.startswith("metrics_port="):
            return int(line.split("=", 1)[1])
    raise AssertionError("no metrics_port in config.sh")


def test_http_metrics_and_probes(tmp_path: Path, two_models: Path) -> None:
    """/metrics has per-model memory; /v2/health/live and /ready answer 200 once serving."""
    port = free_port()
    proc = start_harness(write_config(tmp_path, port), tmp_path / "log")
    base = f"http://127.0.0.1:{metrics_port(tmp_path)}"
    try:
        wait_serving(proc, port)
        for path in ("/v2/health/live", "/v2/health/ready"):
            with urllib.request.urlopen(base + path, timeout=5) as r:
                assert r.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'edged_model_memory_bytes{model="tiny-asr"}' in text
        assert "process_resident_memory_bytes" in text
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert missing.value.code == 404
    finally:
        assert stop(proc) == 0


def test_budget_fitting_one_model(tmp_path: Path, two_models: Path) -> None:
    """With room for one model the other is left out, with the reason in status and health."""
    set_memory(two_models, "tiny-asr", 300)
    set_memory(two_models, "tiny-tts", 300)
    port = free_port()
    proc = start_harness(write_config(tmp_path, port, "memory_budget_mb=400\n"), tmp_path / "log")
    try:
        wait_serving(proc, port)
        models = models_by_name(port)
        assert models["tiny-asr"]["state"] == "loaded"
        assert models["tiny-tts"]["state"] == "left out"
        assert "needs 300 MB" in models["tiny-tts"]["reason"]
        assert "memory_budget_mb=400" in models["tiny-tts"]["reason"]
        assert health_status(port, "asr") == "SERVING"
        assert health_status(port, "tts") == "NOT_SERVING"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = edged_pb2_grpc.EdgedStub(ch)
            with pytest.raises(grpc.RpcError) as full:
                stub.LoadModel(edged_pb2.ModelRequest(name="tiny-tts"), timeout=10)
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.UnloadModel(edged_pb2.ModelRequest(name="tiny-asr"), timeout=10).state == "unloaded"
            assert stub.LoadModel(edged_pb2.ModelRequest(name="tiny-tts"), timeout=10).state == "loaded"
            with pytest.raises(grpc.RpcError) as unknown:
                stub.LoadModel(edged_pb2.ModelRequest(name="nope"), timeout=10)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert health_status(port, "tts") == "SERVING"
        table = edged("status", "-c", str(tmp_path / "config.sh"))
        assert table.returncode == 0 and "tiny-tts" in table.stdout and "loaded" in table.stdout
    finally:
        assert stop(proc) == 0


def test_corrupt_network_fails_only_its_model(tmp_path: Path, two_models: Path) -> None:
    """A deployed network that no longer parses: that model is failed, the other serves."""
    record = yaml.safe_load((two_models / "models" / "tiny-tts" / "deploy.yaml").read_text())
    for entry in record["networks"].values():
        (two_models / "models" / "tiny-tts" / entry["file"]).write_bytes(b"\x08garbage" * 100)
    port = free_port()
    proc = start_harness(write_config(tmp_path, port), tmp_path / "log")
    try:
        wait_serving(proc, port)
        models = models_by_name(port)
        assert models["tiny-asr"]["state"] == "loaded"
        assert models["tiny-tts"]["state"] == "failed" and "deploy -f" in models["tiny-tts"]["reason"]
        assert health_status(port) == "SERVING"
        assert health_status(port, "tts") == "NOT_SERVING"
    finally:
        assert stop(proc) == 0


def test_lazy_loading_and_idle_unloading(tmp_path: Path, two_models: Path) -> None:
    """lazy_loading loads a model at its first use; model_idle_unload_s unloads it after."""
    port = free_port()
    cfg = write_config(tmp_path, port, "lazy_loading=true\nmodel_idle_unload_s=1\n")
    proc = start_harness(cfg, tmp_path / "log")
    try:
        wait_serving(proc, port)
        assert {m["state"] for m in models_by_name(port).values()} == {"unloaded"}
        assert health_status(port, "asr") == "SERVING"
        channel, calls = hold_calls(port, [b"0:tiny-asr"])
        assert outcome(calls[0]) == "OK"
        channel.close()
        assert models_by_name(port)["tiny-asr"]["state"] == "loaded"
        deadline = time.monotonic() + 5
        while models_by_name(port)["tiny-asr"]["state"] == "loaded":
            assert time.monotonic() < deadline, "not unloaded when idle"
            time.sleep(0.1)
        assert "idle" in models_by_name(port)["tiny-asr"]["reason"]
    finally:
        assert stop(proc) == 0


def test_lazy_loading_evicts_the_least_recently_used(tmp_path: Path, two_models: Path) -> None:
    """With room for one model, using the other unloads the one used least recently."""
    set_memory(two_models, "tiny-asr", 300)
    set_memory(two_models, "tiny-tts", 300)
    port = free_port()
    proc = start_harness(write_config(tmp_path, port, "lazy_loading=true\nmemory_budget_mb=400\n"),
                         tmp_path / "log")
    try:
        wait_serving(proc, port)
        for payload in (b"0:tiny-asr", b"0:tiny-tts"):
            channel, calls = hold_calls(port, [payload])
            assert outcome(calls[0]) == "OK"
            channel.close()
        models = models_by_name(port)
        assert models["tiny-tts"]["state"] == "loaded"
        assert models["tiny-asr"]["state"] == "unloaded"
        assert "evicted (least recently used) for tiny-tts" in models["tiny-asr"]["reason"]
    finally:
        assert stop(proc) == 0


def test_supervisor_restarts_a_killed_server(tmp_path: Path, two_models: Path) -> None:
    """SIGKILL the server under `edged start --detach`: SERVING again within 10 s; then `edged stop`."""
    port = free_port()
    cfg = write_config(tmp_path, port)
    started = edged("start", "--detach", "-c", str(cfg), "--wait", "30")
    pid_file = two_models / "edged.pid"
    try:
        assert started.returncode == 0, started.stderr
        assert "SERVING" in started.stdout and pid_file.is_file()
        first = status(port)["pid"]
        os.kill(first, signal.SIGKILL)
        t0 = time.monotonic()
        while True:
            assert time.monotonic() - t0 < 10, "not SERVING again within 10 s"
            if health_status(port) == "SERVING" and status(port)["pid"] != first:
                break
            time.sleep(0.1)
        again = edged("start", "--detach", "-c", str(cfg))
        assert again.returncode == 1 and "already running" in again.stderr
        shown = edged("status", "-c", str(cfg), "--json")
        assert shown.returncode == 0 and '"supervisor_pid"' in shown.stdout
    finally:
        stopped = edged("stop", "-c", str(cfg))
    assert stopped.returncode == 0 and stopped.stdout.strip() == "edged stopped"
    assert not pid_file.exists()
    assert health_status(port) == "UNAVAILABLE"
    log = (two_models / "edged.log").read_text()
    assert "died (signal SIGKILL); restarting" in log
    assert edged("status", "-c", str(cfg)).returncode == 3
    assert edged("stop", "-c", str(cfg)).stdout.strip() == "edged is not running"


def test_supervisor_does_not_restart_a_boot_failure(tmp_path: Path) -> None:
    """Nothing deployed: `edged start --detach` fails fast with the boot-failure code, no loop."""
    cfg = write_config(tmp_path, free_port())
    t0 = time.monotonic()
    started = edged("start", "--detach", "-c", str(cfg), "--wait", "30")
    assert started.returncode == EXIT_BOOT_FAILURE
    assert time.monotonic() - t0 < 15
    assert "edged init" in started.stderr
    log = (tmp_path / "repo" / "edged.log").read_text()
    assert log.count("Started server") == 1 and "not restarting" in log
    assert not (tmp_path / "repo" / "edged.pid").exists()
