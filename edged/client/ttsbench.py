"""`edged bench tts`: time to first audio, real-time factor and concurrent streams, locally or on a server.

With a reference (`--reference`: the voice's whole graph, one call per sentence, see
edged.client.ttsref), every stream speaks each sentence with edged, then with the reference, the
streams meeting between the two, so that the load of the machine weighs on both alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged.client.speak import Speaker
from edged.errors import ConfigError

Reference = Callable[[str], bytes]
"""A sentence to 16-bit PCM at `ReferenceFigures.sample_rate`, in one go."""


@dataclass(frozen=True)
class ReferenceFigures:
    """The reference's figures on the same sentences (seconds unless named otherwise)."""

    rtf: float
    """Synthesis time over audio time, per stream."""
    aggregate_rtf: float
    """Wall time of the reference's turns over the audio of every stream."""
    ttfa_p50: float
    """Its first audio is the whole sentence."""
    audio_seconds: float
    wall_seconds: float
    cpu_rtf: float = 0.0
    """This process's CPU time in the reference's turns over their audio."""


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
    """With a reference: edged's turns only."""
    stall_seconds: float = 0.0
    """Silence a listener playing each request in real time from its first chunk would have heard
    waiting for later chunks, over all requests."""
    stalled: int = 0
    """Requests with such a wait."""
    aggregate_rtf: float = 0.0
    """Wall time over the audio of every stream together (streams at once: lower is more
    throughput; 1 / aggregate_rtf streams of real-time speech could be kept fed)."""
    reference: ReferenceFigures | None = None
    rtf_ratio: float | None = None
    """rtf / reference.rtf: below 1, edged synthesises faster than the whole graph."""
    cpu_rtf: float | None = None
    """This process's CPU time (every thread) over the audio: the work, which other processes'
    load hardly changes, unlike the wall time; local models only (None against a server)."""
    cpu_ratio: float | None = None
    """cpu_rtf / reference.cpu_rtf."""


def read_sentences(path: Path) -> list[str]:
    """One sentence per non-empty line."""
    try:
        sentences = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from None
    if not sentences:
        raise ConfigError(f"{path} holds no sentence.")
    return sentences


@dataclass
class _Tally:
    """One side's measurements, appended by every stream."""

    ttfa: list[float]
    busy: list[float]
    audio: list[float]
    stalls: list[float]
    wall: float = 0.0
    cpu: float = 0.0


def bench_tts(speaker: Speaker, sentences: list[str], streams: int = 1, sample_rate: int = 22050,
              voice: str = "", reference: Reference | None = None,
              reference_rate: int = 22050, local: bool = False) -> TtsBenchResult:
    """Speak every sentence on each of `streams` concurrent streams (and with `reference`,
    alternately); one warm-up sentence first. `local`: the speaker synthesises in this process
    (its CPU time is measured)."""
    for _ in speaker.speak([sentences[0]], sample_rate, voice, 1.0):
        pass
    if reference is not None:
        reference(sentences[0])
    ours, theirs = _Tally([], [], [], []), _Tally([], [], [], [])
    lock = threading.Lock()
    marks: list[tuple[float, float]] = []
    barrier = threading.Barrier(streams, action=lambda: marks.append((time.perf_counter(), time.process_time())))

    def edged(sentence: str) -> None:
        t0 = time.perf_counter()
        first, seconds, stall = None, 0.0, 0.0
        for chunk in speaker.speak([sentence], sample_rate, voice, 1.0):
            now = time.perf_counter() - t0
            if first is None:
                first = now
            stall += max(0.0, now - (first + stall + seconds))  # the listener ran out
            seconds += chunk.seconds
        with lock:
            ours.ttfa.append(first or 0.0)
            ours.busy.append(time.perf_counter() - t0)
            ours.audio.append(seconds)
            ours.stalls.append(stall)

    def whole(sentence: str) -> None:
        assert reference is not None
        t0 = time.perf_counter()
        seconds = len(reference(sentence)) / 2 / reference_rate
        with lock:
            theirs.busy.append(time.perf_counter() - t0)
            theirs.ttfa.append(theirs.busy[-1])
            theirs.audio.append(seconds)

    def run() -> None:
        for sentence in sentences:
            if reference is None:
                edged(sentence)
                continue
            barrier.wait()
            edged(sentence)
            barrier.wait()
            whole(sentence)
        if reference is not None:
            barrier.wait()

    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=run, name=f"bench-{i}") for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ours.wall, ours.cpu = time.perf_counter() - t0, time.process_time() - c0
    figures = None
    if reference is not None:
        # marks: before edged's turn of each sentence, before the reference's, ..., after the last.
        def total(pairs: Iterable[tuple[tuple[float, float], tuple[float, float]]]) -> tuple[float, float]:
            spans = [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]
            return sum(w for w, _ in spans), sum(c for _, c in spans)

        ours.wall, ours.cpu = total(zip(marks[0::2], marks[1::2]))
        theirs.wall, theirs.cpu = total(zip(marks[1::2], marks[2::2]))
        audio = max(sum(theirs.audio), 1e-9)
        figures = ReferenceFigures(
            rtf=sum(theirs.busy) / audio, aggregate_rtf=theirs.wall / audio,
            ttfa_p50=float(np.percentile(theirs.ttfa, 50)), audio_seconds=sum(theirs.audio),
            wall_seconds=theirs.wall, cpu_rtf=theirs.cpu / audio)
    rtf = sum(ours.busy) / max(sum(ours.audio), 1e-9)
    cpu_rtf = ours.cpu / max(sum(ours.audio), 1e-9) if local or reference is not None else None
    return TtsBenchResult(
        sentences=len(sentences), streams=streams,
        ttfa_p50=float(np.percentile(ours.ttfa, 50)), ttfa_p95=float(np.percentile(ours.ttfa, 95)),
        rtf=rtf, audio_seconds=sum(ours.audio), wall_seconds=ours.wall,
        stall_seconds=sum(ours.stalls), stalled=sum(1 for s in ours.stalls if s > 0.0),
        aggregate_rtf=ours.wall / max(sum(ours.audio), 1e-9), reference=figures,
        rtf_ratio=rtf / figures.rtf if figures is not None and figures.rtf > 0 else None,
        cpu_rtf=cpu_rtf, cpu_ratio=cpu_rtf / figures.cpu_rtf
        if figures is not None and cpu_rtf is not None and figures.cpu_rtf > 0 else None)
