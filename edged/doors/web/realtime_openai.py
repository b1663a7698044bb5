"""OpenAI's Realtime API for transcription (the GA protocol the `openai` package's
`client.realtime.connect(extra_query={"intent": "transcription"})` speaks, and the beta one of
`client.beta.realtime.connect`, marked by its `OpenAI-Beta` header) over the ASR service.

The client configures its session with `session.update` (`session.type` "transcription"), appends
base64 audio (pcm16 at 24 kHz by default; G.711 pcmu/pcma at 8 kHz) and is told
`input_audio_buffer.speech_started`, `.speech_stopped`, `.committed`, then
`conversation.item.input_audio_transcription.delta` and `.completed` per utterance.

Turn detection: `server_vad` (the default) and `semantic_vad` are edged's endpointing, fed as the
audio arrives (`silence_duration_ms` is its stop history); `null` holds the audio until the
client's `input_audio_buffer.commit`, which ends the utterance.

The connection opens with OpenAI's `session.created` (beta: `transcription_session.created`): the
session as it starts, its id the one every `*.updated` shows.

The beta protocol differs only in its session: `transcription_session.update` with a flat session
(`input_audio_format`, `input_audio_transcription`, `turn_detection`), answered by
`transcription_session.updated`; it is read in the GA shape (`from_beta`) and shown back flat
(`as_beta`).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from edged.doors.web.errors import BadInput, error_event
from edged.doors.web.realtime_events import HeldAudio, b64_field, new_id
from edged.errors import RequestError
from edged.service.asr import AsrSession, RecognitionRequest, Transcript
from edged.service.context import ServiceContext

PCM_RATE = 24000
"""OpenAI's pcm16 rate (`audio/pcm`); the service resamples to the model's."""

_G711 = {"audio/pcmu": "MULAW", "audio/pcma": "ALAW"}
"""OpenAI's G.711 formats (8 kHz): edged's encoding names."""


class Protocol(enum.Enum):
    """Which of OpenAI's realtime protocols the client speaks: the session events' names."""

    GA = "session"
    BETA = "transcription_session"

    @property
    def update(self) -> str:
        """The client's session event."""
        return f"{self.value}.update"


def announced(headers: Mapping[str, str]) -> Protocol | None:
    """The OpenAI protocol a client's handshake names, so its `*.created` can come first: the beta
    by its `OpenAI-Beta` header, the GA one by the `X-Stainless-Lang` header OpenAI's SDKs send.
    None: only the client's first event can tell (Riva's clients wait for `conversation.created`)."""
    if "OpenAI-Beta" in headers:
        return Protocol.BETA
    return Protocol.GA if "X-Stainless-Lang" in headers else None


_BETA_FORMATS: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": PCM_RATE}, "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"}}
"""The beta protocol's input_audio_format: the GA format."""

_BETA_FIELDS = {"input_audio_transcription": "transcription", "turn_detection": "turn_detection",
                "input_audio_noise_reduction": "noise_reduction"}
"""The beta session's fields: their GA names under session.audio.input."""


def from_beta(session: dict[str, Any]) -> dict[str, Any]:
    """A beta transcription_session.update's session in the GA shape (the fields it names only)."""
    audio_in = {ga: session[beta] for beta, ga in _BETA_FIELDS.items() if beta in session}
    if "input_audio_format" in session:
        fmt = session["input_audio_format"]
        if fmt not in _BETA_FORMATS:
            raise BadInput(f"session.input_audio_format {fmt!r} is not supported; use pcm16 (24 kHz), "
                           "g711_ulaw or g711_alaw.")
        audio_in["format"] = _BETA_FORMATS[fmt]
    out: dict[str, Any] = {"audio": {"input": audio_in}}
    if "include" in session:
        out["include"] = session["include"]
    return out


def as_beta(config: dict[str, Any]) -> dict[str, Any]:
    """A GA session as the beta protocol shows it."""
    audio_in = config["audio"]["input"]
    fmt = next((name for name, f in _BETA_FORMATS.items() if f["type"] == audio_in["format"].get("type")), "pcm16")
    return {"object": "realtime.transcription_session", "id": config["id"], "modalities": ["text"],
            "input_audio_format": fmt, "include": config.get("include") or [],
            **{beta: audio_in.get(ga) for beta, ga in _BETA_FIELDS.items()}}


class Turns(enum.Enum):
    """Who ends an utterance."""

    SERVER = "server"
    """edged's endpointing, as OpenAI's server_vad and semantic_vad do."""
    CLIENT = "client"
    """The client's commit (turn_detection null)."""


def default_session(ctx: ServiceContext) -> dict[str, Any]:
    """The session a connection starts with, in OpenAI's shape (`session.updated` shows it)."""
    language = ""
    if ctx.asr is not None and ctx.asr.models():
        language = next(iter(ctx.asr.models().values())).language_code
    return {
        "type": "transcription", "object": "realtime.transcription_session", "id": new_id("sess"),
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": PCM_RATE},
            "transcription": {"model": "", "language": language, "prompt": ""},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 0},
            "noise_reduction": None}},
        "include": []}


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s fields, objects merged field by field (null replaces), as
    session.update changes only what it names."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def _object(config: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = config.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{where}.{name} must be an object.")
    return value


def recognition_request(session: dict[str, Any], models: set[str]) -> tuple[RecognitionRequest, Turns]:
    """The service request of an OpenAI transcription session, and who ends its utterances.
    A model name edged does not deploy (OpenAI's `gpt-4o-transcribe`) means the language's model."""
    if session.get("type", "transcription") != "transcription":
        raise BadInput(f"session.type {session.get('type')!r} is not served: this server transcribes "
                       "(session.type \"transcription\"); for speech use POST /v1/audio/speech.")
    audio_in = _object(_object(session, "audio", "session"), "input", "session.audio")
    fmt = _object(audio_in, "format", "session.audio.input")
    kind = fmt.get("type") or "audio/pcm"
    transcription = _object(audio_in, "transcription", "session.audio.input")
    turns = audio_in.get("turn_detection", {})
    if turns is not None and not isinstance(turns, dict):
        raise BadInput("session.audio.input.turn_detection must be an object or null.")
    try:
        if kind == "audio/pcm":
            encoding, rate = "LINEAR_PCM", int(fmt.get("rate") or PCM_RATE)
            if not 8000 <= rate <= 48000:
                raise BadInput(f"session.audio.input.format.rate {rate} is not served; use 24000 (8000 to 48000).")
        elif kind in _G711:
            encoding, rate = _G711[kind], 8000
        else:
            raise BadInput(f"session.audio.input.format.type {kind!r} is not supported; use audio/pcm "
                           "(pcm16, 24 kHz), audio/pcmu or audio/pcma.")
        ends: tuple[tuple[str, float], ...] = ()
        if turns is not None:
            if turns.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
                raise BadInput(f"turn_detection.type {turns.get('type')!r} is not supported; use server_vad, "
                               "semantic_vad or null.")
            silence_ms = float(turns.get("silence_duration_ms") or 0)
            ends = (("stop_history_ms", silence_ms),) if silence_ms > 0 else ()
        model = str(transcription.get("model") or "")
        request = RecognitionRequest(
            model=model if model in models else "", language_code=str(transcription.get("language") or ""),
            encoding=encoding, sample_rate=rate, channels=1, interim_results=True, punctuation=True,
            endpointing=ends)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"The session has a value of the wrong type: {exc}.") from None
    return request, Turns.CLIENT if turns is None else Turns.SERVER


class OpenAiTranscription:
    """One OpenAI transcription conversation: events in, utterances' transcripts out."""

    def __init__(self, ctx: ServiceContext, ws: web.WebSocketResponse, max_buffer: int,
                 protocol: Protocol = Protocol.GA) -> None:
        assert ctx.asr is not None
        self._protocol = protocol
        self._asr = ctx.asr
        self._ws = ws
        self._config = default_session(ctx)
        self._turns = Turns.SERVER
        self._held = HeldAudio(max_buffer)
        """The audio since the last commit (turn_detection null only), at most max_message_mb."""
        self._heard = False
        """Audio was accepted: the session's format and model are fixed."""
        self._stack = AsyncExitStack()
        self._session: AsrSession | None = None
        self._item = new_id("item")
        """The utterance now heard (its speech_started, deltas and completed carry this id)."""
        self._previous: str | None = None
        self._started = False
        """speech_started was sent for this item."""
        self._committed = False
        """input_audio_buffer.committed was sent for this item (a client's commit)."""
        self._said = ""
        """This item's text sent in deltas so far."""

    async def run(self, events: AsyncIterator[dict[str, Any]]) -> None:
        """Announce the session, then serve `events` until the client leaves (OpenAI's protocol
        has no end of audio)."""
        await self._send({"type": f"{self._protocol.value}.created", "session": self._shown()})
        try:
            async for event in events:
                try:
                    await self._handle(event)
                except (BadInput, RequestError) as exc:  # the client's mistake: the conversation goes on
                    await self._send(error_event(exc, "Realtime transcription (OpenAI)"))
        finally:
            await self._stack.aclose()  # the session's stream slot

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == self._protocol.update:
            await self._update(event)
        elif kind == "input_audio_buffer.append":
            audio = b64_field(event, "audio")
            if self._turns is Turns.CLIENT:
                self._held.append(audio)
                self._heard = True
                return
            self._heard = True
            session = await self._open()
            await session.feed(audio)
            if session.in_speech:
                await self._speech_started(session.seconds)
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            self._held.clear()
            await self._send({"type": "input_audio_buffer.cleared"})
        else:
            raise BadInput(f"Unknown event type {kind!r} for a transcription session; this server takes "
                           f"{self._protocol.update} and input_audio_buffer.append, commit and clear.")

    async def _update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            raise BadInput(f"{self._protocol.update} needs a `session` object.")
        if self._protocol is Protocol.BETA:
            update = from_beta(update)
        if self._heard:
            raise BadInput("The session cannot change once audio was sent; open a new connection.")
        config = merged(self._config, update)
        request, turns = recognition_request(config, set(self._asr.models()))
        self._asr.select(request.model, request.language_code)  # RequestError for a language not served
        self._config, self._turns = config, turns
        await self._send({"type": f"{self._protocol.value}.updated", "session": self._shown()})

    def _shown(self) -> dict[str, Any]:
        """The session as the client's protocol shows it."""
        return as_beta(self._config) if self._protocol is Protocol.BETA else self._config

    async def _open(self) -> AsrSession:
        if self._session is None:
            request, _ = recognition_request(self._config, set(self._asr.models()))
            session = await self._stack.enter_async_context(self._asr.session(request))
            sender = asyncio.get_running_loop().create_task(self._forward(session))
            self._stack.callback(sender.cancel)
            self._session = session
        return self._session

    async def _commit(self) -> None:
        """The client ends the utterance: what it holds (turn_detection null) or what was fed."""
        if self._turns is Turns.CLIENT and not len(self._held):
            raise BadInput("Nothing to commit: the audio buffer is empty (append audio first).")
        session = await self._open()
        await session.feed(self._held.take(), end_utterance=True)
        self._committed = True
        await self._send({"type": "input_audio_buffer.committed", "item_id": self._item,
                          "previous_item_id": self._previous})

    async def _speech_started(self, at_s: float) -> None:
        if self._started or self._turns is Turns.CLIENT:
            return
        self._started = True
        await self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": int(at_s * 1000),
                          "item_id": self._item})

    async def _forward(self, session: AsrSession) -> None:
        """Each result as OpenAI's events, the moment it is decoded (the first channel only)."""
        async for t in session.results():
            if t.channel == 0:
                await self._result(t)

    async def _result(self, t: Transcript) -> None:
        result = t.result
        text = result.transcript.strip()
        if not text:
            return
        await self._speech_started(result.start_s)
        if not result.is_final:
            if text.startswith(self._said) and text != self._said:  # only growth: deltas are appended
                delta, self._said = text[len(self._said):], text
                await self._send({"type": "conversation.item.input_audio_transcription.delta",
                                  "item_id": self._item, "content_index": 0, "delta": delta})
            return
        if not self._committed:
            if self._turns is Turns.SERVER:
                await self._send({"type": "input_audio_buffer.speech_stopped",
                                  "audio_end_ms": int(result.end_s * 1000), "item_id": self._item})
            await self._send({"type": "input_audio_buffer.committed", "item_id": self._item,
                              "previous_item_id": self._previous})
        await self._send({"type": "conversation.item.input_audio_transcription.completed",
                          "item_id": self._item, "content_index": 0, "transcript": text,
                          "usage": {"type": "duration", "seconds": round(result.end_s - result.start_s, 3)}})
        self._previous, self._item = self._item, new_id("item")
        self._started = self._committed = False
        self._said = ""

    async def _send(self, event: dict[str, Any]) -> None:
        await self._ws.send_json({"event_id": new_id("event"), **event})
