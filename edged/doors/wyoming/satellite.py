"""The daemon as a Wyoming satellite (`wyoming_satellite_enabled`): Home Assistant connects to it
on `wyoming_satellite_port` as it does to a wyoming-satellite box.

    describe       -> info with a `satellite` entry (the local wake words)
    run-satellite  -> satellite-connected; wake-word commands now go to Home Assistant
    (a local wake word: edged.doors.local.wake_commands)
                   <- run-pipeline (asr to tts, the wake word), streaming-started,
                      audio-start, audio-chunk... (the microphone, 16 kHz 16-bit mono)
    transcript     -> audio-stop, streaming-stopped (also after COMMAND_MAX_S, or on a pause)
    audio-start, audio-chunk..., audio-stop (Home Assistant's spoken answer)
                   -> played on the speaker, then `played`
    pause-satellite -> no more commands streamed or answers played until the next run-satellite
    ping           -> pong

Home Assistant sends other events about its pipeline (`transcribe`, `voice-started`,
`synthesize`...); they are ignored, as wyoming-satellite ignores them. One client at a time: a
new connection replaces the one before (Home Assistant reconnecting after a restart must not be
locked out by its own stale connection); the old one is closed. When the client leaves, nothing
is sent and the microphone goes back to local behaviour (recognising commands itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Attribution, Describe, Info, Satellite
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import (
    PauseSatellite,
    RunSatellite,
    SatelliteConnected,
    StreamingStarted,
    StreamingStopped,
)
from wyoming.snd import Played

from edged import __version__
from edged.doors import common
from edged.doors.wyoming.advertising import Advertisement
from edged.doors.wyoming.door import check_client, error_for
from edged.doors.wyoming.framing import FrameError, read_event
from edged.errors import EdgedError, ForbiddenError
from edged.pipelines.asr.audio import MODEL_RATE

if TYPE_CHECKING:
    from edged.audio.devices import ChunkFeed, PlaybackHandle
    from edged.doors.local.audio import LocalAudio

_LOGGER = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 5.0
"""How long the microphone waits for the client to take an event before giving it up as gone."""


class SatelliteState(Enum):
    """Where a satellite client is: what Home Assistant asked for last."""

    CONNECTED = "connected, waiting for run-satellite"
    RUNNING = "running"
    PAUSED = "paused"


def satellite_info(audio: LocalAudio) -> Info:
    """`info` for `describe`: a satellite with the microphone's wake words."""
    words = audio.wake_words
    return Info(satellite=Satellite(
        name="edged", attribution=Attribution(name="edged", url=""), installed=True,
        description="edged's microphone and speaker", version=__version__, area=None,
        has_vad=False, active_wake_words=words, max_active_wake_words=len(words), supports_trigger=False))


class SatelliteClient:
    """One connection of Home Assistant; the microphone's commands go to it while it runs."""

    def __init__(self, audio: LocalAudio, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._audio = audio
        self._reader = reader
        self._writer = writer
        self.state = SatelliteState.CONNECTED
        self._gone = False
        self._wants_audio = False
        """Whether the client still wants the command's audio (no transcript yet)."""
        self._answer: tuple[ChunkFeed, PlaybackHandle, AudioStart] | None = None
        """The client's spoken answer being played: its feed, its playback and its format."""
        self._played: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self.state is SatelliteState.RUNNING and not self._gone

    async def serve(self) -> None:
        """Read events until the client goes (or is replaced); a frame beyond the limits is answered
        with an `error` event and ends the connection, as at the Wyoming door."""
        max_payload = self._audio.ctx.settings.max_message_mb * 1024 * 1024
        try:
            while not self._gone and (event := await read_event(self._reader, max_payload)) is not None:
                await self._handle(event)
        except FrameError as exc:
            common.log_refusal(_LOGGER, "wyoming", exc.kind, "Wyoming satellite event (the connection is closed)",
                               "bad-request", str(exc))
            await self._send(error_for(exc).event())
        except (ConnectionError, asyncio.IncompleteReadError):
            _LOGGER.debug("The satellite client went away mid-event")
        finally:
            self.close()
            for task in self._played:
                task.cancel()

    def close(self) -> None:
        """Forget the client (it left or was replaced): nothing more is sent to it."""
        if not self._gone:
            self._gone = True
            self._writer.close()
        if self._answer is not None:
            self._answer[0].end()
            self._answer = None

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self._send(satellite_info(self._audio).event())
        elif RunSatellite.is_type(event.type):
            self.state = SatelliteState.RUNNING
            _LOGGER.info("Satellite client running: wake-word commands go to it")
            await self._send(SatelliteConnected().event())
        elif PauseSatellite.is_type(event.type):
            self.state = SatelliteState.PAUSED
            self._wants_audio = False
            self._end_answer()
            _LOGGER.info("Satellite client paused: wake-word commands are recognised here until it runs again")
        elif Ping.is_type(event.type):
            await self._send(Pong(text=Ping.from_event(event).text).event())
        elif Transcript.is_type(event.type) or Error.is_type(event.type):
            if self._wants_audio:
                _LOGGER.info("Satellite client: %s; the command's audio ends",
                             "transcript heard" if Transcript.is_type(event.type) else
                             f"its pipeline failed ({event.data.get('text', '')})")
            self._wants_audio = False
        elif self.state is SatelliteState.RUNNING and AudioStart.is_type(event.type):
            self._start_answer(AudioStart.from_event(event))
        elif AudioChunk.is_type(event.type):
            self._answer_chunk(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            self._end_answer()
        else:
            _LOGGER.debug("Satellite client event %r ignored", event.type)

    # -- the command: the microphone's audio to the client ------------------------------------

    async def open_command(self, wake_word: str) -> None:
        self._wants_audio = True
        pipeline = RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS,
                               wake_word_name=wake_word, restart_on_end=False)
        for event in (pipeline.event(), StreamingStarted().event(),
                      AudioStart(rate=MODEL_RATE, width=2, channels=1).event()):
            await self._send(event)

    async def command_audio(self, pcm: bytes) -> bool:
        if self._wants_audio and self.running:
            await self._send(AudioChunk(rate=MODEL_RATE, width=2, channels=1, audio=pcm).event())
        return self._wants_audio and self.running

    async def close_command(self) -> None:
        self._wants_audio = False
        await self._send(AudioStop().event())
        await self._send(StreamingStopped().event())

    async def _send(self, event: Event) -> None:
        """Write an event; a client that is gone, or takes nothing for WRITE_TIMEOUT_S, is closed."""
        if self._gone:
            return
        try:
            await asyncio.wait_for(async_write_event(event, self._writer), WRITE_TIMEOUT_S)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            _LOGGER.info("The satellite client is gone (%s); wake-word commands are recognised here again",
                         type(exc).__name__)
            self.close()

    # -- the answer: the client's audio to the speaker ---------------------------------------

    def _start_answer(self, start: AudioStart) -> None:
        self._end_answer()
        if not self._audio.speaker_enabled:
            _LOGGER.warning("The satellite client sent an answer to speak; set local_speaker_enabled=true to hear it")
            return
        if start.width not in (1, 2, 4) or start.rate <= 0 or start.channels <= 0:
            _LOGGER.warning("The satellite client's answer is %d Hz, width %d, %d channel(s): not played",
                            start.rate, start.width, start.channels)
            return
        try:
            feed, handle = self._audio.play_stream(start.rate)
        except EdgedError as exc:
            _LOGGER.warning("The satellite client's answer cannot be played: %s", exc)
            return
        self._answer = (feed, handle, start)

    def _answer_chunk(self, chunk: AudioChunk) -> None:
        if self._answer is None or self.state is not SatelliteState.RUNNING:
            return
        feed, _, start = self._answer
        if (chunk.rate, chunk.width, chunk.channels) != (start.rate, start.width, start.channels):
            _LOGGER.warning("The satellite client's answer changed format mid-stream; the rest is not played")
            self._end_answer()
            return
        chunk = AudioChunkConverter(width=2, channels=1).convert(chunk)
        feed.put(np.frombuffer(chunk.audio, dtype="<i2").copy())

    def _end_answer(self) -> None:
        """The answer's end: it plays out, then `played` tells the client."""
        if self._answer is None:
            return
        feed, handle, _ = self._answer
        self._answer = None
        feed.end()
        task = asyncio.get_running_loop().create_task(self._tell_played(handle), name="edged-satellite-played")
        self._played.add(task)
        task.add_done_callback(self._played.discard)

    async def _tell_played(self, handle: PlaybackHandle) -> None:
        await asyncio.to_thread(handle.done.wait)
        await self._send(Played().event())


class SatelliteServer:
    """The satellite's TCP server: one client at a time (a new one replaces the one before)."""

    name = "Wyoming satellite"

    def __init__(self, audio: LocalAudio) -> None:
        self._audio = audio
        self._server: asyncio.Server | None = None
        self._client: SatelliteClient | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._advertising: Advertisement | None = None

    async def start(self) -> None:
        """Listen on listen_address:wyoming_satellite_port (EdgedError when that port is taken), advertise."""
        settings = self._audio.ctx.settings
        try:
            self._server = await asyncio.start_server(self._connected, settings.listen_address,
                                                      settings.wyoming_satellite_port)
        except OSError as exc:
            raise EdgedError(
                f"Cannot listen on {settings.listen_address}:{settings.wyoming_satellite_port} for the Wyoming "
                f"satellite ({exc.strerror}); change wyoming_satellite_port in config.sh "
                "(wyoming_satellite_enabled=false turns it off).") from None
        _LOGGER.info("Wyoming satellite on %s:%d (wake words: %s)", settings.listen_address,
                     settings.wyoming_satellite_port, ", ".join(self._audio.wake_words))
        if settings.wyoming_zeroconf:
            self._advertising = Advertisement(settings.listen_address, settings.wyoming_satellite_port,
                                              "edged-satellite", "the Wyoming satellite")
            self._advertising.start()

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float) -> None:
        """Withdraw the advertisement, close the client."""
        if self._advertising is not None:
            await self._advertising.stop()
            self._advertising = None
        if self._server is not None:
            self._server.close()
        if self._client is not None:
            self._client.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._audio.satellite = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            check_client(self._audio.ctx.settings.wyoming_allowed_clients, writer)
        except ForbiddenError as exc:
            common.log_refusal(_LOGGER, "wyoming", exc.kind, "Wyoming satellite connection", "forbidden", str(exc))
            with contextlib.suppress(ConnectionError):
                await async_write_event(error_for(exc).event(), writer)
            writer.close()
            return
        client = SatelliteClient(self._audio, reader, writer)
        if self._client is not None:
            _LOGGER.info("A new satellite client replaces the one before")
            self._client.close()
        self._client = client
        self._audio.satellite = client
        _LOGGER.info("Satellite client connected from %s", writer.get_extra_info("peername"))
        try:
            await client.serve()
        finally:
            if self._client is client:
                self._client = None
                self._audio.satellite = None
                _LOGGER.info("Satellite client gone; wake-word commands are recognised here again")
