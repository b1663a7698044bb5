"""The microphone with wake words (`local_wake_words`): it listens for a wake word only; one opens a
command, transcribed up to its endpoint and published tagged with the wake word; the command
hook (`local_command_hook`) gets it, and what the hook answers is spoken.

    LISTENING_FOR_WAKE --wake word--> IN_COMMAND --endpoint, or nothing said--> LISTENING_FOR_WAKE
    LISTENING_FOR_WAKE --the hook's answer plays--> SPEAKING --played--> LISTENING_FOR_WAKE
    SPEAKING --wake word (barge-in: the speaker stops)--> IN_COMMAND

With a satellite client running (Home Assistant over Wyoming, `wyoming_satellite_enabled`), a wake
word streams the command to it instead of recognising it here:

    LISTENING_FOR_WAKE --wake word--> STREAMING --its transcript, it leaves or pauses, or
    COMMAND_MAX_S--> LISTENING_FOR_WAKE

Its spoken answer is played by the satellite door, not here.

Wake words are listened for while speaking too: a wake word stops any playback. Each return to
listening starts a fresh wake session, so nothing of the last wake phrase lingers in its window.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from enum import Enum
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edged.audio.resample import float_to_pcm16
from edged.doors import common
from edged.doors.local.command_hook import CommandHook
from edged.doors.local.recognition import Clock, MicRecognition
from edged.errors import EdgedError
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.results import Result
from edged.service.local_audio import Heard, SpeakRequest

if TYPE_CHECKING:
    from edged.doors.local.audio import LocalAudio
    from edged.service.wake import WakeSession

_LOGGER = logging.getLogger(__name__)

SILENCE_WAIT_S = 6.0
"""How long a command may stay silent after its wake word before listening resumes."""
COMMAND_MAX_S = 20.0
"""The longest command: it is ended there even while speech goes on."""


class ListenerState(Enum):
    """Where the microphone is in the wake word → command → answer cycle."""

    LISTENING_FOR_WAKE = "listening for wake words"
    IN_COMMAND = "hearing a command"
    SPEAKING = "speaking an answer"
    STREAMING = "streaming a command to Home Assistant"


class Satellite(Protocol):
    """A voice pipeline elsewhere that takes the commands instead of local recognition (Home
    Assistant over Wyoming: edged.doors.wyoming.satellite)."""

    @property
    def running(self) -> bool:
        """Whether it takes commands now (connected, asked to run, not paused)."""

    async def open_command(self, wake_word: str) -> None:
        """A wake word was heard: the command's audio follows."""

    async def command_audio(self, pcm: bytes) -> bool:
        """16 kHz 16-bit mono PCM of the command; False once it wants no more (it has the
        transcript, paused or left)."""

    async def close_command(self) -> None:
        """The command's audio has ended."""


class WakeCommands:
    """The microphone's ears with wake words (see the module's diagram)."""

    def __init__(self, audio: LocalAudio, wake_words: list[str]) -> None:
        settings = audio.ctx.settings
        self._audio = audio
        self._wake_words = wake_words
        self._hook = (CommandHook(settings.local_command_hook, settings.local_command_hook_timeout_s)
                      if settings.local_command_hook.strip() else None)
        self.listener_state = ListenerState.LISTENING_FOR_WAKE
        self._wake_stack = AsyncExitStack()
        self._wake: WakeSession | None = None
        self._command: MicRecognition | None = None
        self._streaming_to: Satellite | None = None
        """The satellite client a command streams to."""
        self._streamed_s = 0.0
        self._wake_word = ""
        """The wake word that opened the command."""
        self._heard: Heard | None = None
        """The command's final transcript, once decoded."""
        self._spoke = False
        """Whether the command has had speech."""
        self._dropped = False
        """Whether the command's final was in a voice `local_speaker_only` does not name."""
        self._answers: set[asyncio.Task[None]] = set()
        self.commands = 0

    @property
    def state(self) -> str:
        if self.listener_state is ListenerState.IN_COMMAND:
            return f"{self.listener_state.value} ({self._wake_word})"
        return self.listener_state.value

    async def open(self) -> None:
        await self._listen_for_wake()

    async def hear(self, block: np.ndarray) -> None:
        if self._streaming_to is not None:
            await self._stream_command(block)
        elif self._command is not None:
            await self._hear_command(block)
        elif self._wake is not None:
            await self._hear_wake(block)

    async def close(self) -> None:
        if self._streaming_to is not None:
            await self._end_streaming(listen_again=False)
        if self._command is not None:
            await self._end_command(listen_again=False)
        await self._stop_wake()

    async def stop(self) -> None:
        """The daemon stops: hooks still running are cancelled."""
        for task in self._answers:
            task.cancel()
        await asyncio.gather(*self._answers, return_exceptions=True)

    # -- wake words ----------------------------------------------------------------------------

    async def _listen_for_wake(self) -> None:
        wake = self._audio.ctx.wake
        assert wake is not None  # LocalAudio chose the wake words from it
        self._wake = await self._wake_stack.enter_async_context(wake.session(self._wake_words, local=True))

    async def _stop_wake(self) -> None:
        self._wake = None
        await self._wake_stack.aclose()

    async def _hear_wake(self, block: np.ndarray) -> None:
        assert self._wake is not None
        found = await self._wake.feed(float_to_pcm16(block))
        if not found:
            return
        detection = found[0]
        # What followed the phrase in this block belongs to the command.
        after = min(len(block), (self._wake.audio_ms - detection.timestamp_ms) * MODEL_RATE // 1000)
        await self._stop_wake()
        self._audio.wake_heard(detection)
        satellite = self._audio.satellite
        if satellite is not None and satellite.running:
            await self._start_streaming(detection.name, satellite)
            if after > 0:
                await self._stream_command(block[len(block) - after:])
            return
        await self._start_command(detection.name)
        if after > 0:
            await self._hear_command(block[len(block) - after:])

    # -- commands to a satellite client --------------------------------------------------------

    async def _start_streaming(self, wake_word: str, satellite: Satellite) -> None:
        _LOGGER.info("Streaming the command after %s to the satellite client", wake_word)
        self.listener_state = ListenerState.STREAMING
        self._wake_word, self._streaming_to, self._streamed_s = wake_word, satellite, 0.0
        await satellite.open_command(wake_word)

    async def _stream_command(self, block: np.ndarray) -> None:
        satellite = self._streaming_to
        assert satellite is not None
        wanted = await satellite.command_audio(float_to_pcm16(block))
        self._streamed_s += len(block) / MODEL_RATE
        if not wanted or self._streamed_s >= COMMAND_MAX_S:
            await self._end_streaming()

    async def _end_streaming(self, listen_again: bool = True) -> None:
        satellite, self._streaming_to = self._streaming_to, None
        assert satellite is not None
        await satellite.close_command()
        self.commands += 1
        self.listener_state = ListenerState.LISTENING_FOR_WAKE
        if listen_again:
            await self._listen_for_wake()

    # -- commands ------------------------------------------------------------------------------

    async def _start_command(self, wake_word: str) -> None:
        asr = self._audio.ctx.asr
        assert asr is not None  # the microphone loop runs only with ASR on
        self.listener_state = ListenerState.IN_COMMAND
        self._wake_word, self._heard, self._spoke, self._dropped = wake_word, None, False, False
        command = MicRecognition(asr, self._on_result)
        await command.open()
        self._command = command

    def _on_result(self, result: Result, clock: Clock) -> None:
        """The command's results, published up to its first final (which ends it)."""
        if self._heard is not None or self._dropped or (result.is_final and not result.transcript.strip()):
            return
        if result.is_final and not self._voice_allowed(result):
            self._dropped = True
            return
        heard = self._audio.publish(result, clock, self._wake_word)
        if result.is_final:
            self._heard = heard

    def _voice_allowed(self, result: Result) -> bool:
        """Whether a command's final is in a voice `local_speaker_only` names (any, if it is
        empty); one that is not is logged in one line."""
        only = self._audio.ctx.settings.local_speaker_only
        speaker = common.speaker_of(result)
        if not only or speaker in only:
            return True
        _LOGGER.info("Dropped a command after %s from %s, not in local_speaker_only: %s", self._wake_word,
                     speaker or "an unlabelled voice", result.transcript)
        return False

    async def _hear_command(self, block: np.ndarray) -> None:
        command = self._command
        assert command is not None
        await command.feed(block, self._audio.wants_interims)
        self._spoke = self._spoke or command.in_speech
        silent_too_long = not self._spoke and command.seconds >= SILENCE_WAIT_S
        if self._heard is not None or self._dropped or silent_too_long or command.seconds >= COMMAND_MAX_S:
            await self._end_command()

    async def _end_command(self, listen_again: bool = True) -> None:
        """Close the command's recognition (a final still pending comes out), hand the final to
        the hook, and listen for wake words again."""
        command, self._command = self._command, None
        assert command is not None
        await command.close()
        heard = self._heard
        if heard is None and not self._dropped:  # a dropped command was logged as it was dropped
            _LOGGER.info("Nothing said after wake word %s; listening for wake words again", self._wake_word)
        elif heard is not None:
            self.commands += 1
            if self._hook is not None:
                task = asyncio.get_running_loop().create_task(self._answer(heard), name="edged-command-hook")
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)
        self.listener_state = ListenerState.LISTENING_FOR_WAKE
        if listen_again:
            await self._listen_for_wake()

    async def _answer(self, heard: Heard) -> None:
        """Run the hook on a command; speak its answer (wake words still heard meanwhile)."""
        from edged.doors.local.audio import transcript_record

        assert self._hook is not None
        text = await self._hook.ask(transcript_record(heard))
        if text is None:
            return
        if not self._audio.speaker_enabled:
            _LOGGER.warning("The command hook answered %r; set local_speaker_enabled=true to hear it", text[:80])
            return
        if self.listener_state is ListenerState.LISTENING_FOR_WAKE:
            self.listener_state = ListenerState.SPEAKING
        try:
            await self._audio.speak(SpeakRequest(text=text, wait=True))
        except EdgedError as exc:
            _LOGGER.warning("The command hook's answer cannot be spoken: %s", exc)
        finally:
            if self.listener_state is ListenerState.SPEAKING:
                self.listener_state = ListenerState.LISTENING_FOR_WAKE
