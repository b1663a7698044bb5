"""Sound devices for tests: the real PyAudio → PortAudio → ALSA path, with no sound hardware.

`AlsaTestDevices` writes an ALSA configuration of its own and returns the environment that makes
alsa-lib read it alone (`ALSA_CONFIG_PATH`). It defines three PCMs that PortAudio lists:

- `edged_test_mic`: capture through `plug` → `file` → `null`. The `file` plugin reads its samples
  from a FIFO that this fixture keeps filled (what `feed()` queued, then silence), so the device
  hears a WAV whenever a test asks.
- `edged_test_speaker`: playback through `plug` → `file` → `null`; the `file` plugin writes to a
  FIFO that this fixture drains into `output` (raw S16_LE mono at `speaker_rate`).
- `default`: capture from the microphone, playback to the speaker.

alsa-lib's `null` PCM has no clock (it reads and writes as fast as asked), so the `file` plugins
write into FIFOs (the speaker's output, and a copy of what the microphone captured) that a pacer
thread drains at the device's byte rate: a write blocks while its FIFO is full, which paces
PortAudio's thread as a sound card's clock would. With `fixed_rates` the `plug` PCMs name a rate
converter that does not exist, so opening at any rate but the device's own fails (PortAudio says
'Unanticipated host error' where a real 48 kHz-only USB microphone says 'Invalid sample rate'),
and the caller must fall back to the device's rate.

PortAudio reads the ALSA configuration at `Pa_Initialize`: give `env` to the process under test,
or set ALSA_CONFIG_PATH in-process before a `pyaudio.PyAudio()` while no other instance is alive.
The fixture must stay open while a process uses the devices: without the pacer their streams hang.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from edged.audio.resample import resample

MIC = "edged_test_mic"
SPEAKER = "edged_test_speaker"
_TICK_S = 0.005
_CREDIT_S = 0.05  # most a clock catches up after a late tick
_CLOCK_PIPE_BYTES = 4096  # how far a device's writer may run ahead of its clock (a page, the minimum)


def wav_to_pcm(wav: Path, rate: int) -> np.ndarray:
    """A WAV file as int16 mono PCM at `rate` (channels averaged, resampled)."""
    audio, src_rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = resample(audio.mean(axis=1), src_rate, rate)
    return np.clip(np.rint(mono * 32767.0), -32768, 32767).astype(np.int16)


def wav_to_raw(wav: Path, raw: Path, rate: int) -> Path:
    """Write a WAV file as the raw S16_LE mono stream an ALSA `file` PCM reads (`infile`)."""
    wav_to_pcm(wav, rate).astype("<i2").tofile(raw)
    return raw


def alsa_config(
    mic_in: Path, mic_clock: Path, speaker_out: Path, mic_rate: int, speaker_rate: int, fixed_rates: bool
) -> str:
    """The asound.conf text of the test devices (the FIFOs already made)."""
    converter = '    rate_converter "edged_refuses_other_rates"\n' if fixed_rates else ""

    def plug(direction: str, file_pcm: str, rate: int) -> str:
        return (
            f"  {direction}.pcm {{\n    type plug\n{converter}"
            f'    slave {{\n      pcm {{ type file; slave.pcm {{ type null }}; {file_pcm}; format "raw" }}\n'
            f"      rate {rate}\n      format S16_LE\n      channels 1\n    }}\n  }}\n"
        )

    return (
        f"pcm.{MIC} {{\n  type asym\n"
        + plug("capture", f'infile "{mic_in}"; file "{mic_clock}"', mic_rate)
        + '  hint { show on; description "edged test microphone" }\n}\n'
        f"pcm.{SPEAKER} {{\n  type asym\n"
        + plug("playback", f'file "{speaker_out}"', speaker_rate)
        + '  hint { show on; description "edged test speaker" }\n}\n'
        f'pcm.!default {{\n  type asym\n  capture.pcm "{MIC}"\n  playback.pcm "{SPEAKER}"\n}}\n'
    )


@dataclass(eq=False)
class Feed:
    """Audio queued for the test microphone, and when the device read its last sample."""

    data: bytes
    captured: threading.Event = field(default_factory=threading.Event)
    captured_at: float | None = None
    """time.monotonic() (within one 5 ms tick) when the microphone's stream read the last sample."""
    _end: int | None = None  # offset just past its last byte in the input FIFO's stream, once written


class AlsaTestDevices:
    """A paced test microphone and speaker in `directory`; close() when done."""

    def __init__(
        self, directory: Path, *, mic_rate: int = 48000, speaker_rate: int = 48000, fixed_rates: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.mic_rate, self.speaker_rate = mic_rate, speaker_rate
        self.output = self.directory / "speaker.raw"
        self.config = self.directory / "asound.conf"
        fifos = [self.directory / name for name in ("mic-in.fifo", "mic-clock.fifo", "speaker.fifo")]
        for fifo in fifos:
            if not fifo.exists():
                os.mkfifo(fifo)
        self.config.write_text(alsa_config(*fifos, mic_rate, speaker_rate, fixed_rates))
        self.output.write_bytes(b"")
        # O_RDWR: the input FIFO always has a writer (this fixture), so the file plugin's open never blocks.
        self._mic_in = os.open(fifos[0], os.O_RDWR | os.O_NONBLOCK)
        self._mic_clock = os.open(fifos[1], os.O_RDONLY | os.O_NONBLOCK)
        self._speaker = os.open(fifos[2], os.O_RDONLY | os.O_NONBLOCK)
        for fd in (self._mic_clock, self._speaker):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _CLOCK_PIPE_BYTES)
        # The input FIFO must hold more than the stream can read in one burst (its clock's slack,
        # a late tick's catch-up, a period), or a read comes back short and PortAudio gets stale frames.
        self._feed_ahead = _CLOCK_PIPE_BYTES + int((_CREDIT_S + 0.1) * 2 * mic_rate) + 4096
        self._queue: deque[Feed] = deque()
        self._current: tuple[memoryview, Feed] | None = None
        self._unread: list[Feed] = []
        self._written = 0
        self._lock = threading.Lock()
        self._stalled = threading.Event()
        self._stop = threading.Event()
        self.mic_frames = 0
        """Frames the microphone's clock has consumed."""
        self.speaker_frames = 0
        """Frames the speaker has played (written to `output`)."""
        self._thread = threading.Thread(target=self._run, name="alsa-test-pacer", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what makes alsa-lib (and so PortAudio) see only these devices."""
        return {**os.environ, "ALSA_CONFIG_PATH": str(self.config), "JACK_NO_START_SERVER": "1"}

    def feed(self, audio: Path | np.ndarray) -> Feed:
        """Queue a WAV (or int16 PCM at `mic_rate`) for the microphone, after what is queued already."""
        pcm = wav_to_pcm(audio, self.mic_rate) if isinstance(audio, Path) else np.asarray(audio, dtype=np.int16)
        feed = Feed(pcm.astype("<i2").tobytes())
        with self._lock:
            self._queue.append(feed)
        return feed

    def stall(self, stalled: bool = True) -> None:
        """Stop (or restart) the microphone's input: its stream hangs, as when a USB device is pulled."""
        if stalled:
            self._stalled.set()
        else:
            self._stalled.clear()

    def played(self) -> np.ndarray:
        """Everything the speaker has played so far, as int16 mono at `speaker_rate`."""
        return np.fromfile(self.output, dtype="<i2").astype(np.int16)

    def close(self) -> None:
        """Stop the pacer and close the FIFOs."""
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self._mic_in, self._mic_clock, self._speaker):
            os.close(fd)

    def _run(self) -> None:
        """Every tick: top up the microphone's input, drain both clocks at their byte rates."""
        clocks = {self._mic_clock: 2.0 * self.mic_rate, self._speaker: 2.0 * self.speaker_rate}
        credit = dict.fromkeys(clocks, 0.0)
        last = time.monotonic()
        with open(self.output, "ab", buffering=0) as out:
            while not self._stop.wait(_TICK_S):
                now = time.monotonic()
                elapsed, last = now - last, now
                self._top_up(now)
                for fd, rate in clocks.items():
                    # A device idle for a while must not run a burst afterwards: cap the credit.
                    credit[fd] = min(credit[fd] + elapsed * rate, _CREDIT_S * rate)
                    want = int(credit[fd]) & ~1
                    if want <= 0:
                        continue
                    try:
                        data = os.read(fd, want)
                    except BlockingIOError:
                        continue
                    credit[fd] -= len(data)
                    if fd == self._speaker:
                        out.write(data)
                        self.speaker_frames += len(data) // 2
                    else:
                        self.mic_frames += len(data) // 2

    def _top_up(self, now: float) -> None:
        """Note feeds the stream has read; keep the input FIFO filled: queued feeds, else silence."""
        buffered = struct.unpack("i", fcntl.ioctl(self._mic_in, termios.FIONREAD, b"\0\0\0\0"))[0]
        read_so_far = self._written - buffered
        for feed in [f for f in self._unread if f._end is not None and f._end <= read_so_far]:
            feed.captured_at = now
            feed.captured.set()
            self._unread.remove(feed)
        if self._stalled.is_set():
            return
        missing = (self._feed_ahead - buffered) & ~1
        while missing > 0:
            if self._current is None:
                with self._lock:
                    if self._queue:
                        feed = self._queue.popleft()
                        self._current = (memoryview(feed.data), feed)
                        self._unread.append(feed)
            chunk = bytes(missing) if self._current is None else self._current[0][:missing]
            try:
                written = os.write(self._mic_in, chunk)
            except BlockingIOError:
                return
            missing -= written
            self._written += written
            if self._current is not None:
                rest, feed = self._current[0][written:], self._current[1]
                self._current = (rest, feed) if len(rest) else None
                if not len(rest):
                    feed._end = self._written
