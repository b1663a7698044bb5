"""Tests for edged.repository.fetch against a real loopback HTTP server."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edged.errors import FetchError
from edged.progress import ProgressBar
from edged.repository.fetch import RemoteSource, download, parse_remote

BODY = os.urandom(256 * 1024 + 123)
HALF = len(BODY) // 2
SHA = hashlib.sha256(BODY).hexdigest()


@dataclass
class Served:
    """What the test server serves and what it saw."""

    body: bytes = BODY
    honour_range: bool = True
    plan: list[str] = field(default_factory=list)  # one action per request, then "ok"
    requests: list[dict[str, str]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # body bytes sent per request
    stop: threading.Event = field(default_factory=threading.Event)
    base: str = ""

    def source(self, name: str = "model.rmir", sha256: str = SHA) -> RemoteSource:
        """A RemoteSource pointing at this server."""
        return RemoteSource(url=f"{self.base}/{name}", sha256=sha256)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        served = self.server.served
        served.requests.append({k.lower(): v for k, v in self.headers.items()})
        action = served.plan.pop(0) if served.plan else "ok"
        body = served.body
        if action in ("404", "500"):
            self.send_error(int(action))
            served.sent.append(0)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and served.honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                served.sent.append(0)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if action == "half-close":
            payload = payload[: len(payload) // 2]
        elif action == "stall":
            payload = payload[: 64 * 1024]
        # Recorded before writing: the client may finish reading (and the test check) first.
        served.sent.append(len(payload))
        try:
            self.wfile.write(payload)
            self.wfile.flush()
            if action == "stall":
                served.stop.wait(10)
        except OSError:
            pass
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    served: Served

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def served() -> Iterator[Served]:
    """A loopback HTTP server, shut down (and its handler threads released) at test end."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.served = Served(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.served
    finally:
        httpd.served.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_plain_download_then_cached(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "model.rmir"
    calls: list[tuple[int, int | None]] = []
    assert download(served.source(), dest, progress=lambda d, t: calls.append((d, t))) == dest
    assert dest.read_bytes() == BODY
    assert not dest.with_name("model.rmir.part").exists()
    assert "range" not in served.requests[0]
    assert calls[0] == (0, len(BODY)) and calls[-1] == (len(BODY), len(BODY))
    assert download(served.source(), dest) == dest
    assert len(served.requests) == 1


def test_resume_with_range(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "model.rmir"
    dest.with_name("model.rmir.part").write_bytes(BODY[:HALF])
    download(served.source(), dest)
    assert served.requests[0]["range"] == f"bytes={HALF}-"
    assert served.sent == [len(BODY) - HALF]
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_starts_over(served: Served, tmp_path: Path) -> None:
    served.honour_range = False
    dest = tmp_path / "model.rmir"
    dest.with_name("model.rmir.part").write_bytes(b"x" * HALF)  # wrong bytes: must be discarded
    download(served.source(), dest)
    assert served.requests[0]["range"] == f"bytes={HALF}-"
    assert served.sent == [len(BODY)]
    assert dest.read_bytes() == BODY


def test_complete_part_with_416_is_verified(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "model.rmir"
    dest.with_name("model.rmir.part").write_bytes(BODY)
    download(served.source(), dest)
    assert len(served.requests) == 1 and served.sent == [0]
    assert dest.read_bytes() == BODY


def test_bad_part_with_416_starts_over_once(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "model.rmir"
    dest.with_name("model.rmir.part").write_bytes(b"y" * (len(BODY) + 10))
    download(served.source(), dest, retries=0)
    assert "range" not in served.requests[1]
    assert dest.read_bytes() == BODY


def test_dropped_connection_resumes(served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    served.plan = ["half-close"]
    dest = tmp_path / "model.rmir"
    with caplog.at_level(logging.WARNING, logger="edged.repository.fetch"):
        download(served.source(), dest, backoff_s=0.01)
    assert len(served.requests) == 2
    assert served.requests[1]["range"] == f"bytes={len(BODY) // 2}-"
    assert dest.read_bytes() == BODY
    assert any("retry 1 of 4" in r.getMessage() for r in caplog.records)


def test_stalled_server_is_retried(served: Served, tmp_path: Path) -> None:
    served.plan = ["stall"]
    dest = tmp_path / "model.rmir"
    download(served.source(), dest, timeout_s=0.5, backoff_s=0.01)
    assert len(served.requests) == 2
    assert served.requests[1]["range"] == f"bytes={64 * 1024}-"
    assert dest.read_bytes() == BODY


def test_stalled_server_without_retries_keeps_part(served: Served, tmp_path: Path) -> None:
    served.plan = ["stall"]
    dest = tmp_path / "model.rmir"
    with pytest.raises(FetchError, match="stalled or timed out") as info:
        download(served.source(), dest, timeout_s=0.5, retries=0)
    assert "resumes" in str(info.value)
    assert not dest.exists()
    assert dest.with_name("model.rmir.part").read_bytes() == BODY[: 64 * 1024]
    assert len(served.requests) == 1


def test_404_is_not_retried(served: Served, tmp_path: Path) -> None:
    served.plan = ["404"]
    dest = tmp_path / "model.rmir"
    with pytest.raises(FetchError, match="HTTP 404") as info:
        download(served.source(), dest, backoff_s=0.01)
    assert "config.sh" in str(info.value)
    assert len(served.requests) == 1
    assert not dest.exists()


def test_500_then_200_succeeds(served: Served, tmp_path: Path) -> None:
    served.plan = ["500"]
    dest = tmp_path / "model.rmir"
    download(served.source(), dest, backoff_s=0.01)
    assert len(served.requests) == 2
    assert dest.read_bytes() == BODY


def test_500_forever_gives_up(served: Served, tmp_path: Path) -> None:
    served.plan = ["500"] * 3
    with pytest.raises(FetchError, match="after 3 attempts: HTTP 500"):
        download(served.source(), tmp_path / "model.rmir", retries=2, backoff_s=0.01)
    assert len(served.requests) == 3


def test_credentials_become_basic_auth_and_stay_out_of_messages(served: Served, tmp_path: Path) -> None:
    url = served.base.replace("://", "://user:p%40ss@") + "/model.rmir"
    dest = tmp_path / "model.rmir"
    download(RemoteSource(url=url, sha256=SHA), dest)
    token = base64.b64encode(b"user:p@ss").decode()
    assert served.requests[0]["authorization"] == f"Basic {token}"
    served.plan = ["404"]
    with pytest.raises(FetchError) as info:
        download(RemoteSource(url=url, sha256=SHA), tmp_path / "other.rmir")
    assert "p%40ss" not in str(info.value) and "user" not in str(info.value)


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = RemoteSource(url=f"http://127.0.0.1:{port}/model.rmir", sha256=SHA)
    with pytest.raises(FetchError, match="refused the connection"):
        download(source, tmp_path / "model.rmir", retries=1, backoff_s=0.01)
    assert not (tmp_path / "model.rmir.part").exists()


def test_unwritable_destination(served: Served, tmp_path: Path) -> None:
    (tmp_path / "models").write_text("a file where a directory should be")
    with pytest.raises(FetchError, match="permissions"):
        download(served.source(), tmp_path / "models" / "model.rmir")
    assert served.requests == []


def test_hash_mismatch(served: Served, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    dest = tmp_path / "model.rmir"
    with pytest.raises(FetchError) as info:
        download(served.source(sha256=wrong), dest)
    message = str(info.value)
    assert SHA in message and wrong in message and "config.sh" in message
    assert not dest.exists()
    assert not dest.with_name("model.rmir.part").exists()


def test_stale_dest_is_replaced(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "model.rmir"
    dest.write_bytes(b"old model")
    download(served.source(), dest)
    assert dest.read_bytes() == BODY
    assert len(served.requests) == 1


def test_parse_remote_ok() -> None:
    source = parse_remote(f"https://example.com/models/asr%20en.rmir#sha256={SHA.upper()}")
    assert source == RemoteSource(url="https://example.com/models/asr%20en.rmir", sha256=SHA)
    assert source.filename == "asr en.rmir"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("https://example.com/m.rmir", "no '#sha256="),
        ("https://example.com/m.rmir#md5=abc", "no '#sha256="),
        ("https://example.com/m.rmir#sha256=" + "g" * 64, "64 hexadecimal"),
        ("https://example.com/m.rmir#sha256=" + "a" * 63, "64 hexadecimal"),
        (f"ftp://example.com/m.rmir#sha256={SHA}", "scheme 'ftp'"),
        (f"/local/m.rmir#sha256={SHA}", "http://"),
        (f"https://example.com/m.tar.gz#sha256={SHA}", ".rmir"),
        (f"https://example.com/my model.rmir#sha256={SHA}", "%20"),
    ],
)
def test_parse_remote_errors(spec: str, words: str) -> None:
    with pytest.raises(FetchError, match=re.escape(words)):
        parse_remote(spec)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_tty() -> None:
    stream = _Tty()
    with ProgressBar("model.rmir", stream=stream, min_interval_s=60) as bar:
        bar(0, 4 * 1024 * 1024)
        bar(1024 * 1024, 4 * 1024 * 1024)  # throttled: within min_interval_s
        bar(4 * 1024 * 1024, 4 * 1024 * 1024)  # always drawn: finished
    out = stream.getvalue()
    assert out.count("\r") == 3  # first, final, and the redraw in close()
    assert "100% 4.0 MiB/4.0 MiB" in out and out.endswith("\n")


def test_progress_bar_logs_when_not_tty(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="edged.progress"):
        with ProgressBar("deploy", unit="steps", stream=stream) as bar:
            for done in range(0, 101):
                bar(done, 100)
    assert stream.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 10
    assert messages[-1].startswith("deploy: 100% 100 steps/100 steps")
