"""One map from edged's exceptions to gRPC status codes, for every servicer.

A user's mistake or a full server is answered with its code and the exception's one sentence
(logged at INFO); anything else is a bug: INTERNAL, with its traceback in the log.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from edged.doors.common import log_refusal, printable
from edged.errors import EdgedError

_LOGGER = logging.getLogger(__name__)

_CODES = {
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unknown_model": grpc.StatusCode.NOT_FOUND,
    "unknown_voice": grpc.StatusCode.NOT_FOUND,
    "unknown_speaker": grpc.StatusCode.NOT_FOUND,
    "bad_audio": grpc.StatusCode.INVALID_ARGUMENT,
    "bad_request": grpc.StatusCode.INVALID_ARGUMENT,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "off": grpc.StatusCode.FAILED_PRECONDITION,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "unsupported_media_type": grpc.StatusCode.INVALID_ARGUMENT,
    "failed": grpc.StatusCode.FAILED_PRECONDITION,
}
"""The status of each error kind (edged.errors.KINDS; any other: FAILED_PRECONDITION)."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message that answer `exc`."""
    if isinstance(exc, EdgedError):
        return _CODES.get(exc.kind, grpc.StatusCode.FAILED_PRECONDITION), str(exc)
    return grpc.StatusCode.INTERNAL, f"The server failed: {type(exc).__name__}: {exc}"


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> NoReturn:
    """End the call with the status for `exc`, logged the same way for every servicer (`what`
    names the request: "ASR stream", "TTS request", ...)."""
    if isinstance(exc, grpc.aio.AbortError):  # already aborted below
        raise exc
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        _LOGGER.error("%s failed", printable(what), exc_info=exc)
    else:
        kind = exc.kind if isinstance(exc, EdgedError) else "failed"
        log_refusal(_LOGGER, "grpc", kind, what, code.name, message)
    await context.abort(code, message)
    raise AssertionError("not reached: abort raises")
