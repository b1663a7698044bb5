"""The HTTP door (aiohttp): Riva's realtime WebSocket API, the OpenAI-compatible audio API and the
browser console, on `http_port`, with the gRPC API's TLS certificates and `api_key`.

Every route only translates to the speech services (`edged.service`); errors go through one map
(`edged.doors.web.errors`). Before any route, the door refuses foreign `Host`s and cross-site pages
(`edged.doors.web.guard`) and, once the daemon drains or stops, new work (503 with `Retry-After`);
malformed requests are answered by `edged.doors.web.connections`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edged.config import Settings
from edged.doors.web.auth import Auth
from edged.doors.web.connections import DoorRunner
from edged.doors.web.console import Console
from edged.doors.web.errors import error_response, http_errors
from edged.doors.web.guard import STATE_CHANGING, OriginPolicy, is_websocket
from edged.doors.web.openai_audio import OpenAiAudioApi
from edged.doors.web.realtime import RealtimeApi
from edged.doors.web.speakers import SpeakersApi
from edged.errors import DrainingError, EdgedError, ForbiddenError
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
        self._ctx = ctx
        self._policy = OriginPolicy.from_settings(settings)
        self._accepting = True
        max_bytes = settings.max_message_mb * 2**20
        auth = Auth(settings.api_key)
        self._app = web.Application(client_max_size=max_bytes, middlewares=[self._admit, http_errors])
        self._app.on_response_prepare.append(self._cors)
        realtime = RealtimeApi(ctx, auth, max_bytes, settings.asr_stream_idle_timeout_s)
        self._app.add_routes(realtime.routes())
        self._app.on_shutdown.append(realtime.close_all)
        self._app.add_routes(OpenAiAudioApi(ctx, auth).routes())
        self._app.add_routes(SpeakersApi(ctx, auth).routes())
        self._app.add_routes(Console(auth, status).routes())
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _admit(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Foreign hosts and pages refused (403); a listed origin's preflight answered; no new
        work (a WebSocket or a state-changing request) once draining or stopping (503)."""
        what = f"{request.method} {request.path}"
        refusal = self._policy.origin_refusal(request)
        if refusal is not None:
            return error_response(ForbiddenError(refusal), what)
        if self._policy.is_preflight(request):
            return web.Response(status=204)
        if request.method in STATE_CHANGING or is_websocket(request):
            try:
                if not self._accepting:
                    raise DrainingError("The server is stopping: no new requests; connect to another replica.")
                self._ctx.admission.refuse_if_draining("HTTP")
            except DrainingError as exc:
                return error_response(exc, what)
        response: web.StreamResponse = await handler(request)
        return response

    async def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        """CORS headers on every answer to a page of a listed origin (before its headers leave)."""
        response.headers.update(self._policy.cors_headers(request))

    @property
    def app(self) -> web.Application:
        """The aiohttp application."""
        return self._app

    async def start(self) -> None:
        """Listen on listen_address:http_port; EdgedError naming http_port if it cannot be bound."""
        settings = self._settings
        self._runner = DoorRunner(self._app, "http")
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.listen_address, settings.http_port,
                           ssl_context=ssl_context(settings))
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
        """Refuse new work (503) while the open requests and conversations finish."""
        self._accepting = False

    async def stop(self, grace_s: float) -> None:
        """Close the listening socket and the open connections (their sessions end)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
