"""TLS, mutual TLS and the API key against a real server process; no secret in the log."""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edged.client.health import channel_credentials, check_health
from edged.client.status import api_metadata
from edged.config import load_settings
from edged.daemon.exits import EXIT_BOOT_FAILURE
from edged.daemon.security import is_loopback, warn_if_exposed
from edged.proto import edged_pb2, edged_pb2_grpc
from tests.test_server import deployed_tiny, free_port, start_server, write_config

__all__ = ["deployed_tiny"]  # a fixture this module uses
pytestmark = pytest.mark.timeout(60)

API_KEY = "s3cret-Key-0123456789"


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          ca: bool = False, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all PEM."""
    import ipaddress

    out = tmp_path / "pki"
    out.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edged test CA", ca_key, None, ca=True)
    _write(out / "ca", ca, ca_key)
    for name, sans in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(out / name, _cert(f"edged test {name}", key, (ca.subject, ca_key), sans=sans), key)
    return out


def _tls(pki: Path, mutual: bool) -> str:
    return (f'ssl_server_cert="{pki / "server.crt"}"\nssl_server_key="{pki / "server.key"}"\n'
            f'ssl_root_cert="{pki / "ca.crt"}"\nssl_use_mutual_auth={str(mutual).lower()}\n')


def _status_code(address: str, creds: grpc.ChannelCredentials | None, metadata: list[tuple[str, str]]) -> str:
    channel = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    with channel:
        try:
            edged_pb2_grpc.EdgedStub(channel).Status(edged_pb2.StatusRequest(), timeout=5, metadata=metadata)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "OK"


def _serve(tmp_path: Path, extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    cfg = write_config(tmp_path, port, extra)
    return start_server(cfg, tmp_path / "log"), port, cfg


def _wait_serving(proc: subprocess.Popen[bytes], address: str, creds: grpc.ChannelCredentials | None) -> None:
    deadline = time.monotonic() + 30
    while check_health(address, "", 1, creds) != "SERVING":
        assert proc.poll() is None and time.monotonic() < deadline, "not SERVING over TLS"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tls_and_api_key(tmp_path: Path, deployed_tiny: Path, pki: Path) -> None:
    """Over TLS: no key or a wrong key is UNAUTHENTICATED, the right one works, health needs none."""
    proc, port, cfg = _serve(tmp_path, _tls(pki, mutual=False) + f'api_key="{API_KEY}"\n')
    address = f"127.0.0.1:{port}"
    settings, _ = load_settings(cfg)
    creds = channel_credentials(settings)
    try:
        _wait_serving(proc, address, creds)
        assert check_health(address, "", 2) == "UNAVAILABLE"  # plaintext client, TLS server
        assert _status_code(address, creds, []) == "UNAUTHENTICATED"
        assert _status_code(address, creds, api_metadata("wrong")) == "UNAUTHENTICATED"
        assert _status_code(address, creds, [("x-api-key", API_KEY)]) == "OK"
        assert _status_code(address, creds, api_metadata(API_KEY)) == "OK"
    finally:
        _stop(proc)
    log = (tmp_path / "log").read_text()
    assert "(TLS)" in log and "wrong API key" in log
    assert API_KEY not in log and "wrong\n" not in log


def test_mutual_tls_refuses_a_client_without_certificate(tmp_path: Path, deployed_tiny: Path, pki: Path) -> None:
    """With ssl_use_mutual_auth a client without a certificate is refused at the handshake."""
    proc, port, cfg = _serve(tmp_path, _tls(pki, mutual=True))
    address = f"127.0.0.1:{port}"
    settings, _ = load_settings(cfg)
    with_cert = channel_credentials(settings, pki / "client.crt", pki / "client.key")
    try:
        _wait_serving(proc, address, with_cert)
        assert _status_code(address, with_cert, []) == "OK"
        # The TLS handshake fails before any call exists, so gRPC reports UNAVAILABLE.
        assert _status_code(address, channel_credentials(settings), []) == "UNAVAILABLE"
    finally:
        _stop(proc)


def test_mutual_tls_without_root_is_a_boot_failure(tmp_path: Path, deployed_tiny: Path, pki: Path) -> None:
    """ssl_use_mutual_auth without ssl_root_cert: the boot-failure code and the setting to set."""
    extra = f'ssl_server_cert="{pki / "server.crt"}"\nssl_server_key="{pki / "server.key"}"\nssl_use_mutual_auth=true\n'
    proc, _, _ = _serve(tmp_path, extra)
    assert proc.wait(timeout=30) == EXIT_BOOT_FAILURE
    assert "ssl_root_cert" in (tmp_path / "log").read_text()


def test_warning_when_exposed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Beyond loopback with neither TLS nor a key: a warning; with a key or on loopback: none."""
    cfg = tmp_path / "c.sh"
    caplog.set_level(logging.WARNING)
    for text, warned in (('listen_address="0.0.0.0"\n', True), ('listen_address="0.0.0.0"\napi_key=k\n', False),
                         ('listen_address="127.0.0.1"\n', False), ('listen_address="::1"\n', False)):
        cfg.write_text(text)
        caplog.clear()
        warn_if_exposed(load_settings(cfg)[0])
        assert ("without TLS or an API key" in caplog.text) is warned, text
    assert is_loopback("localhost") and not is_loopback("192.168.1.2")


def test_api_key_is_hidden_from_repr(tmp_path: Path) -> None:
    """The settings' repr (what a log line could show) never holds the key."""
    cfg = tmp_path / "c.sh"
    cfg.write_text(f'api_key="{API_KEY}"\n')
    assert API_KEY not in repr(load_settings(cfg)[0])


def test_serving_over_tls_is_reported_by_edged_health(tmp_path: Path, deployed_tiny: Path, pki: Path) -> None:
    """`edged health -c` reads the ssl_* settings and checks over TLS."""
    proc, port, cfg = _serve(tmp_path, _tls(pki, mutual=False))
    try:
        settings, _ = load_settings(cfg)
        creds = channel_credentials(settings)
        _wait_serving(proc, f"127.0.0.1:{port}", creds)
        probe = subprocess.run([sys.executable, "-m", "edged", "health", "-c", str(cfg)],
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0 and "SERVING" in probe.stdout
    finally:
        _stop(proc)



def test_http_door_uses_the_tls_certificates_and_api_key(tmp_path: Path, deployed_tiny: Path, pki: Path) -> None:
    """The HTTP door serves HTTPS/WSS with the gRPC certificates; the key opens it, a minted secret
    opens the realtime WebSocket as the `realtime-token.` subprotocol."""
    import asyncio
    import json
    import ssl

    import requests
    import websockets

    proc, port, cfg = _serve(tmp_path, _tls(pki, mutual=False) + f'api_key="{API_KEY}"\n')
    settings, _ = load_settings(cfg)
    base = f"https://127.0.0.1:{settings.http_port}"
    ca = str(pki / "ca.crt")
    try:
        _wait_serving(proc, f"127.0.0.1:{port}", channel_credentials(settings))
        assert requests.get(f"{base}/v1/models", verify=ca, timeout=10).status_code == 401
        assert requests.get(f"{base}/v1/models", verify=ca, timeout=10,
                            headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert requests.get(f"{base}/v1/models", verify=ca, timeout=10, headers=auth).ok
        for method in ("GET", "POST"):  # enrolled speakers: under the same key
            assert requests.request(method, f"{base}/v1/speakers", verify=ca, timeout=10).status_code == 401
        assert requests.delete(f"{base}/v1/speakers/ada", verify=ca, timeout=10).status_code == 401
        assert requests.get(f"{base}/v1/speakers", verify=ca, timeout=10, headers=auth).json()["data"] == []
        assert requests.delete(f"{base}/v1/speakers/ada", verify=ca, timeout=10, headers=auth).status_code == 404
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{settings.http_port}/v1/models", timeout=5)
        secret = requests.post(f"{base}/v1/realtime/transcription_sessions", json={}, verify=ca, timeout=10,
                               headers=auth).json()["client_secret"]["value"]

        async def first_event() -> tuple[str, str | None]:
            context = ssl.create_default_context(cafile=ca)
            async with websockets.connect(f"wss://127.0.0.1:{settings.http_port}/v1/realtime?intent=transcription",
                                          ssl=context, subprotocols=["realtime", f"realtime-token.{secret}"]) as ws:
                return json.loads(await ws.recv())["type"], ws.subprotocol

        assert asyncio.run(first_event()) == ("conversation.created", "realtime")
    finally:
        _stop(proc)
    assert API_KEY not in (tmp_path / "log").read_text() and secret not in (tmp_path / "log").read_text()
