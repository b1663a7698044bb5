"""nvidia.riva.asr.RivaSpeechRecognition: translates Riva messages to the ASR pipeline and back.

Recognize, StreamingRecognize and GetRivaSpeechRecognitionConfig. The servicer only converts
messages, enforces the configured limits and maps pipeline errors to status codes; the work
runs on the server's inference executor through one AsrBatcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_audio_pb2 as raudio

from edged.errors import (
    AudioFormatError,
    EdgedError,
    ModelStateError,
    RequestError,
    ResourceExhaustedError,
)
from edged.loader import LoadedModel
from edged.pipelines.asr.batcher import AsrBatcher
from edged.pipelines.asr.model import AsrModel
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.stream import AsrStream, StreamConfig
from edged.rmir.manifest import Manifest
from edged.server import metrics
from edged.server.app import ServerContext

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

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


def _alternative(result: Result, word_times: bool) -> rasr.SpeechRecognitionAlternative:
    alt = rasr.SpeechRecognitionAlternative(transcript=result.transcript, confidence=result.confidence)
    if word_times:
        alt.words.extend(rasr.WordInfo(word=w.word, start_time=w.start_ms, end_time=w.end_ms,
                                       confidence=w.confidence) for w in result.words)
    return alt


class AsrServicer(rasr_grpc.RivaSpeechRecognitionServicer):
    """The Riva ASR API over the ASR models in `ctx.models`."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._settings = ctx.settings
        self._batcher = AsrBatcher(self._run_inference)
        self._pipelines: dict[str, tuple[LoadedModel, LoadedModel, AsrModel]] = {}

    @property
    def batcher(self) -> AsrBatcher:
        """The batcher every stream of this server goes through (the local microphone's too)."""
        return self._batcher

    async def local_stream(self) -> tuple[str, AsrStream]:
        """A stream for the daemon's own microphone: 16 kHz 16-bit PCM, punctuation, word times.

        It uses the first deployed ASR model; ModelStateError if it cannot be loaded now.
        """
        name = self._select(rasr.RecognitionConfig())
        model = await self._model(name)
        config = StreamConfig(encoding="LINEAR_PCM", sample_rate=16000, word_times=True,
                              interim_interval_ms=self._settings.asr_interim_interval_ms)
        return name, model.start_stream(config)

    async def _run_inference(self, fn: Callable[..., T], *args: object) -> T:
        return await metrics.run_inference(self._ctx.executor, "asr", fn, *args)

    def _manifests(self, pipeline: str) -> dict[str, Manifest]:
        """Deployed (loaded or loadable) models of a pipeline, by name."""
        registry = self._ctx.registry
        if registry is not None:
            return {e.name: e.deployed.manifest for e in registry.entries.values()
                    if e.pipeline == pipeline and e.deployed.manifest is not None}
        return {n: m.manifest for n, m in self._ctx.models.items() if m.manifest.pipeline == pipeline}

    async def _use(self, name: str) -> LoadedModel:
        registry = self._ctx.registry
        return await registry.use(name) if registry is not None else self._ctx.models[name]

    def _deployed(self) -> dict[str, Manifest]:
        """The ASR models edged has a pipeline for (Moonshine)."""
        return {n: m for n, m in self._manifests("speech_recognition").items() if m.model_family == "moonshine"}

    def _select(self, config: rasr.RecognitionConfig) -> str:
        """The model a request names, or the first for its language; RequestError listing them."""
        models = self._deployed()
        deployed = ", ".join(f"{n} ({m.language_code})" for n, m in models.items()) or "none"
        if config.model:
            if config.model in models:
                return config.model
            raise RequestError(f"Model {config.model!r} is not deployed; deployed ASR models: {deployed}.")
        wanted = config.language_code.lower()
        for name, manifest in models.items():
            code = manifest.language_code.lower()
            if not wanted or code == wanted or code.split("-")[0] == wanted:
                return name
        raise RequestError(f"No deployed ASR model serves language {config.language_code!r}; "
                           f"deployed ASR models: {deployed}.")

    async def _model(self, name: str) -> AsrModel:
        """The pipeline of a model with the VAD (both loaded on demand)."""
        vads = list(self._manifests("vad"))
        if not vads:
            raise RequestError("No VAD model is deployed; ASR needs one for endpointing "
                               "(add builtin:silero-vad to models_vad and run `edged init`).")
        asr, vad = await self._use(name), await self._use(vads[0])
        cached = self._pipelines.get(name)
        if cached is None or cached[0] is not asr or cached[1] is not vad:
            cached = (asr, vad, AsrModel(asr, vad))
            self._pipelines[name] = cached
        return cached[2]

    def _stream_config(self, config: rasr.RecognitionConfig, interim: bool, model: AsrModel) -> StreamConfig:
        if config.encoding not in _ENCODINGS:
            raise AudioFormatError(
                f"Audio encoding {raudio.AudioEncoding.Name(config.encoding)} is not supported; use "
                "LINEAR_PCM, FLAC, MULAW or ALAW (or send a WAV file with the encoding unset).")
        if config.sample_rate_hertz < 0 or config.audio_channel_count < 0:
            raise AudioFormatError("sample_rate_hertz and audio_channel_count cannot be negative.")
        endpoint = model.endpoint
        if config.HasField("endpointing_config"):
            ec = config.endpointing_config
            endpoint = endpoint.override(
                start_history_ms=ec.start_history, start_threshold=ec.start_threshold,
                stop_history_ms=ec.stop_history, stop_threshold=ec.stop_threshold,
                stop_history_eou_ms=ec.stop_history_eou, stop_threshold_eou=ec.stop_threshold_eou)
        return StreamConfig(
            encoding=_ENCODINGS[config.encoding], sample_rate=config.sample_rate_hertz,
            channels=config.audio_channel_count or 1, interim_results=interim,
            punctuation=config.enable_automatic_punctuation, word_times=config.enable_word_time_offsets,
            endpoint=endpoint, interim_interval_ms=self._settings.asr_interim_interval_ms,
            max_audio_s=float(self._settings.asr_max_audio_seconds))

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, ResourceExhaustedError):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if isinstance(exc, (AudioFormatError, RequestError)):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, ModelStateError):  # the model cannot be loaded now (memory, failure)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if isinstance(exc, EdgedError):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        _LOGGER.exception("ASR request failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"Recognition failed: {exc}")

    async def Recognize(self, request: rasr.RecognizeRequest, context: grpc.aio.ServicerContext) -> rasr.RecognizeResponse:
        """Offline recognition of a whole recording."""
        try:
            name = self._select(request.config)
            with metrics.track_request("asr", name):
                async with self._ctx.admission.stream("asr", self._settings.asr_max_streams):
                    model = await self._model(name)
                    config = self._stream_config(request.config, False, model)
                    results = await self._batcher.recognize(model, request.audio, config)
        except Exception as exc:
            await self._abort(context, exc)
            raise  # not reached: abort raises
        response = rasr.RecognizeResponse()
        for result in results:
            response.results.append(rasr.SpeechRecognitionResult(
                alternatives=[_alternative(result, config.word_times)], channel_tag=1,
                audio_processed=result.audio_processed))
        return response

    async def StreamingRecognize(self, request_iterator: AsyncIterator[rasr.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        """Streaming recognition: interim results while speaking, a final one per utterance."""
        try:
            async for response in self._stream(request_iterator, context):
                yield response
        except ResourceExhaustedError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _next(self, queue: asyncio.Queue[rasr.StreamingRecognizeRequest | BaseException | None],
                    context: grpc.aio.ServicerContext) -> list[rasr.StreamingRecognizeRequest | None]:
        """The requests that came since the last call (at least one; None marks the end);
        DEADLINE_EXCEEDED after the idle timeout. A stream that fell behind catches up in one go."""
        try:
            got = [await asyncio.wait_for(queue.get(), self._settings.asr_stream_idle_timeout_s)]
        except asyncio.TimeoutError:
            await self._idle(context)
            raise  # not reached
        while got[-1] is not None and not isinstance(got[-1], BaseException) and not queue.empty():
            got.append(queue.get_nowait())
        if isinstance(got[-1], BaseException):
            raise got[-1]
        return got  # type: ignore[return-value]

    async def _idle(self, context: grpc.aio.ServicerContext) -> None:
        """End a stream that sent nothing for the idle timeout (DEADLINE_EXCEEDED)."""
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"No audio for {self._settings.asr_stream_idle_timeout_s} s; the stream was "
                            "ended (asr_stream_idle_timeout_s).")

    @staticmethod
    async def _read(requests: AsyncIterator[rasr.StreamingRecognizeRequest],
                    queue: asyncio.Queue[rasr.StreamingRecognizeRequest | BaseException | None]) -> None:
        """Move the client's requests into `queue` as they come (then None, or the error)."""
        try:
            async for request in requests:
                await queue.put(request)
        except Exception as exc:  # noqa: BLE001 - handed to the stream's task, which raises it
            await queue.put(exc)
            return
        await queue.put(None)

    async def _stream(self, requests: AsyncIterator[rasr.StreamingRecognizeRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        try:
            first = await asyncio.wait_for(requests.__anext__(), self._settings.asr_stream_idle_timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            await self._idle(context)
            raise  # not reached
        # The rest is read ahead as it comes, so that a stream that fell behind catches up at once.
        queue: asyncio.Queue[rasr.StreamingRecognizeRequest | BaseException | None] = asyncio.Queue(_READ_AHEAD)
        reader = asyncio.get_running_loop().create_task(self._read(requests, queue))
        try:
            if not first.HasField("streaming_config"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "The first StreamingRecognizeRequest must hold streaming_config.")
            try:
                name = self._select(first.streaming_config.config)
            except Exception as exc:
                await self._abort(context, exc)
                raise
            with metrics.track_request("asr", name):
                async with self._ctx.admission.stream("asr", self._settings.asr_max_streams):
                    async for response in self._recognize_stream(name, first, queue, context):
                        yield response
        finally:
            reader.cancel()

    async def _recognize_stream(self, name: str, first: rasr.StreamingRecognizeRequest,
                                queue: asyncio.Queue[rasr.StreamingRecognizeRequest | BaseException | None],
                                context: grpc.aio.ServicerContext) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        try:
            model = await self._model(name)
            config = self._stream_config(first.streaming_config.config, first.streaming_config.interim_results, model)
        except Exception as exc:
            await self._abort(context, exc)
            raise
        stream = model.start_stream(config)
        _LOGGER.debug("ASR stream started on %s", name)
        seconds = 0.0
        while True:
            requests = await self._next(queue, context)
            end = requests[-1] is None
            try:
                if any(r is not None and r.HasField("streaming_config") for r in requests):
                    raise RequestError("streaming_config may only be sent in the first request of a stream.")
                audio = b"".join(r.audio_content for r in requests if r is not None)
                results = await self._batcher.feed(stream, audio) if audio else []
                if end:
                    results += await self._batcher.finish(stream)
            except Exception as exc:
                await self._abort(context, exc)
                raise
            metrics.AUDIO_SECONDS.labels("asr", name).inc(stream.samples / 16000 - seconds)
            seconds = stream.samples / 16000
            for result in results:
                yield rasr.StreamingRecognizeResponse(results=[rasr.StreamingRecognitionResult(
                    alternatives=[_alternative(result, config.word_times)], is_final=result.is_final,
                    stability=result.stability, channel_tag=1, audio_processed=result.audio_processed)])
            if end:
                return

    async def GetRivaSpeechRecognitionConfig(self, request: rasr.RivaSpeechRecognitionConfigRequest,
                                             context: grpc.aio.ServicerContext) -> rasr.RivaSpeechRecognitionConfigResponse:
        """The deployed ASR models, each as an online (streaming) and an offline entry."""
        models = self._deployed()
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
                        "sample_rate": str(manifest.sample_rate)}))
        if request.model_name and not response.model_config:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Model {request.model_name!r} is not deployed; deployed ASR models: "
                                f"{', '.join(models) or 'none'}.")
        return response


def install(ctx: ServerContext) -> list[str]:
    """Add the Riva ASR service when ASR is enabled."""
    if not ctx.settings.service_enabled_asr:
        return []
    servicer = AsrServicer(ctx)
    ctx.servicers["asr"] = servicer
    rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(servicer, ctx.server)
    return [SERVICE_NAME]
