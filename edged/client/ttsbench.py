"""`edged bench tts`: time to first audio, real-time factor and concurrent streams, locally or on a server.

With a reference (`--reference`: the voice's whole graph, one call per sentence, see
edged.client.ttsref), every stream speaks each sentence with edged, then with the reference, the
streams meeting between the two, so that the load of the machine weighs on both alike.

Two listeners measure stalls: one per request, playing it in real time from its first chunk (all
requests of a stream start at once with a reference, as a burst), and one per stream, playing its
requests back to back on a clock that runs only in edged's turns (the reference's turns are
paused out), as someone hearing a long text read sentence by sentence.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged.client.speak import Speaker
from edged.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

KEEP_UP_STALL_SHARE = 0.01
"""A stream count keeps up (`--sweep`) while request listeners' stalls stay within this share of
the audio..."""
KEEP_UP_LONGEST_STALL_S = 0.5
"""...and none waits longer than this at once."""

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
    stall_max_seconds: float = 0.0
    """The longest single wait of a request's listener."""
    stream_stall_seconds: list[float] = field(default_factory=list)
    """Per stream: what a listener of the whole stream (its requests back to back, from its first
    chunk, on a clock that runs in edged's turns only) waited for audio."""
    stream_stall_max_seconds: float = 0.0
    """The longest single wait of a stream's listener."""


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
    longest: float = 0.0
    """The longest single stall of a request."""


class _Listener:
    """Plays a stream's chunks back to back in real time from the first, on the clock it is given."""

    def __init__(self) -> None:
        self.until: float | None = None
        """When the audio it has runs out."""
        self.stalled = 0.0
        self.longest = 0.0

    def hear(self, at: float, seconds: float) -> None:
        """A chunk of `seconds` arrives at `at`."""
        if self.until is None:
            self.until = at
        wait = max(0.0, at - self.until)
        self.stalled += wait
        self.longest = max(self.longest, wait)
        self.until = max(self.until, at) + seconds


def _turn_clock(windows: list[tuple[float, float]]) -> Callable[[float], float]:
    """Maps a wall time to the time spent in `windows` (sorted, disjoint) before it."""
    starts = [a for a, _ in windows]
    before = [0.0]
    for a, b in windows:
        before.append(before[-1] + b - a)

    def clock(t: float) -> float:
        i = max(0, bisect.bisect_right(starts, t) - 1)
        a, b = windows[i]
        return before[i] + min(max(t - a, 0.0), b - a)

    return clock


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
    arrivals: list[list[tuple[float, float]]] = [[] for _ in range(streams)]
    """Per stream: (wall time, seconds) of each of edged's chunks."""
    lock = threading.Lock()
    marks: list[tuple[float, float]] = []
    barrier = threading.Barrier(streams, action=lambda: marks.append((time.perf_counter(), time.process_time())))

    def edged(sentence: str, stream: int) -> None:
        t0 = time.perf_counter()
        first, seconds, listener = None, 0.0, _Listener()
        for chunk in speaker.speak([sentence], sample_rate, voice, 1.0):
            arrived = time.perf_counter()
            arrivals[stream].append((arrived, chunk.seconds))
            if first is None:
                first = arrived - t0
            listener.hear(arrived, chunk.seconds)
            seconds += chunk.seconds
        with lock:
            ours.ttfa.append(first or 0.0)
            ours.busy.append(time.perf_counter() - t0)
            ours.audio.append(seconds)
            ours.stalls.append(listener.stalled)
            ours.longest = max(ours.longest, listener.longest)

    def whole(sentence: str) -> None:
        assert reference is not None
        t0 = time.perf_counter()
        seconds = len(reference(sentence)) / 2 / reference_rate
        with lock:
            theirs.busy.append(time.perf_counter() - t0)
            theirs.ttfa.append(theirs.busy[-1])
            theirs.audio.append(seconds)

    def run(stream: int) -> None:
        for sentence in sentences:
            if reference is None:
                edged(sentence, stream)
                continue
            barrier.wait()
            edged(sentence, stream)
            barrier.wait()
            whole(sentence)
        if reference is not None:
            barrier.wait()

    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=run, args=(i,), name=f"bench-{i}") for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ours.wall, ours.cpu = time.perf_counter() - t0, time.process_time() - c0
    # Stream listeners hear on the clock of edged's turns: between the marks before edged's turn
    # of each sentence and before the reference's (without a reference, the whole run).
    walls = [wall for wall, _ in marks]
    clock = _turn_clock(list(zip(walls[0::2], walls[1::2])) if reference is not None
                        else [(t0, t0 + ours.wall)])
    listeners = [_Listener() for _ in range(streams)]
    for listener, chunks in zip(listeners, arrivals):
        for arrived, seconds in chunks:
            listener.hear(clock(arrived), seconds)
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
        if figures is not None and cpu_rtf is not None and figures.cpu_rtf > 0 else None,
        stall_max_seconds=ours.longest, stream_stall_seconds=[listener.stalled for listener in listeners],
        stream_stall_max_seconds=max(listener.longest for listener in listeners))


@dataclass(frozen=True)
class SweepRow:
    """One stream count of `edged bench tts --sweep`."""

    streams: int
    ttfa_p50_ms: float
    ttfa_p95_ms: float
    aggregate_rtf: float
    stall_seconds: float
    """Request listeners' stalls, over all requests."""
    stall_share: float
    """stall_seconds over the audio."""
    stall_max_seconds: float
    stream_stall_max_seconds: float
    keeps_up: bool
    """Stalls within KEEP_UP_STALL_SHARE of the audio, none longer than KEEP_UP_LONGEST_STALL_S."""


def sweep_tts(speaker: Speaker, sentences: list[str], max_streams: int, sample_rate: int = 22050,
              voice: str = "", local: bool = False) -> list[SweepRow]:
    """`bench_tts` at 1, 2, 4, ... up to `max_streams` concurrent streams: where synthesis stops
    keeping up with listeners playing in real time."""
    counts = sorted({min(max_streams, 2 ** k) for k in range(max_streams.bit_length() + 1)})
    rows = []
    for n in counts:
        r = bench_tts(speaker, sentences, n, sample_rate, voice, local=local)
        share = r.stall_seconds / max(r.audio_seconds, 1e-9)
        rows.append(SweepRow(
            streams=n, ttfa_p50_ms=round(r.ttfa_p50 * 1000, 1), ttfa_p95_ms=round(r.ttfa_p95 * 1000, 1),
            aggregate_rtf=round(r.aggregate_rtf, 4), stall_seconds=round(r.stall_seconds, 3),
            stall_share=round(share, 4), stall_max_seconds=round(r.stall_max_seconds, 3),
            stream_stall_max_seconds=round(r.stream_stall_max_seconds, 3),
            keeps_up=share <= KEEP_UP_STALL_SHARE and r.stall_max_seconds <= KEEP_UP_LONGEST_STALL_S))
        _LOGGER.info("sweep: %s", rows[-1])
    return rows


def sweep_text(rows: list[SweepRow]) -> str:
    """The sweep as a table and where synthesis stops keeping up."""
    from edged.client.sweep import sweep_table

    head = ["streams", "first audio p50 ms", "p95 ms", "aggregate rtf", "stalls s", "stalls %",
            "longest stall s", "stream longest s", "keeps up"]
    return sweep_table(head, [(r.streams, r.keeps_up, [
        r.streams, r.ttfa_p50_ms, r.ttfa_p95_ms, r.aggregate_rtf, r.stall_seconds, round(100 * r.stall_share, 2),
        r.stall_max_seconds, r.stream_stall_max_seconds, "yes" if r.keeps_up else "no"]) for r in rows],
        "Stops keeping up between {kept} and {first} streams: at {first} the requests' listeners waited more "
        f"than {100 * KEEP_UP_STALL_SHARE:g} % of the audio, or one waited more than "
        f"{KEEP_UP_LONGEST_STALL_S:g} s at once.")
