"""One map from edged's exceptions to gRPC status codes, for every servicer.

A user's mistake or a full server is answered with its code and the exception's one sentence
(logged at INFO); anything else is a bug: INTERNAL, with its traceback in the log.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from edged.errors import (
    AudioFormatError,
    DrainingError,
    EdgedError,
    FeatureOffError,
    ModelDoesNotFitError,
    ModelNotFoundError,
    ModelStateError,
    RequestError,
    ResourceExhaustedError,
    TtsRequestError,
    UnknownVoiceError,
)

_LOGGER = logging.getLogger(__name__)

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelDoesNotFitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnknownVoiceError, grpc.StatusCode.NOT_FOUND),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (AudioFormatError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (TtsRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelStateError, grpc.StatusCode.UNAVAILABLE),
    (DrainingError, grpc.StatusCode.UNAVAILABLE),
    (FeatureOffError, grpc.StatusCode.FAILED_PRECONDITION),
    (EdgedError, grpc.StatusCode.FAILED_PRECONDITION),
)
"""First match wins: subclasses before their bases."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message that answer `exc`."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"The server failed: {type(exc).__name__}: {exc}"


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> NoReturn:
    """End the call with the status for `exc`, logged the same way for every servicer (`what`
    names the request: "ASR stream", "TTS request", ...)."""
    if isinstance(exc, grpc.aio.AbortError):  # already aborted below
        raise exc
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        _LOGGER.error("%s failed", what, exc_info=exc)
    else:
        _LOGGER.info("%s refused (%s): %s", what, code.name, message)
    await context.abort(code, message)
    raise AssertionError("not reached: abort raises")
