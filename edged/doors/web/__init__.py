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
    """The HTTP server of the daemon: `start()` binds (OSError when it cannot), `stop()` closes."""

    def __init__(self, ctx: ServiceContext, status: Callable[[], dict[str, Any]]) -> None:
        settings = ctx.settings
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

    async def start(self, settings: Settings) -> None:
        """Listen on listen_address:http_port; OSError if the port cannot be bound."""
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.listen_address, settings.http_port,
                           ssl_context=ssl_context(settings), shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise

    async def stop(self) -> None:
        """Close the listening socket and the open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
