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
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edged.doors import common
from edged.doors.local.chime import CHIME_RATE, chime
from edged.doors.local.recognition import Clock, MicRecognition
from edged.errors import (
    AudioDeviceError,
    EdgedError,
    FeatureOffError,
    ModelStateError,
    TtsRequestError,
)
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.results import Result
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
    from edged.audio.devices import ChunkFeed, Microphone, PlaybackHandle, Reconnector, Speaker
    from edged.doors.local.wake_commands import Satellite, WakeCommands
    from edged.pipelines.wake.detector import Detection
    from edged.service.context import ServiceContext

_LOGGER = logging.getLogger(__name__)

BLOCK_S = 0.1
"""Audio handed to recognition at a time: short enough for prompt endpoints, long enough to batch."""
MODEL_RETRY_S = 30
SUBSCRIBER_QUEUE = 256


@dataclass
class _Utterance:
    """One Speak request waiting for, or in, playback."""

    id: int
    synthesis: Synthesis
    received: float
    done: asyncio.Future[SpeakOutcome]
    queued: int = 0
    interrupted: bool = False


class Ears(Protocol):
    """What the microphone's audio goes to while the device is open: always-on dictation
    (`Dictation`) or wake words, then commands (`edged.doors.local.wake_commands`)."""

    @property
    def state(self) -> str:
        """The microphone's state while its device is open ("listening", ...)."""

    async def open(self) -> None:
        """The device opened (or reopened): start listening afresh."""

    async def hear(self, block: np.ndarray) -> None:
        """The next float32 samples at 16 kHz."""

    async def close(self) -> None:
        """The device closed, was lost or muted: end what is open (its last results handed on)."""


class Dictation:
    """Always-on dictation: every utterance transcribed and published; speech onset barges in."""

    state = "listening"

    def __init__(self, audio: LocalAudio) -> None:
        self._audio = audio
        self._recognition: MicRecognition | None = None
        self._was_speaking = False

    async def open(self) -> None:
        asr = self._audio.ctx.asr
        assert asr is not None  # the microphone loop runs only with ASR on
        recognition = MicRecognition(asr, lambda result, clock: self._audio.publish(result, clock))
        await recognition.open()
        self._recognition = recognition

    async def hear(self, block: np.ndarray) -> None:
        if self._recognition is None:
            return
        await self._recognition.feed(block, self._audio.wants_interims)
        speaking = self._recognition.in_speech
        if speaking and not self._was_speaking:
            self._audio.speech_barge_in()
        self._was_speaking = speaking

    async def close(self) -> None:
        recognition, self._recognition = self._recognition, None
        if recognition is not None:
            await recognition.close()


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
        self._stream_handle: PlaybackHandle | None = None
        """The last `play_stream` (a satellite client's answer): a wake word stops it too."""
        self._played = 0
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake_words: list[str] = []
        """The wake-word models the microphone waits for (`local_wake_words`); none: dictation."""
        self._commands: WakeCommands | None = None
        self.satellite: Satellite | None = None
        """The satellite client that takes wake-word commands instead of local recognition
        (edged.doors.wyoming.satellite), while one is connected."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the microphone loop and the speaker queue (each only when enabled)."""
        loop = asyncio.get_running_loop()
        if self.mic_enabled:
            if self._ctx.asr is None:
                self._mic_state = "off: speech recognition is turned off (service_enabled_asr)"
                _LOGGER.error("local_mic_enabled=true needs service_enabled_asr=true; the microphone stays off")
            elif (why := self._choose_wake_words()) is not None:
                self._mic_state = f"off: {why}"
                _LOGGER.error("local_wake_words: %s The microphone stays off", why)
            elif (why := self._check_speaker_only()) is not None:
                self._mic_state = f"off: {why}"
                _LOGGER.error("local_speaker_only: %s The microphone stays off", why)
            else:
                self._tasks.append(loop.create_task(self._guard(self._mic_loop(), "microphone"), name="edged-mic"))
        if self.speaker_enabled:
            if self._ctx.tts is None:
                self._speaker_state = "off: speech synthesis is turned off (service_enabled_tts)"
                _LOGGER.error("local_speaker_enabled=true needs service_enabled_tts=true; the speaker stays off")
            else:
                self._tasks.append(loop.create_task(self._guard(self._player(), "speaker"), name="edged-speaker"))

    def _choose_wake_words(self) -> str | None:
        """Find the models of `local_wake_words` (a sentence saying why not, or None)."""
        names = list(self._ctx.settings.local_wake_words)
        if not names:
            return None
        if self._ctx.wake is None:
            return "wake words need a wake-word model; name one in models_wake (builtin:wake-okay-nabu ...)."
        from edged.pipelines.wake.runtime import runtime_missing

        if (missing := runtime_missing()) is not None:
            return missing
        try:
            self._wake_words = self._ctx.wake.select(names)
        except EdgedError as exc:
            return str(exc)
        return None

    def _check_speaker_only(self) -> str | None:
        """Whether `local_speaker_only` can be kept (a sentence saying why not, or None); names
        not enrolled (yet) are warned about: no voice is theirs until they are."""
        names = self._ctx.settings.local_speaker_only
        if not names:
            return None
        assert self._ctx.asr is not None
        if not self._ctx.asr.speaker_models():
            return "telling voices apart needs a speaker model; add builtin:voicefilter-dvector to models_speaker."
        if not self._wake_words:
            return "it applies to commands after a wake word; set local_wake_words too."
        from edged.pipelines.speaker.enrolled import SpeakerStore, SpeakerStoreError

        try:
            enrolled = SpeakerStore(self._ctx.settings.model_loc).load()
        except SpeakerStoreError as exc:
            return str(exc)
        if missing := [n for n in names if n not in enrolled]:
            _LOGGER.warning("local_speaker_only names %s, not enrolled (edged speakers enroll NAME FILE...)",
                            ", ".join(missing))
        return None

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
        if self._commands is not None:
            await self._commands.stop()
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

    def _ears(self) -> Ears:
        if not self._wake_words:
            return Dictation(self)
        from edged.doors.local.wake_commands import WakeCommands

        if self._commands is None:
            self._commands = WakeCommands(self, self._wake_words)
        return self._commands

    async def _listen(self, mics: Reconnector) -> None:
        """Hand the microphone's audio to its ears until muted: afresh each time the device (re)opens."""
        ears = self._ears()
        device: Microphone | None = None
        heard = False
        try:
            while not self._muted:
                block = await asyncio.to_thread(_read_block, mics, int(BLOCK_S * MODEL_RATE), 1.0)
                if mics.microphone is not device:  # opened, lost or reopened: utterances end there
                    if heard:
                        heard = False
                        await ears.close()
                    if device is not None:
                        self._overflows_before += device.overflows
                    device = mics.microphone
                    if device is not None:
                        _LOGGER.info("Microphone %r open at %d Hz%s", device.device_name, device.open_rate,
                                     "" if device.open_rate == MODEL_RATE else f", resampled to {MODEL_RATE} Hz")
                        self._mic_device, self._mic_rate = device.device_name, device.open_rate
                        await ears.open()
                        heard = True
                self._mic = device
                self._mic_state = ears.state if mics.state == "open" else mics.state
                if block is None or not heard:
                    continue
                await ears.hear(np.clip(block, -1.0, 1.0).astype(np.float32))
                self._audio_s += len(block) / MODEL_RATE
                self._mic_state = ears.state  # it may have moved on (a wake word, an endpoint)
        finally:
            if heard:
                await ears.close()
            if device is not None:
                self._overflows_before += device.overflows
            self._mic = None

    @property
    def ctx(self) -> ServiceContext:
        return self._ctx

    @property
    def wants_interims(self) -> bool:
        """Whether a Transcripts subscriber asks for interim results."""
        return any(self._subscribers.values())

    def publish(self, result: Result, clock: Clock, wake_word: str = "") -> Heard:
        """Hand a result to the log, the subscribers and the transcripts file; `wake_word`: the
        wake word that opened the utterance."""
        now = time.time()
        heard = Heard(
            text=result.transcript, is_final=result.is_final, confidence=result.confidence,
            stability=result.stability, start_s=clock.wall(result.start_s), end_s=clock.wall(result.end_s),
            latency_ms=max(0.0, 1000.0 * (now - clock.wall(result.audio_processed))),
            words=[HeardWord(w.word, clock.wall(w.start_ms / 1000), clock.wall(w.end_ms / 1000), w.confidence)
                   for w in result.words],
            wake_word=wake_word, speaker=common.speaker_of(result))
        if result.is_final:
            self._finals += 1
            _LOGGER.info("Heard%s%s: %s", f" after {wake_word}" if wake_word else "",
                         f" from {heard.speaker}" if heard.speaker else "", result.transcript)
            self._write_transcript(heard)
        for subscriber, interim in self._subscribers.items():
            if result.is_final or interim:
                _offer(subscriber, heard)
        return heard

    def _write_transcript(self, heard: Heard) -> None:
        path = self._ctx.settings.local_transcripts_file
        if path is None:
            return
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(transcript_record(heard), ensure_ascii=False) + "\n")
        except OSError as exc:
            _LOGGER.error("Cannot append to local_transcripts_file %s: %s", path, exc.strerror)

    def speech_barge_in(self) -> None:
        """The microphone hears speech: stop playback if `local_barge_in` asks for it."""
        if self._ctx.settings.local_barge_in and self.is_speaking:
            _LOGGER.info("Barge-in: the microphone hears speech; stopping playback")
            self.stop_speaking()

    def wake_heard(self, detection: Detection) -> None:
        """A wake word opens a command: stop what plays (barge-in), then chime."""
        _LOGGER.info("Wake word %s heard", detection.name)
        if self.is_speaking:
            _LOGGER.info("Barge-in: wake word %s while speaking; stopping playback", detection.name)
            self.stop_speaking()
        if self.speaker_enabled and self._ctx.settings.local_wake_chime:
            self._device().play([chime()], CHIME_RATE)

    @property
    def wake_words(self) -> list[str]:
        """The wake-word models the microphone waits for (none: dictation, or the microphone is off)."""
        return list(self._wake_words)

    def play_stream(self, rate: int) -> tuple[ChunkFeed, PlaybackHandle]:
        """Play int16 mono PCM at `rate` as it comes (a satellite client's spoken answer): put()
        its chunks into the feed, then end() it; the handle tells when it has played."""
        from edged.audio.devices import ChunkFeed

        if not self.speaker_enabled:
            raise FeatureOffError("The speaker is off on this server; set local_speaker_enabled=true "
                                  "in config.sh and restart edged.")
        chunks = ChunkFeed()
        self._stream_handle = self._device().play(chunks, rate)
        return chunks, self._stream_handle

    @property
    def is_speaking(self) -> bool:
        """Whether the speaker is playing an utterance."""
        return any(h is not None and not h.done.is_set() for h in (self._handle, self._stream_handle))

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
        if self.is_speaking and self._speaker is not None:
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

    def _device(self) -> Speaker:
        """The speaker device (opened by its first playback)."""
        from edged.audio.devices import Speaker

        if self._speaker is None:
            self._speaker = Speaker(self._ctx.settings.local_speaker_device or None)
        return self._speaker

    async def _play(self, utt: _Utterance) -> SpeakOutcome:
        """Synthesise chunk by chunk on the executor, each chunk straight to the device."""
        from edged.audio.devices import ChunkFeed

        chunks = ChunkFeed()
        handle = self._device().play(chunks, utt.synthesis.sample_rate)
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


def transcript_record(heard: Heard) -> dict[str, Any]:
    """A final transcript as the transcripts file and the command hook have it (ISO times)."""
    record: dict[str, Any] = {
        "time": _iso(heard.end_s), "start": _iso(heard.start_s), "end": _iso(heard.end_s),
        "text": heard.text, "confidence": round(heard.confidence, 3),
        "words": [{"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3),
                   "confidence": round(w.confidence, 3)} for w in heard.words],
    }
    if heard.wake_word:
        record["wake_word"] = heard.wake_word
    if heard.speaker:
        record["speaker"] = heard.speaker
    return record


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(unix)) + f".{int(unix * 1000) % 1000:03d}" \
        + time.strftime("%z", time.localtime(unix))


__all__ = ["Dictation", "Ears", "LocalAudio", "transcript_record"]
