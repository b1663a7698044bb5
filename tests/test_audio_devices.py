"""edged.audio.devices through the real PyAudio → PortAudio → ALSA path, on the test devices of
tests/alsa_fixture.py (an ALSA `file` microphone fed from a WAV, a `file` speaker recorded to a file).

PortAudio reads the ALSA configuration at each initialisation, so each test points
ALSA_CONFIG_PATH at its own devices in-process; every PyAudio instance is released at the end.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edged.audio.devices import (
    ChunkFeed,
    Microphone,
    Reconnector,
    Speaker,
    find_device,
    list_devices,
)
from edged.audio.resample import resample
from edged.errors import AudioDeviceError
from tests.alsa_fixture import MIC, SPEAKER, AlsaTestDevices, Feed, wav_to_pcm

_MOONSHINE = importlib.util.find_spec("moonshine_cpp")  # locate only: importing it loads native code
BECKETT = Path(_MOONSHINE.origin).parent / "test-data" / "beckett.wav" if _MOONSHINE and _MOONSHINE.origin else None

needs_pyaudio = pytest.mark.skipif(
    importlib.util.find_spec("pyaudio") is None,
    reason="PyAudio is not installed (pip install 'edged[audio]'; it builds against portaudio19-dev)",
)
needs_beckett = pytest.mark.skipif(BECKETT is None, reason="moonshine-cpp (which ships test-data/beckett.wav) is not installed")


def _devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> AlsaTestDevices:
    """Test devices in tmp_path, made the only ones PortAudio sees."""
    devices = AlsaTestDevices(tmp_path, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(devices.config))
    return devices


@pytest.fixture
def devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 48 kHz-only test microphone and speaker (other rates refused, like many USB devices)."""
    devices = _devices(tmp_path, monkeypatch)
    yield devices
    devices.close()


def _clip(seconds: float, rate: int) -> np.ndarray:
    """The first `seconds` of beckett.wav as int16 at `rate`."""
    assert BECKETT is not None
    return wav_to_pcm(BECKETT, rate)[: int(seconds * rate)]


def _record(mic: Microphone, feed: Feed, timeout: float = 10.0) -> np.ndarray:
    """Read from an open microphone until the device has read all of `feed`, and a little more."""
    parts, deadline, tail = [], time.monotonic() + timeout, None
    while time.monotonic() < deadline and (tail is None or time.monotonic() < tail):
        audio = mic.read(0.1)
        if audio is not None:
            parts.append(audio)
        if tail is None and feed.captured.is_set():
            tail = time.monotonic() + 0.2
    assert feed.captured.is_set(), "the microphone never read all the audio fed to it"
    return np.concatenate(parts)


def _match(got: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    """Where `ref` best lines up inside `got`, and the normalised correlation there."""
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    n = len(got) + len(ref)
    corr = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(ref, n)), n)[: len(got) - len(ref) + 1]
    lag = int(np.argmax(corr))
    seg = got[lag : lag + len(ref)]
    return lag, float(seg @ ref / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))


def _match_via_48k(got: np.ndarray, clip: np.ndarray) -> float:
    """Similarity of 16 kHz `got` to the 48 kHz int16 `clip` taken down to 16 kHz, at the best of the
    three sample phases (the clip starts anywhere in the device's stream)."""
    audio = clip.astype(np.float32) / 32768.0
    return max(
        _match(got, resample(np.concatenate([np.zeros(phase, np.float32), audio]), 48000, 16000))[1]
        for phase in range(3)
    )


def _played(devices: AlsaTestDevices) -> np.ndarray:
    """What the speaker played, once its output has stopped growing, as float32."""
    last, still = -1, 0
    while still < 4:
        time.sleep(0.05)
        still = still + 1 if devices.speaker_frames == last else 0
        last = devices.speaker_frames
    return devices.played().astype(np.float32) / 32768.0


def _loud_seconds(audio: np.ndarray, rate: int = 48000) -> float:
    """Seconds of `audio` in 10 ms windows louder than -34 dBFS RMS."""
    window = rate // 100
    frames = audio[: len(audio) // window * window].reshape(-1, window)
    return float((np.sqrt((frames**2).mean(axis=1)) > 0.02).sum() / 100)


@needs_pyaudio
def test_list_and_find_devices(devices: AlsaTestDevices) -> None:
    """The test PCMs are listed by PortAudio's ALSA host and found by name, index or default."""
    listed = {d.name: d for d in list_devices()}
    assert {MIC, SPEAKER, "default"} <= set(listed)
    mic, speaker = listed[MIC], listed[SPEAKER]
    assert mic.host_api == "ALSA" and mic.max_input_channels >= 1 and mic.max_output_channels == 0
    assert speaker.max_output_channels >= 1 and speaker.max_input_channels == 0
    assert listed["default"].is_default_input and listed["default"].is_default_output

    assert find_device("TEST_MIC", "input") == mic
    assert find_device(mic.index, "input") == mic
    assert find_device(str(speaker.index), "output") == speaker
    assert find_device(None, "input").name == find_device("", "output").name == "default"
    with pytest.raises(AudioDeviceError, match=rf"No microphone name contains 'speaker'; available: {mic.index} '{MIC}'"):
        find_device("speaker", "input")
    with pytest.raises(AudioDeviceError, match=rf"no speaker with index {mic.index}"):
        find_device(mic.index, "output")


@needs_pyaudio
@needs_beckett
def test_microphone_falls_back_to_48k_and_hears_the_clip(devices: AlsaTestDevices) -> None:
    """The device refuses 16 kHz for real; the microphone opens at 48 kHz and hands out 16 kHz."""
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        index = next(i for i in range(pa.get_device_count()) if pa.get_device_info_by_index(i)["name"] == MIC)
        with pytest.raises(ValueError):
            pa.is_format_supported(16000, input_device=index, input_channels=1, input_format=pyaudio.paInt16)
    finally:
        pa.terminate()

    mic = Microphone(MIC)
    mic.open()
    try:
        assert (mic.is_open, mic.device_name, mic.open_rate) == (True, MIC, 48000)
        got = _record(mic, devices.feed(_clip(3.0, 48000)))
    finally:
        mic.close()
    similarity = _match_via_48k(got, _clip(3.0, 48000))
    assert similarity > 0.999, similarity
    assert mic.frames_read == len(got) and mic.overflows == 0
    assert not mic.is_open and mic.open_rate == 0


@needs_pyaudio
@needs_beckett
def test_microphone_opens_16k_where_the_device_takes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that takes 16 kHz is opened at 16 kHz: no resampling."""
    devices = _devices(tmp_path, monkeypatch, mic_rate=16000, fixed_rates=False)
    mic = Microphone()
    try:
        mic.open()
        assert (mic.device_name, mic.open_rate) == ("default", 16000)
        got = _record(mic, devices.feed(_clip(2.0, 16000)))
    finally:
        mic.close()
        devices.close()
    assert _match(got, _clip(2.0, 16000).astype(np.float32) / 32768.0)[1] > 0.9999  # bit-exact but for rounding


@needs_pyaudio
def test_microphone_buffer_is_bounded(devices: AlsaTestDevices, caplog: pytest.LogCaptureFixture) -> None:
    """A reader that stalls loses the oldest audio, counted and logged, never more than buffer_s."""
    mic = Microphone(MIC, buffer_s=0.32, block_ms=32)
    mic.open()
    try:
        time.sleep(1.0)
        with caplog.at_level(logging.WARNING, logger="edged.audio.devices.microphone"):
            audio = mic.read(0.1)
    finally:
        mic.close()
    assert audio is not None and len(audio) <= 0.35 * 16000
    assert mic.overflows >= 10
    assert "lost" in caplog.text


@needs_pyaudio
@needs_beckett
def test_speaker_plays_resampled_chunks(devices: AlsaTestDevices) -> None:
    """22.05 kHz chunks (what TTS yields) reach the 48 kHz-only device whole, once, in time."""
    source = _clip(2.0, 22050)
    speaker = Speaker(SPEAKER)
    try:
        handle = speaker.play((source[i : i + 2205] for i in range(0, len(source), 2205)), 22050)
        assert handle.wait(10) and handle.error is None and not handle.stopped
        assert speaker.open_rate == 48000 and speaker.device_name == SPEAKER
    finally:
        speaker.close()
    assert handle.first_audio_at is not None
    assert handle.first_audio_at - handle.requested_at < 0.15
    played = _played(devices)
    expected = resample(source.astype(np.float32) / 32768.0, 22050, 48000)
    lag, similarity = _match(played, expected)
    assert similarity > 0.99, (lag, similarity)
    # Nothing else was played: what lies outside the clip is silence.
    assert np.abs(played[:lag]).max(initial=0) < 1e-3
    assert np.abs(played[lag + len(expected) + 480 :]).max(initial=0) < 1e-3


@needs_pyaudio
def test_speaker_stop_and_interrupt(devices: AlsaTestDevices) -> None:
    """stop() cuts the current job; play(interrupt=True) also drops the queue, then plays."""
    tone = (np.sin(np.arange(3 * 48000) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    speaker = Speaker(SPEAKER)
    try:
        first, queued = speaker.play([tone], 48000), speaker.play([tone], 48000)
        assert speaker.is_playing
        while first.first_audio_at is None:
            time.sleep(0.01)
        time.sleep(0.3)
        speaker.stop()
        assert first.wait(0.5) and first.stopped
        while queued.first_audio_at is None:
            time.sleep(0.01)
        time.sleep(0.3)
        last = speaker.play([tone[:4800]], 48000, interrupt=True)
        assert queued.wait(0.5) and queued.stopped
        assert last.wait(2) and not last.stopped and last.error is None
        assert not speaker.is_playing
    finally:
        speaker.close()
    assert 0.6 < _loud_seconds(_played(devices)) < 1.5  # two cut jobs (~0.3 s each, plus buffers) and 0.1 s


@needs_pyaudio
def test_speaker_reports_failures_and_goes_on(devices: AlsaTestDevices) -> None:
    """A chunks iterable that raises fails its job only; a missing device fails with a clear error."""

    def broken():
        yield np.zeros(480, np.int16)
        raise RuntimeError("synthesis failed")

    speaker = Speaker(SPEAKER)
    try:
        bad = speaker.play(broken(), 48000)
        good = speaker.play([np.zeros(480, np.int16)], 48000)
        assert bad.wait(5) and isinstance(bad.error, RuntimeError)
        assert good.wait(5) and good.error is None
    finally:
        speaker.close()
    with pytest.raises(AudioDeviceError, match="closed"):
        speaker.play([], 48000)
    missing = Speaker("no such speaker")
    try:
        handle = missing.play([np.zeros(480, np.int16)], 48000)
        assert handle.wait(5)
        assert isinstance(handle.error, AudioDeviceError) and "No speaker name contains" in str(handle.error)
    finally:
        missing.close()


@needs_pyaudio
def test_chunk_feed_plays_what_arrives_over_time(devices: AlsaTestDevices) -> None:
    """Chunks put from another thread as they are made are played in order, then the job ends."""
    tone = (np.sin(np.arange(48000) * 2 * np.pi * 300 / 48000) * 8000).astype(np.int16)
    feed = ChunkFeed()
    speaker = Speaker(SPEAKER)

    def produce() -> None:
        for i in range(0, len(tone), 4800):
            feed.put(tone[i : i + 4800])
            time.sleep(0.05)
        feed.end()

    try:
        handle = speaker.play(feed, 48000)
        threading.Thread(target=produce).start()
        assert handle.wait(5) and handle.error is None
    finally:
        speaker.close()
    assert 0.98 <= _loud_seconds(_played(devices)) <= 1.02


@needs_pyaudio
def test_stop_reaches_a_job_waiting_for_chunks(devices: AlsaTestDevices) -> None:
    """A stop takes effect while the job waits for its next chunk (barge-in during synthesis)."""
    feed = ChunkFeed()
    speaker = Speaker(SPEAKER)
    try:
        handle = speaker.play(feed, 48000)
        feed.put(np.full(4800, 8000, np.int16))
        while handle.first_audio_at is None:
            time.sleep(0.01)
        speaker.stop()
        assert handle.wait(0.5) and handle.stopped
    finally:
        speaker.close()


@needs_pyaudio
def test_reconnector_retries_with_backoff_until_the_device_exists(devices: AlsaTestDevices) -> None:
    """Each failed open doubles the delay up to the cap; the state says why; then it opens."""
    name, attempts = ["edged_missing_mic"], []

    def factory() -> Microphone:
        attempts.append(time.monotonic())
        return Microphone(name[0])

    reconnector = Reconnector(factory, first_delay_s=0.05, max_delay_s=0.1)
    assert reconnector.state == "opening"
    states = []
    try:
        while len(attempts) < 4:
            reconnector.read(0.02)
            if not states or states[-1] != reconnector.state:
                states.append(reconnector.state)
        reason = f"No microphone name contains 'edged_missing_mic'; available: 0 '{MIC}', 2 'default'."
        assert states == [f"retrying in 0.05 s: {reason}", f"retrying in 0.1 s: {reason}"]  # 0.1 s: capped
        gaps = np.diff(attempts)
        assert gaps[0] >= 0.05 and min(gaps[1:]) >= 0.1
        name[0] = MIC
        deadline = time.monotonic() + 5
        while reconnector.read(0.1) is None and time.monotonic() < deadline:
            pass
        assert reconnector.state == "open" and reconnector.microphone is not None
        assert reconnector.microphone.device_name == MIC
    finally:
        reconnector.close()
        reconnector.read(0.01)
    assert reconnector.state == "closed" and reconnector.microphone is None


@needs_pyaudio
def test_reconnector_reopens_a_hung_microphone_and_mutes(devices: AlsaTestDevices) -> None:
    """A device that stops delivering is dropped and reopened once back; mute closes it."""
    reconnector = Reconnector(lambda: Microphone(MIC, stall_s=0.5), first_delay_s=0.2)
    states: list[str] = []

    def run_until(done, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            audio = reconnector.read(0.05)
            if not states or states[-1] != reconnector.state:
                states.append(reconnector.state)
            if done(audio):
                return True
        return False

    try:
        assert run_until(lambda audio: audio is not None, 5)
        devices.stall()
        threading.Timer(1.5, devices.stall, (False,)).start()  # replugged: the hung stream lets go
        assert run_until(lambda _: reconnector.state.startswith("retrying"), 5)
        assert "delivered no audio" in reconnector.state
        assert run_until(lambda audio: audio is not None and reconnector.state == "open", 5)
        reconnector.mute()
        assert run_until(lambda audio: reconnector.microphone is None, 2)
        assert reconnector.state == "muted" and reconnector.read(0.05) is None
        reconnector.unmute()
        assert run_until(lambda audio: audio is not None, 5)
    finally:
        reconnector.close()
        reconnector.release()
    assert states[0] in ("open", "opening") and "muted" in states and states[-1] == "open"


@needs_pyaudio
def test_microphone_hears_an_evalcorpus_clip(devices: AlsaTestDevices, evalcorpus: Path) -> None:
    """A recorded-speech clip from the evaluation corpus comes through the microphone intact."""
    manifest = [json.loads(line) for line in (evalcorpus / "manifest.jsonl").read_text().splitlines()]
    clip = min(manifest, key=lambda entry: entry["duration_s"])
    wav = evalcorpus / clip["audio"]
    mic = Microphone(MIC)
    mic.open()
    try:
        got = _record(mic, devices.feed(wav))
    finally:
        mic.close()
    assert _match_via_48k(got, wav_to_pcm(wav, 48000)) > 0.999


def test_missing_pyaudio_is_one_clear_error() -> None:
    """Without PyAudio, edged imports fine and a device call says how to install it."""
    code = (
        "import sys\n"
        "sys.modules['pyaudio'] = None  # as if not installed\n"
        "import edged.audio.devices as devices\n"
        "from edged.errors import AudioDeviceError\n"
        "assert 'pyaudio' not in [m for m, mod in sys.modules.items() if mod is not None]\n"
        "try:\n"
        "    devices.list_devices()\n"
        "except AudioDeviceError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "install edged[audio]" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
