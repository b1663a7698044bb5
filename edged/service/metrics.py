"""Prometheus metrics of the server, and the helpers the speech services record their work with.

The services count a request with `with metrics.track_request("asr", model):`, run blocking
inference through `await metrics.run_inference(ctx.executor, model, fn, *args)` (queue time and
compute time per model), and add audio with `metrics.AUDIO_SECONDS.labels("asr", model).inc(s)`.
Active streams, stream capacity and the load ratio are kept by admission control
(`ctx.admission.stream`), whatever the door. `edged_queue_seconds` is the time a request waits for
the inference executor before it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

T = TypeVar("T")

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("edged_requests", "Requests and streams received.", ["service", "model"])
FAILURES = Counter("edged_request_failures", "Requests and streams that ended in an error.",
                   ["service", "model", "error"])
QUEUE_SECONDS = Histogram("edged_queue_seconds", "Time inference waited for the executor.",
                          ["model"], buckets=_LATENCY_BUCKETS)
COMPUTE_SECONDS = Histogram("edged_compute_seconds", "Time inference ran.", ["model"],
                            buckets=_LATENCY_BUCKETS)
SPEAKER_WAIT_SECONDS = Histogram("edged_speaker_wait_seconds",
                                 "Time a streamed final waited for its speaker's embedding (diarization).",
                                 buckets=_LATENCY_BUCKETS)
ACTIVE_STREAMS = Gauge("edged_active_streams", "Streams open now.", ["service"])
STREAM_CAPACITY = Gauge("edged_stream_capacity", "Streams a service admits at once (its max_streams).",
                        ["service"])
LOAD_RATIO = Gauge("edged_load_ratio", "Open streams over capacity of the busiest service "
                   "(0 idle, 1 full); the autoscaler's per-pod metric.")
REFUSED = Counter("edged_refused_streams",
                  "Streams refused: RESOURCE_EXHAUSTED (streams, memory) or UNAVAILABLE (draining).",
                  ["reason"])
IDLE_ENDED = Counter("edged_idle_streams_ended",
                     "Streams ended because their client sent (or read) nothing for the idle timeout.",
                     ["service", "waiting"])
CLIENT_ERRORS = Counter("edged_client_errors",
                        "Requests refused with a precise answer (the client's mistake or a limit it hit), "
                        "by door and kind.", ["door", "kind"])
AUDIO_SECONDS = Counter("edged_audio_seconds", "Seconds of audio recognised (asr) or synthesised (tts).",
                        ["service", "model"])
MODEL_MEMORY = Gauge("edged_model_memory_bytes", "Memory each loaded model took at deploy.", ["model"])


@contextmanager
def track_request(service: str, model: str) -> Iterator[None]:
    """Count one request or stream, and a failure if the body raises (a consumer that stops
    reading a generator early is no failure)."""
    REQUESTS.labels(service, model).inc()
    try:
        yield
    except GeneratorExit:
        raise
    except BaseException as exc:
        FAILURES.labels(service, model, type(exc).__name__).inc()
        raise


async def run_inference(executor: Executor, model: str, fn: Callable[..., T], *args: object) -> T:
    """Run blocking `fn(*args)` on the executor, recording its queue and compute time for `model`."""
    submitted = time.perf_counter()

    def timed() -> T:
        started = time.perf_counter()
        QUEUE_SECONDS.labels(model).observe(started - submitted)
        try:
            return fn(*args)
        finally:
            COMPUTE_SECONDS.labels(model).observe(time.perf_counter() - started)

    return await asyncio.get_running_loop().run_in_executor(executor, timed)
