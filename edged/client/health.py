"""Ask a server's standard gRPC health service, as grpc_health_probe does."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def local_address(listen_address: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on `listen_address:port`."""
    host = listen_address
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def check_health(address: str, service: str = "", timeout: float = 3.0) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN... or the gRPC error code (UNAVAILABLE, ...)."""
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
