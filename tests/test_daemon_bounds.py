"""The daemon's bounds with the default models: SIGTERM ends it within `shutdown_grace_s` + 1 s
whatever its clients are doing, and past its RSS high-water mark new streams are refused."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import riva.client

from edged.client.status import fetch_status
from tests.test_asr_server import beckett_path, pcm_of
from tests.test_server import free_port, start_server, wait_serving, write_config

GRACE_S = 2
STOP_SLACK_S = 1.0
"""What the bound allows past the grace period (issue 25's target)."""
EXIT_SLACK_S = 0.5
"""Interpreter teardown after the daemon's last log line, on a busy test machine."""


def _long_text() -> str:
    sentence = "The quick brown fox jumps over the lazy dog while the band plays on the square. "
    return sentence * (9000 // len(sentence))


@pytest.mark.timeout(180)
def test_sigterm_with_work_in_flight_exits_within_grace(tmp_path: Path, default_repo: Path) -> None:
    """A real-time ASR stream, a long SynthesizeOnline and a long Recognize are running when
    SIGTERM comes: the daemon exits 0 within shutdown_grace_s + 1 s, with no traceback logged."""
    (tmp_path / "repo").symlink_to(default_repo)
    port = free_port()
    cfg = write_config(tmp_path, port, f"shutdown_grace_s={GRACE_S}\nasr_stream_idle_timeout_s=60\n")
    log = tmp_path / "server.log"
    proc = start_server(cfg, log)
    try:
        wait_serving(proc, port)
        auth = riva.client.Auth(uri=f"127.0.0.1:{port}")
        pcm, rate = pcm_of(beckett_path())
        started = {name: threading.Event() for name in ("stream", "synthesis", "recognize")}
        errors: list[str] = []

        def paced() -> Iterator[bytes]:  # real time, far longer than the test
            for _ in range(30):
                for i in range(0, len(pcm), 3200):
                    yield pcm[i:i + 3200]
                    started["stream"].set()
                    time.sleep(0.1)

        def stream() -> None:
            sc = riva.client.StreamingRecognitionConfig(
                config=riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM,
                                                     sample_rate_hertz=rate, language_code="en-US"),
                interim_results=True)
            try:
                for _ in riva.client.ASRService(auth).streaming_response_generator(paced(), sc):
                    pass
            except grpc.RpcError as exc:
                errors.append(f"stream: {exc.code().name}")

        def synthesis() -> None:
            try:
                for _ in riva.client.SpeechSynthesisService(auth).synthesize_online(
                        _long_text(), voice_name="English-US.Joe", sample_rate_hz=22050):
                    started["synthesis"].set()
            except grpc.RpcError as exc:
                errors.append(f"synthesis: {exc.code().name}")

        def recognize() -> None:  # 3 minutes of speech: long calls on the inference threads
            cfg = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM,
                                                sample_rate_hertz=rate, language_code="en-US")
            started["recognize"].set()
            try:
                riva.client.ASRService(auth).offline_recognize(pcm * 18, cfg)
            except grpc.RpcError as exc:
                errors.append(f"recognize: {exc.code().name}")

        clients = [threading.Thread(target=fn, daemon=True) for fn in (stream, synthesis, recognize)]
        for client in clients:
            client.start()
        for name, event in started.items():
            assert event.wait(60), f"the {name} client never got going"
        time.sleep(1.5)  # the work is under way on the inference threads
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stop_s = time.monotonic() - t0
        print(f"\nSIGTERM to exit {stop_s:.2f} s (grace {GRACE_S} s); clients ended with {errors}")
        assert code == 0
        assert stop_s <= GRACE_S + STOP_SLACK_S + EXIT_SLACK_S
        text = log.read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert "Stopped" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(120)
def test_past_the_high_water_mark_new_streams_are_refused(tmp_path: Path, default_repo: Path) -> None:
    """With `memory_high_water_mb` below the server's RSS a Recognize is refused with
    RESOURCE_EXHAUSTED naming the setting, health stays SERVING, and `edged status` shows the mark."""
    (tmp_path / "repo").symlink_to(default_repo)
    port = free_port()
    proc = start_server(write_config(tmp_path, port, "memory_high_water_mb=64\n"), tmp_path / "server.log")
    try:
        wait_serving(proc, port)
        pcm, rate = pcm_of(beckett_path())
        cfg = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM,
                                            sample_rate_hertz=rate, language_code="en-US")
        with pytest.raises(grpc.RpcError) as refused:
            riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{port}")).offline_recognize(pcm, cfg)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "memory_high_water_mb=64" in str(refused.value.details())
        status = fetch_status(f"127.0.0.1:{port}")
        assert status["memory"]["high_water_mb"] == 64 and status["memory"]["rss_mb"] > 64
        assert status["health"] == "SERVING" and status["streams"]["asr"]["active"] == 0
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
