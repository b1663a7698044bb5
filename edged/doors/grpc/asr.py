"""nvidia.riva.asr.RivaSpeechRecognition: Riva messages to the ASR service and back.

Recognize, StreamingRecognize and GetRivaSpeechRecognitionConfig. The servicer only converts
messages and maps errors to status codes (`edged.doors.grpc.status`); model choice, limits and the
batched inference are the ASR service's (`edged.service.asr`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_audio_pb2 as raudio

from edged.doors import common
from edged.doors.grpc.context import ServerContext
from edged.doors.grpc.status import abort
from edged.errors import AudioFormatError, IdleTimeoutError, RequestError
from edged.service.asr import AsrService, AsrSession, RecognitionRequest, Transcript, asr_languages

# Requests read ahead of recognition per stream (then the client waits, as gRPC flow control).
_READ_AHEAD = 64

SERVICE_NAME = rasr.DESCRIPTOR.services_by_name["RivaSpeechRecognition"].full_name

_ENCODINGS = {
    raudio.ENCODING_UNSPECIFIED: "",
    raudio.LINEAR_PCM: "LINEAR_PCM",
    raudio.FLAC: "FLAC",
    raudio.MULAW: "MULAW",
    raudio.ALAW: "ALAW",
}

_Queue = asyncio.Queue["rasr.StreamingRecognizeRequest | BaseException | None"]


def recognition_request(config: rasr.RecognitionConfig, interim: bool = False) -> RecognitionRequest:
    """The service request of a Riva RecognitionConfig (`custom_configuration` `task:translate`:
    Whisper's translation); AudioFormatError for an unknown encoding, RequestError for an unknown task."""
    if config.encoding not in _ENCODINGS:
        name = raudio.AudioEncoding.Name(config.encoding) if config.encoding in raudio.AudioEncoding.values() \
            else str(config.encoding)
        raise AudioFormatError(f"Audio encoding {name} is not supported; use LINEAR_PCM, FLAC, MULAW or "
                               "ALAW (or send a WAV file with the encoding unset).")
    try:
        translate = common.translates(common.custom_configuration(config.custom_configuration))
    except ValueError as exc:
        raise RequestError(f"RecognitionConfig.{exc}.") from None
    endpointing: tuple[tuple[str, float], ...] = ()
    if config.HasField("endpointing_config"):
        ec = config.endpointing_config
        endpointing = common.endpointing({name: getattr(ec, name) for name in common.RIVA_ENDPOINTING})
    return RecognitionRequest(
        model=config.model, language_code=config.language_code, encoding=_ENCODINGS[config.encoding],
        sample_rate=config.sample_rate_hertz, channels=config.audio_channel_count or 1,
        separate_channels=config.enable_separate_recognition_per_channel, interim_results=interim,
        punctuation=config.enable_automatic_punctuation, word_times=config.enable_word_time_offsets,
        profanity_filter=config.profanity_filter, max_alternatives=config.max_alternatives,
        boost=tuple((phrase, float(context.boost)) for context in config.speech_contexts
                    for phrase in context.phrases if phrase.strip()),
        endpointing=endpointing, diarization=config.diarization_config.enable_speaker_diarization,
        max_speakers=config.diarization_config.max_speaker_count, translate=translate)


def _alternatives(t: Transcript, word_times: bool) -> list[rasr.SpeechRecognitionAlternative]:
    """The best alternative (with words, where word times or diarization were asked for) and any
    others; a final's text ends with a space, as Riva's do (clients that concatenate results rely on it)."""
    result = t.result
    end = " " if result.is_final else ""
    best = rasr.SpeechRecognitionAlternative(
        transcript=result.transcript + end, confidence=result.confidence, language_code=[t.result.language_code])
    if word_times:
        best.words.extend(rasr.WordInfo(word=w.word, start_time=w.start_ms, end_time=w.end_ms,
                                        confidence=w.confidence, language_code=t.result.language_code,
                                        speaker_tag=w.speaker)
                          for w in result.words)
    return [best, *(rasr.SpeechRecognitionAlternative(
        transcript=a.transcript + end, confidence=a.confidence, language_code=[t.result.language_code])
        for a in result.alternatives)]


class AsrServicer(rasr_grpc.RivaSpeechRecognitionServicer):
    """The Riva ASR API over the ASR service."""

    def __init__(self, asr: AsrService, idle_timeout_s: float) -> None:
        self._asr = asr
        self._idle_timeout_s = idle_timeout_s

    async def Recognize(
        self, request: rasr.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> rasr.RecognizeResponse:
        """Offline recognition of a whole recording."""
        try:
            wanted = recognition_request(request.config)
            transcripts = await self._asr.recognize(wanted, request.audio)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "ASR request")
        response = rasr.RecognizeResponse()
        if request.HasField("id"):
            response.id.CopyFrom(request.id)
        for t in transcripts:
            response.results.append(rasr.SpeechRecognitionResult(
                alternatives=_alternatives(t, wanted.word_times or wanted.diarization),
                channel_tag=t.channel + 1, audio_processed=t.result.audio_processed))
        return response

    async def StreamingRecognize(self, request_iterator: AsyncIterator[rasr.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        """Streaming recognition: interim results while speaking, a final one per utterance."""
        try:
            first = await asyncio.wait_for(request_iterator.__anext__(), self._idle_timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            await abort(context, self._idle_error(), "ASR stream")
        if not first.HasField("streaming_config"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "The first StreamingRecognizeRequest must hold streaming_config.")
        # The rest is read ahead as it comes, so that a stream that fell behind catches up at once.
        queue: _Queue = asyncio.Queue(_READ_AHEAD)
        reader = asyncio.get_running_loop().create_task(self._read(request_iterator, queue))
        try:
            streaming = first.streaming_config
            wanted = recognition_request(streaming.config, streaming.interim_results)
            async with self._asr.session(wanted) as session:
                session.feed_from(self._feed(session, queue))
                async for t in session.results():  # each one as soon as it is decoded
                    response = rasr.StreamingRecognizeResponse(results=[rasr.StreamingRecognitionResult(
                        alternatives=_alternatives(t, wanted.word_times or wanted.diarization),
                        is_final=t.result.is_final, stability=t.result.stability, channel_tag=t.channel + 1,
                        audio_processed=t.result.audio_processed)])
                    if first.HasField("id"):
                        response.id.CopyFrom(first.id)
                    yield response
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "ASR stream")
        finally:
            reader.cancel()

    async def _feed(self, session: AsrSession, queue: _Queue) -> None:
        """The client's audio into the session as it comes, then its end."""
        end = False
        while not end:
            requests = await self._next(queue)
            end = requests[-1] is None
            for audio, eou in _segments([r for r in requests if r is not None]):
                await session.feed(audio, eou)
        await session.finish()

    async def _next(self, queue: _Queue) -> list[rasr.StreamingRecognizeRequest | None]:
        """The requests that came since the last call (at least one; None marks the end). A stream
        that fell behind catches up in one go; one whose client goes quiet is ended by its slot."""
        got = [await queue.get()]
        while got[-1] is not None and not isinstance(got[-1], BaseException) and not queue.empty():
            got.append(queue.get_nowait())
        if isinstance(got[-1], BaseException):
            raise got[-1]
        return got

    def _idle_error(self) -> IdleTimeoutError:
        """What ends a stream whose first request does not come (DEADLINE_EXCEEDED)."""
        return IdleTimeoutError(f"No request for {self._idle_timeout_s:g} s; the stream was ended "
                                "(asr_stream_idle_timeout_s).")

    @staticmethod
    async def _read(requests: AsyncIterator[rasr.StreamingRecognizeRequest], queue: _Queue) -> None:
        """Move the client's requests into `queue` as they come (then None, or the error)."""
        try:
            async for request in requests:
                await queue.put(request)
        except Exception as exc:  # noqa: BLE001 - handed to the stream's task, which raises it
            await queue.put(exc)
            return
        await queue.put(None)

    async def GetRivaSpeechRecognitionConfig(
        self, request: rasr.RivaSpeechRecognitionConfigRequest, context: grpc.aio.ServicerContext
    ) -> rasr.RivaSpeechRecognitionConfigResponse:
        """The deployed ASR models, each as an online (streaming) and an offline entry."""
        models = self._asr.models()
        response = rasr.RivaSpeechRecognitionConfigResponse()
        for name, manifest in models.items():
            if request.model_name and request.model_name != name:
                continue
            punctuated = bool(manifest.parameters.get("punctuated", True))
            for kind in ("online", "offline"):
                response.model_config.append(rasr.RivaSpeechRecognitionConfigResponse.Config(
                    model_name=name, parameters={
                        "type": kind, "language_code": manifest.language_code,
                        "streaming": "true" if kind == "online" else "false",
                        "automatic_punctuation": "true" if punctuated else "false",
                        "sample_rate": str(manifest.sample_rate), "model_family": manifest.model_family,
                        "languages": ",".join(asr_languages(manifest))}))
        if request.model_name and not response.model_config:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Model {request.model_name!r} is not deployed; deployed ASR models: "
                                f"{', '.join(models) or 'none'}.")
        return response


def _segments(requests: list[rasr.StreamingRecognizeRequest]) -> list[tuple[bytes, bool]]:
    """The requests' audio joined into chunks that each end at a force_eou (or at the last
    request); RequestError for a second streaming_config."""
    out: list[tuple[bytes, bool]] = []
    audio: list[bytes] = []
    for r in requests:
        if r.HasField("streaming_config"):
            raise RequestError("streaming_config may only be sent in the first request of a stream.")
        audio.append(r.audio_content)
        if common.force_eou(r.runtime_config):
            out.append((b"".join(audio), True))
            audio = []
    if any(audio) or not out:
        out.append((b"".join(audio), False))
    return [(a, eou) for a, eou in out if a or eou]


def install(ctx: ServerContext) -> list[str]:
    """Add the Riva ASR service when ASR is enabled."""
    asr = ctx.services.asr
    if asr is None:
        return []
    rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(
        AsrServicer(asr, ctx.settings.asr_stream_idle_timeout_s), ctx.server)
    return [SERVICE_NAME]
