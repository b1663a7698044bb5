"""OpenAI's audio API over the speech services: `/v1/audio/transcriptions`, `/v1/audio/speech`,
`/v1/audio/voices`, `/v1/models`, `/v1/audio/translations`, so that the official `openai`
package (`base_url=http://HOST:PORT/v1`) and the clients built on it work.

Transcriptions take an upload in WAV, FLAC, MP3, Ogg (Vorbis, Opus) or WebM (Opus), compressed
ones decoded within the request's limits (`response_format` json, text, srt, vtt or verbose_json
with segments and words, its segments with their `speaker` where a speaker model is deployed;
diarized_json as OpenAI's gpt-4o-transcribe-diarize gives it, which needs one; `stream=true` sends
the finals as server-sent `transcript.text.delta` events); speech is streamed as it is synthesised
(mp3, OpenAI's default, and opus through libsndfile; wav, pcm, flac), OpenAI's voice names mapped
to deployed voices (edged.doors.web.openai_voices). `aac` is refused: the libsndfile edged ships
has no AAC encoder.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from aiohttp import web

from edged.audio.compressed import Container, upload_container
from edged.doors import common
from edged.doors.web.auth import Auth
from edged.doors.web.errors import BadInput, NotJson, error_response, logged
from edged.doors.web.openai_voices import deployed_voices, is_openai_voice, openai_voice, voices_body
from edged.errors import UnknownVoiceError
from edged.pipelines.speaker.encoder import SpeakerEncoder
from edged.pipelines.speaker.enrolled import check_name, enrolment
from edged.pipelines.tts import AudioChunk
from edged.pipelines.tts.encode import Mp3Encoder, OggOpusEncoder, StreamEncoder
from edged.rmir.manifest import MULTILINGUAL
from edged.service.asr import RecognitionRequest, Transcript, asr_languages, translating_model
from edged.service.context import ServiceContext
from edged.service.tts import SpeechRequest, Synthesis, TtsService
from edged.service.uploads import upload_wav

_LOGGER = logging.getLogger(__name__)

TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
SPEECH_FORMATS = ("mp3", "opus", "wav", "pcm", "flac")
"""Speech's response_format values; the first is the default, as in OpenAI's API."""
STREAM_FORMATS = ("audio", "sse")
"""Speech's stream_format values: the audio itself, or server-sent `speech.audio.delta` events."""
_SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
_NOT_OFFERED = {"aac": "the libsndfile edged ships (in the soundfile wheel) has no AAC encoder"}
"""OpenAI's speech formats edged does not make, and why."""
_STREAM_CHUNK = 32000
"""Bytes of an upload fed to a streaming session at a time (stream=true)."""
MAX_KNOWN_SPEAKERS = 4
"""Most known_speaker_names[] a transcription may give (as OpenAI allows)."""
MIN_REFERENCE_S = 2.0
"""Speech a known speaker's reference clip needs (OpenAI asks for 2 to 10 s)."""


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def segments(transcripts: list[Transcript], speakers: bool = False) -> list[dict[str, Any]]:
    """verbose_json's segments: one per final (with its `speaker`, where diarized)."""
    out = []
    for i, t in enumerate(t for t in transcripts if t.result.is_final and t.result.transcript):
        r = t.result
        out.append({"id": i, "seek": 0, "start": round(r.start_s, 3), "end": round(r.end_s, 3),
                    "text": r.transcript, "tokens": [], "temperature": 0.0,
                    "avg_logprob": float(np.log(max(r.confidence, 1e-6))) if r.confidence else 0.0,
                    "compression_ratio": 1.0, "no_speech_prob": 0.0})
        if speakers:
            out[-1]["speaker"] = common.speaker_of(r)
    return out


def diarized_segments(finals: list[Transcript]) -> list[dict[str, Any]]:
    """diarized_json's segments (as OpenAI's gpt-4o-transcribe-diarize gives them): one per final."""
    return [{"type": "transcript.text.segment", "id": f"seg_{i}", "start": round(t.result.start_s, 3),
             "end": round(t.result.end_s, 3), "text": t.result.transcript, "speaker": common.speaker_of(t.result)}
            for i, t in enumerate(finals)]


def known_references(form: Any) -> list[tuple[str, bytes]]:
    """The request's known speakers: `known_speaker_names[]` with `known_speaker_references[]` (audio
    as data URLs), in pairs; BadInput when they do not pair up or cannot be read."""
    names = [str(n) for n in form.getall("known_speaker_names[]", [])]
    refs = [str(r) for r in form.getall("known_speaker_references[]", [])]
    if len(names) != len(refs):
        raise BadInput(f"{len(names)} known_speaker_names[] and {len(refs)} known_speaker_references[]; "
                       "give one reference per name.")
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise BadInput(f"{len(names)} known speakers are too many; at most {MAX_KNOWN_SPEAKERS}.")
    out = []
    for name, ref in zip(names, refs):
        head, _, data = ref.partition(",")
        if not head.startswith("data:") or not head.endswith(";base64"):
            raise BadInput(f"The reference of {name[:40]!r} is not a base64 data URL (data:audio/wav;base64,...).")
        try:
            out.append((check_name(name), base64.b64decode(data, validate=True)))
        except ValueError:
            raise BadInput(f"The reference of {name[:40]!r} is not valid base64.") from None
    if len({n for n, _ in out}) != len(out):
        raise BadInput("known_speaker_names[] has a name twice.")
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
                web.post("/v1/audio/translations", self.translations),
                web.post("/v1/audio/speech", self.speech),
                web.get("/v1/audio/voices", self.voices),
                web.get("/v1/models", self.models)]

    def _voice_map(self) -> dict[str, str]:
        return dict(self._ctx.settings.openai_voice_map)

    async def models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the deployed ASR models and voice models, each with what it does
        (`task`: transcribe, translate, speech), its languages (a multilingual model: "multi", for
        a request that leaves the language to it, then each it recognises) and (voice models) its voices."""
        try:
            self._auth.check_http(request)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Model list")
        data = []
        if self._ctx.asr is not None:
            asr_models = self._ctx.asr.models()
            translator = translating_model(asr_models)
            for name, manifest in asr_models.items():
                tasks = ["transcribe", "translate"] if name == translator else ["transcribe"]
                multi = [MULTILINGUAL] if manifest.language_code.lower() == MULTILINGUAL else []
                data.append(_model(name, tasks, multi + asr_languages(manifest),
                                   streaming=True, sample_rate=manifest.sample_rate))
        if self._ctx.tts is not None:
            for info in self._ctx.tts.voices():
                data.append(_model(info.model, ["speech"], [info.language_code], voices=info.names,
                                   sample_rate=info.sample_rate))
        return web.json_response({"object": "list", "data": data})

    async def voices(self, request: web.Request) -> web.Response:
        """GET /v1/audio/voices: every deployed voice with its language, and OpenAI's names' table."""
        try:
            self._auth.check_http(request)
            voices = deployed_voices(common.tts_service(self._ctx))
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Voice list")
        return web.json_response(voices_body(voices, self._voice_map()))

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/audio/transcriptions (multipart: file, model, language, response_format, ...)."""
        return await self._speech_to_text(request, translate=False)

    async def translations(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/audio/translations: English text of speech in any language (a Whisper model's
        translate task; multipart as for transcriptions, without `language`)."""
        return await self._speech_to_text(request, translate=True)

    async def _speech_to_text(self, request: web.Request, translate: bool) -> web.StreamResponse:
        """Transcriptions and translations: the upload recognised, in the response format asked."""
        task = "translate" if translate else "transcribe"
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
            container = upload_container(str(getattr(upload, "filename", "") or "the upload"), audio)
            fmt = str(form.get("response_format", "json"))
            if fmt not in TRANSCRIPT_FORMATS:
                raise BadInput(f"response_format {fmt!r} is not supported; use one of {', '.join(TRANSCRIPT_FORMATS)}.")
            granularities = {str(g) for g in form.getall("timestamp_granularities[]", [])}
            model = str(form.get("model", ""))
            wanted = RecognitionRequest(
                model=model if model in asr.models() else "",
                language_code="" if translate else str(form.get("language", "")), word_times=True,
                translate=translate)
            if str(form.get("stream", "false")).lower() == "true":
                return await self._stream(request, wanted, audio, container)
            # diarized_json needs a speaker model (a 400 saying so); verbose_json has speakers where one is deployed.
            diarize = fmt == "diarized_json" or (fmt == "verbose_json" and asr.speaker_models())
            encoder = await asr.speaker_encoder() if diarize else None
            references = known_references(form)
            if references and encoder is None:
                raise BadInput("known_speaker_names[] need response_format diarized_json.")
            async with asr.session(wanted, offline=True) as session:
                decoded = await self._decoded(audio, container)
                transcripts = await session.recognize(decoded)
                if encoder is not None:
                    known = {name: await self._reference(encoder, name, clip) for name, clip in references}
                    transcripts = await session.diarized(decoded, transcripts, encoder, 0, known)
                duration = session.seconds
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Translation" if translate else "Transcription")
        finals = [t for t in transcripts if t.result.is_final and t.result.transcript]
        text = common.finals_text(transcripts)
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt == "diarized_json":
            return web.json_response({"task": "transcribe", "duration": round(duration, 3), "text": text,
                                      "segments": diarized_segments(finals),
                                      "usage": {"type": "duration", "seconds": round(duration, 3)}})
        segs = segments(finals, speakers=encoder is not None)
        if fmt in ("srt", "vtt"):
            return web.Response(text=subtitles(segs, fmt == "vtt"), content_type="text/plain")
        if fmt == "json":
            return web.json_response({"text": text})
        body: dict[str, Any] = {"task": task, "language": finals[0].result.language_code if finals else "",
                                "duration": round(duration, 3), "text": text, "segments": segs}
        if "word" in granularities:
            body["words"] = [{"word": w.word, "start": w.start_ms / 1000, "end": w.end_ms / 1000}
                             for t in finals for w in t.result.words]
        if granularities and "segment" not in granularities:
            del body["segments"]
        return web.json_response(body)

    async def _reference(self, encoder: SpeakerEncoder, name: str, clip: bytes) -> np.ndarray:
        """The embedding of a known speaker's reference clip (any upload format, 2 s of speech at least)."""
        wav = await self._decoded(clip, upload_container(f"known_speaker_references[] of {name}", clip))
        embedding, _ = await common.asr_service(self._ctx).run_speaker(
            lambda: enrolment(encoder, [(f"The reference of {name}", wav)], MIN_REFERENCE_S))
        return embedding

    async def _decoded(self, audio: bytes, container: Container | None) -> bytes:
        """A compressed upload decoded to WAV (within the session's slot, so that the stream limit
        bounds the decodes too); WAV or FLAC as it is."""
        return await upload_wav(self._ctx, audio, container)

    async def _stream(self, request: web.Request, wanted: RecognitionRequest, audio: bytes,
                      container: Container | None) -> web.StreamResponse:
        """stream=true: each final as a `transcript.text.delta` event, then `transcript.text.done`."""
        async with common.asr_service(self._ctx).session(wanted) as session:
            audio = await self._decoded(audio, container)
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
                        await response.write(_event({"type": "transcript.text.delta", "delta": delta}))
                await response.write(_event({"type": "transcript.text.done", "text": "".join(texts)}))
                await response.write_eof()
            except Exception as exc:  # noqa: BLE001 - the status is sent: an error event ends the stream
                _, name, message = logged(exc, "Transcription stream")
                with contextlib.suppress(ConnectionError):
                    await response.write(_event({"type": "error", "error": {"type": name, "message": message}}))
            return response

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/audio/speech (JSON: model, input, voice, response_format, speed, stream_format),
        streamed; `instructions` (how to speak, for OpenAI's gpt-4o-mini-tts) is accepted and ignored."""
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
            fmt = str(body.get("response_format", SPEECH_FORMATS[0]) or SPEECH_FORMATS[0]).lower()
            if fmt in _NOT_OFFERED:
                raise BadInput(f"response_format {fmt!r} is not offered: {_NOT_OFFERED[fmt]}; "
                               f"use one of {', '.join(SPEECH_FORMATS)}.")
            if fmt not in SPEECH_FORMATS:
                raise BadInput(f"response_format {fmt!r} is not supported; use one of {', '.join(SPEECH_FORMATS)}.")
            stream_format = str(body.get("stream_format", "audio") or "audio")
            if stream_format not in STREAM_FORMATS:
                raise BadInput(f"stream_format {stream_format!r} is not supported; use audio or sse.")
            try:
                speed = float(body.get("speed", 1.0))
            except (TypeError, ValueError):
                raise BadInput("`speed` must be a number.") from None
            asked = voice
            if is_openai_voice(voice):
                voice = openai_voice(voice, deployed_voices(tts), self._voice_map(), str(body.get("model", "") or ""))
            async with tts.session():
                try:
                    synthesis = await tts.prepare(SpeechRequest(text=text, voice=voice, rate=speed,
                                                                sample_rate=24000 if fmt == "opus" else 0))
                except UnknownVoiceError as exc:
                    if asked.lower() in self._voice_map():  # the server's setting names a voice not deployed
                        raise UnknownVoiceError(f"{exc} (openai_voice_map maps {asked!r} to it)") from None
                    if asked and not is_openai_voice(asked):  # the client's mistake
                        raise BadInput(f"{exc} OpenAI's voice names are taken too (GET /v1/audio/voices).") from None
                    raise
                return await self._speak(request, synthesis, fmt, stream_format == "sse")
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Speech")

    async def _speak(self, request: web.Request, synthesis: Synthesis, fmt: str, sse: bool) -> web.StreamResponse:
        """Stream the audio (`sse`: as `speech.audio.delta` events); a client that goes away or
        stops reading stops the synthesis."""
        tts = self._ctx.tts
        assert tts is not None
        rate = synthesis.sample_rate
        encoder: StreamEncoder | None = None
        if fmt == "mp3":
            encoder = Mp3Encoder(rate)
        elif fmt == "opus":
            encoder = OggOpusEncoder(rate)
        async with contextlib.aclosing(tts.chunks(synthesis)) as chunks:
            # Errors before the first audio are still an HTTP status; a request of only silence
            # so short that it rounds to nothing is an empty stream.
            first = await anext(chunks, None) or AudioChunk(b"", rate)
            kind = "text/event-stream" if sse else _SPEECH_TYPES[fmt]
            response = web.StreamResponse(headers={"Content-Type": kind, "Cache-Control": "no-cache"} if sse
                                          else {"Content-Type": kind})
            await response.prepare(request)
            try:
                await _SpeechWriter(request, response, tts, sse).write(first, chunks, fmt, rate, encoder)
            except Exception as exc:  # noqa: BLE001 - the status is sent: the stream can only end early
                logged(exc, "Speech stream")
                if request.transport is not None:
                    request.transport.close()  # what was sent is cut short: the client must see it end
        return response


def _model(name: str, tasks: list[str], languages: list[str], **more: Any) -> dict[str, Any]:
    """One `/v1/models` entry: OpenAI's fields, then edged's."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "edged", "task": tasks[0], "tasks": tasks,
            "languages": languages, **more}


class _SpeechWriter:
    """Writes one speech answer, each write within tts_stream_idle_timeout_s of the client reading:
    the audio as it is, or (`sse`) each part of it base64 in a `speech.audio.delta` event, then
    `speech.audio.done`, as OpenAI's stream_format=sse."""

    def __init__(self, request: web.Request, response: web.StreamResponse, tts: TtsService, sse: bool) -> None:
        self._request = request
        self._response = response
        self._tts = tts
        self._sse = sse

    async def _send(self, data: bytes) -> None:
        if self._sse:
            if not data:
                return
            data = _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        await self._tts.client_wait(self._response.write(data), "read the audio")

    async def write(self, first: AudioChunk, chunks: AsyncIterator[AudioChunk], fmt: str, rate: int,
                    encoder: StreamEncoder | None) -> None:
        """The audio in its format (through `encoder` where it has one), as it comes."""
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
        elif encoder is not None:
            await self._send(encoder.encode(first.pcm))
            async for c in chunks:
                await self._send(encoder.encode(c.pcm))
            await self._send(encoder.finish())
        else:
            await self._send((wav_header(rate) if fmt == "wav" else b"") + first.pcm)
            async for c in chunks:
                await self._send(c.pcm)
        if self._sse:
            await self._response.write(_event({"type": "speech.audio.done", "usage": {
                "input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}))
        await self._response.write_eof()


def _event(body: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(body).encode() + b"\n\n"
