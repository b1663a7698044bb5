"""Ask a server's standard gRPC health service, as grpc_health_probe does."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edged.config import Settings


def local_address(listen_address: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on `listen_address:port`."""
    host = listen_address
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def channel_credentials(settings: Settings, client_cert: Path | None = None,
                        client_key: Path | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials for reaching the server config.sh describes, or None for plaintext.

    The server's certificate is trusted through ssl_root_cert, or itself if self-signed;
    under mutual TLS the client presents `client_cert` and `client_key`.
    """
    if settings.ssl_server_cert is None:
        return None
    root = settings.ssl_root_cert or settings.ssl_server_cert
    return grpc.ssl_channel_credentials(_read(root), _read(client_key), _read(client_cert))


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A blocking channel to `address`, over TLS when `credentials` are given."""
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)


def check_health(address: str, service: str = "", timeout: float = 3.0,
                 credentials: grpc.ChannelCredentials | None = None) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN... or the gRPC error code (UNAVAILABLE, ...)."""
    with open_channel(address, credentials) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
