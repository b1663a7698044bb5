"""`edged bench wake`: wake words on a running server's Wyoming port, beside pymicro-wakeword's own
runtime on the same audio.

- detection rate per SNR: each wake word said by espeak-ng voices (and edged's voice, where the
  server synthesises) inside longer speech, clean and with pink noise at 20, 10 and 5 dB;
- false accepts per hour of ordinary speech (espeak-ng and edged's voice reading passages, and the
  evaluation corpus with `--corpus`), listening for every wake word;
- detection latency: positives streamed at the pace of speech, from the moment the audio at the
  phrase's end was sent to the `detection`;
- CPU per listening stream: the server's CPU time while streams listen at the pace of speech.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize
from wyoming.wake import Detect, Detection

from edged.audio.resample import pcm16_to_float, resample
from edged.client.wake_audio import (
    CARRIER_SENTENCES,
    ESPEAK_VOICES,
    RATE,
    WAKE_PHRASES,
    Positive,
    espeak,
    pcm16,
    positive,
)

SNRS: tuple[float | None, ...] = (None, 20.0, 10.0, 5.0)
CHUNK_SAMPLES = 1024
"""What Home Assistant's satellites send per audio-chunk (64 ms)."""
PASSAGES = (
    "Good evening. Tonight we look at the harvest, which came in early this year after a warm spring. "
    "Farmers in the valley say the apples are sweeter than they have been for a decade.",
    "To reset the router, hold the small button on the back for ten seconds, wait for the lights to "
    "blink, and then connect again with the password printed on the label.",
    "The museum will close for repairs in March. Visitors with tickets for those weeks can exchange "
    "them at the front desk or online, and the cafe stays open throughout.",
    "She opened the window, listened to the traffic for a while, and decided that the letter could "
    "wait until the morning.",
)
REFRACTORY_S = 2.0
T = TypeVar("T")


@dataclass
class WakeBenchReport:
    """The figures, edged beside the package's runtime where both were measured."""

    detection: dict[str, dict[str, float]] = field(default_factory=dict)
    """SNR ("clean", "20 dB", ...) -> clips, edged's detection rate, the package's."""
    speech_s: float = 0.0
    false_accepts: dict[str, int] = field(default_factory=dict)
    false_accepts_per_hour: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Real-time streaming: p50 and p95 from the phrase's end being sent to the detection."""
    cpu_per_stream_pct: float | None = None
    """Server CPU per listening stream, percent of one core (None without the server's pid)."""
    streams: int = 0

    def json(self) -> str:
        """The report as JSON."""
        return json.dumps(asdict(self), indent=2)

    def text(self) -> str:
        """A few lines for a terminal."""
        lines = ["detection rate      clips   edged   pymicro-wakeword"]
        for snr, row in self.detection.items():
            lines.append(f"  {snr:<16}{int(row['clips']):>6}  {row['edged']:>6.1%}  {row['package']:>8.1%}")
        fa, per_hour = self.false_accepts, self.false_accepts_per_hour
        lines.append(f"false accepts in {self.speech_s / 60:.1f} min of speech: edged {fa.get('edged', 0)} "
                     f"({per_hour.get('edged', 0):.2f}/h), pymicro-wakeword {fa.get('package', 0)} "
                     f"({per_hour.get('package', 0):.2f}/h)")
        if self.latency_ms:
            lines.append(f"detection latency (real time): p50 {self.latency_ms['p50']:.0f} ms, "
                         f"p95 {self.latency_ms['p95']:.0f} ms")
        if self.cpu_per_stream_pct is not None:
            lines.append(f"CPU per listening stream: {self.cpu_per_stream_pct:.2f} % of one core "
                         f"({self.streams} streams)")
        return "\n".join(lines)


def _snr_label(snr: float | None) -> str:
    return "clean" if snr is None else f"{snr:g} dB"


async def _read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), timeout=120)
    if event is None:
        raise ConnectionError("the server closed the connection")
    return event


async def listen(host: str, port: int, pcm: bytes, names: list[str], pace: float = 0.0
                 ) -> tuple[list[Detection], list[float]]:
    """One stream: detect `names`, the audio in CHUNK_SAMPLES chunks (`pace` 1.0: in real time), stop;
    the detections and when each arrived (monotonic s), and the send time of every chunk start."""
    found: list[Detection] = []
    arrived: list[float] = []
    async with AsyncTcpClient(host, port) as client:
        async def receive() -> None:
            while not Info.is_type((event := await _read(client)).type):
                if event.type == "error":
                    raise RuntimeError(event.data.get("text"))
                if Detection.is_type(event.type):
                    found.append(Detection.from_event(event))
                    arrived.append(time.monotonic())

        reader = asyncio.get_running_loop().create_task(receive())
        await client.write_event(Detect(names=names).event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        step = CHUNK_SAMPLES * 2
        start = time.monotonic()
        for i in range(0, len(pcm), step):
            if pace:
                await asyncio.sleep(max(0.0, start + i / 2 / RATE / pace - time.monotonic()))
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[i:i + step]).event())
        await client.write_event(AudioStop().event())
        await client.write_event(Describe().event())
        await reader
    return found, [start, *arrived]


async def _synthesize(host: str, port: int, text: str) -> np.ndarray | None:
    """edged's voice at 16 kHz, or None where the server does not synthesise."""
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Synthesize(text=text).event())
        event = await _read(client)
        if event.type != "audio-start":
            return None
        rate = AudioStart.from_event(event).rate
        audio = b""
        while not AudioStop.is_type((event := await _read(client)).type):
            audio += AudioChunk.from_event(event).audio
    return resample(pcm16_to_float(audio), rate, RATE)


def package_fires(pcm: bytes, names: list[str]) -> int:
    """How often pymicro-wakeword's own runtime fires on `pcm` for the built-in `names` (the same
    refractory time as edged's)."""
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

    from edged.importers.microwakeword import BUILTIN_WAKE_WORDS

    fires = 0
    for name in names:
        model = MicroWakeWord.from_builtin(Model(BUILTIN_WAKE_WORDS[name]))
        features = MicroWakeWordFeatures()
        seen, quiet_until = 0, -1
        for i in range(0, len(pcm), 320):
            for f in features.process_streaming(pcm[i:i + 320]):
                seen += 1
                if model.process_streaming(f) and seen * 10 >= quiet_until:
                    fires += 1
                    quiet_until = seen * 10 + int(REFRACTORY_S * 1000)
        model.close()
    return fires


def _positives(tts: dict[str, np.ndarray | None], names: list[str], voices: tuple[str, ...]
               ) -> list[tuple[str, Positive]]:
    clips = []
    seed = 0
    for name in names:
        phrase_text = WAKE_PHRASES[name]
        for snr in SNRS:
            for v, voice in enumerate(voices):
                seed += 1
                before = espeak(CARRIER_SENTENCES[v % 4], voice, 160)
                after = espeak(CARRIER_SENTENCES[(v + 1) % 4], voice, 160)
                clips.append((name, positive(espeak(phrase_text, voice, 165), before, after, snr, seed, voice)))
            spoken = tts.get(phrase_text)
            carrier, command = tts.get(CARRIER_SENTENCES[0]), tts.get(CARRIER_SENTENCES[1])
            if spoken is not None and carrier is not None and command is not None:
                seed += 1
                clips.append((name, positive(spoken, carrier, command, snr, seed, "edged")))
    return clips


async def _gather_limited(jobs: list[Awaitable[T]], limit: int) -> list[T]:
    """Await `jobs`, at most `limit` at a time; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(j) for j in jobs)))


def run_wake_bench(host: str, port: int, pid: int | None, corpus: Path | None = None,
                   streams: int = 8, voices: tuple[str, ...] = ESPEAK_VOICES,
                   cpu_seconds: float = 10.0, words: tuple[str, ...] = ()) -> WakeBenchReport:
    """Every figure of the module's docstring against the server at host:port (`words`: only
    these built-in wake words; empty: every one it serves)."""
    report = WakeBenchReport(streams=streams)

    async def measure() -> None:
        info = await _info(host, port)
        served = [m.name for p in info.wake for m in p.models]
        names = [n for n in WAKE_PHRASES if n in served and (not words or n in words)]
        if not names:
            raise RuntimeError(f"The server at {host}:{port} serves none of {', '.join(WAKE_PHRASES)}.")
        tts: dict[str, np.ndarray | None] = {}
        for text in [*(WAKE_PHRASES[n] for n in names), *CARRIER_SENTENCES[:2], *PASSAGES]:
            tts[text] = await _synthesize(host, port, text) if info.tts else None
        clips = _positives(tts, names, voices)
        heard = await _gather_limited([listen(host, port, pcm16(c.audio), names) for _, c in clips], streams)
        for snr in SNRS:
            label = _snr_label(snr)
            rows = [(n, c, h) for (n, c), h in zip(clips, heard, strict=True) if c.snr_db == snr]
            ours = sum(1 for n, _, (found, _) in rows if any(d.name == n for d in found))
            theirs = sum(1 for n, c, _ in rows if package_fires(pcm16(c.audio), [n]))
            report.detection[label] = {"clips": len(rows), "edged": ours / len(rows), "package": theirs / len(rows)}
        negatives = [espeak(p, v, 160) for p in PASSAGES for v in voices[:4]]
        negatives += [a for p in PASSAGES if (a := tts.get(p)) is not None]
        negatives += _corpus(corpus) if corpus else []
        report.speech_s = sum(len(a) for a in negatives) / RATE
        heard_neg = await _gather_limited([listen(host, port, pcm16(a), names) for a in negatives], streams)
        report.false_accepts = {"edged": sum(len(f) for f, _ in heard_neg),
                                "package": sum(package_fires(pcm16(a), names) for a in negatives)}
        hours = report.speech_s / 3600
        report.false_accepts_per_hour = {k: v / hours for k, v in report.false_accepts.items()}
        report.latency_ms = await _latency(host, port, [(n, c) for n, c in clips if c.snr_db in (None, 20.0)],
                                           streams)
        if pid is not None:
            report.cpu_per_stream_pct = await _cpu_per_stream(host, port, pid, negatives, names, streams,
                                                              cpu_seconds)

    asyncio.run(measure())
    return report


async def _info(host: str, port: int) -> Info:
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Describe().event())
        return Info.from_event(await _read(client))


def _corpus(manifest: Path) -> list[np.ndarray]:
    import soundfile

    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            audio, rate = soundfile.read(manifest.parent / row["audio"], dtype="float32", always_2d=True)
            out.append(resample(audio.mean(axis=1), rate, RATE))
    return out


async def _latency(host: str, port: int, clips: list[tuple[str, Positive]], streams: int) -> dict[str, float]:
    """Stream positives in real time, `streams` at once; ms from the phrase's end being sent to
    its detection."""
    picked = clips[:: max(1, len(clips) // (2 * streams))][: 2 * streams]
    results = await _gather_limited([listen(host, port, pcm16(c.audio), [n], pace=1.0) for n, c in picked],
                                    streams)
    delays = []
    for (name, clip), (found, times) in zip(picked, results, strict=True):
        for d, at in zip(found, times[1:], strict=True):
            if d.name == name:
                delays.append((at - (times[0] + clip.phrase_end_s)) * 1000)
                break
    if not delays:
        return {}
    return {"p50": float(np.percentile(delays, 50)), "p95": float(np.percentile(delays, 95)), "clips": len(delays)}


async def _cpu_per_stream(host: str, port: int, pid: int, negatives: list[np.ndarray], names: list[str],
                          streams: int, seconds: float) -> float:
    """The server's CPU time while `streams` listen for `names` in real time for `seconds`, per stream."""
    speech = np.concatenate(negatives)[: int(seconds * RATE)]
    clips = [pcm16(np.roll(speech, i * RATE)) for i in range(streams)]
    process = psutil.Process(pid)
    before = process.cpu_times()
    t0 = time.monotonic()
    await asyncio.gather(*(listen(host, port, pcm, names, pace=1.0) for pcm in clips))
    wall = time.monotonic() - t0
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / wall / streams * 100


def server_pid(port: int) -> int | None:
    """The process listening on `port` on this machine, if it can be seen."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except (psutil.AccessDenied, OSError):
        return None
    return None
