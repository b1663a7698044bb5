"""The machine's own microphone and speaker, inside the daemon.

Microphone (`local_mic_enabled`): PyAudio captures into a bounded buffer
(`edged.audio.devices.Microphone`); a task reads it in ~100 ms blocks and feeds their samples to
a session of the ASR service (`edged.service.asr`), on the same inference executor and in the
same batches as every client. Finals go to the log, to `edged.v1` Transcripts subscribers (each a bounded queue:
a slow subscriber loses its oldest results and never holds up the microphone) and, as JSON
lines, to `local_transcripts_file`. A device that fails or vanishes is reopened with backoff and
the state shows in `edged status`. Interim results are only made while a subscriber asks for them.

Speaker (`local_speaker_enabled`): Speak requests queue; one task plays them in order. The TTS
service synthesises chunk by chunk on the inference executor and each chunk goes straight to the playback
thread, so sound starts with the first clause. `interrupt`, StopSpeaking and barge-in (the
microphone hears speech while playing, `local_barge_in`) stop what plays.

It takes and gives the plain types of `edged.service.local_audio` (`Heard`, `SpeakRequest`,
`SpeakOutcome`, `LocalAudioStatus`); the gRPC door converts them to edged.v1's messages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Coroutine
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edged.errors import (
    AudioDeviceError,
    EdgedError,
    FeatureOffError,
    ModelStateError,
    TtsRequestError,
)
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.results import Result
from edged.service.asr import AsrSession, RecognitionRequest
from edged.service.local_audio import (
    Heard,
    HeardWord,
    LocalAudioStatus,
    MicrophoneStatus,
    SpeakerStatus,
    SpeakOutcome,
    SpeakRequest,
)
from edged.service.tts import SpeechRequest, Synthesis

if TYPE_CHECKING:
    from edged.audio.devices import Microphone, PlaybackHandle, Reconnector, Speaker
    from edged.service.context import ServiceContext

_LOGGER = logging.getLogger(__name__)

BLOCK_S = 0.1
"""Audio handed to recognition at a time: short enough for prompt endpoints, long enough to batch."""
MODEL_RETRY_S = 30
LOCAL_REQUEST = RecognitionRequest(word_times=True)
"""What the microphone's recognition asks for: the first ASR model, punctuation, word times."""
SUBSCRIBER_QUEUE = 256
_MARKS = 64


@dataclass
class _Utterance:
    """One Speak request waiting for, or in, playback."""

    id: int
    synthesis: Synthesis
    received: float
    done: asyncio.Future[SpeakOutcome]
    queued: int = 0
    interrupted: bool = False


@dataclass
class _Clock:
    """Maps stream samples to Unix time from the read times of recent blocks.

    A block is read no earlier than its last sample was captured, so the earliest anchor over
    recent blocks is the best estimate (and follows the device's clock drift).
    """

    marks: deque[float] = field(default_factory=lambda: deque(maxlen=_MARKS))

    def mark(self, samples: int, wall: float) -> None:
        self.marks.append(wall - samples / MODEL_RATE)

    def wall(self, seconds: float) -> float:
        return (min(self.marks) if self.marks else time.time()) + seconds


class LocalAudio:
    """The daemon's microphone loop, transcript fan-out and speaker queue."""

    name = "local audio"

    def __init__(self, ctx: ServiceContext) -> None:
        settings = ctx.settings
        self._ctx = ctx
        self.mic_enabled = settings.local_mic_enabled
        self.speaker_enabled = settings.local_speaker_enabled
        self._muted = settings.local_mic_muted
        self._mic_changed = asyncio.Event()
        self._mic_state = "starting" if self.mic_enabled else "off"
        self._mic_device = ""
        self._mic_rate = 0
        self._mic: Microphone | None = None
        self._overflows_before = 0
        self._audio_s = 0.0
        self._finals = 0
        self._subscribers: dict[asyncio.Queue[Heard | None], bool] = {}
        self._speaker: Speaker | None = None
        self._speaker_state = "idle" if self.speaker_enabled else "off"
        self._queue: deque[_Utterance] = deque()
        self._queue_changed = asyncio.Event()
        self._current: _Utterance | None = None
        self._handle: PlaybackHandle | None = None
        self._played = 0
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the microphone loop and the speaker queue (each only when enabled)."""
        loop = asyncio.get_running_loop()
        if self.mic_enabled:
            if self._ctx.asr is None:
                self._mic_state = "off: speech recognition is turned off (service_enabled_asr)"
                _LOGGER.error("local_mic_enabled=true needs service_enabled_asr=true; the microphone stays off")
            else:
                self._tasks.append(loop.create_task(self._guard(self._mic_loop(), "microphone"), name="edged-mic"))
        if self.speaker_enabled:
            if self._ctx.tts is None:
                self._speaker_state = "off: speech synthesis is turned off (service_enabled_tts)"
                _LOGGER.error("local_speaker_enabled=true needs service_enabled_tts=true; the speaker stays off")
            else:
                self._tasks.append(loop.create_task(self._guard(self._player(), "speaker"), name="edged-speaker"))

    async def _guard(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run a loop; a bug in it is logged and shown in status rather than lost in a dead task."""
        try:
            await work
        except Exception as exc:
            _LOGGER.exception("The %s loop failed; restart edged to use the %s again", what, what)
            state = f"failed: {type(exc).__name__}: {exc}"
            if what == "microphone":
                self._mic_state = state
            else:
                self._speaker_state = state

    async def stop_accepting(self) -> None:
        """Shutdown, first: stop playing and listening, end every Transcripts subscription (which
        never end alone, so the gRPC door's drain would wait for them), close the devices."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for subscriber in self._subscribers:
            _offer(subscriber, None)
        for utt in [*self._queue, *([self._current] if self._current else [])]:
            if not utt.done.done():
                utt.done.set_result(SpeakOutcome(utt.id, interrupted=True))
        self._queue.clear()
        if self._speaker is not None:
            await asyncio.to_thread(self._speaker.close)
            self._speaker = None

    async def stop(self, grace_s: float) -> None:
        """Nothing left after `stop_accepting`."""

    # -- microphone --------------------------------------------------------------------------

    def subscribe(self, interim: bool) -> asyncio.Queue[Heard | None]:
        """A queue receiving the microphone's transcripts (None when the daemon stops)."""
        if not self.mic_enabled:
            raise FeatureOffError("The microphone is off on this server; set local_mic_enabled=true "
                                     "in config.sh and restart edged.")
        subscriber: asyncio.Queue[Heard | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers[subscriber] = interim
        return subscriber

    def unsubscribe(self, subscriber: asyncio.Queue[Heard | None]) -> None:
        self._subscribers.pop(subscriber, None)

    def set_muted(self, muted: bool) -> MicrophoneStatus:
        """Mute (close the device) or unmute (open it again)."""
        if not self.mic_enabled:
            raise FeatureOffError("The microphone is off on this server; set local_mic_enabled=true "
                                     "in config.sh and restart edged.")
        if muted != self._muted:
            self._muted = muted
            _LOGGER.info("Microphone %s", "muted" if muted else "unmuted")
            self._mic_changed.set()
        return self.mic_status()

    def status(self) -> LocalAudioStatus:
        """The microphone's and the speaker's state and counts."""
        return LocalAudioStatus(self.mic_status(), self.speaker_status())

    def mic_status(self) -> MicrophoneStatus:
        """The microphone's state and counts."""
        mic = self._mic
        return MicrophoneStatus(
            enabled=self.mic_enabled, state=self._mic_state, device=self._mic_device,
            device_rate=self._mic_rate, muted=self._muted,
            overflows=self._overflows_before + (mic.overflows if mic is not None else 0),
            audio_s=self._audio_s, finals=self._finals)

    async def _mic_loop(self) -> None:
        """Listen while unmuted; the Reconnector reopens a failing device with backoff."""
        from edged.audio.devices import Microphone, Reconnector

        device = self._ctx.settings.local_mic_device or None
        mics = Reconnector(lambda: Microphone(device, rate=MODEL_RATE))
        try:
            while True:
                self._mic_changed.clear()  # before reading the flag: a change from now on wakes the waits
                if self._muted:
                    mics.mute()
                    self._mic_state = "muted"
                    await asyncio.to_thread(mics.release)
                    await self._wait_mic_change()
                    continue
                mics.unmute()
                try:
                    await self._listen(mics)
                except ModelStateError as exc:
                    self._mic_state = f"waiting for the ASR model: {exc}"
                    _LOGGER.warning("Microphone: %s; trying again in %d s", exc, MODEL_RETRY_S)
                    await self._wait_mic_change(MODEL_RETRY_S)
        finally:
            mics.close()
            await asyncio.to_thread(mics.release)

    async def _wait_mic_change(self, timeout: float | None = None) -> None:
        """Sleep until mute/unmute (since the loop last looked) or `timeout` seconds."""
        try:
            await asyncio.wait_for(self._mic_changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _listen(self, mics: Reconnector) -> None:
        """Feed the microphone to recognition until muted: a new session each time the device (re)opens."""
        asr = self._ctx.asr
        assert asr is not None  # start() runs this loop only with ASR on
        sessions = AsyncExitStack()
        session: AsrSession | None = None
        clock = _Clock()
        publisher: asyncio.Task[None] | None = None
        device: Microphone | None = None
        was_speaking = False
        try:
            while not self._muted:
                block = await asyncio.to_thread(_read_block, mics, int(BLOCK_S * MODEL_RATE), 1.0)
                if mics.microphone is not device:  # opened, lost or reopened: utterances end there
                    if session is not None:
                        await session.finish()
                        await _ended(publisher)
                        session = None
                        await sessions.aclose()
                    if device is not None:
                        self._overflows_before += device.overflows
                    device = mics.microphone
                    if device is not None:
                        _LOGGER.info("Microphone %r open at %d Hz%s", device.device_name, device.open_rate,
                                     "" if device.open_rate == MODEL_RATE else f", resampled to {MODEL_RATE} Hz")
                        self._mic_device, self._mic_rate = device.device_name, device.open_rate
                        session = await sessions.enter_async_context(asr.session(LOCAL_REQUEST, local=True))
                        clock = _Clock()
                        publisher = asyncio.get_running_loop().create_task(self._publish_from(session, clock))
                        sessions.callback(publisher.cancel)
                self._mic = device
                self._mic_state = "listening" if mics.state == "open" else mics.state
                if block is None or session is None:
                    continue
                clock.mark(session.samples + len(block), time.time())
                session.set_interim_results(any(self._subscribers.values()))
                await session.feed_samples(np.clip(block, -1.0, 1.0).astype(np.float32))
                self._audio_s += len(block) / MODEL_RATE
                speaking = session.in_speech
                if speaking and not was_speaking:
                    self._barge_in()
                was_speaking = speaking
        finally:
            if session is not None:
                await session.finish()
                await _ended(publisher)
            await sessions.aclose()
            if device is not None:
                self._overflows_before += device.overflows
            self._mic = None

    async def _publish_from(self, session: AsrSession, clock: _Clock) -> None:
        """Hand on each of a session's results the moment it is decoded."""
        async for transcript in session.results():
            self._publish(transcript.result, clock)

    def _publish(self, result: Result, clock: _Clock) -> None:
        """Hand a result to the log, the subscribers and the transcripts file."""
        now = time.time()
        heard = Heard(
            text=result.transcript, is_final=result.is_final, confidence=result.confidence,
            stability=result.stability, start_s=clock.wall(result.start_s), end_s=clock.wall(result.end_s),
            latency_ms=max(0.0, 1000.0 * (now - clock.wall(result.audio_processed))),
            words=[HeardWord(w.word, clock.wall(w.start_ms / 1000), clock.wall(w.end_ms / 1000), w.confidence)
                   for w in result.words])
        if result.is_final:
            self._finals += 1
            _LOGGER.info("Heard: %s", result.transcript)
            self._write_transcript(heard)
        for subscriber, interim in self._subscribers.items():
            if result.is_final or interim:
                _offer(subscriber, heard)

    def _write_transcript(self, heard: Heard) -> None:
        path = self._ctx.settings.local_transcripts_file
        if path is None:
            return
        record = {
            "time": _iso(heard.end_s), "start": _iso(heard.start_s), "end": _iso(heard.end_s),
            "text": heard.text, "confidence": round(heard.confidence, 3),
            "words": [{"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3),
                       "confidence": round(w.confidence, 3)} for w in heard.words],
        }
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            _LOGGER.error("Cannot append to local_transcripts_file %s: %s", path, exc.strerror)

    def _barge_in(self) -> None:
        if self._ctx.settings.local_barge_in and self._handle is not None and not self._handle.done.is_set():
            _LOGGER.info("Barge-in: the microphone hears speech; stopping playback")
            self.stop_speaking()

    # -- speaker -----------------------------------------------------------------------------

    async def speak(self, request: SpeakRequest) -> SpeakOutcome:
        """Queue a Speak request (checked now); with `wait`, answer when it has been played."""
        tts = self._ctx.tts
        if not self.speaker_enabled or tts is None:
            raise FeatureOffError("The speaker is off on this server; set local_speaker_enabled=true "
                                  "(and service_enabled_tts=true) in config.sh and restart edged.")
        if not request.text.strip():
            raise TtsRequestError("The text is empty; give something to say.")
        synthesis = await tts.prepare(SpeechRequest(text=request.text, voice=request.voice))
        if request.interrupt:
            self.stop_speaking()
        utt = _Utterance(next(self._ids), synthesis, time.monotonic(),
                         asyncio.get_running_loop().create_future(),
                         queued=len(self._queue) + (self._current is not None))
        self._queue.append(utt)
        self._queue_changed.set()
        if not request.wait:
            return SpeakOutcome(utt.id, queued=utt.queued)
        return await asyncio.shield(utt.done)

    def stop_speaking(self) -> SpeakerStatus:
        """Stop what plays now and drop the queue."""
        if not self.speaker_enabled:
            raise FeatureOffError("The speaker is off on this server; set local_speaker_enabled=true "
                                     "in config.sh and restart edged.")
        while self._queue:
            utt = self._queue.popleft()
            utt.done.set_result(SpeakOutcome(utt.id, interrupted=True, queued=utt.queued))
        if self._current is not None:
            self._current.interrupted = True
            if self._speaker is not None:
                self._speaker.stop()
        return self.speaker_status()

    def speaker_status(self) -> SpeakerStatus:
        """The speaker's state and counts."""
        return SpeakerStatus(
            enabled=self.speaker_enabled, state=self._speaker_state,
            device=self._speaker.device_name if self._speaker is not None else "",
            queued=len(self._queue), played=self._played)

    async def _player(self) -> None:
        """Play queued utterances one after the other."""
        while True:
            while not self._queue:
                self._queue_changed.clear()
                await self._queue_changed.wait()
            utt = self._queue.popleft()
            self._current = utt
            try:
                response = await self._play(utt)
            except EdgedError as exc:
                self._speaker_state = f"failed: {exc}"
                _LOGGER.error("Speaker: %s", exc)
                response = SpeakOutcome(utt.id, interrupted=True, queued=utt.queued)
            finally:
                self._current = None
                self._handle = None
            if not utt.done.done():
                utt.done.set_result(response)

    async def _play(self, utt: _Utterance) -> SpeakOutcome:
        """Synthesise chunk by chunk on the executor, each chunk straight to the device."""
        from edged.audio.devices import ChunkFeed, Speaker

        if self._speaker is None:
            self._speaker = Speaker(self._ctx.settings.local_speaker_device or None)
        chunks = ChunkFeed()
        handle = self._speaker.play(chunks, utt.synthesis.sample_rate)
        self._handle = handle
        self._speaker_state = "playing"
        seconds = 0.0
        try:
            tts = self._ctx.tts
            assert tts is not None  # speak() queues nothing without it
            async with aclosing(tts.chunks(utt.synthesis)) as audio:  # interrupted: the voice stops too
                async for chunk in audio:
                    if utt.interrupted or handle.done.is_set():
                        break
                    pcm = np.frombuffer(chunk.pcm, dtype="<i2")
                    seconds += len(pcm) / chunk.sample_rate
                    chunks.put(pcm)
        finally:
            chunks.end()
        await asyncio.to_thread(handle.done.wait)
        if handle.error is not None:
            raise AudioDeviceError(str(handle.error))
        self._played += 1
        self._speaker_state = "idle"
        first_ms = 1000.0 * (handle.first_audio_at - utt.received) if handle.first_audio_at else 0.0
        _LOGGER.debug("Spoke utterance %d: %.2f s, first audio after %.0f ms", utt.id, seconds, first_ms)
        return SpeakOutcome(utt.id, first_audio_ms=first_ms, seconds=seconds,
                            interrupted=utt.interrupted or handle.stopped, queued=utt.queued)


async def _ended(publisher: asyncio.Task[None] | None) -> None:
    """Wait until a finished session's publisher has handed on its last results."""
    if publisher is not None:
        await publisher


def _read_block(mics: Reconnector, samples: int, timeout: float) -> np.ndarray | None:
    """At least `samples` of audio from the microphone, or what came within `timeout` (None if none)."""
    deadline = time.monotonic() + timeout
    parts: list[np.ndarray] = []
    have = 0
    while have < samples:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        part = mics.read(left)
        if part is not None and len(part):
            parts.append(part)
            have += len(part)
    return np.concatenate(parts) if parts else None


def _offer(subscriber: asyncio.Queue[Any], item: Any) -> None:
    """Put without waiting; a full queue loses its oldest item."""
    if subscriber.full():
        subscriber.get_nowait()
    subscriber.put_nowait(item)


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(unix)) + f".{int(unix * 1000) % 1000:03d}" \
        + time.strftime("%z", time.localtime(unix))


__all__ = ["LocalAudio"]
