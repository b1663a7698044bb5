"""`nvidia.riva.tts.RivaSpeechSynthesis`: Riva messages to TTS requests and back, errors to status codes.

SynthesizeOnline is registered as stream-to-stream. On the wire a gRPC call is a stream of
messages in each direction whatever the .proto says, and the method path is the same
(`/nvidia.riva.tts.RivaSpeechSynthesis/SynthesizeOnline`), so a client generated with the
older unary-to-stream signature (nvidia-riva-client 2.x) sends one request and half-closes,
which this handler reads as a stream of one; newer clients may send several requests, each
spoken in turn on the same response stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import grpc
from google.protobuf import unknown_fields
from riva.client.proto import riva_audio_pb2, riva_tts_pb2

from edged.errors import (
    EdgedError,
    ResourceExhaustedError,
    TtsRequestError,
    UnknownVoiceError,
)
from edged.loader import LoadedModel
from edged.pipelines.tts import AudioChunk, SynthesisRequest, TtsModel
from edged.pipelines.tts.encode import OggOpusEncoder
from edged.pipelines.tts.schedule import AsyncRunGate, Pace
from edged.pipelines.tts.synthesizer import parse_custom_dictionary, subvoices
from edged.rmir.manifest import Manifest
from edged.server import metrics
from edged.server.app import ServerContext

_LOGGER = logging.getLogger(__name__)

SERVICE = "nvidia.riva.tts.RivaSpeechSynthesis"
_CUSTOM_DICTIONARY_FIELD = 7
"""`custom_dictionary` in riva_tts.proto since Riva 2.17; older generated modules lack it."""
_PIPELINE = "speech_synthesis"


def custom_dictionary(request: riva_tts_pb2.SynthesizeSpeechRequest) -> str:
    """The request's custom_dictionary, whether or not the generated module knows the field."""
    if "custom_dictionary" in request.DESCRIPTOR.fields_by_name:
        return str(request.custom_dictionary)  # type: ignore[attr-defined]
    for item in unknown_fields.UnknownFieldSet(request):
        if item.field_number == _CUSTOM_DICTIONARY_FIELD and isinstance(item.data, bytes):
            return item.data.decode("utf-8", "replace")
    return ""


def _encoder(request: riva_tts_pb2.SynthesizeSpeechRequest) -> OggOpusEncoder | None:
    """None for raw PCM, an Ogg Opus encoder for OGGOPUS; TtsRequestError for anything else."""
    if request.encoding in (riva_audio_pb2.ENCODING_UNSPECIFIED, riva_audio_pb2.LINEAR_PCM):
        return None
    if request.encoding == riva_audio_pb2.OGGOPUS:
        return OggOpusEncoder(request.sample_rate_hz)
    name = riva_audio_pb2.AudioEncoding.Name(request.encoding) \
        if request.encoding in riva_audio_pb2.AudioEncoding.values() else str(request.encoding)
    raise TtsRequestError(f"Encoding {name} is not supported; use LINEAR_PCM (raw 16-bit PCM) or OGGOPUS.")


def _response(request: riva_tts_pb2.SynthesizeSpeechRequest, audio: bytes, text: str,
              ) -> riva_tts_pb2.SynthesizeSpeechResponse:
    response = riva_tts_pb2.SynthesizeSpeechResponse(audio=audio)
    response.meta.text = text
    if request.HasField("id"):
        response.id.CopyFrom(request.id)
    return response


class TtsServicer:
    """Translates Riva TTS calls to `TtsModel.synthesize` on the inference executor."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._voices: dict[str, tuple[LoadedModel, TtsModel]] = {}
        self._voice_lock = asyncio.Lock()
        self._gate = AsyncRunGate()
        """One synthesis step on the executor at a time, first audio of new requests first: a
        step uses every core, and the executor's other worker stays free for ASR."""
        self._warming: asyncio.Task[None] | None = None

    def _names(self) -> list[str]:
        """The TTS models this server has deployed (loaded or not)."""
        registry = self._ctx.registry
        if registry is not None:
            return [e.name for e in registry.entries.values() if e.pipeline == _PIPELINE]
        return [n for n, m in self._ctx.models.items() if m.manifest.pipeline == _PIPELINE]

    def _manifest(self, name: str) -> Manifest:
        registry = self._ctx.registry
        manifest = registry.entries[name].deployed.manifest if registry is not None \
            else self._ctx.models[name].manifest
        assert manifest is not None  # entries of the TTS pipeline have a readable manifest
        return manifest

    async def _model(self, name: str) -> TtsModel:
        registry = self._ctx.registry
        loaded = await registry.use(name) if registry is not None else self._ctx.models[name]
        return await self._voice(name, loaded)

    async def _voice(self, name: str, loaded: LoadedModel) -> TtsModel:
        """The TtsModel of a loaded voice, made (and warmed up) once, on the executor."""
        async with self._voice_lock:
            cached = self._voices.get(name)
            if cached is None or cached[0] is not loaded:
                model = await asyncio.get_running_loop().run_in_executor(
                    self._ctx.executor, TtsModel, loaded, self._ctx.settings.tts_max_text_chars)
                cached = self._voices[name] = (loaded, model)
            return cached[1]

    def warm_up(self) -> None:
        """Prepare each voice as soon as the server has loaded it (while it loads the others),
        so that neither its first request nor the idle server pays for it."""
        async def prepare() -> None:
            done: set[str] = set()
            while True:
                serving = self._ctx.serving  # one more pass once everything is loaded
                for name in self._names():
                    loaded = self._ctx.models.get(name)
                    if loaded is None or name in done:
                        continue
                    done.add(name)
                    try:
                        await self._voice(name, loaded)
                    except Exception as exc:  # noqa: BLE001 - requests report it again, precisely
                        _LOGGER.error("Voice %s cannot synthesise: %s", name, exc)
                if serving:
                    return
                await asyncio.sleep(0.1)

        try:
            self._warming = asyncio.get_running_loop().create_task(prepare())
        except RuntimeError:  # no event loop: voices are prepared on their first request
            pass

    def _all_voices(self) -> list[str]:
        voices = []
        for name in self._names():
            family, subs = subvoices(name, self._manifest(name).parameters)
            voices += [f"{family}.{s}" for s in subs]
        return voices

    async def resolve(self, request: riva_tts_pb2.SynthesizeSpeechRequest) -> tuple[TtsModel, SynthesisRequest]:
        """The model serving the request's voice and the pipeline request; raises on any problem."""
        names = self._names()
        if not names:
            raise UnknownVoiceError("No speech synthesis model is deployed on this server.")
        chosen = None
        for name in names:
            manifest = self._manifest(name)
            params = manifest.parameters
            family, subs = subvoices(name, params)
            known = {f"{family}.{s}".lower() for s in subs} | {
                str(a).lower() for a in (params.get("voice_name"), family, name,
                                         *params.get("voice_aliases", [])) if a}
            wanted = request.voice_name.lower()
            if (wanted and wanted in known) or (
                    not wanted and (not request.language_code
                                    or request.language_code.lower() == manifest.language_code.lower())):
                chosen = name
                break
        if chosen is None:
            what = f"Voice {request.voice_name!r} is not available" if request.voice_name else \
                f"No voice speaks language {request.language_code!r}"
            raise UnknownVoiceError(f"{what}; voices: {', '.join(self._all_voices())}.")
        model = await self._model(chosen)
        return model, SynthesisRequest(
            text=request.text, voice_name=request.voice_name, sample_rate=request.sample_rate_hz,
            custom_dictionary=parse_custom_dictionary(custom_dictionary(request)))

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, UnknownVoiceError):
            code = grpc.StatusCode.NOT_FOUND
        elif isinstance(exc, TtsRequestError):
            code = grpc.StatusCode.INVALID_ARGUMENT
        elif isinstance(exc, ResourceExhaustedError):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            code = grpc.StatusCode.UNAVAILABLE
        _LOGGER.info("TTS request refused (%s): %s", code.name, exc)
        await context.abort(code, str(exc))

    async def chunks(self, model: TtsModel, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        """The pipeline's chunks, each computed on the inference executor in its turn."""
        chunks: Iterator[AudioChunk] = model.synthesize(request)
        pace = Pace()
        while True:
            async with self._gate.turn(pace.key()):
                chunk: AudioChunk | None = await metrics.run_inference(
                    self._ctx.executor, model.name, next, chunks, None)
            if chunk is None:
                return
            pace.emitted(chunk.seconds)
            metrics.AUDIO_SECONDS.labels("tts", model.name).inc(chunk.seconds)
            yield chunk

    async def Synthesize(self, request: riva_tts_pb2.SynthesizeSpeechRequest,
                         context: grpc.aio.ServicerContext) -> riva_tts_pb2.SynthesizeSpeechResponse:
        """The whole utterance in one response."""
        try:
            async with self._ctx.admission.stream("tts", self._ctx.settings.tts_max_streams):
                model, req = await self.resolve(request)
                encoder = _encoder(request)
                with metrics.track_request("tts", model.name):
                    pcm = [c.pcm async for c in self.chunks(model, req)]
                audio = pcm if encoder is None else [*map(encoder.encode, pcm), encoder.finish()]
        except EdgedError as exc:
            await self._abort(context, exc)  # raises grpc's abort exception
            raise
        return _response(request, b"".join(audio), request.text)

    async def SynthesizeOnline(self, requests: AsyncIterator[riva_tts_pb2.SynthesizeSpeechRequest],
                               context: grpc.aio.ServicerContext,
                               ) -> AsyncIterator[riva_tts_pb2.SynthesizeSpeechResponse]:
        """Audio chunks as they are synthesised: the first after the first clause."""
        try:
            async with self._ctx.admission.stream("tts", self._ctx.settings.tts_max_streams):
                async for request in requests:
                    model, req = await self.resolve(request)
                    encoder = _encoder(request)
                    with metrics.track_request("tts", model.name):
                        async for chunk in self.chunks(model, req):
                            audio = chunk.pcm if encoder is None else encoder.encode(chunk.pcm)
                            if audio or chunk.text:
                                yield _response(request, audio, chunk.text)
                    if encoder is not None:
                        yield _response(request, encoder.finish(), "")
        except EdgedError as exc:
            await self._abort(context, exc)

    async def GetRivaSynthesisConfig(self, request: riva_tts_pb2.RivaSynthesisConfigRequest,
                                     context: grpc.aio.ServicerContext,
                                     ) -> riva_tts_pb2.RivaSynthesisConfigResponse:
        """Each TTS model's language, voice family and subvoices (what talk.py --list-voices reads)."""
        response = riva_tts_pb2.RivaSynthesisConfigResponse()
        names = self._names()
        if request.model_name and request.model_name not in names:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"No speech synthesis model named {request.model_name!r}; "
                                f"models: {', '.join(names) or 'none'}.")
        for name in names:
            if request.model_name and name != request.model_name:
                continue
            manifest = self._manifest(name)
            family, subs = subvoices(name, manifest.parameters)
            config = response.model_config.add()
            config.model_name = name
            config.parameters.update({
                "language_code": manifest.language_code,
                "voice_name": family,
                "subvoices": ",".join(f"{s}:{i}" for s, i in subs.items()),
                "sample_rate": str(manifest.sample_rate),
                "type": "online",
            })
        return response


def install(ctx: ServerContext) -> list[str]:
    """Add the Riva TTS service (SynthesizeOnline as stream-to-stream) to the server."""
    servicer = TtsServicer(ctx)
    ctx.servicers["tts"] = servicer
    servicer.warm_up()
    req, resp = riva_tts_pb2.SynthesizeSpeechRequest, riva_tts_pb2.SynthesizeSpeechResponse
    handlers = {
        "Synthesize": grpc.unary_unary_rpc_method_handler(
            servicer.Synthesize, req.FromString, resp.SerializeToString),
        "SynthesizeOnline": grpc.stream_stream_rpc_method_handler(
            servicer.SynthesizeOnline, req.FromString, resp.SerializeToString),
        "GetRivaSynthesisConfig": grpc.unary_unary_rpc_method_handler(
            servicer.GetRivaSynthesisConfig, riva_tts_pb2.RivaSynthesisConfigRequest.FromString,
            riva_tts_pb2.RivaSynthesisConfigResponse.SerializeToString),
    }
    ctx.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return [SERVICE]
