"""Ask a server's standard gRPC health service, as grpc_health_probe does, or its readiness.

`edged health` is a probe that scripts run often, and importing grpc takes longer than the rest of
it together. So the whole server's health on this machine is read from the readiness endpoint of
its metrics port (`/v2/health/ready`: 200 exactly when gRPC health says SERVING for the empty
service name, the same state of the same process; Kubernetes probes it too) over a plain socket,
where config.sh has one and no TLS; otherwise, and where something else answers there, from gRPC. This
module imports grpc only when it opens a channel, and writes the two one-field health messages
itself rather than importing the protobuf runtime and grpc_health's descriptors for them.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

    from edged.config import Settings

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING_STATUS = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
"""grpc.health.v1.HealthCheckResponse.ServingStatus, by number."""


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
    import grpc

    root = settings.ssl_root_cert or settings.ssl_server_cert
    return grpc.ssl_channel_credentials(_read(root), _read(client_key), _read(client_cert))


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None,
                 options: list[tuple[str, int]] | None = None) -> grpc.Channel:
    """A blocking channel to `address`, over TLS when `credentials` are given."""
    import grpc

    if credentials is None:
        return grpc.insecure_channel(address, options)
    return grpc.secure_channel(address, credentials, options)


def encode_check_request(service: str) -> bytes:
    """A HealthCheckRequest: field 1, `service`, a string (left out when empty, as proto3 does)."""
    name = service.encode("utf-8")
    if not name:
        return b""
    size, length = len(name), bytearray()
    while size > 0x7F:
        length.append(0x80 | (size & 0x7F))
        size >>= 7
    length.append(size)
    return b"\x0a" + bytes(length) + name


def decode_check_response(data: bytes) -> str:
    """The status name in a HealthCheckResponse (field 1, an enum); other fields are skipped."""
    status, pos = 0, 0

    def varint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            if field == 1:
                status = value
        elif wire == 2:
            size = varint()  # not `pos += varint()`: that would add to pos as it was before the length
            pos += size
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unexpected wire type {wire} in a HealthCheckResponse")
    return SERVING_STATUS[status] if status < len(SERVING_STATUS) else str(status)


def check_ready(address: str, timeout: float = 3.0) -> str | None:
    """SERVING or NOT_SERVING from edged's readiness endpoint at `address` (its metrics port),
    UNAVAILABLE if nothing listens there, DEADLINE_EXCEEDED if it does not answer in time, None
    if something other than edged answers."""
    host, port = address.rsplit(":", 1)
    request = f"GET /v2/health/ready HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    reply = b""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(request.encode("latin-1"))
            while b"\r\n\r\n" not in reply and (data := sock.recv(4096)):
                reply += data
    except TimeoutError:
        return "DEADLINE_EXCEEDED"
    except ConnectionRefusedError:
        return "UNAVAILABLE"
    except OSError:
        return None
    lines = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    status = lines[0].split(" ")
    if headers.get("server") != "edged" or len(status) < 2:
        return None
    return {"200": "SERVING", "503": "NOT_SERVING"}.get(status[1])


def server_health(settings: Settings, service: str = "", timeout: float = 3.0,
                  credentials: grpc.ChannelCredentials | None = None, address: str | None = None) -> str:
    """The health of the server config.sh describes (or the one at `address`), as `check_health`
    names it: by its readiness endpoint where that says the same, else by gRPC.

    The server opens its metrics port before its gRPC port, and cannot run without it: where
    nothing listens there, nothing serves on the gRPC port either (UNAVAILABLE), which a script
    waiting for the server to come up learns without importing grpc at each try.
    """
    if address is None and not service and settings.metrics_port and settings.ssl_server_cert is None:
        state = check_ready(local_address(settings.listen_address, settings.metrics_port), timeout)
        if state is not None:
            return state
    grpc_address = address or local_address(settings.listen_address, settings.riva_speech_api_port)
    return check_health(grpc_address, service, timeout, credentials)


def check_health(address: str, service: str = "", timeout: float = 3.0,
                 credentials: grpc.ChannelCredentials | None = None) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN... or the gRPC error code (UNAVAILABLE, ...)."""
    import grpc

    # A channel of its own: in grpc's shared pool, a connection refused before the server was up
    # holds every later check to the same address back for a reconnect backoff of 1 s and more.
    with open_channel(address, credentials, [("grpc.use_local_subchannel_pool", 1)]) as channel:
        check = channel.unary_unary(HEALTH_CHECK, request_serializer=None, response_deserializer=None)
        try:
            reply = check(encode_check_request(service), timeout=timeout)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return decode_check_response(reply)
