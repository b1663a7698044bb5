"""The HTTP side port (Triton's layout): `/metrics`, `/v2/health/live` and `/v2/health/ready`,
and `POST /v2/drain` (edged's own: a pod's preStop hook, through `edged drain`, makes the server
NOT_SERVING and refuse new streams while open ones finish). Drain is answered only to a client on
this machine (loopback or the server's own address), since the port may face the LAN.

A few lines over asyncio streams: the daemon's one event loop serves it, no web framework.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

_LOGGER = logging.getLogger(__name__)
_READ_TIMEOUT_S = 5.0
SERVER = "edged"
"""The Server header of every answer: `edged health` trusts a readiness answer only from edged."""


class HttpEndpoint:
    """Answers metrics and liveness/readiness probes; `ready()` says whether the server serves."""

    def __init__(self, ready: Callable[[], bool], drain: Callable[[], None] | None = None) -> None:
        self._ready = ready
        self._drain = drain
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen; OSError if the port cannot be bound."""
        self._server = await asyncio.start_server(self._handle, host, port)

    async def stop(self) -> None:
        """Stop listening and close the listening socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, method: str, path: str, local: bool = True) -> tuple[int, str, bytes]:
        """Status, content type and body for one request (`local`: the client is on this machine)."""
        path = path.split("?", 1)[0]
        if path == "/v2/drain" and self._drain is not None:
            if method != "POST":
                return 405, "text/plain", b"method not allowed\n"
            if not local:
                return 403, "text/plain", b"drain is only answered on this machine\n"
            self._drain()
            return 200, "text/plain", b"draining\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest()
        if path == "/v2/health/live":
            return 200, "text/plain", b"live\n"
        if path == "/v2/health/ready":
            return (200, "text/plain", b"ready\n") if self._ready() else (503, "text/plain", b"not ready\n")
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            method, path, _ = head.decode("latin-1").split(" ", 2)
            status, ctype, body = self.respond(method, path, _is_local(writer))
            reason = {
                200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"
            }[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError) as exc:
            _LOGGER.debug("bad HTTP request: %s", exc)
        finally:
            writer.close()


def _is_local(writer: asyncio.StreamWriter) -> bool:
    """Whether the peer is on this machine: a loopback address or the address it connected to."""
    peer = writer.get_extra_info("peername")
    own = writer.get_extra_info("sockname")
    if not peer:
        return False
    host = str(peer[0]).removeprefix("::ffff:")
    return ipaddress.ip_address(host).is_loopback or (bool(own) and peer[0] == own[0])
