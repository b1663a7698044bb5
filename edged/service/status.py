"""The running server's status as one dataclass that every door renders its own way: edged.v1
Status converts it to its message, the web console's /v1/edged/status sends `asdict` of it.

Field names are edged.v1's (StatusResponse, ModelStatus, ...), so both renderings share their keys.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from edged import __version__
from edged.service.context import ServiceContext
from edged.service.local_audio import LocalAudioStatus, MicrophoneStatus, SpeakerStatus
from edged.service.memory import rss_mb
from edged.service.registry import ModelEntry, ModelState, available_mb


@dataclass(frozen=True)
class ModelStatus:
    """One model of the registry."""

    name: str
    pipeline: str
    """speech_recognition, speech_synthesis, vad."""
    service: str
    """asr, tts."""
    state: str
    """loading, loaded, unloaded, left out, failed."""
    memory_mb: float
    """Measured at deploy."""
    reason: str
    """Why it is not loaded."""
    idle_s: float
    """Seconds since its last use (loaded models; 0 otherwise)."""


@dataclass(frozen=True)
class ServiceHealth:
    """Health of one name ("" for the whole server)."""

    name: str
    status: str
    """SERVING, NOT_SERVING."""


@dataclass(frozen=True)
class StreamCount:
    """Open streams of one service and its limit (0: no count limit)."""

    service: str
    active: int
    limit: int


@dataclass(frozen=True)
class ServerStatus:
    """Models, streams, memory, uptime, health and the machine's microphone and speaker."""

    version: str
    pid: int
    uptime_s: float
    health: str
    services: list[ServiceHealth]
    models: list[ModelStatus]
    streams: list[StreamCount]
    memory_budget_mb: float
    memory_available_mb: float
    rss_mb: float
    memory_high_water_mb: float
    """The RSS past which new streams are refused (memory_high_water_mb); 0: none."""
    listen: str
    """address:port of the gRPC door."""
    microphone: MicrophoneStatus = field(default_factory=MicrophoneStatus)
    speaker: SpeakerStatus = field(default_factory=SpeakerStatus)


def model_status(entry: ModelEntry, now: float) -> ModelStatus:
    """The status of one registry entry (`now` on the monotonic clock)."""
    loaded = entry.state is ModelState.LOADED
    return ModelStatus(name=entry.name, pipeline=entry.pipeline, service=entry.service, state=entry.state.value,
                       memory_mb=entry.memory_mb, reason=entry.reason,
                       idle_s=now - entry.last_used if loaded else 0.0)


def _health(serving: bool) -> str:
    return "SERVING" if serving else "NOT_SERVING"


def server_status(core: ServiceContext, local: LocalAudioStatus | None = None) -> ServerStatus:
    """The status of the running server (`local`: its microphone and speaker, None if it runs neither)."""
    now = time.monotonic()
    admission = core.admission
    local = local or LocalAudioStatus()
    return ServerStatus(
        version=__version__, pid=os.getpid(), uptime_s=now - core.started,
        health=_health(core.is_serving()) if core.is_serving() or not admission.draining else "DRAINING",
        services=[ServiceHealth(n, _health(core.is_serving(n))) for n in core.health_names() if n],
        models=[model_status(e, now) for e in core.registry.entries.values()],
        streams=[StreamCount(s, admission.active.get(s, 0), admission.limits.get(s, 0))
                 for s in sorted({*admission.active, *admission.limits})],
        memory_budget_mb=core.registry.budget_mb,
        memory_available_mb=available_mb(),
        rss_mb=rss_mb(),
        memory_high_water_mb=admission.high_water_mb,
        listen=f"{core.settings.listen_address}:{core.settings.riva_speech_api_port}",
        microphone=local.microphone, speaker=local.speaker,
    )
