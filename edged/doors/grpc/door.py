"""The gRPC server as a door: its port is bound at start-up (so health answers NOT_SERVING while
models load); grpc's own stop refuses new calls and lets open ones finish within the grace."""

from __future__ import annotations

import grpc


class GrpcDoor:
    """The Riva API, edged.v1, health and reflection on `riva_speech_api_port`."""

    name = "gRPC"

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    async def start(self) -> None:
        """Serve on the ports already bound (Server._bind)."""
        await self._server.start()

    async def stop_accepting(self) -> None:
        """Nothing before `stop`: grpc refuses new calls as its stop begins."""

    async def stop(self, grace_s: float) -> None:
        """New calls refused at once, open ones cancelled after `grace_s`."""
        await self._server.stop(grace=grace_s)
