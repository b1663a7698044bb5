"""`edged bench soak`: real clients and abusive ones side by side for minutes; is the server steady?

Good clients: `asr_streams` gRPC streams of the manifest's clips at the pace of speech (interims
on), one clip after another, and `tts_streams` SynthesizeOnline clients, one sentence after
another. Abusive clients beside them, each in a loop:

- `idle-asr`: opens a StreamingRecognize, sends one chunk, then nothing (the server must end it
  at its idle timeout, so it cannot hold a slot);
- `ssml-bomb`: Synthesize of nested `<prosody rate="25%">` and a storm of long `<break>`s;
- `junk-audio`: streams a megabyte of random bytes declared as FLAC.

Every `interval_s` the server's resident memory, open file descriptors and threads are sampled
(its pid: a private server's, or `--pid`), with the window's p95 of the good clients' latencies
(ASR: a final after its endpoint or after the last chunk; TTS: the first audio) and the count of
their failures. The report compares the last window with the first.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.client.asr import _clips, _pct, _service, _stream_clip

SENTENCES = (
    "The kitchen lights are now off.",
    "Tomorrow will be sunny with a high of twenty two degrees.",
    "Your timer for the pasta has finished, and the oven is still on.",
    "I added milk, eggs and bread to the shopping list.",
)
SSML_BOMBS = (
    "<speak>" + '<prosody rate="25%">' * 12 + "slow" + "</prosody>" * 12 + "</speak>",
    "<speak>" + '<break time="10s"/>' * 525 + "</speak>",
)
ABUSERS = ("idle-asr", "ssml-bomb", "junk-audio")


@dataclass
class SoakSample:
    """One window of the soak."""

    minute: float
    rss_mb: float
    fds: int
    threads: int
    asr_final_p95_ms: float
    tts_first_audio_p95_ms: float
    asr_finals: int
    tts_sentences: int
    failures: int
    """Good clients' requests that failed in this window (any status)."""
    abuser_refusals: int
    """Abusive requests answered with a precise refusal (or ended by the server) in this window."""


@dataclass
class SoakReport:
    """Figures of `edged bench soak`."""

    minutes: float
    asr_streams: int
    tts_streams: int
    abusers: int
    abuse: tuple[str, ...] = ABUSERS
    samples: list[SoakSample] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rss_growth_mb(self) -> float:
        """Last window's RSS less the first's."""
        return self.samples[-1].rss_mb - self.samples[0].rss_mb if self.samples else float("nan")

    def p95_ratio(self, key: str) -> float:
        """The last window's p95 of `key` over the first's."""
        if len(self.samples) < 2:
            return float("nan")
        first, last = getattr(self.samples[0], key), getattr(self.samples[-1], key)
        return last / first if first else float("nan")

    def json(self) -> str:
        return json.dumps({**asdict(self), "rss_growth_mb": round(self.rss_growth_mb, 1),
                           "asr_p95_ratio": round(self.p95_ratio("asr_final_p95_ms"), 3),
                           "tts_p95_ratio": round(self.p95_ratio("tts_first_audio_p95_ms"), 3)}, indent=2)

    def text(self) -> str:
        lines = [f"soak: {self.minutes:g} min, {self.asr_streams} real-time ASR + {self.tts_streams} TTS streams, "
                 f"{self.abusers} of each abusive client ({', '.join(self.abuse) or 'none'})",
                 f"{'min':>5} {'RSS MB':>7} {'fds':>5} {'thr':>4} {'ASR p95':>8} {'TTS p95':>8} "
                 f"{'finals':>6} {'spoken':>6} {'fail':>4} {'refused':>7}"]
        for s in self.samples:
            lines.append(f"{s.minute:5.1f} {s.rss_mb:7.0f} {s.fds:5d} {s.threads:4d} {s.asr_final_p95_ms:8.0f} "
                         f"{s.tts_first_audio_p95_ms:8.0f} {s.asr_finals:6d} {s.tts_sentences:6d} {s.failures:4d} "
                         f"{s.abuser_refusals:7d}")
        lines.append(f"RSS growth {self.rss_growth_mb:+.0f} MB; p95 last/first window: ASR "
                     f"{self.p95_ratio('asr_final_p95_ms'):.2f}, TTS {self.p95_ratio('tts_first_audio_p95_ms'):.2f}; "
                     f"good-client failures {sum(s.failures for s in self.samples)}"
                     + (f" ({self.failure_kinds})" if self.failure_kinds else ""))
        return "\n".join(lines)


class _Tally:
    """What the clients report, window by window (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asr: list[float] = []
        self.tts: list[float] = []
        self.failures = 0
        self.refusals = 0
        self.kinds: dict[str, int] = {}

    def fail(self, exc: BaseException) -> None:
        kind = str(getattr(exc, "code", lambda: type(exc).__name__)())
        with self.lock:
            self.failures += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def window(self) -> tuple[list[float], list[float], int, int]:
        with self.lock:
            taken = (self.asr, self.tts, self.failures, self.refusals)
            self.asr, self.tts, self.failures, self.refusals = [], [], 0, 0
            return taken


def _loop(stop: threading.Event, work: Callable[[], None], pause_s: float = 0.0) -> None:
    while not stop.is_set():
        work()
        if pause_s:
            stop.wait(pause_s)


def run_soak(address: str, manifest: Path, minutes: float, pid: int | None, asr_streams: int = 4,
             tts_streams: int = 2, abusers: int = 2, interval_s: float = 30.0,
             abuse: tuple[str, ...] = ABUSERS) -> SoakReport:
    """Run the soak for `minutes`; a sample every `interval_s`; `abusers` clients of each kind in
    `abuse` (see the module's docstring)."""
    import grpc
    import psutil
    import riva.client

    _, pcms = _clips(manifest)
    tally, stop = _Tally(), threading.Event()
    proc = psutil.Process(pid) if pid else None
    auth = riva.client.Auth(uri=address)

    def asr_client(n: int) -> Callable[[], None]:
        service, order = _service(address), random.Random(n)

        def work() -> None:
            pcm, rate = order.choice(pcms)
            try:
                log = _stream_clip(service, pcm, rate, 160, realtime=True)
            except grpc.RpcError as exc:
                tally.fail(exc)
                return
            with tally.lock:
                tally.asr += [*log.latencies, *([log.stop_final] if log.stop_final else [])]
        return work

    def tts_client(n: int) -> Callable[[], None]:
        tts, order = riva.client.SpeechSynthesisService(auth), random.Random(100 + n)

        def work() -> None:
            start, first = time.perf_counter(), None
            try:
                for _ in tts.synthesize_online(order.choice(SENTENCES), sample_rate_hz=22050):
                    first = first or time.perf_counter() - start
            except grpc.RpcError as exc:
                tally.fail(exc)
                return
            if first is not None:
                with tally.lock:
                    tally.tts.append(first)
        return work

    def refused(call: Callable[[], Any]) -> None:
        try:
            call()
        except grpc.RpcError:
            with tally.lock:
                tally.refusals += 1

    def idle_asr() -> None:
        service = _service(address)
        config = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000, language_code="en-US"))

        ended = threading.Event()

        def one_chunk_then_nothing() -> Any:
            yield bytes(3200)
            ended.wait()  # (then the request thread ends too)

        refused(lambda: list(service.streaming_response_generator(one_chunk_then_nothing(), config)))
        ended.set()

    def ssml_bomb() -> None:
        tts = riva.client.SpeechSynthesisService(auth)
        refused(lambda: tts.synthesize(random.choice(SSML_BOMBS), sample_rate_hz=96000))

    def junk_audio() -> None:
        service = _service(address)
        config = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.FLAC, sample_rate_hertz=16000, language_code="en-US"))
        junk = random.Random(7).randbytes(1 << 20)

        def pieces() -> Any:
            for i in range(0, len(junk), 64 * 1024):
                yield junk[i:i + 64 * 1024]

        refused(lambda: list(service.streaming_response_generator(pieces(), config)))

    workers = [(asr_client(n), 0.0) for n in range(asr_streams)] + [(tts_client(n), 0.5) for n in range(tts_streams)]
    kinds = {"idle-asr": idle_asr, "ssml-bomb": ssml_bomb, "junk-audio": junk_audio}
    workers += [(kinds[kind], 1.0) for _ in range(abusers) for kind in abuse]
    threads = [threading.Thread(target=_loop, args=(stop, w, pause), daemon=True) for w, pause in workers]
    report = SoakReport(minutes, asr_streams, tts_streams, abusers, abuse)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    try:
        while (elapsed := time.perf_counter() - t0) < minutes * 60:
            time.sleep(min(interval_s, minutes * 60 - elapsed))
            asr, tts, failures, refusals = tally.window()
            report.samples.append(SoakSample(
                minute=round((time.perf_counter() - t0) / 60, 2),
                rss_mb=proc.memory_info().rss / 2**20 if proc else float("nan"),
                fds=proc.num_fds() if proc else -1, threads=proc.num_threads() if proc else -1,
                asr_final_p95_ms=1000 * _pct(asr, 0.95), tts_first_audio_p95_ms=1000 * _pct(tts, 0.95),
                asr_finals=len(asr), tts_sentences=len(tts), failures=failures, abuser_refusals=refusals))
    finally:
        stop.set()
    report.failure_kinds = dict(tally.kinds)
    return report
