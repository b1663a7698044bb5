"""The daemon's microphone and speaker (edged.v1 Speak, Transcripts, SetMicrophone, status)."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from edged.client.local import Target, say, set_microphone
from edged.client.status import fetch_status
from edged.errors import EdgedError
from edged.proto import edged_pb2, edged_pb2_grpc
from tests.test_server import deployed_tiny, free_port, start_server, wait_serving, write_config

__all__ = ["deployed_tiny"]  # a fixture, used by name


def test_microphone_and_speaker_off_by_default(tmp_path: Path, deployed_tiny: Path) -> None:
    """Without local_mic_enabled/local_speaker_enabled the calls fail with the setting to change."""
    port = free_port()
    proc = start_server(write_config(tmp_path, port), tmp_path / "server.log")
    try:
        wait_serving(proc, port)
        address = f"127.0.0.1:{port}"
        status = fetch_status(address)
        assert status["microphone"]["state"] == "off" and status["speaker"]["state"] == "off"
        with pytest.raises(EdgedError, match="local_speaker_enabled=true"):
            say(Target(address), "hello")
        with pytest.raises(EdgedError, match="local_mic_enabled=true"):
            set_microphone(Target(address), muted=True)
        with grpc.insecure_channel(address) as channel:
            stream = edged_pb2_grpc.EdgedStub(channel).Transcripts(edged_pb2.TranscriptsRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stream))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "local_mic_enabled=true" in info.value.details()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
