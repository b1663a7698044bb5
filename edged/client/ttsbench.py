"""`edged bench tts`: time to first audio, real-time factor and concurrent streams, locally or on a server."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged.client.speak import Speaker
from edged.errors import ConfigError


@dataclass(frozen=True)
class TtsBenchResult:
    """What one benchmark run measured (seconds unless named otherwise)."""

    sentences: int
    streams: int
    ttfa_p50: float
    ttfa_p95: float
    rtf: float
    """Synthesis time over audio time, per stream (lower is faster)."""
    audio_seconds: float
    wall_seconds: float
    stall_seconds: float = 0.0
    """Silence a listener playing each request in real time from its first chunk would have heard
    waiting for later chunks, over all requests."""
    stalled: int = 0
    """Requests with such a wait."""


def read_sentences(path: Path) -> list[str]:
    """One sentence per non-empty line."""
    try:
        sentences = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from None
    if not sentences:
        raise ConfigError(f"{path} holds no sentence.")
    return sentences


def bench_tts(speaker: Speaker, sentences: list[str], streams: int = 1, sample_rate: int = 22050,
              voice: str = "") -> TtsBenchResult:
    """Speak every sentence on each of `streams` concurrent streams; one warm-up sentence first."""
    for _ in speaker.speak([sentences[0]], sample_rate, voice, 1.0):
        pass
    ttfa: list[float] = []
    busy: list[float] = []
    audio: list[float] = []
    stalls: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        for sentence in sentences:
            t0 = time.perf_counter()
            first, seconds, stall = None, 0.0, 0.0
            for chunk in speaker.speak([sentence], sample_rate, voice, 1.0):
                now = time.perf_counter() - t0
                if first is None:
                    first = now
                stall += max(0.0, now - (first + stall + seconds))  # the listener ran out
                seconds += chunk.seconds
            with lock:
                ttfa.append(first or 0.0)
                busy.append(time.perf_counter() - t0)
                audio.append(seconds)
                stalls.append(stall)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, name=f"bench-{i}") for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return TtsBenchResult(
        sentences=len(sentences), streams=streams,
        ttfa_p50=float(np.percentile(ttfa, 50)), ttfa_p95=float(np.percentile(ttfa, 95)),
        rtf=sum(busy) / max(sum(audio), 1e-9), audio_seconds=sum(audio), wall_seconds=wall,
        stall_seconds=sum(stalls), stalled=sum(1 for s in stalls if s > 0.0))
