"""The browser console: static files from the package (no build step) and a small JSON status
built from the same data as edged.v1 Status (the door is handed that function, it does not own it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from edged.doors.web.auth import Auth
from edged.doors.web.errors import error_response

STATIC = Path(__file__).parent / "static"


class Console:
    """GET / (the page), /static/* (its scripts) and /v1/edged/status (health, models, streams)."""

    def __init__(self, auth: Auth, status: Callable[[], dict[str, Any]]) -> None:
        self._auth = auth
        self._status = status

    def routes(self) -> list[web.AbstractRouteDef]:
        """The aiohttp routes of the console."""
        return [web.get("/", self.index), web.get("/v1/edged/status", self.status),
                web.static("/static", STATIC)]

    async def index(self, request: web.Request) -> web.FileResponse:
        """The console page (its own API calls carry the key, so the page itself is open)."""
        return web.FileResponse(STATIC / "index.html")

    async def status(self, request: web.Request) -> web.Response:
        """The server's status as JSON (edged.v1 StatusResponse's fields)."""
        try:
            self._auth.check_http(request)
            return web.json_response(self._status())
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Status")
