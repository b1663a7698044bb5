"""ASR clients of a running server (Riva API through riva.client): transcribe files, benchmark.

Without an address, a private server is started from config.sh on a free loopback port for
the duration of the command, so both work without a daemon (and the bench can measure it).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.client.textnorm import word_errors
from edged.errors import EdgedError

_LOGGER = logging.getLogger(__name__)


@contextmanager
def private_server(config: Path | None, timeout: float = 180.0, tts: bool = False) -> Iterator[tuple[str, int]]:
    """`edged start` with config.sh's models on a free loopback port (gRPC only; ASR, and TTS
    with `tts`); yields (address, pid).

    The user's config.sh is read as it is (its relative paths against its own folder) with the
    network settings overridden (`--set`), so the private server finds the user's models.
    """
    from edged.client.health import check_health

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    overrides = {"riva_speech_api_port": str(port), "listen_address": "127.0.0.1", "metrics_port": "0",
                 "http_enabled": "false", "service_enabled_tts": str(tts).lower(), "wyoming_enabled": "false",
                 "local_mic_enabled": "false", "local_speaker_enabled": "false",
                 "ssl_server_cert": "", "ssl_server_key": "", "ssl_root_cert": "", "ssl_use_mutual_auth": "false",
                 "api_key": ""}
    args = [sys.executable, "-m", "edged", "start", *(["-c", str(Path(config).resolve())] if config else [])]
    args += [arg for name, value in overrides.items() for arg in ("--set", f"{name}={value}")]
    with tempfile.TemporaryDirectory(prefix="edged-client-") as tmp:
        with open(Path(tmp) / "server.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            address = f"127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + timeout
                while check_health(address, "", timeout=2) != "SERVING":
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = (Path(tmp) / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
                        raise EdgedError("The private server did not start: " + " | ".join(tail))
                    time.sleep(0.1)
                yield address, proc.pid
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


ASR_HEALTH_NAME = "nvidia.riva.asr.RivaSpeechRecognition"


def running_server(settings: Any) -> str | None:
    """The address of the daemon that config.sh describes when it answers SERVING for ASR over
    plaintext without an API key (what `edged transcribe` can use as it is); else None."""
    from edged.client.health import check_health, local_address

    if settings.ssl_server_cert is not None or settings.api_key:
        return None
    address = local_address(settings.listen_address, settings.riva_speech_api_port)
    return address if check_health(address, ASR_HEALTH_NAME, timeout=1.0) == "SERVING" else None


def _service(address: str) -> Any:
    import riva.client

    return riva.client.ASRService(riva.client.Auth(uri=address))


def transcribe_files(address: str, files: list[Path], punctuation: bool = True,
                     language: str = "en-US", speakers: bool = False) -> list[dict[str, Any]]:
    """Offline recognition of each file as it is (WAV or FLAC header read by the server), in
    `language` (a tag such as `de-DE`; "multi": a multilingual model identifies it); `speakers`:
    with who said what (Riva's speaker_tag: 1, 2, ... on each result and word)."""
    from collections import Counter

    import grpc
    import riva.client

    asr = _service(address)
    out = []
    for path in files:
        config = riva.client.RecognitionConfig(language_code=language, max_alternatives=1,
                                               enable_automatic_punctuation=punctuation,
                                               enable_word_time_offsets=True)
        if speakers:
            riva.client.add_speaker_diarization_to_config(config, True, 0)
        try:
            response = asr.offline_recognize(path.read_bytes(), config)
        except grpc.RpcError as exc:
            raise EdgedError(f"{path}: {exc.details()}") from None
        except OSError as exc:
            raise EdgedError(f"{path}: {exc.strerror}") from None
        results = [{
            "transcript": r.alternatives[0].transcript.strip(), "confidence": round(r.alternatives[0].confidence, 4),
            "language_code": ",".join(r.alternatives[0].language_code),
            "words": [{"word": w.word, "start_ms": w.start_time, "end_ms": w.end_time,
                       "confidence": round(w.confidence, 4), **({"speaker": w.speaker_tag} if speakers else {})}
                      for w in r.alternatives[0].words],
        } for r in response.results if r.alternatives]
        for result in results if speakers else ():  # the result's speaker: who said most of its words
            tags = Counter(w["speaker"] for w in result["words"])
            result["speaker"] = tags.most_common(1)[0][0] if tags else 0
        out.append({"file": str(path), "transcript": " ".join(r["transcript"] for r in results), "results": results})
    return out


@dataclass
class _StreamLog:
    """What one streamed clip gave: finals, latencies after the endpoint, interim gaps."""

    finals: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    lag: float = 0.0
    """Seconds from the last chunk sent to the last response (how far behind real time)."""
    behind: list[float] = field(default_factory=list)
    """Per interim: audio seconds sent by then minus the audio it describes (how stale the
    text a live caption shows is; a final's is its latency)."""
    stop_final: float | None = None
    """Seconds from the client's last chunk to the stream's last final (what push-to-talk, a
    Wyoming `audio-stop` or a file upload waits for); 0 when that final came before; None
    without finals."""


def _stream_clip(asr: Any, pcm: bytes, rate: int, chunk_ms: int, realtime: bool, diarize: bool = False) -> _StreamLog:
    import riva.client

    log = _StreamLog()
    chunk = rate * 2 * chunk_ms // 1000
    sent: list[tuple[float, float]] = []  # (audio seconds up to the end of the chunk, wall time)
    done_sending = [0.0]

    def chunks() -> Iterator[bytes]:
        start = time.perf_counter()
        for i in range(0, len(pcm), chunk):
            if realtime:
                delay = start + i / (2 * rate) - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent.append((min(len(pcm), i + chunk) / (2 * rate), time.perf_counter()))
            yield pcm[i:i + chunk]
        done_sending[0] = time.perf_counter()

    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="en-US",
            max_alternatives=1, enable_automatic_punctuation=True),
        interim_results=True)
    if diarize:
        riva.client.add_speaker_diarization_to_config(config.config, True, 0)
    last_response = None
    for response in asr.streaming_response_generator(chunks(), config):
        now = time.perf_counter()
        for result in response.results:
            if sent and not done_sending[0] and not result.is_final:
                log.behind.append(max(0.0, sent[-1][0] - result.audio_processed))
            if result.is_final:
                log.finals.append(result.alternatives[0].transcript.strip())
                # The endpoint fired once the server had `audio_processed` seconds.
                when = next((t for audio_s, t in sent if audio_s >= result.audio_processed - 1e-3), None)
                if when is not None and not done_sending[0]:
                    log.latencies.append(now - when)
                log.stop_final = max(0.0, now - done_sending[0]) if done_sending[0] else 0.0
                last_response = None
            else:
                if last_response is not None:
                    log.gaps.append(now - last_response)
                last_response = now
    log.lag = max(0.0, time.perf_counter() - done_sending[0])
    return log


@dataclass
class _Pooled:
    """Every clip's latencies, interim gaps and staleness of one streaming pass, together."""

    latencies: list[float]
    gaps: list[float]
    behind: list[float]
    stop_finals: list[float]

    @classmethod
    def of(cls, logs: dict[int, _StreamLog]) -> _Pooled:
        return cls([x for log in logs.values() for x in log.latencies], [x for log in logs.values() for x in log.gaps],
                   [x for log in logs.values() for x in log.behind],
                   [log.stop_final for log in logs.values() if log.stop_final is not None])


def _pcm(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise EdgedError(f"{path}: the bench streams 16-bit mono WAV files.")
        return w.readframes(w.getnframes()), w.getframerate()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class BenchReport:
    """Figures of `edged bench asr`."""

    clips: int
    audio_s: float
    wer_offline: float
    wer_streaming: float
    rtf_offline: float
    streams: int
    chunk_ms: int
    realtime: bool
    rtf_streaming: float
    final_latency_p50_ms: float
    final_latency_p95_ms: float
    interim_gap_p50_ms: float
    interim_gap_p95_ms: float
    interim_gap_max_ms: float
    max_lag_after_audio_ms: float
    server_cpu_percent: float | None
    server_rss_peak_mb: float | None
    behind_p95_ms: float = float("nan")
    """Per interim result: how much more audio the client had sent than the result describes
    (`audio_processed`); at the pace of speech, how far behind real time the shown text is."""
    behind_max_ms: float = float("nan")
    stop_final_p50_ms: float = float("nan")
    """From the client's last chunk to the stream's last final (the final that ends a stream)."""
    stop_final_p95_ms: float = float("nan")
    stagger_s: float = 0.0
    """Streams started at random offsets within this many seconds (0: all at once)."""
    streaming_cpu_s: float | None = None
    """Server CPU seconds (user + system) over the streaming pass."""
    diarize: bool = False
    """The streams asked for speaker labels."""

    def text(self) -> str:
        """The report as aligned lines."""
        rows = [(k.replace("_", " "), f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in asdict(self).items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

    def json(self) -> str:
        """The report as JSON."""
        return json.dumps(asdict(self), indent=2)


class _Sampler:
    """Samples a server process's CPU and resident memory while the bench runs."""

    def __init__(self, pid: int | None) -> None:
        import psutil

        self._proc = psutil.Process(pid) if pid else None
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu0 = self._cpu()
        self._t0 = time.perf_counter()

    def _cpu(self) -> float:
        if self._proc is None:
            return 0.0
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self._proc is not None:
                self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def start(self) -> None:
        """Start sampling (and the CPU time count)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; sets `cpu_percent` over the sampled time."""
        self._stop.set()
        self._thread.join()
        self.cpu_s = self._cpu() - self._cpu0
        self.cpu_percent = 100.0 * self.cpu_s / max(1e-9, time.perf_counter() - self._t0)


@contextmanager
def _sampled(pid: int | None) -> Iterator[_Sampler]:
    sampler = _Sampler(pid)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def _clips(manifest: Path) -> tuple[list[tuple[Path, str]], list[tuple[bytes, int]]]:
    """The manifest's clips (path, reference text) and their samples and rates."""
    lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    clips = [(manifest.parent / c["audio"], c.get("text", "")) for c in lines]
    return clips, [_pcm(path) for path, _ in clips]


def _stream_pass(address: str, pcms: list[tuple[bytes, int]], streams: int, chunk_ms: int, realtime: bool,
                 seconds: float = 0.0, stagger: float = 0.0,
                 diarize: bool = False) -> tuple[dict[int, _StreamLog], float]:
    """Stream the clips on `streams` concurrent clients, each taking the next clip when done
    (none after `seconds` of wall time, if set); each clip's log and the wall time. `stagger`:
    each client starts at a random offset within that many seconds (as real traffic arrives;
    the same offsets every run); `diarize`: with speaker labels (diarization_config)."""
    import random

    logs: dict[int, _StreamLog] = {}
    queue = list(range(len(pcms)))
    lock = threading.Lock()
    offsets = [random.Random(n).uniform(0.0, stagger) for n in range(max(1, streams))]
    t0 = time.perf_counter()

    def worker(offset: float) -> None:
        client = _service(address)
        time.sleep(offset)
        while True:
            with lock:
                if not queue or (seconds and time.perf_counter() - t0 > seconds):
                    return
                i = queue.pop(0)
            logs[i] = _stream_clip(client, pcms[i][0], pcms[i][1], chunk_ms, realtime, diarize)

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in offsets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return logs, time.perf_counter() - t0


def run_bench(address: str, manifest: Path, streams: int = 1, chunk_ms: int = 160,
              realtime: bool = False, server_pid: int | None = None, stagger: float = 0.0,
              diarize: bool = False) -> BenchReport:
    """Offline pass (WER, RTF), then a streaming pass with `streams` clients (WER, latency, cadence),
    `diarize`: with speaker labels."""
    import grpc
    import riva.client

    clips, pcms = _clips(manifest)
    audio_s = sum(len(pcm) / (2 * rate) for pcm, rate in pcms)
    errors_off = errors_str = words = 0
    asr = _service(address)
    t_off = 0.0
    with _sampled(server_pid) as sampler:
        for (pcm, rate), (path, text) in zip(pcms, clips):
            config = riva.client.RecognitionConfig(
                encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="en-US",
                max_alternatives=1, enable_automatic_punctuation=True)
            t0 = time.perf_counter()
            try:
                response = asr.offline_recognize(pcm, config)
            except grpc.RpcError as exc:
                raise EdgedError(f"{path}: {exc.details()}") from None
            t_off += time.perf_counter() - t0
            hyp = " ".join(r.alternatives[0].transcript.strip() for r in response.results if r.alternatives)
            e, n = word_errors(text, hyp)
            errors_off += e
            words += n
            _LOGGER.info("offline %s: %s", path.name, hyp)
        with _sampled(server_pid) as streaming_sampler:
            logs, t_stream = _stream_pass(address, pcms, streams, chunk_ms, realtime, stagger=stagger,
                                          diarize=diarize)
    for i, (_, text) in enumerate(clips):
        errors_str += word_errors(text, " ".join(logs[i].finals))[0]
    pooled = _Pooled.of(logs)
    latencies, gaps, behind = pooled.latencies, pooled.gaps, pooled.behind
    ms = 1000.0
    return BenchReport(
        clips=len(clips), audio_s=round(audio_s, 1),
        wer_offline=round(100.0 * errors_off / max(1, words), 2),
        wer_streaming=round(100.0 * errors_str / max(1, words), 2),
        rtf_offline=round(t_off / audio_s, 4), streams=streams, chunk_ms=chunk_ms, realtime=realtime,
        rtf_streaming=round(t_stream * max(1, streams) / audio_s, 4) if not realtime else round(t_stream / audio_s, 4),
        final_latency_p50_ms=round(_pct(latencies, 0.5) * ms, 1),
        final_latency_p95_ms=round(_pct(latencies, 0.95) * ms, 1),
        interim_gap_p50_ms=round(_pct(gaps, 0.5) * ms, 1), interim_gap_p95_ms=round(_pct(gaps, 0.95) * ms, 1),
        interim_gap_max_ms=round(max(gaps, default=float("nan")) * ms, 1),
        max_lag_after_audio_ms=round(max((log.lag for log in logs.values()), default=0.0) * ms, 1),
        server_cpu_percent=round(sampler.cpu_percent, 1) if server_pid else None,
        server_rss_peak_mb=round(sampler.peak_rss / 2**20, 1) if server_pid else None,
        behind_p95_ms=round(_pct(behind, 0.95) * ms, 1),
        behind_max_ms=round(max(behind, default=float("nan")) * ms, 1),
        stop_final_p50_ms=round(_pct(pooled.stop_finals, 0.5) * ms, 1),
        stop_final_p95_ms=round(_pct(pooled.stop_finals, 0.95) * ms, 1),
        stagger_s=stagger,
        streaming_cpu_s=round(streaming_sampler.cpu_s, 2) if server_pid else None, diarize=diarize,
    )


KEEP_UP_BEHIND_MS = 500.0
"""A stream count keeps up while 95 % of the interims are no further behind real time than this..."""
FINAL_P95_MS = 600.0
"""... and 95 % of the finals come within this of their endpoint."""


@dataclass
class SweepRow:
    """One stream count of `edged bench asr --sweep` (real-time streams)."""

    streams: int
    finals: int
    final_latency_p50_ms: float
    final_latency_p95_ms: float
    interim_gap_p95_ms: float
    behind_p95_ms: float
    behind_max_ms: float
    server_cpu_percent: float | None
    keeps_up: bool
    """Interim p95 no more than KEEP_UP_BEHIND_MS behind real time, final p95 within FINAL_P95_MS."""


def run_sweep(address: str, manifest: Path, max_streams: int, chunk_ms: int = 160, seconds: float = 60.0,
              server_pid: int | None = None) -> list[SweepRow]:
    """Real-time streaming passes at 1, 2, 4, ... up to `max_streams` concurrent streams, each
    starting clips for `seconds`: where the server stops keeping up with real time."""
    _, pcms = _clips(manifest)
    audio_s = max(1.0, sum(len(pcm) / (2 * rate) for pcm, rate in pcms))
    counts = sorted({min(max_streams, 2 ** k) for k in range(max_streams.bit_length() + 1)})
    rows = []
    ms = 1000.0
    for n in counts:
        with _sampled(server_pid) as sampler:
            # Enough clips (the manifest's, again if need be) to keep n streams busy for `seconds`.
            logs, _ = _stream_pass(address, pcms * math.ceil(1 + n * seconds / audio_s), n, chunk_ms, True, seconds)
        pooled = _Pooled.of(logs)
        final_p95 = _pct(pooled.latencies, 0.95) * ms
        behind_p95 = _pct(pooled.behind, 0.95) * ms
        rows.append(SweepRow(
            streams=n, finals=sum(len(log.finals) for log in logs.values()),
            final_latency_p50_ms=round(_pct(pooled.latencies, 0.5) * ms, 1),
            final_latency_p95_ms=round(final_p95, 1),
            interim_gap_p95_ms=round(_pct(pooled.gaps, 0.95) * ms, 1),
            behind_p95_ms=round(behind_p95, 1), behind_max_ms=round(max(pooled.behind, default=0.0) * ms, 1),
            server_cpu_percent=round(sampler.cpu_percent, 1) if server_pid else None,
            keeps_up=behind_p95 <= KEEP_UP_BEHIND_MS and final_p95 <= FINAL_P95_MS))
        _LOGGER.info("sweep: %s", rows[-1])
    return rows


def sweep_text(rows: list[SweepRow]) -> str:
    """The sweep as a table and where it saturates."""
    from edged.client.sweep import sweep_table

    head = ["streams", "finals", "final p50 ms", "final p95 ms", "interim gap p95 ms", "behind p95 ms",
            "behind max ms", "server cpu %", "keeps up"]
    return sweep_table(head, [(r.streams, r.keeps_up, [
        r.streams, r.finals, r.final_latency_p50_ms, r.final_latency_p95_ms, r.interim_gap_p95_ms, r.behind_p95_ms,
        r.behind_max_ms, "-" if r.server_cpu_percent is None else r.server_cpu_percent,
        "yes" if r.keeps_up else "no"]) for r in rows],
        "Saturates between {kept} and {first} streams: at {first} the interims' p95 fell more than "
        f"{KEEP_UP_BEHIND_MS:g} ms behind real time or the finals' p95 passed {FINAL_P95_MS:g} ms.")
