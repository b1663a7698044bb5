"""Which pages and names the HTTP door and the metrics port answer.

Browsers send any page's requests to any address, so the LAN-facing ports check two headers:
- `Host` must name this server (an IP literal, `localhost`, this machine's host name, or a host of
  `http_allowed_origins`), on every route: a foreign name means DNS rebinding, a hostile page whose
  name was made to resolve to this machine.
- WebSocket upgrades and state-changing requests (POST, PUT, PATCH, DELETE) must come from the
  server's own origin (the `Origin` whose host is the request's `Host`) or one that
  `http_allowed_origins` lists; without `Origin` (the OpenAI and Riva clients, curl) the `Host`
  check above is the whole check. The listed origins get CORS headers, and no one else does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from edged.config import Settings, normal_origin

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""Methods a cross-site page must not send (GET, HEAD and OPTIONS change nothing)."""

CORS_MAX_AGE_S = 600
"""How long a browser may keep a preflight's answer."""


def host_name(host: str) -> str:
    """The name or address in a `Host` value, without port or IPv6 brackets, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_ip_literal(name: str) -> bool:
    """Whether `name` is an IPv4 or IPv6 address (DNS cannot rebind an address)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def machine_names() -> frozenset[str]:
    """This machine's host names in lower case: short, fully qualified, and the short one under
    `.local` (mDNS, how a LAN's browsers usually reach a Jetson)."""
    names = {socket.gethostname(), socket.getfqdn()}
    short = {name.split(".", 1)[0] for name in names if name}
    return frozenset(n.lower() for n in {*names, *short, *(f"{s}.local" for s in short)} if n)


def is_websocket(request: web.BaseRequest) -> bool:
    """Whether the request asks to upgrade to a WebSocket."""
    return request.headers.get("Upgrade", "").lower() == "websocket"


@dataclass(frozen=True)
class OriginPolicy:
    """The origins and host names a server answers, and the refusal of anything else."""

    allowed_origins: frozenset[str]
    """`http_allowed_origins`, normalised (`scheme://host[:port]`)."""
    names: frozenset[str]
    """Host names (not addresses) this server answers to."""

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginPolicy:
        """This machine's names plus `http_allowed_origins` and their hosts."""
        origins = frozenset(settings.http_allowed_origins)
        listed = {host_name(o.split("://", 1)[1]) for o in origins}
        return cls(origins, machine_names() | listed | {"localhost"})

    def host_refusal(self, host: str | None) -> str | None:
        """Why a request with this `Host` is refused (None: it names this server). No `Host` at
        all is an HTTP/1.0 client such as a load balancer's check, never a browser."""
        if not host:
            return None
        name = host_name(host)
        if is_ip_literal(name) or name in self.names or name.endswith(".localhost"):
            return None
        return (f"Host {host!r} is not a name of this server; add its origin to http_allowed_origins "
                "in config.sh if it is (a reverse proxy's name, for example).")

    def origin_refusal(self, request: web.BaseRequest) -> str | None:
        """Why this request is refused (None: it may go on): a foreign `Host` on any request, and
        a foreign `Origin` on a WebSocket upgrade or a state-changing request."""
        refusal = self.host_refusal(request.headers.get("Host"))
        if refusal or not (request.method in STATE_CHANGING or is_websocket(request)):
            return refusal
        origin = request.headers.get("Origin")
        if origin is None or self.allows(origin, request.headers.get("Host", "")):
            return None
        return (f"Requests from the web page at {origin!r} are refused: only the server's own pages "
                "and the origins in http_allowed_origins (config.sh) may send them.")

    def allows(self, origin: str, host: str) -> bool:
        """Whether a page of `origin` may send state-changing requests to a server reached as `host`."""
        try:
            normal = normal_origin(origin)
        except ValueError:  # "null" (a sandboxed page, a file) or garbage
            return False
        return normal in self.allowed_origins or normal.split("://", 1)[1] == host.strip().lower()

    def cors_headers(self, request: web.BaseRequest) -> Mapping[str, str]:
        """CORS headers for a listed origin (none for anyone else, the server's own pages included:
        they need none)."""
        origin = request.headers.get("Origin", "")
        try:
            if normal_origin(origin) not in self.allowed_origins:
                return {}
        except ValueError:
            return {}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS":
            headers.update({
                "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "Authorization, Content-Type"),
                "Access-Control-Max-Age": str(CORS_MAX_AGE_S)})
        return headers

    def is_preflight(self, request: web.BaseRequest) -> bool:
        """Whether this is a CORS preflight from a listed origin (answered 204 with CORS headers)."""
        return (request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
                and bool(self.cors_headers(request)))
