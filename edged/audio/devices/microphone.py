"""The microphone: PortAudio capture in callback mode, read as float32 mono at 16 kHz.

The audio callback only appends the device's bytes to a bounded deque, so it never blocks;
conversion, downmixing and resampling happen on the reader's thread. Reconnector keeps a
microphone open for a long-running reader: backoff on failure, mute, and a state for status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edged.audio.devices.portaudio import (
    PA_LOCK,
    DeviceInfo,
    choose_device,
    enumerate_devices,
    initialise,
    open_stream,
    terminate,
)
from edged.audio.resample import StreamResampler, pcm16_to_float
from edged.errors import AudioDeviceError

_LOGGER = logging.getLogger(__name__)


class Microphone:
    """A microphone captured in PortAudio's callback mode and read as float32 mono at `rate`.

    The callback only appends the device's bytes to a bounded deque, dropping the oldest block when
    it is full (counted in `overflows`), so it never blocks; `read()` converts, downmixes and
    resamples on the reader's thread.
    """

    def __init__(
        self,
        device: str | int | None = None,
        *,
        rate: int = 16000,
        block_ms: int = 32,
        buffer_s: float = 10.0,
        stall_s: float = 2.0,
    ) -> None:
        self.device = device
        self.rate = rate
        self.block_ms = block_ms
        self.buffer_s = buffer_s
        self.stall_s = stall_s
        """An open stream whose callback has not run for this long is taken as gone (unplugged, hung)."""
        self._pa: Any = None
        self._stream: Any = None
        self._info: DeviceInfo | None = None
        self._open_rate = 0
        self._channels = 1
        self._blocks: deque[bytes] = deque()
        self._max_blocks = 1
        self._ready = threading.Event()
        self._dropped = 0
        self._device_overflows = 0
        self._frames_read = 0
        self._last_callback = 0.0
        self._resampler: StreamResampler | None = None
        self._reported_overflows = 0
        self._warned_at = -1e9

    @property
    def device_name(self) -> str:
        """Name of the open device ("" while closed)."""
        return self._info.name if self._info and self.is_open else ""

    @property
    def open_rate(self) -> int:
        """Rate the device was opened at (0 while closed)."""
        return self._open_rate if self.is_open else 0

    @property
    def overflows(self) -> int:
        """Blocks lost: dropped from the full buffer, or reported lost by PortAudio."""
        return self._dropped + self._device_overflows

    @property
    def frames_read(self) -> int:
        """Frames (at `rate`) handed out by read() since open."""
        return self._frames_read

    @property
    def is_open(self) -> bool:
        """Whether a stream is open."""
        return self._stream is not None

    def open(self) -> None:
        """Open the device at a rate it takes and start capturing."""
        if self._stream is not None:
            return
        pyaudio, pa = initialise()
        try:
            with PA_LOCK:
                info = choose_device(enumerate_devices(pa), self.device, "input")
            self._blocks.clear()
            self._dropped = self._device_overflows = self._frames_read = self._reported_overflows = 0
            self._last_callback = time.monotonic()
            self._max_blocks = max(1, round(self.buffer_s * 1000 / self.block_ms))
            stream, rate, channels = open_stream(
                pyaudio, pa, info, "input", self.rate, self.block_ms, stream_callback=self._callback
            )
        except BaseException:
            terminate(pa)
            raise
        self._pa, self._stream, self._info = pa, stream, info
        self._open_rate, self._channels = rate, channels
        self._resampler = StreamResampler(rate, self.rate)

    def _callback(self, data: bytes, frames: int, time_info: Any, status: int) -> tuple[None, int]:
        """PortAudio's audio thread: store the block and return at once."""
        if status & 0x2:  # paInputOverflow: the host lost input before this block
            self._device_overflows += 1
        blocks = self._blocks
        if len(blocks) >= self._max_blocks:
            with contextlib.suppress(IndexError):  # the reader may have emptied it meanwhile
                blocks.popleft()
            self._dropped += 1
        blocks.append(data)
        self._last_callback = time.monotonic()
        self._ready.set()
        return None, 0  # paContinue

    def read(self, timeout: float) -> np.ndarray | None:
        """All audio captured since the last read, float32 mono at `rate`; None if none within `timeout`.

        Raises AudioDeviceError when the stream has stopped or delivered nothing for `stall_s`.
        """
        if self._stream is None or self._resampler is None:
            raise AudioDeviceError("The microphone is not open: open() it before reading.")
        deadline = time.monotonic() + timeout
        while True:
            self._ready.clear()
            data = []
            with contextlib.suppress(IndexError):
                while True:
                    data.append(self._blocks.popleft())
            if data:
                audio = pcm16_to_float(b"".join(data))
                if self._channels == 2:
                    audio = audio.reshape(-1, 2).mean(axis=1)
                out = self._resampler.process(audio)
                self._report_overflows()
                if len(out):
                    self._frames_read += len(out)
                    return out
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._ready.wait(remaining):
                self._check_alive()
                return None

    def _check_alive(self) -> None:
        """Raise AudioDeviceError if the stream stopped or its callback has gone quiet."""
        try:
            active = bool(self._stream.is_active())
        except OSError:
            active = False
        name = self._info.name if self._info else "?"
        if not active:
            raise AudioDeviceError(f"The microphone {name!r} stopped delivering audio (unplugged or failed).")
        silent_for = time.monotonic() - self._last_callback
        if silent_for > self.stall_s:
            raise AudioDeviceError(
                f"The microphone {name!r} delivered no audio for {silent_for:.1f} s (unplugged or hung)."
            )

    def _report_overflows(self) -> None:
        """Log lost audio at most every 10 s (never from the audio callback)."""
        lost = self.overflows
        now = time.monotonic()
        if lost > self._reported_overflows and now - self._warned_at >= 10.0:
            _LOGGER.warning(
                "Microphone %r lost %d block(s) of audio so far (reader too slow or host overrun)",
                self.device_name,
                lost,
            )
            self._reported_overflows, self._warned_at = lost, now

    def close(self) -> None:
        """Stop capturing and release the device (safe to call twice)."""
        stream, pa = self._stream, self._pa
        self._stream = self._pa = None
        with PA_LOCK:
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()  # aborts: what the device still holds is discarded
        if pa is not None:
            terminate(pa)
        self._blocks.clear()
        self._resampler = None


class Reconnector:
    """Keeps a microphone open for one reader thread: reopens it with backoff, closes it while muted.

    `read()` never raises for device trouble: a failing device is closed and reopened after
    1, 2, 4 … `max_delay_s` seconds (back to the first delay once it delivers audio again), and
    `state` says which: "opening", "open", "muted", "retrying in 4 s: <reason>", "closed".
    mute(), unmute() and close() may be called from any thread; the device itself is only
    touched from the reader's thread, inside read().
    """

    def __init__(
        self, factory: Callable[[], Microphone], *, first_delay_s: float = 1.0, max_delay_s: float = 30.0
    ) -> None:
        self.factory = factory
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self.microphone: Microphone | None = None
        self._muted = False
        self._closed = False
        self._delay = first_delay_s
        self._pending = 0.0
        self._retry_at = 0.0
        self._reason = ""
        self._wake = threading.Event()

    @property
    def state(self) -> str:
        """What the microphone is doing now, for status displays."""
        if self._closed:
            return "closed"
        if self._muted:
            return "muted"
        if self.microphone is not None:
            return "open"
        if self._reason:
            return f"retrying in {self._pending:g} s: {self._reason}"
        return "opening"

    def mute(self) -> None:
        """Stop listening: the device is closed at the reader's next read()."""
        self._muted = True
        self._wake.set()

    def unmute(self) -> None:
        """Listen again, opening the device at once."""
        self._muted = False
        self._delay, self._retry_at, self._reason = self.first_delay_s, 0.0, ""
        self._wake.set()

    def close(self) -> None:
        """Stop for good; the device is closed at the next read() (or now, from the reader's thread)."""
        self._closed = True
        self._wake.set()

    def release(self) -> None:
        """Close the device now (call from the reader's thread, or once it has stopped)."""
        if self.microphone is not None:
            self.microphone.close()
            self.microphone = None

    def read(self, timeout: float) -> np.ndarray | None:
        """Audio from the microphone, or None after at most `timeout` (muted, retrying, or silence)."""
        mic = self._ready_microphone(timeout)
        if mic is None:
            return None
        try:
            audio = mic.read(timeout)
        except AudioDeviceError as exc:
            self._failed(exc)
            return None
        if audio is not None:
            self._delay = self.first_delay_s
        return audio

    def _ready_microphone(self, timeout: float) -> Microphone | None:
        """The open microphone, opening it when a retry is due; None (after waiting) otherwise."""
        if self._muted or self._closed:
            self.release()
            self._sleep(timeout)
            return None
        if self.microphone is not None:
            return self.microphone
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            self._sleep(min(timeout, wait))
            return None
        try:
            mic = self.factory()
        except AudioDeviceError as exc:
            self._failed(exc)
            return None
        try:
            mic.open()
        except AudioDeviceError as exc:
            self._failed(exc)
            return None
        if self._reason:
            _LOGGER.info("Microphone %r is back, at %d Hz", mic.device_name, mic.open_rate)
        self.microphone, self._reason = mic, ""
        return mic

    def _failed(self, exc: AudioDeviceError) -> None:
        """Schedule the next attempt, then close the device (which may take until a hung one lets go)."""
        mic, self.microphone = self.microphone, None
        self._reason, self._pending = str(exc), self._delay
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.max_delay_s)
        _LOGGER.warning("Microphone unavailable (%s); retrying in %g s", exc, self._pending)
        if mic is not None:
            mic.close()

    def _sleep(self, seconds: float) -> None:
        """Wait up to `seconds`, cut short by mute, unmute or close."""
        if self._wake.wait(max(0.0, seconds)):
            self._wake.clear()
