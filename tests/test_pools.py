"""Pools: the process's thread pools made by name on first ask and shut down once, in order, within
a bounded wait; and a daemon that served both services leaves no edged thread behind at its stop."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest
import riva.client

from edged.config import Settings
from edged.pipelines.pools import Pools
from tests.test_asr_server import beckett_path, pcm_of
from tests.test_server import free_port


def edged_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("edged-") and t.is_alive())


def test_a_pool_is_made_once_per_name_with_one_size() -> None:
    with Pools() as pools:
        infer = pools.get("infer", 2)
        assert pools.get("infer", 2) is infer
        assert infer.submit(lambda: threading.current_thread().name).result().startswith("edged-infer")
        with pytest.raises(ValueError, match="has 2 thread"):
            pools.get("infer", 3)
        with pytest.raises(ValueError, match="at least one"):
            pools.get("lane", 0)
        assert pools.names() == ["infer"]


def test_shutdown_lets_running_calls_end_drops_queued_ones_and_happens_once() -> None:
    pools = Pools()
    pool = pools.get("one", 1)
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.2)
        return "ended"

    running, queued = pool.submit(slow), pool.submit(lambda: "never")
    started.wait(5)
    assert pools.shutdown(wait_s=5) == []
    assert running.result(0) == "ended"
    with pytest.raises(CancelledError):
        queued.result(0)
    assert not any(name.startswith("edged-one") for name in edged_threads())
    assert pools.shutdown() == []
    with pytest.raises(RuntimeError, match="after the pools were shut down"):
        pools.get("late", 1)


def test_pools_shut_in_the_order_made_so_a_caller_ends_before_what_it_calls() -> None:
    """A call on the first pool that hands work to a later pool as it ends still gets it done."""
    pools = Pools()
    outer, inner = pools.get("outer", 1), pools.get("inner", 1)
    started = threading.Event()

    def call() -> int:
        started.set()
        time.sleep(0.2)
        return inner.submit(lambda: 42).result()

    result = outer.submit(call)
    started.wait(5)
    assert pools.shutdown(wait_s=5) == []
    assert result.result(0) == 42


def test_the_wait_is_bounded_and_names_the_thread_left_running() -> None:
    pools = Pools()
    release = threading.Event()
    stuck = pools.get("stuck", 1).submit(release.wait, 10)
    t0 = time.monotonic()
    left = pools.shutdown(wait_s=0.2)
    assert time.monotonic() - t0 < 2
    assert len(left) == 1 and left[0].startswith("edged-stuck")
    release.set()
    assert stuck.result(5) is True


def test_a_daemon_stop_leaves_no_edged_thread(default_repo: Path) -> None:
    """The daemon in this process, with lanes for ASR (2) and TTS (3) as by default, streams one
    recording with interims and synthesises a few sentences; once it has stopped, no thread of any
    pool it made is left."""
    from edged.daemon.app import Server
    from edged.doors.grpc.services import default_installers

    port = free_port()
    settings = Settings(model_loc=default_repo, riva_speech_api_port=port, listen_address="127.0.0.1",
                        metrics_port=0, http_enabled=False, wyoming_enabled=False,
                        inference_lanes=2, tts_lanes=3)
    pcm, rate = pcm_of(beckett_path())
    auth = riva.client.Auth(uri=f"127.0.0.1:{port}")

    def use_both() -> tuple[str, int]:
        config = riva.client.StreamingRecognitionConfig(
            config=riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM,
                                                 sample_rate_hertz=rate, language_code="en-US",
                                                 max_alternatives=1, enable_automatic_punctuation=True),
            interim_results=True)
        chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
        text = "".join(r.alternatives[0].transcript for resp in
                       riva.client.ASRService(auth).streaming_response_generator(chunks, config)
                       for r in resp.results if r.is_final)
        audio = b"".join(r.audio for r in riva.client.SpeechSynthesisService(auth).synthesize_online(
            "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
            language_code="en-US", sample_rate_hz=22050))
        return text, len(audio)

    async def run() -> tuple[int, list[str], list[str], tuple[str, int]]:
        server = Server(settings, default_installers())
        ready = asyncio.Event()
        serving = asyncio.get_running_loop().create_task(server.serve(lambda _: ready.set()))
        await asyncio.wait_for(ready.wait(), 120)
        used = await asyncio.to_thread(use_both)
        assert server.ctx is not None
        pools = server.ctx.services.pools.names()
        during = edged_threads()
        server.request_stop()
        return await asyncio.wait_for(serving, 60), pools, during, used

    before = edged_threads()
    code, pools, during, (text, audio_bytes) = asyncio.run(run())
    assert code == 0
    assert "fail better" in text.lower() and audio_bytes > 22050 * 2, (text, audio_bytes)
    assert set(pools) >= {"infer", "asr-interims", "tts", "asr-moonshine-base-en-lane",
                          "tts-piper-joe-medium-lane"}, pools
    assert len(during) > len(before), during
    assert edged_threads() == before, edged_threads()
