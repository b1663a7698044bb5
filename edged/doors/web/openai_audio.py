"""OpenAI's audio API over the speech services: `/v1/audio/transcriptions`, `/v1/audio/speech`,
`/v1/models`, so that the official `openai` package (`base_url=http://HOST:PORT/v1`) works.

Transcriptions take a WAV or FLAC upload (`response_format` json, text, srt, vtt or verbose_json
with segments and words; `stream=true` sends the finals as server-sent `transcript.text.delta`
events); speech is streamed as it is synthesised (wav, pcm, flac, opus; mp3 needs an encoder edged
does not ship under a permissive licence, so it is refused).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from aiohttp import web

from edged.doors import common
from edged.doors.web.auth import Auth
from edged.doors.web.errors import BadInput, NotJson, error_response, logged
from edged.pipelines.tts import AudioChunk
from edged.pipelines.tts.encode import OggOpusEncoder
from edged.service.asr import RecognitionRequest, Transcript
from edged.service.context import ServiceContext
from edged.service.tts import SpeechRequest, Synthesis, TtsService

_LOGGER = logging.getLogger(__name__)

TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SPEECH_FORMATS = ("wav", "pcm", "flac", "opus")
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage",
                           "shimmer", "verse"})
"""OpenAI's own voice names: they speak with the server's default voice."""
_STREAM_CHUNK = 32000
"""Bytes of an upload fed to a streaming session at a time (stream=true)."""


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def segments(transcripts: list[Transcript]) -> list[dict[str, Any]]:
    """verbose_json's segments: one per final."""
    out = []
    for i, t in enumerate(t for t in transcripts if t.result.is_final and t.result.transcript):
        r = t.result
        out.append({"id": i, "seek": 0, "start": round(r.start_s, 3), "end": round(r.end_s, 3),
                    "text": r.transcript, "tokens": [], "temperature": 0.0,
                    "avg_logprob": float(np.log(max(r.confidence, 1e-6))) if r.confidence else 0.0,
                    "compression_ratio": 1.0, "no_speech_prob": 0.0})
    return out


def subtitles(segs: list[dict[str, Any]], vtt: bool) -> str:
    """The segments as SRT or WebVTT."""
    sep = "." if vtt else ","
    cues = [(f"{s['id'] + 1}\n" if not vtt else "")
            + f"{_stamp(s['start'], sep)} --> {_stamp(s['end'], sep)}\n{s['text'].strip()}\n" for s in segs]
    return ("WEBVTT\n\n" if vtt else "") + "\n".join(cues)


def wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header of unknown length (streamed: sizes at their maximum, as OpenAI does)."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", 0xFFFFFFFF))


class OpenAiAudioApi:
    """The OpenAI-compatible routes of the HTTP door."""

    def __init__(self, ctx: ServiceContext, auth: Auth) -> None:
        self._ctx = ctx
        self._auth = auth

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes of this API."""
        return [web.post("/v1/audio/transcriptions", self.transcriptions),
                web.post("/v1/audio/speech", self.speech),
                web.get("/v1/models", self.models)]

    async def models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the deployed ASR models and voices."""
        try:
            self._auth.check_http(request)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Model list")
        names = list(self._ctx.asr.models()) if self._ctx.asr is not None else []
        names += [v.model for v in self._ctx.tts.voices()] if self._ctx.tts is not None else []
        return web.json_response({"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "edged"} for n in names]})

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/audio/transcriptions (multipart: file, model, language, response_format, ...)."""
        try:
            self._auth.check_http(request)
            asr = common.asr_service(self._ctx)
            if not request.content_type.startswith("multipart/"):
                raise BadInput("Send the audio as multipart/form-data with a `file` field.")
            form = await request.post()
            upload = form.get("file")
            if upload is None or not hasattr(upload, "file"):
                raise BadInput("The request has no `file` field with the audio.")
            audio = upload.file.read()
            fmt = str(form.get("response_format", "json"))
            if fmt not in TRANSCRIPT_FORMATS:
                raise BadInput(f"response_format {fmt!r} is not supported; use one of {', '.join(TRANSCRIPT_FORMATS)}.")
            granularities = {str(g) for g in form.getall("timestamp_granularities[]", [])}
            model = str(form.get("model", ""))
            wanted = RecognitionRequest(
                model=model if model in asr.models() else "",
                language_code=str(form.get("language", "")), word_times=True)
            if str(form.get("stream", "false")).lower() == "true":
                return await self._stream(request, wanted, audio)
            async with asr.session(wanted, offline=True) as session:
                transcripts = await session.recognize(audio)
                duration = session.seconds
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Transcription")
        finals = [t for t in transcripts if t.result.is_final and t.result.transcript]
        text = common.finals_text(transcripts)
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        segs = segments(finals)
        if fmt in ("srt", "vtt"):
            return web.Response(text=subtitles(segs, fmt == "vtt"), content_type="text/plain")
        if fmt == "json":
            return web.json_response({"text": text})
        body: dict[str, Any] = {"task": "transcribe", "language": finals[0].result.language_code if finals else "",
                                "duration": round(duration, 3), "text": text, "segments": segs}
        if "word" in granularities:
            body["words"] = [{"word": w.word, "start": w.start_ms / 1000, "end": w.end_ms / 1000}
                             for t in finals for w in t.result.words]
        if granularities and "segment" not in granularities:
            del body["segments"]
        return web.json_response(body)

    async def _stream(self, request: web.Request, wanted: RecognitionRequest, audio: bytes) -> web.StreamResponse:
        """stream=true: each final as a `transcript.text.delta` event, then `transcript.text.done`."""
        async with common.asr_service(self._ctx).session(wanted) as session:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            texts: list[str] = []

            async def feed_rest() -> None:
                for i in range(_STREAM_CHUNK, len(audio), _STREAM_CHUNK):
                    await session.feed(audio[i:i + _STREAM_CHUNK])
                await session.finish()

            await session.feed(audio[:_STREAM_CHUNK])  # errors here are still an HTTP status
            await response.prepare(request)
            try:
                session.feed_from(feed_rest())
                async for t in session.results():  # each final as soon as it is decoded
                    if t.result.is_final and t.result.transcript:
                        delta = (" " if texts else "") + t.result.transcript.strip()
                        texts.append(delta)
                        await response.write(b"data: " + json.dumps(
                            {"type": "transcript.text.delta", "delta": delta}).encode() + b"\n\n")
                await response.write(b"data: " + json.dumps(
                    {"type": "transcript.text.done", "text": "".join(texts)}).encode() + b"\n\n")
                await response.write_eof()
            except Exception as exc:  # noqa: BLE001 - the status is sent: an error event ends the stream
                _, name, message = logged(exc, "Transcription stream")
                with contextlib.suppress(ConnectionError):
                    await response.write(b"data: " + json.dumps(
                        {"type": "error", "error": {"type": name, "message": message}}).encode() + b"\n\n")
            return response

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/audio/speech (JSON: model, input, voice, response_format, speed), streamed."""
        try:
            self._auth.check_http(request)
            if request.content_type != "application/json":
                raise NotJson(f"/v1/audio/speech takes a JSON body (Content-Type: application/json), "
                              f"not {request.content_type!r}.")
            tts = common.tts_service(self._ctx)
            try:
                body = await request.json()
            except ValueError as exc:
                raise BadInput(f"The request body is not valid JSON: {exc}.") from None
            if not isinstance(body, dict):
                raise BadInput("The request body must be a JSON object.")
            text, voice = body.get("input", ""), str(body.get("voice", "") or "")
            if not isinstance(text, str) or not text.strip():
                raise BadInput("`input` must be the text to speak.")
            fmt = str(body.get("response_format", "wav")).lower()
            if fmt == "mp3" or fmt == "aac":
                raise BadInput(f"response_format {fmt} is not available: edged ships no {fmt} encoder under a "
                               f"permissive licence; use one of {', '.join(SPEECH_FORMATS)}.")
            if fmt not in SPEECH_FORMATS:
                raise BadInput(f"response_format {fmt!r} is not supported; use one of {', '.join(SPEECH_FORMATS)}.")
            try:
                speed = float(body.get("speed", 1.0))
            except (TypeError, ValueError):
                raise BadInput("`speed` must be a number.") from None
            model = str(body.get("model", "") or "")
            known = {v.model for v in tts.voices()}
            if voice.lower() in OPENAI_VOICES:
                voice = model if model in known else ""
            async with tts.session():
                synthesis = await tts.prepare(SpeechRequest(text=text, voice=voice, rate=speed,
                                                            sample_rate=24000 if fmt == "opus" else 0))
                return await self._speak(request, synthesis, fmt)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Speech")

    async def _speak(self, request: web.Request, synthesis: Synthesis, fmt: str) -> web.StreamResponse:
        """Stream the audio; a client that goes away or stops reading stops the synthesis."""
        tts = self._ctx.tts
        assert tts is not None
        rate = synthesis.sample_rate
        types = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "opus": "audio/ogg"}
        async with contextlib.aclosing(tts.chunks(synthesis)) as chunks:
            # Errors before the first audio are still an HTTP status; a request of only silence
            # so short that it rounds to nothing is an empty stream.
            first = await anext(chunks, None) or AudioChunk(b"", rate)
            response = web.StreamResponse(headers={"Content-Type": types[fmt]})
            await response.prepare(request)
            try:
                await _SpeechWriter(request, response, tts).write(first, chunks, fmt, rate)
            except Exception as exc:  # noqa: BLE001 - the status is sent: the stream can only end early
                logged(exc, "Speech stream")
                if request.transport is not None:
                    request.transport.close()  # what was sent is cut short: the client must see it end
        return response


class _SpeechWriter:
    """Writes one speech answer, each write within tts_stream_idle_timeout_s of the client reading."""

    def __init__(self, request: web.Request, response: web.StreamResponse, tts: TtsService) -> None:
        self._request = request
        self._response = response
        self._tts = tts

    async def _send(self, data: bytes) -> None:
        await self._tts.client_wait(self._response.write(data), "read the audio")

    async def write(self, first: AudioChunk, chunks: AsyncIterator[AudioChunk], fmt: str, rate: int) -> None:
        """The audio in its format, as it comes."""
        if fmt == "flac":  # libsndfile seeks back to finish a FLAC header: encoded whole
            pcm = [first.pcm]
            async for c in chunks:
                if self._request.transport is None or self._request.transport.is_closing():
                    raise ConnectionResetError("The client closed the connection.")  # nothing written to fail
                pcm.append(c.pcm)
            import soundfile

            out = io.BytesIO()
            soundfile.write(out, np.frombuffer(b"".join(pcm), dtype="<i2"), rate, format="FLAC")
            await self._send(out.getvalue())
        elif fmt == "opus":
            encoder = OggOpusEncoder(rate)
            await self._send(encoder.encode(first.pcm))
            async for c in chunks:
                await self._send(encoder.encode(c.pcm))
            await self._send(encoder.finish())
        else:
            await self._send((wav_header(rate) if fmt == "wav" else b"") + first.pcm)
            async for c in chunks:
                await self._send(c.pcm)
        await self._response.write_eof()
