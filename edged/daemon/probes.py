"""The HTTP side port (Triton's layout): `/metrics`, `/v2/health/live` and `/v2/health/ready`,
and `POST /v2/drain` (edged's own: a pod's preStop hook, through `edged drain`, makes the server
NOT_SERVING and refuse new streams while open ones finish; `DELETE /v2/drain`, through `edged
drain --undo`, serves again). Drain is answered only to a client on this machine (loopback or the
server's own address), since the port may face the LAN, and, as on the HTTP door, never to a
foreign `Host` or a cross-site page (edged.doors.web.guard).

Served by aiohttp (the HTTP door's framework) on the daemon's one event loop, with malformed
requests answered as the client's mistake (edged.doors.web.connections).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edged.doors.common import log_refusal
from edged.doors.web.connections import DoorRunner
from edged.doors.web.guard import OriginPolicy

_LOGGER = logging.getLogger(__name__)

SERVER = "edged"
"""The Server header of every answer: `edged health` trusts a readiness answer only from edged."""


class HttpEndpoint:
    """Answers metrics and liveness/readiness probes; `ready()` says whether the server serves."""

    def __init__(self, ready: Callable[[], bool], drain: Callable[[bool], None] | None = None,
                 policy: OriginPolicy | None = None) -> None:
        """`drain(True)` drains the server, `drain(False)` serves again; `policy` refuses foreign
        hosts and pages (None: no check)."""
        self._ready = ready
        self._drain = drain
        self._policy = policy
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen; OSError if the port cannot be bound."""
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = DoorRunner(app, "metrics")
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close the open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def respond(self, method: str, path: str, local: bool = True) -> tuple[int, str, bytes]:
        """Status, content type and body for one request (`local`: the client is on this machine)."""
        path = path.split("?", 1)[0]
        if path == "/v2/drain" and self._drain is not None:
            if method not in ("POST", "DELETE"):
                return 405, "text/plain", b"method not allowed: POST drains, DELETE serves again\n"
            if not local:
                return 403, "text/plain", b"drain is only answered on this machine\n"
            self._drain(method == "POST")
            return 200, "text/plain", b"draining\n" if method == "POST" else b"serving\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest()
        if path == "/v2/health/live":
            return 200, "text/plain", b"live\n"
        if path == "/v2/health/ready":
            return (200, "text/plain", b"ready\n") if self._ready() else (503, "text/plain", b"not ready\n")
        return 404, "text/plain", b"not found\n"

    async def _handle(self, request: web.Request) -> web.Response:
        """Any request on the port: a foreign host or page refused, else `respond` says what
        answers it (HEAD: aiohttp sends no body); refusals logged and counted."""
        refusal = self._policy.origin_refusal(request) if self._policy is not None else None
        if refusal is not None:
            status, ctype = 403, "application/json"
            body = json.dumps({"error": refusal}).encode() + b"\n"
        else:
            status, ctype, body = self.respond(request.method, request.path, _is_local(request))
        if 400 <= status < 500:
            log_refusal(_LOGGER, "metrics", HTTPStatus(status).name.lower(),
                        f"{request.method} {request.path}", str(status), refusal or body.decode().strip())
        return web.Response(status=status, body=body, headers={"Server": SERVER, "Content-Type": ctype})


def _is_local(request: web.Request) -> bool:
    """Whether the peer is on this machine: a loopback address or the address it connected to."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    own = transport.get_extra_info("sockname") if transport is not None else None
    if not peer:
        return False
    host = str(peer[0]).removeprefix("::ffff:")
    return ipaddress.ip_address(host).is_loopback or (own is not None and peer[0] == own[0])
