"""edged's own gRPC service (edged.v1.Edged): status, loading and unloading models, and the
machine's microphone and speaker (see `edged.doors.local.audio`)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import psutil

from edged import __version__
from edged.doors.grpc.status import abort
from edged.errors import FeatureOffError
from edged.proto import edged_pb2, edged_pb2_grpc
from edged.service.registry import MIB, ModelEntry, ModelState, available_mb

if TYPE_CHECKING:
    from edged.doors.grpc.context import ServerContext

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
    core = ctx.services
    registry = core.registry
    admission = core.admission
    services = sorted({*admission.active, *admission.limits})
    return edged_pb2.StatusResponse(
        version=__version__, pid=os.getpid(), uptime_s=now - core.started,
        health="SERVING" if core.is_serving() else "DRAINING" if core.admission.draining else "NOT_SERVING",
        services=[edged_pb2.ServiceHealth(name=n, status="SERVING" if core.is_serving(n) else "NOT_SERVING")
                  for n in core.health_names() if n],
        models=[model_status(e, now) for e in registry.entries.values()],
        streams=[edged_pb2.StreamCount(service=s, active=admission.active.get(s, 0),
                                       limit=admission.limits.get(s, 0)) for s in services],
        memory_budget_mb=registry.budget_mb,
        memory_available_mb=available_mb(),
        rss_mb=psutil.Process().memory_info().rss / MIB,
        listen=f"{ctx.settings.listen_address}:{ctx.settings.riva_speech_api_port}",
        microphone=ctx.local_audio.mic_status() if ctx.local_audio else edged_pb2.MicrophoneStatus(state="off"),
        speaker=ctx.local_audio.speaker_status() if ctx.local_audio else edged_pb2.SpeakerStatus(state="off"),
    )


class ControlServicer(edged_pb2_grpc.EdgedServicer):
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
        registry = self._ctx.services.registry
        try:
            entry = await (registry.load(name) if load else registry.unload(name))
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Model load" if load else "Model unload")
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
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Local audio request")

    async def StopSpeaking(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Stop playback and drop the queue."""
        try:
            return self._audio("speaker", "local_speaker_enabled").stop_speaking()
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Local audio request")

    async def SetMicrophone(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Mute or unmute the microphone."""
        try:
            return self._audio("microphone", "local_mic_enabled").set_muted(request.muted)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Local audio request")

    async def Transcripts(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The microphone's transcripts until the client cancels or the daemon stops."""
        try:
            audio = self._audio("microphone", "local_mic_enabled")
            subscriber = audio.subscribe(request.interim_results)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Local audio request")
            return
        try:
            while (message := await subscriber.get()) is not None:
                yield message
        finally:
            audio.unsubscribe(subscriber)


def install(ctx: ServerContext) -> list[str]:
    """Add the edged.v1 service to the server."""
    edged_pb2_grpc.add_EdgedServicer_to_server(ControlServicer(ctx), ctx.server)
    return [SERVICE_NAME]
