"""Riva's realtime API (nvidia-riva-client's `riva.client.realtime`) over the speech services.

`POST /v1/realtime/transcription_sessions` and `/synthesis_sessions` hand out the default session
config (and a short-lived client secret when `api_key` is set); `GET /v1/audio/list_voices`;
`/v1/realtime?intent=transcription` and `?intent=synthesize` are the WebSockets. Events are only
translated: recognition goes through `ctx.asr.session(...)`, synthesis through `ctx.tts`. A
transcription client whose first event is OpenAI's `session.update`, or that sends an OpenAI SDK's
`X-Stainless-Lang` or an `OpenAI-Beta` header, is served OpenAI's dialect (`realtime_openai.py`)
instead, greeted with its `session.created` rather than Riva's `conversation.created`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any

from aiohttp import WSCloseCode, web

from edged.doors import common
from edged.doors.web.auth import Auth
from edged.doors.web.errors import BadInput, error_event, error_response
from edged.doors.web.realtime_events import HeldAudio, b64_field, client_events, new_id, starting_with
from edged.doors.web.realtime_openai import OpenAiTranscription, Protocol, announced
from edged.errors import IdleTimeoutError
from edged.service.admission import Slot, Waiting
from edged.service.asr import (
    AsrSession,
    RecognitionRequest,
    Transcript,
)
from edged.service.context import ServiceContext
from edged.service.tts import SpeechRequest

_LOGGER = logging.getLogger(__name__)

_PCM_FORMATS = ("pcm16", "pcm", "linear_pcm", "")


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise BadInput(f"session.{name} must be an object.")
    return value


def transcription_defaults(ctx: ServiceContext) -> dict[str, Any]:
    """The default transcription session, as POST /v1/realtime/transcription_sessions gives it."""
    model, language = "", "en-US"
    if ctx.asr is not None:
        models = ctx.asr.models()
        if models:
            model, manifest = next(iter(models.items()))
            language = manifest.language_code
    return {
        "object": "realtime.transcription_session", "modalities": ["text"],
        "input_audio_format": "pcm16",
        "input_audio_transcription": {"language": language, "model": model, "prompt": ""},
        "input_audio_params": {"sample_rate_hz": 16000, "num_channels": 1},
        "recognition_config": {"max_alternatives": 1, "enable_automatic_punctuation": True,
                               "enable_word_time_offsets": False, "enable_profanity_filter": False,
                               "enable_verbatim_transcripts": False, "interim_results": True},
        "word_boosting": {"enable_word_boosting": False, "word_boosting_list": []},
        "endpointing_config": {},
    }


def synthesis_defaults(ctx: ServiceContext) -> dict[str, Any]:
    """The default synthesis session, as POST /v1/realtime/synthesis_sessions gives it."""
    voice, language, rate = "", "en-US", 22050
    if ctx.tts is not None and ctx.tts.voices():
        info = ctx.tts.voices()[0]
        voice, language, rate = (info.names or [""])[0], info.language_code, info.sample_rate
    return {
        "object": "realtime.synthesis_session", "modalities": ["audio"],
        "input_text_synthesis": {"language_code": language, "voice_name": voice},
        "output_audio_params": {"sample_rate_hz": rate, "audio_format": "pcm16"},
        "custom_dictionary": "",
    }


def recognition_request(session: dict[str, Any]) -> tuple[RecognitionRequest, bool]:
    """The service request of a transcription session config, and whether interims are wanted."""
    fmt = str(session.get("input_audio_format", "pcm16")).lower()
    if fmt not in (*_PCM_FORMATS, "none"):
        raise BadInput(f"input_audio_format {fmt!r} is not supported; use pcm16 (raw 16-bit PCM) or "
                       "none (a WAV or FLAC file with its header).")
    transcription = _section(session, "input_audio_transcription")
    params = _section(session, "input_audio_params")
    rec = _section(session, "recognition_config")
    boosting = _section(session, "word_boosting")
    endpointing = _section(session, "endpointing_config")
    diarization = _section(session, "speaker_diarization")
    try:
        translate = common.translates(common.custom_configuration(rec.get("custom_configuration")))
    except ValueError as exc:
        raise BadInput(f"recognition_config.{exc}.") from None
    try:
        boost = tuple((str(p), float(entry.get("boost", 1.0)))
                      for entry in boosting.get("word_boosting_list", []) or []
                      for p in entry.get("phrases", []) if str(p).strip()) \
            if boosting.get("enable_word_boosting", bool(boosting.get("word_boosting_list"))) else ()
        ends = common.endpointing(endpointing)
        raw = fmt != "none"
        request = RecognitionRequest(
            model=str(transcription.get("model") or ""),
            language_code=str(transcription.get("language") or ""),
            encoding="LINEAR_PCM" if raw else "",
            sample_rate=int(params.get("sample_rate_hz") or 16000) if raw else 0,
            channels=int(params.get("num_channels") or 1),
            interim_results=bool(rec.get("interim_results", True)),
            punctuation=bool(rec.get("enable_automatic_punctuation", True)),
            word_times=bool(rec.get("enable_word_time_offsets", False)),
            profanity_filter=bool(rec.get("enable_profanity_filter", False)),
            max_alternatives=int(rec.get("max_alternatives") or 1),
            boost=boost, endpointing=ends,
            diarization=bool(diarization.get("enable_speaker_diarization", False)),
            max_speakers=int(diarization.get("max_speaker_count") or 0), translate=translate)
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadInput(f"The transcription session config has a value of the wrong type: {exc}.") from None
    return request, request.interim_results


def appended_text(pieces: list[str]) -> str:
    """The text of `input_text.append` pieces, as sent (a model's tokens carry their own spaces),
    but with a space after a sentence's end that runs into the next one's capital: NVIDIA's
    `realtime_tts_client.py --input-file` appends each line stripped, "there." then "This"."""
    out = ""
    for piece in pieces:
        if out[-1:] in (".", "!", "?") and piece[:1].isupper():
            out += " "
        out += piece
    return out


class RealtimeApi:
    """The realtime routes of the HTTP door."""

    def __init__(self, ctx: ServiceContext, auth: Auth, max_message_bytes: int, idle_timeout_s: float) -> None:
        self._ctx = ctx
        self._auth = auth
        self._max = max_message_bytes
        self._idle_s = idle_timeout_s
        self._open: set[web.WebSocketResponse] = set()

    async def close_all(self, _app: web.Application | None = None) -> None:
        """Close every open conversation with 1001 (going away): the server is stopping."""
        for ws in list(self._open):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"The server is shutting down.")

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes of this API."""
        return [web.post("/v1/realtime/transcription_sessions", self.transcription_session),
                web.post("/v1/realtime/synthesis_sessions", self.synthesis_session),
                web.get("/v1/audio/list_voices", self.list_voices),
                web.get("/v1/realtime", self.websocket)]

    def _minted(self, defaults: dict[str, Any], request: web.Request) -> web.Response:
        try:
            self._auth.check_http(request)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Realtime session")
        session = {"id": new_id("sess"), **defaults}
        secret = self._auth.mint()
        if secret is not None:
            session["client_secret"] = secret
        return web.json_response(session)

    async def transcription_session(self, request: web.Request) -> web.Response:
        """POST /v1/realtime/transcription_sessions: the default transcription session."""
        return self._minted(transcription_defaults(self._ctx), request)

    async def synthesis_session(self, request: web.Request) -> web.Response:
        """POST /v1/realtime/synthesis_sessions: the default synthesis session."""
        return self._minted(synthesis_defaults(self._ctx), request)

    async def list_voices(self, request: web.Request) -> web.Response:
        """GET /v1/audio/list_voices: the voices by language, as Riva's NIM lists them."""
        try:
            self._auth.check_http(request)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Voice list")
        out: dict[str, dict[str, list[str]]] = {}
        for info in self._ctx.tts.voices() if self._ctx.tts is not None else []:
            out.setdefault(info.language_code, {"voices": []})["voices"].extend(info.names)
        return web.json_response(out)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/realtime?intent=transcription|synthesize: one realtime conversation."""
        intent = request.query.get("intent", "transcription")
        try:
            self._auth.check_ws(request)
            if intent not in ("transcription", "synthesize"):
                raise BadInput(f"Unknown intent {intent!r}; use intent=transcription or intent=synthesize.")
            if (self._ctx.asr if intent == "transcription" else self._ctx.tts) is None:
                raise BadInput(f"The {'ASR' if intent == 'transcription' else 'TTS'} service is turned off "
                               "on this server (config.sh).")
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Realtime connection")
        ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=self._max, heartbeat=30)
        await ws.prepare(request)
        self._open.add(ws)
        openai = announced(request.headers) if intent == "transcription" else None
        if openai is None:  # Riva's greeting; OpenAI's clients are greeted with their session.created
            await ws.send_json({"type": "conversation.created", "event_id": new_id("event"),
                                "conversation": {"id": new_id("conv"), "object": "realtime.conversation"}})
        try:
            if intent == "transcription":
                await self._transcription(ws, openai)
            else:
                await _Synthesis(self._ctx, ws).run()
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py); the socket closes after
            event = error_event(exc, "Realtime " + intent)
            if not ws.closed:
                try:
                    await ws.send_json(event)
                except ConnectionError:
                    pass  # the client went away first
        finally:
            self._open.discard(ws)
            await ws.close()
        return ws

    async def _transcription(self, ws: web.WebSocketResponse, openai: Protocol | None) -> None:
        """Riva's or OpenAI's transcription conversation: `openai`, the protocol the handshake
        named (`announced`), or else the client's first event tells: OpenAI's GA clients start with
        `session.update`, Riva's with `transcription_session.update` (or straight away with audio,
        which Riva's defaults describe)."""
        events = client_events(ws, self._idle_s)
        if openai is not None:
            await OpenAiTranscription(self._ctx, ws, self._max, openai).run(events)
            return
        first = await anext(events, None)
        if first is None:
            return
        served = starting_with(first, events)
        if first["type"] == Protocol.GA.update:
            await OpenAiTranscription(self._ctx, ws, self._max).run(served)
        else:
            await _Transcription(self._ctx, ws, self._max).run(served)


class _Transcription:
    """One transcription conversation: events in, the session's transcripts out."""

    def __init__(self, ctx: ServiceContext, ws: web.WebSocketResponse, max_buffer: int) -> None:
        assert ctx.asr is not None
        self._ctx = ctx
        self._asr = ctx.asr
        self._ws = ws
        self._config = transcription_defaults(ctx)
        self._stack = AsyncExitStack()
        self._session: AsrSession | None = None
        self._request: RecognitionRequest | None = None
        self._held = HeldAudio(max_buffer)
        """The audio between commits, at most max_message_mb."""
        self._eou = False
        self._item = new_id("item")
        self._fed = False
        self._finals: list[str] = []
        """The conversation's final transcripts so far, in order (the last event carries them all)."""
        self._sender: asyncio.Task[None] | None = None

    async def _open(self) -> AsrSession:
        if self._session is None:
            request, _ = recognition_request(self._config)
            self._session = await self._stack.enter_async_context(self._asr.session(request))
            self._request = request
            self._sender = asyncio.get_running_loop().create_task(self._forward(self._session))
            self._stack.callback(self._sender.cancel)
        return self._session

    async def _forward(self, session: AsrSession) -> None:
        """Send each result the moment it is decoded; after the last, one more completed event
        marked is_last_result with the whole conversation's transcript, as Riva sends it: its
        clients (`realtime_asr_client.py`) print and save the last completed event's text."""
        async for t in session.results():
            await self._send(t)
        await self._ws.send_json({
            "type": "conversation.item.input_audio_transcription.completed", "event_id": new_id("event"),
            "item_id": self._item, "content_index": 0, "transcript": " ".join(self._finals),
            "audio_processed": session.seconds, "is_last_result": True})

    async def run(self, events: AsyncIterator[dict[str, Any]]) -> None:
        """Serve `events` until input_audio_buffer.done or the client leaves."""
        try:
            async for event in events:
                kind = event["type"]
                try:
                    if kind == "transcription_session.update":
                        await self._update(event)
                    elif kind == "input_audio_buffer.append":
                        self._held.append(b64_field(event, "audio"))
                        runtime = event.get("runtime_config")
                        self._eou = self._eou or (isinstance(runtime, dict) and common.force_eou(runtime))
                    elif kind == "input_audio_buffer.commit":
                        await self._commit()
                        await self._ws.send_json({"type": "input_audio_buffer.committed",
                                                  "event_id": new_id("event"), "item_id": self._item})
                    elif kind == "input_audio_buffer.clear":
                        self._held.clear()
                        self._eou = False
                        await self._ws.send_json({"type": "input_audio_buffer.cleared", "event_id": new_id("event")})
                    elif kind == "input_audio_buffer.done":
                        await self._commit()
                        session = await self._open()
                        await session.finish()
                        assert self._sender is not None
                        await self._sender
                        return
                    else:
                        raise BadInput(f"Unknown event type {kind!r} for intent=transcription.")
                except BadInput as exc:
                    await self._ws.send_json(error_event(exc, "Realtime transcription"))
        finally:
            await self._stack.aclose()  # the session's stream slot

    async def _update(self, event: dict[str, Any]) -> None:
        session = event.get("session") or {}
        if not isinstance(session, dict):
            raise BadInput("transcription_session.update needs a `session` object.")
        if self._fed:
            raise BadInput("The session config cannot change once audio was sent; open a new connection.")
        config = {**self._config, **session}
        recognition_request(config)  # checked before it is kept
        self._config = config
        if self._session is not None:  # made with the old config: give its slot back first
            await self._stack.aclose()
            self._session = None
        await self._open()
        await self._ws.send_json({"type": "transcription_session.updated", "event_id": new_id("event"),
                                  "session": {k: v for k, v in self._config.items() if k != "client_secret"}})

    async def _commit(self) -> None:
        audio, eou = self._held.take(), self._eou
        self._eou = False
        if not audio and not eou:
            return
        session = await self._open()
        self._fed = True
        await session.feed(audio, end_utterance=eou)

    async def _send(self, t: Transcript) -> None:
        result = t.result
        if not result.is_final:
            await self._ws.send_json({
                "type": "conversation.item.input_audio_transcription.delta", "event_id": new_id("event"),
                "item_id": self._item, "content_index": t.channel, "delta": result.transcript,
                "stability": result.stability})
            return
        if result.transcript.strip():
            self._finals.append(result.transcript.strip())
        await self._ws.send_json(self._completed(t))
        self._item = new_id("item")

    def _completed(self, t: Transcript) -> dict[str, Any]:
        result = t.result
        event: dict[str, Any] = {
            "type": "conversation.item.input_audio_transcription.completed", "event_id": new_id("event"),
            "item_id": self._item, "content_index": t.channel, "transcript": result.transcript,
            "confidence": result.confidence, "language_code": result.language_code,
            "audio_processed": result.audio_processed, "is_last_result": False,
            "alternatives": [{"transcript": a.transcript, "confidence": a.confidence} for a in result.alternatives]}
        if result.speaker:  # the session asked for speaker_diarization
            event["speaker"] = common.speaker_of(result)
            event["speaker_tag"] = result.speaker
        if self._request is not None and self._request.word_times:
            event["words_info"] = {"words": [
                {"word": w.word, "start_time": w.start_ms, "end_time": w.end_ms,
                 "confidence": w.confidence, "speaker_tag": w.speaker} for w in result.words]}
        return event


class _Synthesis:
    """One synthesis conversation: text in, speech out as it is made (one text at a time, in order)."""

    def __init__(self, ctx: ServiceContext, ws: web.WebSocketResponse) -> None:
        assert ctx.tts is not None
        self._tts = ctx.tts
        self._ws = ws
        self._config = synthesis_defaults(ctx)
        self._text: list[str] = []
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._slot: Slot | None = None
        """The session's admission slot: it ends a session whose client keeps it waiting."""
        self._speaking = False

    async def run(self) -> None:
        """Serve events until input_text.done has been spoken or the client leaves; past
        tts_stream_idle_timeout_s with nothing to say and no event, or with audio the client does
        not read, an error event ends the session."""
        async with self._tts.session() as slot:
            self._slot = slot
            slot.on_idle = self._tell_idle
            self._client_turn()
            speaker = asyncio.get_running_loop().create_task(self._speak())
            try:
                async for event in client_events(self._ws):
                    if not self._speaking:
                        self._client_turn()  # the client's clock starts again from its event
                    kind = event["type"]
                    try:
                        if kind == "synthesize_session.update":
                            await self._update(event)
                        elif kind == "input_text.append":
                            text = event.get("text", "")
                            if not isinstance(text, str):
                                raise BadInput("input_text.append.text must be a string.")
                            self._text.append(text)
                        elif kind == "input_text.commit":
                            self._flush()
                        elif kind == "input_text.done":
                            self._flush()
                            self._queue.put_nowait(None)
                            await speaker  # everything committed is spoken, then the socket closes
                            return
                        else:
                            raise BadInput(f"Unknown event type {kind!r} for intent=synthesize.")
                    except BadInput as exc:
                        await self._ws.send_json(error_event(exc, "Realtime synthesis"))
            finally:
                speaker.cancel()  # the client left: stop synthesising for it, and free the slot once stopped
                await asyncio.wait({speaker})

    def _client_turn(self) -> None:
        """The server has nothing to say until the client sends more: its clock runs from now."""
        if self._slot is not None:
            self._slot.stop_waiting(Waiting.SEND)
            self._slot.start_waiting(Waiting.SEND)

    def _tell_idle(self, error: IdleTimeoutError) -> None:
        """The slot found the client idle: tell it (within the slot's grace; a client that reads
        nothing is cut off by the slot)."""
        async def tell() -> None:
            with contextlib.suppress(Exception):
                await self._ws.send_json(error_event(error, "Realtime synthesis"))
                await self._ws.close()

        asyncio.get_running_loop().create_task(tell(), name="edged-realtime-idle")

    async def _send(self, event: dict[str, Any]) -> None:
        """One event to the client, which must read it within the idle timeout."""
        if self._slot is None:
            await self._ws.send_json(event)
            return
        with self._slot.waiting(Waiting.READ):
            await self._ws.send_json(event)

    def _flush(self) -> None:
        text = appended_text(self._text).strip()
        self._text = []
        if text:
            self._queue.put_nowait(text)

    async def _update(self, event: dict[str, Any]) -> None:
        session = event.get("session") or {}
        if not isinstance(session, dict):
            raise BadInput("synthesize_session.update needs a `session` object.")
        config = dict(self._config)
        for name in ("input_text_synthesis", "output_audio_params"):
            config[name] = {**_section(config, name), **_section(session, name)}
        if "custom_dictionary" in session:
            config["custom_dictionary"] = str(session["custom_dictionary"] or "")
        fmt = str(config["output_audio_params"].get("audio_format", "pcm16")).lower()
        if fmt not in _PCM_FORMATS:
            raise BadInput(f"output_audio_params.audio_format {fmt!r} is not supported; use pcm16.")
        await self._tts.prepare(self._speech("x", config))  # the voice exists and loads
        self._config = config
        await self._ws.send_json({"type": "synthesize_session.updated", "event_id": new_id("event"),
                                  "session": config})

    @staticmethod
    def _speech(text: str, config: dict[str, Any]) -> SpeechRequest:
        voice = config["input_text_synthesis"]
        try:
            rate = int(config["output_audio_params"].get("sample_rate_hz") or 0)
        except (TypeError, ValueError):
            raise BadInput("output_audio_params.sample_rate_hz must be a number.") from None
        return SpeechRequest(text=text, voice=str(voice.get("voice_name") or ""),
                             language_code=str(voice.get("language_code") or ""), sample_rate=rate,
                             custom_dictionary=str(config.get("custom_dictionary") or ""))

    async def _speak(self) -> None:
        """Synthesise the committed texts in turn; the last completion says is_last_result."""
        while True:
            if self._queue.empty():
                self._speaking = False
                self._client_turn()
            text = await self._queue.get()
            self._speaking = True
            if self._slot is not None:
                self._slot.stop_waiting(Waiting.SEND)
            if text is None:
                await self._send({"type": "conversation.item.speech.completed", "event_id": new_id("event"),
                                  "item_id": new_id("item"), "is_last_result": True})
                return
            item = new_id("item")
            try:
                synthesis = await self._tts.prepare(self._speech(text, self._config))
                samples = 0
                async with aclosing(self._tts.chunks(synthesis)) as chunks:
                    async for chunk in chunks:
                        samples += len(chunk.pcm) // 2
                        await self._send({
                            "type": "conversation.item.speech.data", "event_id": new_id("event"), "item_id": item,
                            "audio": base64.b64encode(chunk.pcm).decode("ascii")})
                await self._send({
                    "type": "conversation.item.speech.completed", "event_id": new_id("event"), "item_id": item,
                    "is_last_result": False, "synthesis_metadata": {
                        "text": text, "sample_rate_hz": synthesis.sample_rate,
                        "audio_duration_s": samples / synthesis.sample_rate}})
            except Exception as exc:  # noqa: BLE001 - one error map (errors.py); the next text goes on
                await self._ws.send_json(error_event(exc, "Realtime synthesis"))
