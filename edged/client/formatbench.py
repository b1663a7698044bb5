"""The OpenAI API's upload formats and mp3 speech, timed on a running server's HTTP door
(`edged bench formats`).

Transcription: one clip (10 s of the server's own first voice, padded with silence, or a file) uploaded to
`/v1/audio/transcriptions` as WAV and as each compressed format clients send (WebM/Opus as a
browser records it, 48 kHz stereo; MP3; Ogg Opus, 48 kHz mono), in rounds that alternate the formats, after one
round not counted; the p50 of each and its difference from the WAV's. Each transcript is compared
with the WAV's (word errors). Speech: `/v1/audio/speech` with no `response_format` (mp3, streamed),
the p50 time to the first byte of audio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import soundfile

from edged.client.textnorm import word_errors
from edged.client.webm_clip import browser_webm, ogg_opus
from edged.errors import EdgedError

CLIP_S = 10.0
UPLOADS = ("webm", "mp3", "ogg")
"""The compressed uploads timed beside WAV."""
_LIBSNDFILE = {"wav": ("WAV", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
_TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, "
         "polished the great lens and watched the ships pass safely beyond the rocks. ")
_SENTENCE = "Speech streams to the client as it is synthesised."


@dataclass(frozen=True)
class UploadFigures:
    """One upload format against WAV."""

    format: str
    bytes: int
    p50_ms: float
    wav_p50_ms: float
    word_errors: int
    """Words its transcript differs from the WAV's by (the most over the runs)."""

    @property
    def over_wav_ms(self) -> float:
        return self.p50_ms - self.wav_p50_ms


@dataclass(frozen=True)
class FormatReport:
    """What `edged bench formats` measured."""

    clip_s: float
    runs: int
    wav_bytes: int
    uploads: list[UploadFigures]
    mp3_first_byte_p50_ms: float

    def json(self) -> str:
        body = dataclasses.asdict(self)
        for item, figures in zip(body["uploads"], self.uploads, strict=True):
            item["over_wav_ms"] = round(figures.over_wav_ms, 1)
        return json.dumps(body, indent=2)

    def text(self) -> str:
        wav_p50 = self.uploads[0].wav_p50_ms if self.uploads else 0.0
        lines = [f"Transcription of a {self.clip_s:.2f} s clip, p50 of {self.runs} alternated runs "
                 f"(WAV {self.wav_bytes // 1024} KiB: {wav_p50:.1f} ms)",
                 f"  {'format':<6} {'KiB':>6} {'p50 ms':>8} {'vs WAV':>9} {'word errors vs WAV':>19}"]
        lines += [f"  {u.format:<6} {u.bytes // 1024:>6} {u.p50_ms:>8.1f} {u.over_wav_ms:>+9.1f} {u.word_errors:>19}"
                  for u in self.uploads]
        lines.append(f"Speech as mp3 (the default), first byte p50: {self.mp3_first_byte_p50_ms:.1f} ms")
        return "\n".join(lines)


def encode(pcm: bytes, rate: int, fmt: str) -> bytes:
    """16-bit mono PCM as an upload of `fmt` (wav or one of UPLOADS)."""
    if fmt == "webm":
        return browser_webm(pcm, rate)
    if fmt == "ogg":
        return ogg_opus(pcm, rate)
    container, subtype = _LIBSNDFILE[fmt]
    out = io.BytesIO()
    soundfile.write(out, np.frombuffer(pcm, "<i2"), rate, format=container, subtype=subtype)
    return out.getvalue()


def read_clip(path: Path, seconds: float) -> tuple[bytes, int]:
    """A sound file's first `seconds` as 16-bit mono PCM, and its rate."""
    try:
        audio, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (OSError, RuntimeError) as exc:
        raise EdgedError(f"Cannot read {path}: {exc}") from None
    return audio.mean(axis=1).astype("<i2")[:int(seconds * rate)].tobytes(), int(rate)


class _Api:
    """The few OpenAI API calls the bench makes."""

    def __init__(self, session: aiohttp.ClientSession, base: str, api_key: str) -> None:
        self._session = session
        self._base = base.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _check(self, response: aiohttp.ClientResponse, what: str) -> None:
        if response.status != 200:
            raise EdgedError(f"{what}: HTTP {response.status}: {(await response.text())[:300]}")

    async def first_voice(self) -> tuple[str, int]:
        async with self._session.get(f"{self._base}/v1/audio/voices", headers=self._headers) as response:
            await self._check(response, "GET /v1/audio/voices")
            voices = (await response.json())["voices"]
        if not voices:
            raise EdgedError("The server has no voice to speak the clip; give one with --clip.")
        return str(voices[0]["id"]), int(voices[0]["sample_rate"])

    async def spoken(self, seconds: float) -> tuple[bytes, int]:
        """`seconds` of the first voice reading _TEXT as 16-bit PCM: as many whole readings as fit
        (at least one, cut if it must be), then silence, so that no word is cut short."""
        voice, rate = await self.first_voice()
        size = int(seconds * rate) * 2
        async with self._session.post(f"{self._base}/v1/audio/speech", headers=self._headers, json={
                "model": "tts-1", "voice": voice, "input": _TEXT, "response_format": "pcm"}) as response:
            await self._check(response, "POST /v1/audio/speech")
            reading = await response.read()
        pcm = reading * max(1, size // max(len(reading), 1))
        return pcm[:size] + bytes(max(0, size - len(pcm))), rate

    async def transcribe(self, name: str, data: bytes) -> tuple[str, float]:
        """The transcript and the seconds from sending the request to the whole answer."""
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name)
        form.add_field("model", "whisper-1")
        t0 = time.perf_counter()
        async with self._session.post(f"{self._base}/v1/audio/transcriptions", data=form,
                                      headers=self._headers) as response:
            await self._check(response, f"Transcription of {name}")
            text = (await response.json())["text"]
        return str(text), time.perf_counter() - t0

    async def mp3_first_byte(self) -> float:
        """Seconds from sending a speech request (mp3, the default) to the first byte of its audio."""
        t0 = time.perf_counter()
        async with self._session.post(f"{self._base}/v1/audio/speech", headers=self._headers, json={
                "model": "tts-1", "voice": "alloy", "input": _SENTENCE}) as response:
            await self._check(response, "POST /v1/audio/speech")
            first = await response.content.readany()
            elapsed = time.perf_counter() - t0
            if not first:
                raise EdgedError("Speech as mp3 came back empty.")
            await response.read()
        return elapsed


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


async def _bench(base: str, api_key: str, clip: tuple[bytes, int] | None, runs: int, seconds: float,
                 progress: Callable[[str], None] | None) -> FormatReport:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=False)) as session:
        api = _Api(session, base, api_key)
        pcm, rate = clip if clip is not None else await api.spoken(seconds)
        files = {fmt: encode(pcm, rate, fmt) for fmt in ("wav", *UPLOADS)}
        times: dict[str, list[float]] = {fmt: [] for fmt in files}
        texts: dict[str, list[str]] = {fmt: [] for fmt in files}
        order = list(files)
        for run in range(runs + 1):  # round 0 warms up and is not counted
            for fmt in order:
                text, seconds = await api.transcribe(f"clip.{fmt}", files[fmt])
                if run:
                    times[fmt].append(seconds)
                    texts[fmt].append(text)
            order = order[1:] + order[:1]  # each format takes each place in the round in turn
            if progress is not None and run:
                progress(f"round {run}/{runs}: " + ", ".join(f"{f} {times[f][-1] * 1000:.0f} ms" for f in files))
        wav_text = texts["wav"][0]
        uploads = [UploadFigures(fmt, len(files[fmt]), _ms(times[fmt]), _ms(times["wav"]),
                                 max(word_errors(wav_text, t)[0] for t in texts[fmt])) for fmt in UPLOADS]
        await api.mp3_first_byte()  # warm-up
        first_bytes = [await api.mp3_first_byte() for _ in range(runs)]
    return FormatReport(round(len(pcm) / 2 / rate, 2), runs, len(files["wav"]), uploads, _ms(first_bytes))


def bench_formats(base: str, api_key: str, clip: tuple[bytes, int] | None, runs: int, seconds: float = CLIP_S,
                  progress: Callable[[str], None] | None = None) -> FormatReport:
    """Time the upload formats and mp3 speech on the server at `base` (http[s]://HOST:PORT), with
    `clip` (16-bit mono PCM and its rate) or else `seconds` of the server's first voice."""
    try:
        return asyncio.run(_bench(base, api_key, clip, runs, seconds, progress))
    except aiohttp.ClientError as exc:
        raise EdgedError(f"Cannot reach the HTTP door at {base}: {exc}") from None
