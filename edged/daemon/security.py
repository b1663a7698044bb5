"""TLS and mutual TLS (Riva's ssl_* settings) and the optional API key in call metadata."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from edged.config import Settings
from edged.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
"""Services callable without the API key: probes (kubelet, grpc_health_probe) send no metadata."""


def _read(path: Any, name: str) -> bytes:
    try:
        return bytes(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{name}={path} cannot be read ({exc.strerror}); fix the path in config.sh.") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the ssl_* settings, or None for plaintext; ConfigError if incomplete."""
    cert, key, root = settings.ssl_server_cert, settings.ssl_server_key, settings.ssl_root_cert
    if cert is None and key is None:
        if settings.ssl_use_mutual_auth:
            raise ConfigError("ssl_use_mutual_auth=true needs ssl_server_cert, ssl_server_key and "
                              "ssl_root_cert; set them in config.sh.")
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both ssl_server_cert and ssl_server_key; set the missing one "
                          "in config.sh.")
    if settings.ssl_use_mutual_auth and root is None:
        raise ConfigError("ssl_use_mutual_auth=true needs ssl_root_cert (the CA that signs client "
                          "certificates); set it in config.sh.")
    return grpc.ssl_server_credentials(
        [(_read(key, "ssl_server_key"), _read(cert, "ssl_server_cert"))],
        root_certificates=_read(root, "ssl_root_cert") if settings.ssl_use_mutual_auth and root else None,
        require_client_auth=settings.ssl_use_mutual_auth,
    )


def is_loopback(host: str) -> bool:
    """True if `host` is a loopback address or localhost."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: Settings) -> None:
    """Log a warning when listening beyond loopback with neither TLS nor an API key."""
    if not is_loopback(settings.listen_address) and settings.ssl_server_cert is None and not settings.api_key:
        _LOGGER.warning(
            "Listening on %s without TLS or an API key: anyone on the network can use this server; "
            "set ssl_server_cert/ssl_server_key or api_key in config.sh, or "
            "listen_address=127.0.0.1.", settings.listen_address)


def _presented_key(metadata: tuple[tuple[str, Any], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
            return value[7:].strip()
        if key == "x-api-key" and isinstance(value, str):
            return value.strip()
    return None


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with the configured key (`authorization: Bearer KEY` or `x-api-key`)."""

    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode("utf-8")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Check the call's metadata before the servicer sees it."""
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").rsplit("/", 1)[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        presented = _presented_key(handler_call_details.invocation_metadata)
        if presented is not None and hmac.compare_digest(presented.encode("utf-8"), self._key):
            return handler
        # Never log the presented value: a near-miss key is still a secret.
        _LOGGER.info("Refused %s: %s API key", handler_call_details.method,
                     "no" if presented is None else "wrong")
        return _refusal(handler, "A valid API key is required: send `authorization: Bearer KEY` "
                                 "metadata with the server's api_key.")
