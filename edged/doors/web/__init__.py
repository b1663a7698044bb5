"""The HTTP door (aiohttp): Riva's realtime WebSocket API, the OpenAI-compatible audio API and the
browser console, on `http_port`, with the gRPC API's TLS certificates and `api_key`.

Every route only translates to the speech services (`edged.service`); errors go through one map
(`edged.doors.web.errors`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edged.config import Settings
from edged.doors.web.auth import Auth
from edged.doors.web.console import Console
from edged.doors.web.errors import http_errors
from edged.doors.web.openai_audio import OpenAiAudioApi
from edged.doors.web.realtime import RealtimeApi
from edged.errors import EdgedError
from edged.service.context import ServiceContext

_LOGGER = logging.getLogger(__name__)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS from the gRPC API's certificates (None for plaintext); mutual TLS as configured."""
    if settings.ssl_server_cert is None or settings.ssl_server_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.ssl_server_cert), str(settings.ssl_server_key))
    if settings.ssl_use_mutual_auth and settings.ssl_root_cert is not None:
        context.load_verify_locations(str(settings.ssl_root_cert))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class WebDoor:
    """The HTTP server of the daemon: `start()` binds, `stop()` closes."""

    name = "HTTP"

    def __init__(self, ctx: ServiceContext, status: Callable[[], dict[str, Any]]) -> None:
        settings = ctx.settings
        self._settings = settings
        max_bytes = settings.max_message_mb * 2**20
        auth = Auth(settings.api_key)
        self._app = web.Application(client_max_size=max_bytes, middlewares=[http_errors])
        realtime = RealtimeApi(ctx, auth, max_bytes, settings.asr_stream_idle_timeout_s)
        self._app.add_routes(realtime.routes())
        self._app.on_shutdown.append(realtime.close_all)
        self._app.add_routes(OpenAiAudioApi(ctx, auth).routes())
        self._app.add_routes(Console(auth, status).routes())
        self._runner: web.AppRunner | None = None

    @property
    def app(self) -> web.Application:
        """The aiohttp application."""
        return self._app

    async def start(self) -> None:
        """Listen on listen_address:http_port; EdgedError naming http_port if it cannot be bound."""
        settings = self._settings
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.listen_address, settings.http_port,
                           ssl_context=ssl_context(settings), shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise EdgedError(
                f"Cannot listen on {settings.listen_address}:{settings.http_port} for HTTP ({exc.strerror}); "
                "change http_port in config.sh (http_enabled=false turns it off).") from None
        _LOGGER.info("HTTP (realtime WebSocket, OpenAI audio API, console) on port %d", settings.http_port)

    async def stop_accepting(self) -> None:
        """Nothing before `stop`: new streams are refused by admission once the daemon drains."""

    async def stop(self, grace_s: float) -> None:
        """Close the listening socket and the open connections (their sessions end)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
