"""`nvidia.riva.tts.RivaSpeechSynthesis`: Riva messages to the TTS service and back, errors to status codes.

SynthesizeOnline is registered as stream-to-stream. On the wire a gRPC call is a stream of
messages in each direction whatever the .proto says, and the method path is the same
(`/nvidia.riva.tts.RivaSpeechSynthesis/SynthesizeOnline`), so a client generated with the
older unary-to-stream signature (nvidia-riva-client 2.x) sends one request and half-closes,
which this handler reads as a stream of one; newer clients may send several requests, each
spoken in turn on the same response stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from google.protobuf import unknown_fields
from riva.client.proto import riva_audio_pb2, riva_tts_pb2

from edged.doors.grpc.context import ServerContext
from edged.doors.grpc.status import abort
from edged.errors import EdgedError, TtsRequestError
from edged.pipelines.tts.encode import OggOpusEncoder
from edged.service.tts import SpeechRequest, TtsService

_LOGGER = logging.getLogger(__name__)

SERVICE = "nvidia.riva.tts.RivaSpeechSynthesis"
_RESPONSE_OVERHEAD = 1024
"""Bytes of a Synthesize response besides its audio and text (framing, metadata, id)."""
_CUSTOM_DICTIONARY_FIELD = 7
"""`custom_dictionary` in riva_tts.proto since Riva 2.17; older generated modules lack it."""


def custom_dictionary(request: riva_tts_pb2.SynthesizeSpeechRequest) -> str:
    """The request's custom_dictionary, whether or not the generated module knows the field."""
    if "custom_dictionary" in request.DESCRIPTOR.fields_by_name:
        return str(request.custom_dictionary)
    for item in unknown_fields.UnknownFieldSet(request):  # type: ignore[attr-defined]  # iterates by __getitem__, which the stubs leave out
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


def speech_request(request: riva_tts_pb2.SynthesizeSpeechRequest, max_bytes: int = 0) -> SpeechRequest:
    """The service request of a Riva SynthesizeSpeechRequest (`max_bytes`: the most audio its one
    answer may carry; 0: streamed); TtsRequestError for zero-shot data."""
    if request.HasField("zero_shot_data") and request.zero_shot_data.audio_prompt:
        raise TtsRequestError("zero_shot_data is not supported: the deployed voices are not zero-shot "
                              "models; leave it out and choose a voice with voice_name.")
    return SpeechRequest(text=request.text, voice=request.voice_name, language_code=request.language_code,
                         sample_rate=request.sample_rate_hz, custom_dictionary=custom_dictionary(request),
                         max_bytes=max_bytes)


class _ClientGone(Exception):
    """A SynthesizeOnline client went while its audio was being written."""


class TtsServicer:
    """Translates Riva TTS calls to the TTS service."""

    def __init__(self, tts: TtsService, max_message_bytes: int) -> None:
        self._tts = tts
        self._max_message_bytes = max_message_bytes

    async def Synthesize(self, request: riva_tts_pb2.SynthesizeSpeechRequest,
                         context: grpc.aio.ServicerContext) -> riva_tts_pb2.SynthesizeSpeechResponse:
        """The whole utterance in one response, of PCM no larger than a message may be (checked
        before the work, then as each utterance is encoded)."""
        try:
            async with self._tts.session():
                encoder = _encoder(request)
                # The response carries the text back, and a few bytes of framing.
                room = self._max_message_bytes - len(request.text.encode()) - _RESPONSE_OVERHEAD
                synthesis = await self._tts.prepare(speech_request(request, room if encoder is None else 0))
                async with aclosing(self._tts.chunks(synthesis)) as chunks:
                    pcm = [c.pcm async for c in chunks]
            audio = pcm if encoder is None else [*map(encoder.encode, pcm), encoder.finish()]
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "TTS request")
        return _response(request, b"".join(audio), request.text)

    async def SynthesizeOnline(self, requests: AsyncIterator[riva_tts_pb2.SynthesizeSpeechRequest],
                               context: grpc.aio.ServicerContext) -> None:
        """Audio chunks as they are synthesised: the first after the first clause. Written with
        `context.write` (not yielded) so that a client that stops reading, or sends nothing, is
        ended after tts_stream_idle_timeout_s."""
        try:
            async with self._tts.session():
                incoming = aiter(requests)
                while (request := await self._tts.client_wait(anext(incoming, None), "send a request")):
                    synthesis = await self._tts.prepare(speech_request(request))
                    encoder = _encoder(request)
                    async with aclosing(self._tts.chunks(synthesis)) as chunks:
                        async for chunk in chunks:
                            audio = chunk.pcm if encoder is None else encoder.encode(chunk.pcm)
                            if audio or chunk.text:
                                await self._send(context, _response(request, audio, chunk.text))
                    if encoder is not None:
                        await self._send(context, _response(request, encoder.finish(), ""))
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            if isinstance(exc, _ClientGone) or context.cancelled():  # nobody to answer
                _LOGGER.info("TTS stream ended: the client went")
                return
            await abort(context, exc, "TTS stream")

    async def _send(self, context: grpc.aio.ServicerContext, response: riva_tts_pb2.SynthesizeSpeechResponse) -> None:
        try:
            await self._tts.client_wait(context.write(response), "read the audio")
        except EdgedError:
            raise
        except Exception as exc:  # a write fails only once the call is over (cancelled, connection lost)
            raise _ClientGone from exc


    async def GetRivaSynthesisConfig(self, request: riva_tts_pb2.RivaSynthesisConfigRequest,
                                     context: grpc.aio.ServicerContext,
                                     ) -> riva_tts_pb2.RivaSynthesisConfigResponse:
        """Each TTS model's language, voice family and subvoices (what talk.py --list-voices reads)."""
        response = riva_tts_pb2.RivaSynthesisConfigResponse()
        voices = self._tts.voices(request.model_name)
        if request.model_name and not voices:
            names = [v.model for v in self._tts.voices()]
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"No speech synthesis model named {request.model_name!r}; "
                                f"models: {', '.join(names) or 'none'}.")
        for voice in voices:
            config = response.model_config.add()
            config.model_name = voice.model
            config.parameters.update({
                "language_code": voice.language_code,
                "voice_name": voice.family,
                "subvoices": ",".join(f"{s}:{i}" for s, i in voice.subvoices.items()),
                "sample_rate": str(voice.sample_rate),
                "type": "online",
            })
        return response


def install(ctx: ServerContext) -> list[str]:
    """Add the Riva TTS service (SynthesizeOnline as stream-to-stream) when TTS is enabled."""
    if ctx.services.tts is None:
        return []
    servicer = TtsServicer(ctx.services.tts, ctx.settings.max_message_mb * 2**20)
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
