"""What the gRPC door of a running server holds: the services, the gRPC server and its health,
the machine's microphone and speaker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2

from edged.config import Settings
from edged.service.context import ServiceContext
from edged.service.status import ServerStatus, server_status

if TYPE_CHECKING:
    from edged.doors.local.audio import LocalAudio


@dataclass
class ServerContext:
    """The speech services and the gRPC server their servicers are added to."""

    services: ServiceContext
    server: grpc.aio.Server
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)  # type: ignore[attr-defined,name-defined]  # grpc-stubs lack health.aio
    local_audio: LocalAudio | None = None
    """The machine's microphone and speaker (None when config.sh turns both off)."""
    _published: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def settings(self) -> Settings:
        """The server's settings."""
        return self.services.settings

    def status(self) -> ServerStatus:
        """The server's status, its microphone and speaker included."""
        return server_status(self.services, self.local_audio.status() if self.local_audio else None)

    async def publish_health(self) -> None:
        """Set every health name to SERVING or NOT_SERVING from the current state, where it changed."""
        for name in self.services.health_names():
            status = (health_pb2.HealthCheckResponse.SERVING if self.services.is_serving(name)
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            if self._published.get(name) != status:  # Watch clients hear of changes only
                self._published[name] = status
                await self.health.set(name, status)


ServiceInstaller = Callable[[ServerContext], list[str]]
"""Adds servicers to `ctx.server`; returns the full gRPC service names it registered."""
