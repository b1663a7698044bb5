"""edged's own gRPC service (edged.v1.Edged): status, loading and unloading models, the
machine's microphone and speaker (see `edged.doors.local.audio`) and enrolled speakers
(`edged.service.speakers`).

The servicer converts edged.v1's messages to the service's dataclasses and back; nothing below
it knows edged.v1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import grpc

from edged.doors.grpc.status import abort
from edged.errors import FeatureOffError
from edged.pipelines.speaker.enrolled import Enrolled
from edged.proto import edged_pb2, edged_pb2_grpc
from edged.service import speakers
from edged.service.local_audio import SpeakRequest
from edged.service.status import model_status

if TYPE_CHECKING:
    from edged.doors.grpc.context import ServerContext
    from edged.doors.local.audio import LocalAudio

SERVICE_NAME = edged_pb2.DESCRIPTOR.services_by_name["Edged"].full_name


def message(kind: Any, value: Any) -> Any:
    """The edged.v1 message `kind` (e.g. `edged_pb2.StatusResponse`) of a service dataclass whose
    fields carry edged.v1's names (`edged.service.status`, `edged.service.local_audio`)."""
    return kind(**asdict(value))


class ControlServicer(edged_pb2_grpc.EdgedServicer):
    """Translates edged.v1 calls to the server's registry; errors become status codes."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    async def Status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Models, streams, memory, uptime and health."""
        return message(edged_pb2.StatusResponse, self._ctx.status())

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
        return message(edged_pb2.ModelStatus, model_status(entry, time.monotonic()))

    def _audio(self, what: str, setting: str) -> LocalAudio:
        """The daemon's LocalAudio; FeatureOffError naming the setting when it is off."""
        if self._ctx.local_audio is None:
            raise FeatureOffError(f"The {what} is off on this server; set {setting}=true in config.sh "
                                  "and restart edged.")
        return self._ctx.local_audio

    async def Speak(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Say a text on the speaker."""
        try:
            outcome = await self._audio("speaker", "local_speaker_enabled").speak(SpeakRequest(
                text=request.text, voice=request.voice, interrupt=request.interrupt, wait=request.wait))
            return message(edged_pb2.SpeakResponse, outcome)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Local audio request")

    async def StopSpeaking(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Stop playback and drop the queue."""
        try:
            return message(edged_pb2.SpeakerStatus, self._audio("speaker", "local_speaker_enabled").stop_speaking())
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Local audio request")

    async def SetMicrophone(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Mute or unmute the microphone."""
        try:
            return message(edged_pb2.MicrophoneStatus,
                           self._audio("microphone", "local_mic_enabled").set_muted(request.muted))
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
            while (heard := await subscriber.get()) is not None:
                yield message(edged_pb2.Transcript, heard)
        finally:
            audio.unsubscribe(subscriber)

    async def EnrollSpeaker(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Enrol a speaker from clips of their voice."""
        clips = [(f"clip {i + 1}", bytes(audio)) for i, audio in enumerate(request.audio)]
        try:
            return enrolled_speaker(await speakers.enrol(self._ctx.services, request.name, clips))
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Speaker enrolment")

    async def ListSpeakers(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The enrolled speakers."""
        try:
            return edged_pb2.ListSpeakersResponse(
                speakers=[enrolled_speaker(s) for s in await speakers.enrolled(self._ctx.services)])
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Speaker list")

    async def RemoveSpeaker(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Forget an enrolled speaker."""
        try:
            await speakers.remove(self._ctx.services, request.name)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (status.abort)
            await abort(context, exc, "Speaker removal")
        return edged_pb2.RemoveSpeakerResponse()


def enrolled_speaker(speaker: Enrolled) -> Any:
    """edged.v1's EnrolledSpeaker: the name, seconds and model, never the embedding."""
    return edged_pb2.EnrolledSpeaker(name=speaker.name, seconds=speaker.seconds, model=speaker.model)


def install(ctx: ServerContext) -> list[str]:
    """Add the edged.v1 service to the server."""
    edged_pb2_grpc.add_EdgedServicer_to_server(ControlServicer(ctx), ctx.server)
    return [SERVICE_NAME]
