"""edged's own gRPC service (edged.v1.Edged): status, loading and unloading models, and the
machine's microphone and speaker (see `edged.server.localaudio`)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import psutil

from edged import __version__
from edged.errors import (
    EdgedError,
    FeatureOffError,
    ModelStateError,
    TtsRequestError,
    UnknownVoiceError,
)
from edged.proto import edged_pb2, edged_pb2_grpc
from edged.server.models import MIB, ModelEntry, ModelState, available_mb

if TYPE_CHECKING:
    from edged.server.app import ServerContext

SERVICE_NAME = edged_pb2.DESCRIPTOR.services_by_name["Edged"].full_name


def model_status(entry: ModelEntry, now: float) -> Any:
    """The ModelStatus message of one registry entry."""
    loaded = entry.state is ModelState.LOADED
    return edged_pb2.ModelStatus(
        name=entry.name, pipeline=entry.pipeline, service=entry.service, state=entry.state.value,
        memory_mb=entry.memory_mb, reason=entry.reason,
        idle_s=now - entry.last_used if loaded else 0.0)


def status(ctx: ServerContext) -> Any:
    """The StatusResponse of the running server."""
    now = time.monotonic()
    registry = ctx.registry
    admission = ctx.admission
    services = sorted({*admission.active, *admission.limits})
    return edged_pb2.StatusResponse(
        version=__version__, pid=os.getpid(), uptime_s=now - ctx.started,
        health="SERVING" if ctx.is_serving() else "NOT_SERVING",
        services=[edged_pb2.ServiceHealth(name=n, status="SERVING" if ctx.is_serving(n) else "NOT_SERVING")
                  for n in ctx.health_names() if n],
        models=[model_status(e, now) for e in registry.entries.values()] if registry else [],
        streams=[edged_pb2.StreamCount(service=s, active=admission.active.get(s, 0),
                                       limit=admission.limits.get(s, 0)) for s in services],
        memory_budget_mb=registry.budget_mb if registry else 0.0,
        memory_available_mb=available_mb(),
        rss_mb=psutil.Process().memory_info().rss / MIB,
        listen=f"{ctx.settings.listen_address}:{ctx.settings.riva_speech_api_port}",
        microphone=ctx.local_audio.mic_status() if ctx.local_audio else edged_pb2.MicrophoneStatus(state="off"),
        speaker=ctx.local_audio.speaker_status() if ctx.local_audio else edged_pb2.SpeakerStatus(state="off"),
    )


class ControlServicer(edged_pb2_grpc.EdgedServicer):  # type: ignore[misc]
    """Translates edged.v1 calls to the server's registry; errors become status codes."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    async def Status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Models, streams, memory, uptime and health."""
        return status(self._ctx)

    async def LoadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Load a deployed model if it fits."""
        return await self._change(request.name, context, load=True)

    async def UnloadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Unload a model."""
        return await self._change(request.name, context, load=False)

    async def _change(self, name: str, context: grpc.aio.ServicerContext, load: bool) -> Any:
        registry = self._ctx.registry
        assert registry is not None
        if name not in registry.entries:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No deployed model named {name!r}.")
        try:
            entry = await (registry.load(name) if load else registry.unload(name))
        except ModelStateError as exc:
            code = (grpc.StatusCode.RESOURCE_EXHAUSTED if registry.entries[name].state is ModelState.LEFT_OUT
                    else grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, str(exc))
        await self._ctx.publish_health()
        return model_status(entry, time.monotonic())


    def _audio(self, what: str, setting: str) -> Any:
        """The daemon's LocalAudio; FeatureOffError naming the setting when it is off."""
        if self._ctx.local_audio is None:
            raise FeatureOffError(f"The {what} is off on this server; set {setting}=true in config.sh "
                                  "and restart edged.")
        return self._ctx.local_audio

    async def Speak(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Say a text on the speaker."""
        try:
            return await self._audio("speaker", "local_speaker_enabled").speak(request)
        except EdgedError as exc:
            await context.abort(_code(exc), str(exc))

    async def StopSpeaking(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Stop playback and drop the queue."""
        try:
            return self._audio("speaker", "local_speaker_enabled").stop_speaking()
        except EdgedError as exc:
            await context.abort(_code(exc), str(exc))

    async def SetMicrophone(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Mute or unmute the microphone."""
        try:
            return self._audio("microphone", "local_mic_enabled").set_muted(request.muted)
        except EdgedError as exc:
            await context.abort(_code(exc), str(exc))

    async def Transcripts(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The microphone's transcripts until the client cancels or the daemon stops."""
        try:
            audio = self._audio("microphone", "local_mic_enabled")
            subscriber = audio.subscribe(request.interim_results)
        except EdgedError as exc:
            await context.abort(_code(exc), str(exc))
            return
        try:
            while (message := await subscriber.get()) is not None:
                yield message
        finally:
            audio.unsubscribe(subscriber)


def _code(exc: EdgedError) -> grpc.StatusCode:
    if isinstance(exc, FeatureOffError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, UnknownVoiceError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, TtsRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.UNAVAILABLE


def install(ctx: ServerContext) -> list[str]:
    """Add the edged.v1 service to the server."""
    edged_pb2_grpc.add_EdgedServicer_to_server(ControlServicer(ctx), ctx.server)
    return [SERVICE_NAME]
