"""The speaker: a queue of playback jobs written to a PortAudio stream by one thread.

play() only queues, so callers (the daemon's asyncio loop) never block; chunks of int16 mono PCM
may arrive over time (ChunkFeed), and the first one is written as soon as it comes. A stop
closes the stream at once, discarding what the device holds (barge-in).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from edged.audio.devices.portaudio import (
    PA_LOCK,
    choose_device,
    enumerate_devices,
    initialise,
    open_stream,
    pa_message,
    terminate,
)
from edged.audio.resample import StreamResampler, float_to_pcm16, pcm16_to_float
from edged.errors import AudioDeviceError

_LOGGER = logging.getLogger(__name__)

_NO_AUDIO = np.zeros(0, dtype=np.int16)


class ChunkFeed:
    """Chunks handed to Speaker.play() as they are synthesised: put() from any thread, then end().

    While it waits for the next chunk it yields empty ones every `poll_s`, so the playback thread
    can act on a stop.
    """

    def __init__(self, poll_s: float = 0.05) -> None:
        self.poll_s = poll_s
        self._queue: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()

    def put(self, chunk: np.ndarray) -> None:
        """Queue int16 mono PCM (never blocks)."""
        self._queue.put(chunk)

    def end(self) -> None:
        """No more chunks."""
        self._queue.put(None)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            try:
                chunk = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                yield _NO_AUDIO
                continue
            if chunk is None:
                return
            yield chunk


class PlaybackHandle:
    """One Speaker.play() job: when its first audio reached the device, and how it ended."""

    def __init__(self, chunks: Iterable[np.ndarray], rate: int) -> None:
        self.rate = rate
        self.first_audio_at: float | None = None
        """time.monotonic() when its first frames were written to the device."""
        self.done = threading.Event()
        """Set once all its audio is written to the device, or it was stopped or failed."""
        self.error: BaseException | None = None
        """Why it failed: an AudioDeviceError, or what the chunks iterable raised."""
        self.stopped = False
        """Whether stop(), play(interrupt=True) or close() cut it short."""
        self.requested_at = time.monotonic()
        self._chunks = chunks
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop this job (whether playing or still queued)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until done; False on timeout."""
        return self.done.wait(timeout)


class Speaker:
    """Plays jobs of int16 mono PCM one after another on one device, from a single playback thread.

    play() only queues, so it never blocks the caller. The device is opened when a job starts (at
    the job's rate if it takes it, else 48 kHz, 44.1 kHz or its own rate, resampled) and closed,
    once it has played out, after `idle_close_s` without jobs. A stop closes the stream at once,
    discarding what the device still holds.
    """

    PIECE_S = 0.02
    """Audio written per blocking write: a stop takes effect within about this long."""

    def __init__(self, device: str | int | None = None, *, idle_close_s: float = 5.0) -> None:
        self.device = device
        self.idle_close_s = idle_close_s
        self._jobs: queue.SimpleQueue[PlaybackHandle | None] = queue.SimpleQueue()
        self._pending: deque[PlaybackHandle] = deque()
        self._current: PlaybackHandle | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pa: Any = None
        self._stream: Any = None
        self._name = ""
        self._open_rate = 0
        self._channels = 1

    @property
    def device_name(self) -> str:
        """Name of the open device ("" while closed)."""
        return self._name if self._stream is not None else ""

    @property
    def open_rate(self) -> int:
        """Rate the device is open at (0 while closed)."""
        return self._open_rate if self._stream is not None else 0

    @property
    def is_playing(self) -> bool:
        """Whether a job is playing or queued."""
        with self._lock:
            return self._current is not None or bool(self._pending)

    def play(self, chunks: Iterable[np.ndarray], rate: int, *, interrupt: bool = False) -> PlaybackHandle:
        """Queue int16 mono PCM chunks at `rate`; `interrupt` first stops and drops everything queued."""
        handle = PlaybackHandle(chunks, rate)
        with self._lock:
            if self._closed:
                raise AudioDeviceError("The speaker is closed.")
            if interrupt:
                self._cancel_all()
            self._pending.append(handle)
            self._jobs.put(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edged-speaker", daemon=True)
                self._thread.start()
        return handle

    def stop(self) -> None:
        """Stop what is playing now (barge-in); queued jobs still play."""
        with self._lock:
            if self._current is not None:
                self._current.cancel()

    def close(self) -> None:
        """Stop everything, close the device and end the playback thread."""
        with self._lock:
            self._closed = True
            self._cancel_all()
            thread = self._thread
        self._jobs.put(None)
        if thread is not None:
            thread.join(timeout=5)
        else:
            self._close_stream()

    def _cancel_all(self) -> None:
        """Cancel the current and queued jobs (under the lock)."""
        for job in (self._current, *self._pending):
            if job is not None:
                job.cancel()

    def _run(self) -> None:
        """The playback thread: one job at a time; close the device when idle."""
        while True:
            try:
                job = self._jobs.get(timeout=self.idle_close_s if self._stream is not None else None)
            except queue.Empty:
                self._close_stream()
                continue
            if job is None:
                break
            with self._lock:
                self._pending.remove(job)
                self._current = job
            try:
                self._play(job)
            except AudioDeviceError as exc:
                job.error = exc
                _LOGGER.warning("%s", exc)
                self._close_stream(drain=False)
            except Exception as exc:  # from the chunks iterable: the job fails, the speaker goes on
                job.error = exc
                _LOGGER.exception("Playback failed")
            finally:
                with self._lock:
                    self._current = None
                job.done.set()
        self._close_stream()

    def _play(self, job: PlaybackHandle) -> None:
        """Write one job's chunks to the device, resampled, checking for a stop between pieces."""
        if job._cancel.is_set():
            job.stopped = True
            return
        if self._stream is None:
            self._open(job.rate)
        resampler = StreamResampler(job.rate, self._open_rate)
        chunks = iter(job._chunks)
        try:
            for chunk in chunks:
                if job._cancel.is_set():
                    break
                if len(chunk):
                    self._write(job, resampler.process(pcm16_to_float(np.asarray(chunk, dtype=np.int16))))
            if not job._cancel.is_set():
                self._write(job, resampler.process(np.zeros(0, np.float32), last=True))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if job._cancel.is_set():
            job.stopped = True
            self._close_stream(drain=False)  # barge-in: drop what the device still holds

    def _write(self, job: PlaybackHandle, audio: np.ndarray) -> None:
        """Blocking writes of PIECE_S each; returns early when the job is cancelled."""
        pcm = np.frombuffer(float_to_pcm16(audio), dtype="<i2")
        if self._channels == 2:
            pcm = np.repeat(pcm, 2)
        piece = max(1, int(self._open_rate * self.PIECE_S)) * self._channels
        for start in range(0, len(pcm), piece):
            if job._cancel.is_set():
                return
            try:
                self._stream.write(pcm[start : start + piece].tobytes(), exception_on_underflow=False)
            except OSError as exc:
                raise AudioDeviceError(f"The speaker {self._name!r} failed while playing ({pa_message(exc)}).") from exc
            if job.first_audio_at is None:
                job.first_audio_at = time.monotonic()

    def _open(self, rate: int) -> None:
        """Open the device for a job at `rate`."""
        pyaudio, pa = initialise()
        try:
            with PA_LOCK:
                info = choose_device(enumerate_devices(pa), self.device, "output")
            self._stream, self._open_rate, self._channels = open_stream(pyaudio, pa, info, "output", rate, None)
        except BaseException:
            terminate(pa)
            raise
        self._pa, self._name = pa, info.name

    def _close_stream(self, drain: bool = True) -> None:
        """Close the device, after it has played what it holds unless `drain` is False; release PortAudio."""
        stream, pa = self._stream, self._pa
        self._stream = self._pa = None
        if stream is not None:
            with contextlib.suppress(OSError):
                if drain:
                    stream.stop_stream()  # returns once the buffered audio has played
                with PA_LOCK:
                    stream.close()
        if pa is not None:
            terminate(pa)
