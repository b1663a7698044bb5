"""The HTTP door and the metrics port against a hostile browser and sloppy clients, through a real
`edged start` (tiny ASR model): cross-site WebSockets and POSTs refused, a listed origin served
with CORS headers, foreign `Host`s refused (DNS rebinding), `text/plain` speech refused, drain and
its undo seen by `edged status` and the HTTP door, client text escaped in the log, malformed
requests answered (400, 431) with one INFO line and a count, never a traceback."""

from __future__ import annotations

import ast
import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import requests

from edged.backends import BackendOptions
from edged.config import Settings, normal_origin
from edged.doors.common import printable
from edged.doors.web.guard import OriginPolicy, host_name
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from edged.rmir.build import build_rmir
from tests.conftest import tiny_source
from tests.test_server import free_port, serving

ALLOWED = "http://allowed.example:8080"
EVIL = "http://evil.example"


class Daemon:
    """The running server's config, ports and log."""

    def __init__(self, cfg: Path, http: int, metrics: int) -> None:
        self.cfg, self.http, self.metrics = cfg, http, metrics
        self.log = cfg.parent / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def scrape(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10).text

    def edged(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "edged", *args, "-c", str(self.cfg)],
                              check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Iterator[Daemon]:
    """`edged start` with the tiny ASR model, TTS off, one listed origin; its log must hold no traceback."""
    tmp = tmp_path_factory.mktemp("guard")
    rmir = tmp / "tiny-asr.rmir"
    build_rmir(tiny_source(tmp / "src"), RmirRef(rmir))
    deploy(RmirRef(rmir), tmp / "repo" / "models", cpu_target, BackendOptions())
    port, http, metrics = free_port(), free_port(), free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port={metrics}\nhttp_port={http}\nwyoming_enabled=false\nservice_enabled_tts=false\n"
                   f'http_allowed_origins="{ALLOWED}"\n', encoding="utf-8")
    with serving(cfg, port):
        yield Daemon(cfg, http, metrics)


def counter(page: str, door: str, kind: str) -> float:
    """edged_client_errors_total{door,kind} on a /metrics page (0 before the first)."""
    found = re.search(rf'^edged_client_errors_total\{{door="{door}",kind="{kind}"\}} (\S+)$', page, re.M)
    return float(found.group(1)) if found else 0.0


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are, return whatever the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while data := sock.recv(65536):
            reply += data
    return reply



def test_policy_names_and_origins() -> None:
    """Addresses, localhost and listed hosts pass; a foreign name does not; only a listed or the
    server's own origin may change state."""
    policy = OriginPolicy.from_settings(Settings(http_allowed_origins=(ALLOWED,)))
    assert host_name("[::1]:9000") == "::1" and host_name("Example.COM:80") == "example.com"
    for ok in ("127.0.0.1:9000", "[::1]:9000", "10.1.2.3", "localhost:9000", "app.localhost",
               "allowed.example:8080", socket.gethostname(), f"{socket.gethostname().split('.')[0]}.local:9000",
               None, ""):
        assert policy.host_refusal(ok) is None, ok
    refusal = policy.host_refusal("evil.example:9000")
    assert refusal is not None and "http_allowed_origins" in refusal
    assert policy.allows("http://127.0.0.1:9000", "127.0.0.1:9000")
    assert policy.allows("HTTP://Allowed.Example:8080", "127.0.0.1:9000")
    for bad in (EVIL, "null", "http://127.0.0.1:9001", "https://127.0.0.1:9000/x"):
        assert not policy.allows(bad, "127.0.0.1:9000"), bad
    assert printable("a\nb\r\x1b'c") == "a\\nb\\r\\x1b'c"


def test_cross_site_websocket_is_refused_and_a_listed_origin_gets_cors(daemon: Daemon) -> None:
    """A foreign page's WebSocket and POST get 403 naming the setting; the server's own page and a
    listed origin are served, CORS headers only for the listed one."""
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{daemon.url}/v1/realtime?intent=transcription", headers={"Origin": EVIL})
            assert refused.value.status == 403
            for origin in (ALLOWED, daemon.url):
                async with session.ws_connect(f"{daemon.url}/v1/realtime?intent=transcription",
                                              headers={"Origin": origin}) as ws:
                    assert (await ws.receive_json(timeout=10))["type"] == "conversation.created"
            async with session.options(f"{daemon.url}/v1/realtime/transcription_sessions", headers={
                    "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type"}) as preflight:
                assert preflight.status == 204
                assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
                assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
            async with session.post(f"{daemon.url}/v1/realtime/transcription_sessions", json={},
                                    headers={"Origin": ALLOWED}) as listed:
                assert listed.status == 200 and listed.headers["Access-Control-Allow-Origin"] == ALLOWED
            async with session.post(f"{daemon.url}/v1/realtime/transcription_sessions", json={},
                                    headers={"Origin": daemon.url}) as own:
                assert own.status == 200 and "Access-Control-Allow-Origin" not in own.headers
            async with session.post(f"{daemon.url}/v1/realtime/transcription_sessions", json={},
                                    headers={"Origin": EVIL}) as foreign:
                assert foreign.status == 403 and "Access-Control-Allow-Origin" not in foreign.headers
                body = await foreign.json()
                assert "http_allowed_origins" in body["error"]["message"]

    asyncio.run(run())


def test_foreign_host_is_refused_on_every_route_of_both_ports(daemon: Daemon) -> None:
    """DNS rebinding: `Host: evil.example` gets 403 on the console's status, the page and the
    metrics; a cross-site page cannot drain the server; addresses and listed hosts are served."""
    for url in (f"{daemon.url}/v1/edged/status", f"{daemon.url}/", f"http://127.0.0.1:{daemon.metrics}/metrics"):
        foreign = requests.get(url, headers={"Host": "evil.example"}, timeout=10)
        assert foreign.status_code == 403 and "http_allowed_origins" in foreign.text, (url, foreign.text)
    assert requests.get(f"{daemon.url}/v1/edged/status", headers={"Host": "allowed.example:8080"},
                        timeout=10).status_code == 200
    assert requests.get(f"{daemon.url}/v1/edged/status", headers={"Host": f"localhost:{daemon.http}"},
                        timeout=10).status_code == 200
    # HAProxy's `option httpchk GET /v2/health/ready` (tests/test_scaleout.py) sends HTTP/1.0 with no Host.
    assert re.match(rb"HTTP/1\.[01] 200 ", raw_request(daemon.metrics, b"GET /v2/health/ready HTTP/1.0\r\n\r\n"))
    drain = requests.post(f"http://127.0.0.1:{daemon.metrics}/v2/drain", headers={"Origin": EVIL}, timeout=10)
    assert drain.status_code == 403 and "http_allowed_origins" in drain.json()["error"]
    assert requests.get(f"http://127.0.0.1:{daemon.metrics}/v2/health/ready", timeout=10).status_code == 200
    assert counter(daemon.scrape(), "metrics", "forbidden") >= 2


def test_json_only_where_json_is_expected_and_real_clients_pass(daemon: Daemon) -> None:
    """A `text/plain` speech POST (a CSRF simple request) is 415; the OpenAI client's POST, which
    carries no Origin, gets through to the services (TTS is off here: 400 naming the setting)."""
    plain = requests.post(f"{daemon.url}/v1/audio/speech", data='{"input": "hi", "voice": "alloy"}',
                          headers={"Content-Type": "text/plain"}, timeout=10)
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as off:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
    assert "service_enabled_tts" in str(off.value)


def test_drain_is_shown_refuses_new_http_work_and_is_undone(daemon: Daemon) -> None:
    """`edged drain`: `edged status` says DRAINING, a new session or WebSocket gets 503 with
    Retry-After, the status page still answers; `edged drain --undo` serves again."""
    assert "draining" in daemon.edged("drain")
    try:
        assert "DRAINING" in daemon.edged("status")
        refused = requests.post(f"{daemon.url}/v1/realtime/transcription_sessions", json={}, timeout=10)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        assert "draining" in refused.json()["error"]["message"]
        upgrade = requests.get(f"{daemon.url}/v1/realtime?intent=transcription", timeout=10, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert upgrade.status_code == 503
        assert requests.get(f"{daemon.url}/v1/edged/status", timeout=10).json()["health"] == "DRAINING"
        assert requests.get(f"http://127.0.0.1:{daemon.metrics}/v2/health/ready", timeout=10).status_code == 503
    finally:
        assert "serving" in daemon.edged("drain", "--undo")
    assert "SERVING" in daemon.edged("status").splitlines()[0]
    assert requests.post(f"{daemon.url}/v1/realtime/transcription_sessions", json={}, timeout=10).status_code == 200
    assert requests.get(f"http://127.0.0.1:{daemon.metrics}/v2/health/ready", timeout=10).status_code == 200


def test_client_text_cannot_forge_a_log_line(daemon: Daemon) -> None:
    """A `%0a` in a path is logged escaped: no line of the log starts with the forged text."""
    forged = "2026-01-01 00:00:00,000 ERROR edged: FORGED"
    answer = requests.get(f"{daemon.url}/v1/x%0a{forged.replace(' ', '%20')}", timeout=10)
    assert answer.status_code == 404
    log = daemon.log.read_text()
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert f"/v1/x\\n{forged}" in log


def test_malformed_requests_are_one_info_line_and_counted(daemon: Daemon) -> None:
    """A broken header on the HTTP door is 400, a 100 KB header on the metrics port 431: each one
    INFO line and a count in edged_client_errors_total, no traceback (the fixture checks the log)."""
    before = daemon.scrape()
    bad = raw_request(daemon.http, b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", bad), bad[:200]
    assert b"Content-Length" in bad and b"\\n" not in bad
    big = raw_request(daemon.metrics, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                      + b"a" * 100_000 + b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 431 ", big), big[:200]
    assert b"8190 bytes" in big
    after = daemon.scrape()
    assert counter(after, "http", "bad_request") == counter(before, "http", "bad_request") + 1
    kind = "request_header_fields_too_large"
    assert counter(after, "metrics", kind) == counter(before, "metrics", kind) + 1
    lines = [line for line in daemon.log.read_text().splitlines() if "Malformed request" in line]
    assert len(lines) >= 2 and all(" INFO " in line for line in lines), lines
    assert "Traceback" not in daemon.log.read_text()


def test_escaping_and_origin_parsing_hold_for_any_text() -> None:
    """Property-based (hypothesis): an escaped text is one line that reads back as the text; any
    Host or Origin a client sends is answered (accepted or refused), never an exception; a
    normalised origin normalises to itself."""
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    policy = OriginPolicy.from_settings(Settings(http_allowed_origins=(ALLOWED,)))

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.text())
    def escaped(text: str) -> None:
        line = printable(text)
        assert "\n" not in line and "\r" not in line
        assert ast.literal_eval(repr(text)[0] + line + repr(text)[-1]) == text

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.one_of(st.text(), st.from_regex(r"\Ahttps?://[a-z0-9.\[\]:-]{0,30}(/)?\Z")), st.text())
    def answered(origin: str, host: str) -> None:
        refusal = policy.host_refusal(host)
        assert refusal is None or "http_allowed_origins" in refusal
        allowed = policy.allows(origin, host)
        try:
            normal = normal_origin(origin)
        except ValueError:
            assert not allowed
        else:
            assert normal_origin(normal) == normal

    escaped()
    answered()
