"""The Wyoming door (Home Assistant's voice protocol): its events to the speech services and back.

One connection is one `WyomingHandler`; it answers

- `describe` with `info`: edged's ASR models and TTS voices;
- `transcribe` + `audio-start` / `audio-chunk`... / `audio-stop` with `transcript-start`,
  a `transcript-chunk` per final as it is recognised, then `transcript` and `transcript-stop`;
  where a speaker model is deployed, each chunk's data carries its `speaker` (A, B, ... or an
  enrolled name) and the transcript's the one who said most of it (clients ignore keys they
  do not know: `wyoming.asr.Transcript.from_event` reads only its own);
- `detect` + `audio-start` / `audio-chunk`... / `audio-stop` with a `detection` per wake word
  heard and `not-detected` at the end if none was (listening.py);
- `synthesize` with `audio-start` / `audio-chunk`... / `audio-stop` as the voice speaks, and
  streaming `synthesize-start` / `synthesize-chunk`... / `synthesize-stop` by speaking each
  sentence once it is complete, then `synthesize-stopped`.

It calls `ServiceContext.asr`, `.tts` and `.wake` only (the same admission slots, limits and metrics as
gRPC), and answers edged's errors and the client's mistakes with a Wyoming `error` event. The
server is advertised on the LAN as `_wyoming._tcp.local.` (zeroconf) for Home Assistant to find.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from contextlib import AsyncExitStack, aclosing
from typing import Any

from wyoming.asr import (
    Transcribe,
    Transcript,
    TranscriptChunk,
    TranscriptStart,
    TranscriptStop,
)
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    Describe,
    Info,
    TtsProgram,
    TtsVoice,
    TtsVoiceSpeaker,
    WakeModel,
    WakeProgram,
)
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)
from wyoming.wake import Detect

from edged import __version__
from edged.daemon.security import is_loopback
from edged.doors import common
from edged.doors.wyoming.advertising import Advertisement
from edged.doors.wyoming.framing import FrameError, read_event
from edged.doors.wyoming.listening import Listening, detect_names
from edged.errors import AudioFormatError, EdgedError, ForbiddenError, IdleTimeoutError, RequestError
from edged.pipelines.tts.segment import complete_sentences
from edged.service.admission import Slot, Waiting
from edged.service.asr import AsrSession, RecognitionRequest, asr_languages
from edged.service.context import ServiceContext
from edged.service.tts import SpeechRequest

_LOGGER = logging.getLogger(__name__)

PROGRAM = "edged"
"""The name of edged's ASR and TTS programs in `info` (a `transcribe` naming it takes the default model)."""
_WIDTHS = (1, 2, 4)
"""Sample widths accepted (1 and 4 are converted to 16-bit, which is what LINEAR_PCM means)."""
_URLS = {
    "moonshine": "https://github.com/usefulsensors/moonshine",
    "piper": "https://github.com/rhasspy/piper",
    "silero": "https://github.com/snakers4/silero-vad",
    "microwakeword": "https://github.com/kahrendt/microWakeWord",
}
_CODES = {
    "exhausted": "resource-exhausted",
    "unknown_voice": "unknown-voice",
    "bad_audio": "audio-format",
    "bad_request": "bad-request",
    "unknown_model": "unavailable",
    "unavailable": "unavailable",
    "off": "unavailable",
    "timeout": "timeout",
    "forbidden": "forbidden",
}
"""Wyoming error codes of edged's error kinds (edged.errors.KINDS; any other: "failed")."""


def error_for(exc: BaseException) -> Error:
    """The `error` event that answers `exc` (edged's one sentence, or a bug's type and text)."""
    if isinstance(exc, EdgedError):
        return Error(text=str(exc), code=_CODES.get(exc.kind, "failed"))
    return Error(text=f"The server failed: {type(exc).__name__}: {exc}", code="internal")


def check_text_fields(request: Synthesize | SynthesizeStart | SynthesizeChunk, kind: str) -> None:
    """RequestError naming a synthesis event's field that is not text (the wyoming package takes
    whatever JSON holds): `text` must be a string, a voice's name, language and speaker strings or
    absent."""
    fields: dict[str, Any] = {}
    if not isinstance(request, SynthesizeStart):
        fields["text"] = request.text
    voice = getattr(request, "voice", None)
    if voice is not None:
        fields |= {f"voice.{name}": getattr(voice, name) for name in ("name", "language", "speaker")
                   if getattr(voice, name) is not None}
    for name, value in fields.items():
        if not isinstance(value, str):
            raise RequestError(f"The Wyoming {kind!r} event's `{name}` must be a string, not "
                               f"{type(value).__name__}.")


def _attribution(family: str, license: str) -> Attribution:
    name = {"moonshine": "Moonshine (Useful Sensors)", "piper": "Piper (Rhasspy)",
            "silero": "Silero VAD", "microwakeword": "microWakeWord"}.get(family, family)
    return Attribution(name=f"{name}, {license}" if license and license != "unknown" else name,
                       url=_URLS.get(family, ""))


def describe(ctx: ServiceContext) -> Info:
    """What this server offers: its ASR models and TTS voices (loaded or loadable)."""
    edged = Attribution(name="edged", url="")
    info = Info()
    if ctx.asr is not None:
        vads = ctx.registry.manifests("vad")
        vad = ", ".join(f"{_attribution('silero', m.license).name}" for m in vads.values())
        models = [AsrModel(name=name, attribution=_attribution(m.model_family, m.license), installed=True,
                           description=f"{m.model_family} {m.language_code}", version=None,
                           languages=asr_languages(m))
                  for name, m in ctx.asr.models().items()]
        # The transcript comes at audio-stop: the client's VAD (or button) ends the command;
        # edged's own VAD only splits the audio into utterances for decoding.
        info.asr.append(AsrProgram(
            name=PROGRAM, attribution=edged, installed=True, version=__version__,
            description=f"edged speech recognition (endpointing: {vad or 'no VAD deployed'})",
            models=models, supports_transcript_streaming=True, requires_external_vad=True))
    if ctx.tts is not None:
        manifests = ctx.registry.manifests("speech_synthesis")
        voices = []
        for v in ctx.tts.voices():
            manifest = manifests.get(v.model)
            family = manifest.model_family if manifest is not None else "piper"
            licence = manifest.license if manifest is not None else ""
            voices.append(TtsVoice(
                name=v.model, attribution=_attribution(family, licence), installed=True,
                description=", ".join(v.names), version=None, languages=[v.language_code],
                speakers=[TtsVoiceSpeaker(name=s) for s in v.subvoices] if len(v.subvoices) > 1 else None))
        info.tts.append(TtsProgram(
            name=PROGRAM, attribution=edged, installed=True, version=__version__,
            description="edged speech synthesis", voices=voices, supports_synthesize_streaming=True))
    if ctx.wake is not None:
        wakes = [WakeModel(name=name, attribution=_attribution(m.model_family, m.license), installed=True,
                           description=str(m.parameters.get("wake_word", name)), version=None,
                           languages=[str(x) for x in m.parameters.get("trained_languages", [m.language_code])],
                           phrase=str(m.parameters.get("wake_word", "")) or None)
                 for name, m in ctx.wake.models().items()]
        info.wake.append(WakeProgram(name=PROGRAM, attribution=edged, installed=True, version=__version__,
                                     description="edged wake-word detection", models=wakes))
    return info


def check_client(allowed: tuple[str, ...], writer: asyncio.StreamWriter) -> None:
    """ForbiddenError unless `allowed` (`wyoming_allowed_clients`) is empty or lists the address
    of the client on `writer`."""
    if not allowed:
        return
    peer = writer.get_extra_info("peername")
    host = peer[0] if isinstance(peer, tuple) and peer else ""
    try:
        address = ipaddress.ip_address(host.removeprefix("::ffff:") if "." in host else host)
    except ValueError:
        address = None
    if address is None or not any(address in ipaddress.ip_network(n) for n in allowed):
        raise ForbiddenError(f"{host or 'This client'} may not use this Wyoming server "
                             "(wyoming_allowed_clients).")


_REQUESTS: dict[str, Any] = {
    kind: cls for cls, kind in (
        (Describe, "describe"), (Ping, "ping"), (Transcribe, "transcribe"), (Detect, "detect"),
        (AudioStart, "audio-start"), (AudioChunk, "audio-chunk"), (AudioStop, "audio-stop"), (Synthesize, "synthesize"),
        (SynthesizeStart, "synthesize-start"), (SynthesizeChunk, "synthesize-chunk"),
        (SynthesizeStop, "synthesize-stop"))}
"""The events a client may send, by type, and the class that reads each."""


READ_AHEAD_S = 4.0
"""Seconds of a client's audio read ahead of recognition: a client that sends faster than real
time (a whole command at once) has it recognised in a few large feeds rather than chunk by chunk."""


class _Transcription:
    """One `audio-start` ... `audio-stop` of a connection: its session, the audio read ahead of
    it (fed by `feed_queued`, joined), and the text so far."""

    def __init__(self, session: AsrSession, start: AudioStart) -> None:
        self.session = session
        self.format = start
        self.finals: list[str] = []
        self.language = ""
        """The language of the first final (a multilingual model's identified or asked one)."""
        self.speech_by_speaker: dict[str, float] = {}
        """With a speaker model deployed: seconds of the finals each speaker said."""
        self.converter = AudioChunkConverter(width=2) if start.width != 2 else None
        self.sender: asyncio.Task[None] | None = None
        """Sends each final as a transcript-chunk the moment it is decoded; ends after audio-stop's."""
        self.feeder: asyncio.Task[None] | None = None
        """Runs `feed_queued`."""
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._most_bytes = max(1, int(READ_AHEAD_S * start.rate * 2 * start.channels))
        self._arrived = asyncio.Event()
        self.room = asyncio.Event()
        """Set while less than READ_AHEAD_S is queued (the client's next chunk may be read)."""
        self.room.set()
        self._ended = False
        self.error: Exception | None = None
        """What ended the feeding early (bad audio, a limit): the door's next event raises it."""

    def queue(self, audio: bytes) -> None:
        """Audio for `feed_queued`; `room` is cleared past READ_AHEAD_S."""
        self._queued.append(audio)
        self._queued_bytes += len(audio)
        self._arrived.set()
        if self._queued_bytes >= self._most_bytes:
            self.room.clear()

    def end(self) -> None:
        """audio-stop: `feed_queued` feeds what is queued, then finishes the session."""
        self._ended = True
        self._arrived.set()

    async def feed_queued(self) -> None:
        """The feeding task: whatever has been queued since the last feed, as one feed; then
        (after `end`) the session's finish. An error stops the feeding and is kept in `error`."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queued:
                audio = b"".join(self._queued)
                self._queued, self._queued_bytes = [], 0
                self.room.set()
                if self.error is None:
                    try:
                        await self.session.feed(audio)
                    except Exception as exc:  # noqa: BLE001 - raised by the door at the client's next event
                        self.error = exc
            if self._ended:
                if self.error is None:
                    await self.session.finish()
                return


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection: translates its events to the speech services."""

    def __init__(self, ctx: ServiceContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._ctx = ctx
        self._stack = AsyncExitStack()
        """The open ASR or streaming TTS session (closed at its end, on error, at disconnect)."""
        self._transcribe = Transcribe()
        self._asr: _Transcription | None = None
        self._detect: Detect | None = None
        """The `detect` the next audio-start listens for (wake words), if one came."""
        self._wake: Listening | None = None
        self._refused = ""
        """The stream that failed ("audio", "synthesis"): its later events are dropped quietly
        until its stop (the error event has told the client)."""
        self._tts_voice: SynthesizeVoice | None = None
        self._tts_text = ""
        self._tts_started = False
        self._streaming_tts = False
        self._tts_slot: Slot | None = None
        """The streaming synthesis' slot, which waits for its text."""

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; an error becomes an `error` event and the connection stays open."""
        try:
            await self._dispatch(event)
        except (ConnectionError, BrokenPipeError):
            return False
        except Exception as exc:  # every error becomes an error event
            # the rest of a failed stream (its chunks, its stop) is dropped quietly
            if self._asr is not None or self._wake is not None:
                self._refused = "audio"
            elif self._streaming_tts:
                self._refused = "synthesis"
            await self._close_session()
            if isinstance(exc, IdleTimeoutError):  # it reads nothing: an error event would wait too
                _LOGGER.info("Wyoming %s ended: %s", event.type, exc)
                return False
            error = error_for(exc)
            if error.code == "internal":
                _LOGGER.exception("Wyoming %s failed", event.type)
            else:
                common.log_refusal(_LOGGER, "wyoming", getattr(exc, "kind", "bad_request"),
                                   f"Wyoming {event.type}", error.code or "failed", error.text)
            try:
                await self.write_event(error.event())
            except (ConnectionError, BrokenPipeError):
                return False
        return True

    async def run(self) -> None:
        """Read events until the client goes; one that cannot be framed within the limits is
        answered with an `error` event and ends the connection; so is a client whose address
        `wyoming_allowed_clients` does not list."""
        max_payload = self._ctx.settings.max_message_mb * 1024 * 1024
        try:
            check_client(self._ctx.settings.wyoming_allowed_clients, self.writer)
            while (event := await read_event(self.reader, max_payload)) is not None:
                if not await self.handle_event(event):
                    break
        except ForbiddenError as exc:
            common.log_refusal(_LOGGER, "wyoming", exc.kind, "Wyoming connection", "forbidden", str(exc))
            with contextlib.suppress(ConnectionError):
                await self.write_event(error_for(exc).event())
        except FrameError as exc:
            common.log_refusal(_LOGGER, "wyoming", exc.kind, "Wyoming event (the connection is closed)",
                               "bad-request", str(exc))
            with contextlib.suppress(ConnectionError):
                await self.write_event(error_for(exc).event())
        except (ConnectionError, asyncio.IncompleteReadError):
            _LOGGER.debug("Wyoming client went away mid-event")
        finally:
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        """The client went away: close whatever session it left open."""
        await self._close_session()

    async def _close_session(self) -> None:
        self._asr, self._wake = None, None
        self._streaming_tts, self._tts_started, self._tts_slot = False, False, None
        self._tts_text = ""
        await self._stack.aclose()
        self._stack = AsyncExitStack()

    async def _dispatch(self, event: Event) -> None:
        kind = event.type
        parser = _REQUESTS.get(kind)
        if parser is None and kind != "select-program":  # answered; an open stream carries on
            error = Error(text=f"edged does not serve Wyoming {kind!r} events; it answers describe, "
                               "transcribe or detect with audio, synthesize and synthesize-start.", code="bad-request")
            common.log_refusal(_LOGGER, "wyoming", "bad_request", f"Wyoming {kind}", "bad-request", error.text)
            await self.write_event(error.event())
            return
        try:
            request = parser.from_event(event) if parser is not None else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RequestError(f"The Wyoming {kind!r} event is malformed ({type(exc).__name__}: {exc}).") from None
        if isinstance(request, (Synthesize, SynthesizeStart, SynthesizeChunk)):
            check_text_fields(request, kind)
        if isinstance(request, Describe):
            await self.write_event(describe(self._ctx).event())
        elif isinstance(request, Ping):
            await self.write_event(Pong(text=request.text).event())
        elif isinstance(request, Transcribe):
            self._transcribe, self._detect = request, None
        elif isinstance(request, Detect):
            detect_names(request)
            self._detect, self._transcribe = request, Transcribe()
        elif isinstance(request, AudioStart):
            await self._audio_start(request)
        elif isinstance(request, AudioChunk):
            await self._audio_chunk(request)
        elif isinstance(request, AudioStop):
            await self._audio_stop()
        elif isinstance(request, Synthesize):
            if not self._streaming_tts:  # while streaming it only repeats the text, for old servers
                await self._synthesize(request.text, request.voice)
        elif isinstance(request, SynthesizeStart):
            await self._synthesize_start(request)
        elif isinstance(request, SynthesizeChunk):
            await self._synthesize_chunk(request)
        elif isinstance(request, SynthesizeStop):
            await self._synthesize_stop()
        # select-program: both programs are "edged", there is nothing to select

    # Speech recognition

    async def _audio_start(self, start: AudioStart) -> None:
        await self._close_session()
        self._refused = "audio"
        if start.width not in _WIDTHS:
            raise AudioFormatError(f"Audio of sample width {start.width} is not supported; send 16-bit "
                                   "PCM (width 2), or width 1 or 4.")
        if start.rate <= 0 or start.channels <= 0:
            raise AudioFormatError("audio-start needs a positive rate and channel count.")
        if self._detect is not None:
            await self._listen_start(start)
            return
        if self._ctx.asr is None and self._ctx.wake is not None:
            raise RequestError("audio-start came before detect: send detect (the wake words, or none "
                               "for any), then the audio.")
        asr = common.asr_service(self._ctx)
        transcribe, self._transcribe = self._transcribe, Transcribe()
        model = "" if transcribe.name in (None, "", PROGRAM) else str(transcribe.name)
        # No interims: a transcript-chunk is final text to append, so they would not be sent, and
        # deciding them costs decodes (on 12 clips at speech speed, audio-stop to transcript was
        # the same with them on or off: p50 134-180 ms against 159-163 ms, within the noise).
        request = RecognitionRequest(model=model, language_code=transcribe.language or "",
                                     encoding="LINEAR_PCM", sample_rate=start.rate,
                                     channels=start.channels, interim_results=False,
                                     diarization=bool(asr.speaker_models()))
        session = await self._stack.enter_async_context(asr.session(request))
        self._asr = _Transcription(session, start)
        self._refused = ""
        language = transcribe.language or asr.models()[session.model_name].language_code
        await self.write_event(TranscriptStart(language=language).event())
        loop = asyncio.get_running_loop()
        self._asr.sender = loop.create_task(self._send_finals(self._asr))
        self._stack.callback(self._asr.sender.cancel)
        self._asr.feeder = loop.create_task(self._asr.feed_queued())
        self._stack.callback(self._asr.feeder.cancel)

    async def _audio_chunk(self, chunk: AudioChunk) -> None:
        if self._wake is not None:
            await self._listen_chunk(self._wake, chunk)
            return
        asr = self._asr
        if asr is None:
            if self._refused == "audio":
                return
            raise AudioFormatError("audio-chunk came before audio-start; send audio-start (rate, width, "
                                   "channels) first.")
        start = asr.format
        if (chunk.rate, chunk.width, chunk.channels) != (start.rate, start.width, start.channels):
            raise AudioFormatError(
                f"audio-chunk is {chunk.rate} Hz, width {chunk.width}, {chunk.channels} channel(s), but "
                f"audio-start said {start.rate} Hz, width {start.width}, {start.channels}.")
        if asr.error is not None:
            raise asr.error
        if asr.converter is not None:
            chunk = asr.converter.convert(chunk)
        asr.queue(chunk.audio)
        await asr.room.wait()

    async def _send_finals(self, asr: _Transcription) -> None:
        try:
            async for t in asr.session.results():
                text = t.result.transcript.strip()
                if t.result.is_final and t.channel == 0 and text:
                    chunk = TranscriptChunk(text=(" " if asr.finals else "") + text).event()
                    speaker = common.speaker_of(t.result)
                    if speaker:
                        chunk.data["speaker"] = speaker
                        seconds = t.result.end_s - t.result.start_s
                        asr.speech_by_speaker[speaker] = asr.speech_by_speaker.get(speaker, 0.0) + seconds
                    await self.write_event(chunk)
                    asr.finals.append(text)
                    asr.language = asr.language or t.result.language_code
        except IdleTimeoutError as exc:  # the client went quiet: say so; the slot then closes the connection
            self._refused = "audio"
            common.log_refusal(_LOGGER, "wyoming", exc.kind, "Wyoming audio", "timeout", str(exc))
            await self.write_event(error_for(exc).event())

    async def _audio_stop(self) -> None:
        if self._wake is not None:
            events = self._wake.stop()
            await self._close_session()
            for event in events:
                await self.write_event(event)
            return
        asr = self._asr
        if asr is None:
            if self._refused == "audio":  # its audio-start was refused, and answered
                self._refused = ""
                return
            raise AudioFormatError("audio-stop came before audio-start; send audio-start, audio-chunks, "
                                   "then audio-stop.")
        asr.end()
        if asr.feeder is not None:
            await asr.feeder  # the audio read ahead is recognised, the session finished
        if asr.error is not None:
            raise asr.error
        if asr.sender is not None:
            await asr.sender  # every final is out as a transcript-chunk
        language = asr.language or common.asr_service(self._ctx).models()[asr.session.model_name].language_code
        await self._close_session()
        transcript = Transcript(text=" ".join(asr.finals), language=language).event()
        if asr.speech_by_speaker:  # who said most of it (a command is one voice's)
            transcript.data["speaker"] = max(asr.speech_by_speaker, key=lambda s: asr.speech_by_speaker[s])
        await self.write_event(transcript)
        await self.write_event(TranscriptStop().event())

    # Wake words

    async def _listen_start(self, start: AudioStart) -> None:
        detect, self._detect = self._detect, None
        wake = common.wake_service(self._ctx)
        names = detect_names(detect) if detect is not None else None
        session = await self._stack.enter_async_context(wake.session(names, start.rate, start.channels))
        session.on_idle(self._tell_idle)
        self._wake = Listening(session, start)
        self._refused = ""

    async def _listen_chunk(self, listening: Listening, chunk: AudioChunk) -> None:
        start = listening.format
        if (chunk.rate, chunk.width, chunk.channels) != (start.rate, start.width, start.channels):
            raise AudioFormatError(
                f"audio-chunk is {chunk.rate} Hz, width {chunk.width}, {chunk.channels} channel(s), but "
                f"audio-start said {start.rate} Hz, width {start.width}, {start.channels}.")
        for event in await listening.chunk(chunk):
            await self.write_event(event)

    # Speech synthesis

    def _speech_request(self, text: str, voice: SynthesizeVoice | None) -> SpeechRequest:
        """A Wyoming voice (a model or family name, a speaker, a language) as edged's request."""
        name, language = (voice.name or "", voice.language or "") if voice else ("", "")
        if voice and voice.speaker:  # "English-US" + "Joe" is the voice "English-US.Joe"
            voices = common.tts_service(self._ctx).voices()
            family = next((v.family for v in voices if name in (v.model, v.family)), name)
            name = f"{family}.{voice.speaker}"
        return SpeechRequest(text=text, voice=name, language_code=language)

    async def _synthesize(self, text: str, voice: SynthesizeVoice | None) -> None:
        """One `synthesize`: its audio stream, in its own TTS slot."""
        async with common.tts_service(self._ctx).session():
            await self._speak([text], voice)
            await self._end_audio()

    async def _speak(self, texts: list[str], voice: SynthesizeVoice | None) -> None:
        """Speak each text in turn into the connection's audio stream (audio-start before the first)."""
        tts = common.tts_service(self._ctx)
        for text in texts:
            synthesis = await tts.prepare(self._speech_request(text, voice))
            rate = synthesis.sample_rate
            if not self._tts_started:
                await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                self._tts_started = True
            async with aclosing(tts.chunks(synthesis)) as chunks:  # a client gone stops the voice
                async for chunk in chunks:
                    if chunk.pcm:
                        event = AudioChunk(rate=rate, width=2, channels=1, audio=chunk.pcm).event()
                        await tts.client_wait(self.write_event(event), "read the audio")

    async def _end_audio(self) -> None:
        """audio-stop, where an audio stream was started."""
        if self._tts_started:
            await self.write_event(AudioStop().event())
            self._tts_started = False

    async def _synthesize_start(self, start: SynthesizeStart) -> None:
        await self._close_session()
        self._refused = "synthesis"
        slot = await self._stack.enter_async_context(common.tts_service(self._ctx).session())
        slot.on_idle = self._tell_idle
        slot.start_waiting(Waiting.SEND)  # for the text (the slot closes the connection if none comes)
        self._streaming_tts, self._tts_voice, self._tts_text = True, start.voice, ""
        self._tts_started, self._refused, self._tts_slot = False, "", slot

    def _tell_idle(self, error: IdleTimeoutError) -> None:
        """A stream's client sent nothing for the idle timeout: an error event (its slot then closes
        the connection)."""
        what = "audio" if self._wake is not None else "synthesis"
        common.log_refusal(_LOGGER, "wyoming", error.kind, f"Wyoming {what}", "timeout", str(error))
        self._refused = what
        asyncio.get_running_loop().create_task(self.write_event(error_for(error).event()))

    async def _synthesize_chunk(self, chunk: SynthesizeChunk) -> None:
        if not self._streaming_tts:
            if self._refused == "synthesis":
                return
            raise RequestError("synthesize-chunk came before synthesize-start.")
        sentences, self._tts_text = complete_sentences(self._tts_text + chunk.text)
        if sentences and self._tts_slot is not None:
            with self._tts_slot.busy(Waiting.SEND):
                await self._speak(sentences, self._tts_voice)

    async def _synthesize_stop(self) -> None:
        if not self._streaming_tts:
            if self._refused == "synthesis":
                self._refused = ""
                await self.write_event(SynthesizeStopped().event())
                return
            raise RequestError("synthesize-stop came before synthesize-start.")
        if self._tts_slot is not None:
            self._tts_slot.stop_waiting(Waiting.SEND)
        rest = self._tts_text.strip()
        await self._speak([rest] if rest else [], self._tts_voice)
        await self._end_audio()
        await self._close_session()
        await self.write_event(SynthesizeStopped().event())


class _TcpServer(AsyncTcpServer):
    """AsyncTcpServer that can stop accepting before it ends its connections."""

    def close_listener(self) -> None:
        """Accept no more connections (open ones carry on)."""
        if self._server is not None:
            self._server.close()

    async def end_connections(self, timeout_s: float) -> None:
        """End every connection and wait (at most `timeout_s`) for their sessions to close."""
        tasks = list(self._handlers)
        await self.stop()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)


class WyomingServer:
    """The Wyoming TCP server of a running daemon, and its zeroconf advertisement."""

    name = "Wyoming"

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._server: _TcpServer | None = None
        self._advertising: Advertisement | None = None

    async def start(self) -> None:
        """Listen on listen_address:wyoming_port (EdgedError when that port is taken), advertise."""
        settings = self._ctx.settings
        server = _TcpServer(settings.listen_address, settings.wyoming_port)
        try:
            await server.start(lambda reader, writer: WyomingHandler(self._ctx, reader, writer))
        except OSError as exc:
            raise EdgedError(
                f"Cannot listen on {settings.listen_address}:{settings.wyoming_port} for Wyoming "
                f"({exc.strerror}); change wyoming_port in config.sh (wyoming_enabled=false turns it off)."
            ) from None
        self._server = server
        _LOGGER.info("Wyoming on %s:%d", settings.listen_address, settings.wyoming_port)
        if (settings.api_key or settings.ssl_server_cert) and not is_loopback(settings.listen_address):
            _LOGGER.warning("The Wyoming protocol has no TLS or API key: api_key and ssl_server_cert protect "
                            "only gRPC, and anyone on the network can use port %d; set wyoming_enabled=false "
                            "or listen_address=127.0.0.1 if that is not wanted.", settings.wyoming_port)
        if settings.wyoming_zeroconf:
            self._advertising = Advertisement(settings.listen_address, settings.wyoming_port, "edged", "Wyoming")
            self._advertising.start()

    async def stop_accepting(self) -> None:
        """Shutdown, first: accept no more connections."""
        if self._server is not None:
            self._server.close_listener()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Shutdown: withdraw the advertisement, end the connections (their sessions close)."""
        if self._advertising is not None:
            await self._advertising.stop()
            self._advertising = None
        if self._server is not None:
            self._server.close_listener()
            await self._server.end_connections(grace_s)
            self._server = None
