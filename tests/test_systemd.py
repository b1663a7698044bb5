"""systemd integration: sd_notify over a real notify socket (messages, order, timing), journald."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edged.daemon import systemd
from tests.test_server import deployed_tiny, free_port, health_status, write_config

__all__ = ["deployed_tiny"]  # a fixture this module uses

pytestmark = pytest.mark.timeout(60)


class NotifySocket:
    """A bound notify socket recording each datagram with its arrival time."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.on_ready: list[str] = []
        self._port = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self, port: int = 0) -> None:
        """Read in the background; on READY=1 ask health at once (port bound, models loaded?)."""
        self._port = port
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data))
            if data.startswith("READY=1") and self._port:
                self.on_ready.append(health_status(self._port))

    def close(self) -> None:
        """Stop reading and close."""
        self._done.set()
        self._thread.join(timeout=2)
        self.sock.close()


def test_notify_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $NOTIFY_SOCKET nothing is sent and nothing raises."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready("x") is False and systemd.watchdog() is False


def test_notify_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that is gone or not a socket gives False, not an exception."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.status("x") is False
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "file"))
    assert systemd.stopping("x") is False


def test_notify_reaches_abstract_and_path_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both socket forms systemd uses: a path, and `@name` in the abstract namespace."""
    for address, bind in ((str(tmp_path / "n.sock"), str(tmp_path / "n.sock")),
                          (f"@edged-test-{os.getpid()}", f"\0edged-test-{os.getpid()}")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(bind)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            assert systemd.ready("Serving") is True
            assert sock.recv(100) == b"READY=1\nSTATUS=Serving"


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half of WatchdogSec, and only for the process systemd watches."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert systemd.watchdog_interval_s() is None


def test_journal_lines_carry_syslog_priorities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under journald (without systemd-python) each line starts with its <priority>."""
    handler = systemd.journal_handler()
    record = logging.LogRecord("edged.x", logging.WARNING, __file__, 1, "two\nlines %s", ("!",), None)
    text = handler.format(record)
    if type(handler).__name__ != "JournalHandler":
        assert text == "<4>edged.x: two\n<4>lines !"
    monkeypatch.setenv("JOURNAL_STREAM", "0:0")
    assert systemd.under_journald() is False


def test_server_notifies_systemd_in_order(tmp_path: Path, deployed_tiny: Path) -> None:
    """STATUS while loading, READY=1 once SERVING, WATCHDOG=1 from the tick, STOPPING=1 at SIGTERM."""
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    port = free_port()
    cfg = write_config(tmp_path, port)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000"}
    env.pop("WATCHDOG_PID", None)
    notify.start(port)
    with open(tmp_path / "log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "start", "-c", str(cfg)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not any(m.startswith("READY=1") for _, m in notify.messages):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.6)
        stop_sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        time.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    kinds = [m.split("\n")[0].split("=")[0] for _, m in notify.messages]
    assert kinds[0] == "STATUS" and notify.messages[0][1] == "STATUS=Loading models"
    ready = kinds.index("READY")
    assert "WATCHDOG" not in kinds[:ready]
    assert notify.on_ready == ["SERVING"]
    assert "Serving 1 model(s) (tiny-asr)" in notify.messages[ready][1]
    stopping = kinds.index("STOPPING")
    assert "WATCHDOG" not in kinds[stopping:]
    beats = [t for (t, m) in notify.messages[ready:stopping] if m == "WATCHDOG=1"]
    assert len(beats) >= 3, kinds  # 0.3 s apart for 1.6 s
    gaps = sorted(b - a for a, b in itertools.pairwise(beats))
    assert 0.2 < gaps[len(gaps) // 2] < 0.45  # a busy machine may delay one tick, not the rhythm
    assert notify.messages[stopping][0] - stop_sent < 2.0
    assert "draining 0 stream(s)" in notify.messages[stopping][1]
