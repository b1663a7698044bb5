"""One map from edged's exceptions to HTTP statuses and error events, for the whole HTTP door.

A user's mistake or a full server is answered with its status and the exception's one sentence
(logged at INFO and counted, through `edged.doors.common.log_refusal`); anything else is a bug:
500, with its traceback in the log. A 503 (draining, stopping) carries `Retry-After`.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from edged.doors.common import log_refusal, printable
from edged.errors import EdgedError

_LOGGER = logging.getLogger(__name__)


class BadInput(EdgedError):
    """The HTTP door itself could not read a request (malformed JSON, unknown event, bad field)."""

    kind = "bad_request"


class Unauthorized(EdgedError):
    """No or a wrong API key."""

    kind = "unauthorized"


class NotJson(EdgedError):
    """A body that is not `application/json` where JSON is expected (a cross-site form's
    `text/plain` POST, for one)."""

    kind = "unsupported_media_type"


_STATUSES = {
    "forbidden": (403, "permission_error"),
    "unsupported_media_type": (415, "invalid_request_error"),
    "unauthorized": (401, "authentication_error"),
    "exhausted": (429, "rate_limit_error"),
    "unknown_model": (404, "not_found_error"),
    "unknown_voice": (404, "not_found_error"),
    "unknown_speaker": (404, "not_found_error"),
    "bad_audio": (400, "invalid_request_error"),
    "bad_request": (400, "invalid_request_error"),
    "unavailable": (503, "server_error"),
    "off": (400, "invalid_request_error"),
    "timeout": (408, "invalid_request_error"),
    "failed": (400, "invalid_request_error"),
}
"""The HTTP status and OpenAI error type of each error kind (edged.errors.KINDS)."""

RETRY_AFTER_S = 5
"""`Retry-After` of a 503: a draining or stopping server; a balancer sends the retry elsewhere."""


def status_for(exc: BaseException) -> tuple[int, str, str]:
    """HTTP status, error type and one-line message that answer `exc`."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return 413, "invalid_request_error", (f"{exc.text}; the server takes at most max_message_mb "
                                              "(config.sh) per request or message.")
    if isinstance(exc, (RequestPayloadError, HttpProcessingError)):
        return 400, "invalid_request_error", f"The request body is malformed: {exc}."
    if isinstance(exc, ConnectionError):  # the client went away mid-answer: nobody to tell
        return 499, "client_closed", "The client closed the connection."
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return exc.status, "invalid_request_error", exc.reason
    if isinstance(exc, EdgedError):
        status, name = _STATUSES.get(exc.kind, _STATUSES["failed"])
        return status, name, str(exc)
    return 500, "server_error", f"The server failed: {type(exc).__name__}: {exc}"


def logged(exc: BaseException, what: str) -> tuple[int, str, str]:
    """`status_for(exc)`, logged the same way for every handler of this door."""
    status, name, message = status_for(exc)
    if status == 500:
        _LOGGER.error("%s failed", printable(what), exc_info=exc)
    else:
        log_refusal(_LOGGER, "http", refusal_kind(exc, status), what, str(status), message)
    return status, name, message


def refusal_kind(exc: BaseException, status: int) -> str:
    """The `kind` label of a refusal: edged's error kind, else the HTTP status's name."""
    if isinstance(exc, EdgedError):
        return exc.kind
    try:
        return HTTPStatus(status).name.lower()
    except ValueError:
        return "client_closed" if status == 499 else str(status)


@web.middleware
async def http_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method, body too large) in this door's format."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc, f"{request.method} {request.path}")


def error_event(exc: BaseException, what: str) -> dict[str, Any]:
    """The realtime API's `error` event for `exc`."""
    status, name, message = logged(exc, what)
    return {"type": "error", "event_id": f"event_{uuid.uuid4().hex[:24]}",
            "error": {"type": name, "code": str(status), "message": message}}


def error_response(exc: BaseException, what: str) -> web.Response:
    """An HTTP error response for `exc` (OpenAI's error body; `detail` for Riva's clients)."""
    status, name, message = logged(exc, what)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return web.json_response({"error": {"message": message, "type": name, "code": status},
                              "detail": message}, status=status, headers=headers)
