"""The HTTP door's API key: `Authorization: Bearer KEY`, or a short-lived client secret minted by
the realtime session endpoints and presented as the `realtime-token.SECRET` WebSocket subprotocol."""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from aiohttp import web

from edged.doors.web.errors import Unauthorized

TOKEN_PREFIX = "realtime-token."
SECRET_TTL_S = 600.0
"""How long a minted client secret opens WebSockets."""


class Auth:
    """Checks requests against `api_key` (nothing to check when it is empty)."""

    def __init__(self, api_key: str) -> None:
        self._key = api_key
        self._secrets: dict[str, float] = {}

    def _valid(self, presented: str) -> bool:
        if hmac.compare_digest(presented.encode(), self._key.encode()):
            return True
        now = time.time()
        self._secrets = {s: t for s, t in self._secrets.items() if t > now}
        return any(hmac.compare_digest(presented.encode(), s.encode()) for s in self._secrets)

    @staticmethod
    def _bearer(request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else ""

    def check_http(self, request: web.Request) -> None:
        """Unauthorized unless the request carries the key (or a minted secret) as a bearer token."""
        if self._key and not self._valid(self._bearer(request)):
            raise Unauthorized("This server needs an API key: send `Authorization: Bearer KEY` with "
                               "the server's api_key.")

    def check_ws(self, request: web.Request) -> None:
        """As check_http, or the key or a minted secret in a `realtime-token.` subprotocol."""
        if not self._key:
            return
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        tokens = [p[len(TOKEN_PREFIX):] for p in offered if p.startswith(TOKEN_PREFIX)]
        if not any(self._valid(t) for t in [self._bearer(request), *tokens] if t):
            raise Unauthorized("This server needs an API key: send `Authorization: Bearer KEY` or the "
                               "`realtime-token.SECRET` subprotocol with a secret from the session endpoint.")

    def mint(self) -> dict[str, Any] | None:
        """A new client secret (None when no key is set: the WebSocket needs none)."""
        if not self._key:
            return None
        secret, expires = secrets.token_urlsafe(24), time.time() + SECRET_TTL_S
        self._secrets[secret] = expires
        return {"value": secret, "expires_at": int(expires)}
