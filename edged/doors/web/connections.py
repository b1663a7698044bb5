"""aiohttp's connections with malformed requests answered as the client's mistake.

aiohttp answers a request it cannot parse (a bad request line, a header too long, a broken body
framing) with 400 and logs an ERROR traceback each time: a LAN scanner or a slowloris run would
fill the log. `DoorRunner` serves an application with `ClientErrorHandler`, which answers 431
for a header (or request line) over the limit, 400 for the rest, with a one-line JSON error,
logged and counted as every door's refusals are (`edged.doors.common.log_refusal`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from edged.doors.common import log_refusal

_LOGGER = logging.getLogger(__name__)

MAX_LINE_BYTES = 8190
"""Longest request line, header line and header field (aiohttp's default, stated here)."""
MAX_HEADERS = 128
"""Most header fields in one request."""


def malformed_answer(exc: HttpProcessingError) -> tuple[int, str]:
    """Status and one sentence for a request aiohttp's parser refused."""
    if isinstance(exc, LineTooLong):
        return 431, (f"The request line or a header is longer than {MAX_LINE_BYTES} bytes; "
                     "the server reads no more.")
    if "Too many headers" in exc.message:
        return 431, f"The request has more than {MAX_HEADERS} headers; the server reads no more."
    first = (exc.message.strip().splitlines() or ["unreadable"])[0].rstrip(":.")
    return 400, f"The request is not valid HTTP/1.1: {first}."


class ClientErrorHandler(RequestHandler):
    """One connection: as aiohttp's, but a malformed request is the client's mistake, not the server's."""

    def __init__(self, manager: web.Server, *, door: str, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._door = door

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A parse error: its status, one INFO line, a count; anything else as aiohttp does (a bug)."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        status, sentence = malformed_answer(exc)
        log_refusal(_LOGGER, self._door, HTTPStatus(status).name.lower(),
                    f"Malformed request from {request.remote}", str(status), sentence)
        if request.writer.output_size > 0:  # an answer had begun: the connection is all there is to end
            raise ConnectionError("The response had begun when the request turned out malformed.")
        body = {"error": {"message": sentence, "type": "invalid_request_error", "code": status}, "detail": sentence}
        response = web.Response(status=status, text=json.dumps(body), content_type="application/json")
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's server that makes a `ClientErrorHandler` per connection."""

    def __init__(self, made: web.Server, door: str, **handler_args: Any) -> None:
        super().__init__(made.request_handler, request_factory=made.request_factory,
                         handler_cancellation=made.handler_cancellation, **handler_args)
        self._door = door
        self._handler_args = handler_args

    def __call__(self) -> RequestHandler:
        return ClientErrorHandler(self, door=self._door, loop=asyncio.get_running_loop(), **self._handler_args)


class DoorRunner(web.AppRunner):
    """`web.AppRunner` whose connections are `ClientErrorHandler`s (the door names the counter's
    `door` label), with no access log, the header limits above, and `shutdown_timeout` seconds
    for open requests when it stops."""

    def __init__(self, app: web.Application, door: str, shutdown_timeout: float = 1.0) -> None:
        super().__init__(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout)
        self._door = door

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts and freezes the application
        return _Server(made, self._door, access_log=None, max_line_size=MAX_LINE_BYTES,
                       max_field_size=MAX_LINE_BYTES, max_headers=MAX_HEADERS)
