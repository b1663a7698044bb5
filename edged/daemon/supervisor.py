"""`edged start --detach`: a supervisor process that runs the server, restarts it, keeps a pid file.

As gunicorn's arbiter: signal handlers only queue the signal (and wake the loop through a pipe),
the main loop dispatches. A server that crashes is restarted after an exponential backoff (reset
once it has run for a while); one that exits with EXIT_BOOT_FAILURE (bad config, nothing
deployed) is not restarted, since it would fail the same way. SIGTERM or SIGINT is passed to the
server, which drains and exits; then the supervisor exits and removes the pid file.

`edged start --detach` learns that the server serves from the server itself: READY=1 through the
sd_notify protocol, on a socket of its own named in the supervisor's environment as
$NOTIFY_SOCKET, which every server the supervisor starts inherits (once that command has
returned, the socket is gone and the server's notifications go nowhere, as outside systemd).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edged.daemon.exits import EXIT_BOOT_FAILURE, EXIT_OK
from edged.errors import DaemonError

if TYPE_CHECKING:
    from edged.config import Settings

_LOGGER = logging.getLogger(__name__)

PID_NAME = "edged.pid"
LOG_NAME = "edged.log"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 30.0
"""A server that ran this long before crashing restarts after the first backoff again."""
KILL_MARGIN_S = 5.0
"""Beyond shutdown_grace_s, how long a stopping server may take before SIGKILL."""


def read_pid(pid_file: Path) -> int | None:
    """The pid of a running supervisor named in `pid_file`, or None (no file, stale, or not edged)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    command = _command_line(pid)
    return pid if command is not None and "edged" in command else None


def _command_line(pid: int) -> str | None:
    """The command line of process `pid`, or None if there is none or it is a zombie.

    From /proc where there is one: psutil reads the same files, after an import that `edged
    status` and every step of `edged start --detach` would pay for.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        import psutil

        try:
            process = psutil.Process(pid)
            return None if process.status() == psutil.STATUS_ZOMBIE else " ".join(process.cmdline())
        except psutil.Error:
            return None
    try:
        state = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]  # after "(comm)"
        command = (proc / str(pid) / "cmdline").read_bytes()
    except (OSError, IndexError):
        return None
    return None if state == "Z" else command.replace(b"\0", b" ").decode(errors="replace")


def server_command(config: Path | None) -> list[str]:
    """The command line of a foreground server (the supervisor's child)."""
    return [sys.executable, "-m", "edged", "start", *(["-c", str(config)] if config else [])]


class Supervisor:
    """Runs one server child, restarts it after crashes with backoff, passes stop signals on."""

    def __init__(self, command: list[str], pid_file: Path, grace_s: float) -> None:
        self._command = command
        self._pid_file = pid_file
        self._kill_after_s = grace_s + KILL_MARGIN_S
        self._signals: list[int] = []
        self._child: subprocess.Popen[bytes] | None = None
        self._child_started = 0.0
        self._backoff = BACKOFF_FIRST_S
        self._restart_at: float | None = None
        self._kill_at: float | None = None
        self._stopping = False
        self._exit_code: int | None = None

    def run(self, first: subprocess.Popen[bytes] | None = None) -> int:
        """Supervise until stopped or the server cannot boot; returns the exit status.

        `first`: a server already started with this supervisor's command, to supervise as if
        it had started it.
        """
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, lambda signum, _frame: self._signals.append(signum))
        self._pid_file.write_text(f"{os.getpid()}\n")
        _LOGGER.info("Supervisor %d started", os.getpid())
        try:
            if first is None:
                self._spawn()
            else:
                self._adopt(first)
                self._dispatch()  # it may have ended before the SIGCHLD handler was there
            while self._exit_code is None:
                select.select([wake_r], [], [], self._timeout())
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                self._dispatch()
            return self._exit_code
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            if read_pid(self._pid_file) in (os.getpid(), None):
                self._pid_file.unlink(missing_ok=True)
            _LOGGER.info("Supervisor %d exiting", os.getpid())

    def _timeout(self) -> float | None:
        """Seconds until the next timer (restart, kill), or None to sleep until a signal."""
        timers = [t for t in (self._restart_at, self._kill_at) if t is not None]
        # A signal arriving before select() waits is not lost: its byte is already in the pipe.
        return max(0.0, min(timers) - time.monotonic()) if timers else None

    def _dispatch(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._handle_stop()
        self._reap()
        now = time.monotonic()
        if self._restart_at is not None and now >= self._restart_at and not self._stopping:
            self._restart_at = None
            self._spawn()
        if self._kill_at is not None and now >= self._kill_at and self._child is not None:
            _LOGGER.warning("Server %d did not stop within %.0f s; killing it", self._child.pid, self._kill_after_s)
            self._child.kill()
            self._kill_at = None

    def _spawn(self) -> None:
        self._adopt(subprocess.Popen(self._command, stdin=subprocess.DEVNULL))

    def _adopt(self, child: subprocess.Popen[bytes]) -> None:
        self._child = child
        self._child_started = time.monotonic()
        _LOGGER.info("Started server %d", child.pid)

    def _handle_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._child is None:
            self._exit_code = EXIT_OK
            return
        _LOGGER.info("Stopping server %d", self._child.pid)
        self._child.send_signal(signal.SIGTERM)
        self._kill_at = time.monotonic() + self._kill_after_s

    def _reap(self) -> None:
        if self._child is None or (code := self._child.poll()) is None:
            return
        pid, self._child, self._kill_at = self._child.pid, None, None
        if self._stopping:
            self._exit_code = EXIT_OK
        elif code == EXIT_BOOT_FAILURE:
            _LOGGER.error("Server %d cannot boot (exit status %d); not restarting it", pid, code)
            self._exit_code = EXIT_BOOT_FAILURE
        elif code == EXIT_OK:
            _LOGGER.info("Server %d exited cleanly", pid)
            self._exit_code = EXIT_OK
        else:
            if time.monotonic() - self._child_started >= STABLE_S:
                self._backoff = BACKOFF_FIRST_S
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            _LOGGER.error("Server %d died (%s); restarting it in %.1f s", pid, how, self._backoff)
            self._restart_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)


def supervise(config: Path | None, settings: Callable[[], Settings]) -> int:
    """Run the supervisor in this process (the detached side of `edged start --detach`).

    The server starts first and the supervisor reads config.sh (`settings()`) while it does:
    `edged start --detach` waits for the server, not for the supervisor's own start-up.
    """
    command = server_command(config)
    first = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        loaded = settings()
    except BaseException:
        first.terminate()  # it reads the same config.sh, and will not get further
        first.wait()
        raise
    return Supervisor(command, loaded.model_loc / PID_NAME, loaded.shutdown_grace_s).run(first)


def detach(config: Path | None, model_loc: Path, wait_s: float) -> int:
    """Start a supervisor in the background and wait until the server serves; 0, or its exit status.

    The server says when it serves as it would to systemd: READY=1 on $NOTIFY_SOCKET, here a
    socket of this process's that the supervisor's environment passes on to the server. So this
    returns as soon as the server is SERVING, and at once if the supervisor gives up.
    """
    pid_file = model_loc / PID_NAME
    if (pid := read_pid(pid_file)) is not None:
        raise DaemonError(f"edged is already running (pid {pid}); stop it with `edged stop`.")
    model_loc.mkdir(parents=True, exist_ok=True)
    log_path = model_loc / LOG_NAME
    command = [*server_command(config), "--supervise"]
    with tempfile.TemporaryDirectory(prefix="edged-") as folder, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify:
        address = str(Path(folder) / "notify")  # the folder is this user's alone (mode 0700)
        notify.bind(address)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "NOTIFY_SOCKET": address})
        exited = _exit_fd(proc.pid)
        try:
            deadline = time.monotonic() + wait_s
            while (left := deadline - time.monotonic()) > 0:
                # Without a pidfd, look at the supervisor now and then (the socket still wakes us).
                readable, _, _ = select.select([notify.fileno(), *([exited] if exited is not None else [])], [], [],
                                               left if exited is not None else min(left, 0.05))
                if notify.fileno() in readable and _ready(notify):
                    return EXIT_OK
                if (code := proc.poll()) is not None:
                    return code if code else EXIT_BOOT_FAILURE
        finally:
            if exited is not None:
                os.close(exited)
    raise DaemonError(f"edged (pid {proc.pid}) is not serving after {wait_s:.0f} s; see {log_path}.")


def _exit_fd(pid: int) -> int | None:
    """A file descriptor that becomes readable when process `pid` exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _ready(notify: socket.socket) -> bool:
    """Whether the notifications waiting on `notify` include READY=1."""
    ready = False
    while True:
        try:
            message = notify.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return ready
        ready = ready or "READY=1" in message.decode("utf-8", "replace").splitlines()


def stop(model_loc: Path, grace_s: float) -> str:
    """SIGTERM the supervisor (it drains the server); SIGKILL its group after the grace period."""
    pid_file = model_loc / PID_NAME
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return "edged is not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + KILL_MARGIN_S
    while time.monotonic() < deadline:
        if read_pid(pid_file) != pid:
            pid_file.unlink(missing_ok=True)
            return "edged stopped"
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)  # the supervisor leads its session: the server goes too
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    return f"edged did not stop within {grace_s + KILL_MARGIN_S:.0f} s; killed it"

