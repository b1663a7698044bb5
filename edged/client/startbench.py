"""`edged bench start`: start to SERVING as a user sees it, and the server's own start-up.

Each run, in turn (so that the machine's load weighs on all alike):

- `detach`: `edged start --detach` until the command returns (it returns once the server says
  SERVING); then `edged stop`;
- `foreground`: `edged start`, with `edged health` run again and again until it says SERVING: the
  time at which that answer came back; then one `edged health` and one `edged status` against the
  serving server are timed, and the server gets SIGTERM;
- `in_process`: `edged start`, polled by this process's own gRPC health check every 20 ms (how
  the README's earlier figure was taken: no command line on the measuring side);
- `startup`: `Server.startup()` in this process (bind, load the models, SERVING): the server's own
  work, without starting an interpreter or importing anything.

Every command runs as `python -m edged` with this interpreter and environment, so the code under
test is the code this process imports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edged.config import Settings
from edged.errors import DaemonError

_POLL_S = 0.02
_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over the runs (seconds)."""

    median: float
    low: float
    high: float
    runs: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        """The spread of `values` (at least one)."""
        return cls(statistics.median(values), min(values), max(values), tuple(round(v, 3) for v in values))

    def text(self) -> str:
        """`1.23 s (1.20 to 1.31)`."""
        return f"{self.median:.2f} s ({self.low:.2f} to {self.high:.2f})"


@dataclass(frozen=True)
class StartReport:
    """Start to SERVING by each path, and the wall time of the probing commands."""

    runs: int
    detach: Spread
    """`edged start --detach` until it returns."""
    foreground: Spread
    """`edged start` until an `edged health` says SERVING."""
    in_process: Spread
    """`edged start` until this process's gRPC health check says SERVING."""
    startup: Spread
    """`Server.startup()` in this process."""
    health: Spread
    """One `edged health` against a serving server."""
    status: Spread
    """One `edged status` against a serving server."""

    def json(self) -> str:
        """The figures as JSON (seconds)."""
        return json.dumps(asdict(self), indent=2)

    def text(self) -> str:
        """The figures for a terminal."""
        rows = [
            ("edged start --detach, until it returns", self.detach),
            ("edged start, until `edged health` says SERVING", self.foreground),
            ("edged start, polled in-process (gRPC health every 20 ms)", self.in_process),
            ("server start-up in this process (bind, load models)", self.startup),
            ("edged health (one call, serving)", self.health),
            ("edged status (one call, serving)", self.status),
        ]
        width = max(len(label) for label, _ in rows)
        lines = [f"start to SERVING, {self.runs} run(s): median (range)"]
        lines += [f"  {label.ljust(width)}  {spread.text()}" for label, spread in rows]
        return "\n".join(lines)


def _edged(config: Path | None, *args: str) -> list[str]:
    return [sys.executable, "-m", "edged", *args, *(["-c", str(config)] if config else [])]


def _timed(command: list[str], log: Path | None = None) -> tuple[float, int]:
    """Run a command to its end; its wall time and exit status."""
    t0 = time.perf_counter()
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        code = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=_TIMEOUT_S, check=False).returncode
    return time.perf_counter() - t0, code


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a foreground server and wait for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_detach(config: Path | None, log: Path) -> float:
    took, code = _timed(_edged(config, "start", "--detach"), log)
    try:
        if code:
            raise DaemonError(f"`edged start --detach` failed (exit status {code}); see {log}.")
    finally:
        _timed(_edged(config, "stop"), log)
    return took


def _run_foreground(config: Path | None, log: Path,
                    ready: Callable[[], bool] | None) -> tuple[float, float | None, float | None]:
    """Start to SERVING with `ready` polled every 20 ms, or `edged health` back to back if None;
    then, with `edged health`, one `edged health` and one `edged status` timed."""
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(_edged(config, "start"), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise DaemonError(f"`edged start` exited with status {proc.returncode}; see {log}.")
            if ready is not None:
                if ready():
                    break
                time.sleep(_POLL_S)
            elif _timed(_edged(config, "health"))[1] == 0:
                break
            if time.perf_counter() - t0 > _TIMEOUT_S:
                raise DaemonError(f"edged is not SERVING after {_TIMEOUT_S:.0f} s; see {log}.")
        took = time.perf_counter() - t0
        if ready is not None:
            return took, None, None
        health_s, code = _timed(_edged(config, "health"))
        status_s, code2 = _timed(_edged(config, "status"))
        if code or code2:
            raise DaemonError(f"`edged health` or `edged status` failed against a serving server; see {log}.")
        return took, health_s, status_s
    finally:
        _stop(proc)


async def _startup_in_process(settings: Settings) -> float:
    from edged.daemon.app import Server
    from edged.doors.grpc.services import default_installers

    server = Server(settings, default_installers())
    t0 = time.perf_counter()
    try:
        await server.startup()
        return time.perf_counter() - t0
    finally:
        await server.shutdown()


def _check_free(settings: Settings) -> None:
    """The benchmark starts its own servers: nothing may be listening on the API port."""
    from edged.client.health import local_address

    address = local_address(settings.listen_address, settings.riva_speech_api_port)
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            pass
    except OSError:
        return
    raise DaemonError(f"Something already listens at {address}; stop it (`edged stop`) first, "
                      "since the benchmark starts its own servers there.")


def bench_start(config: Path | None, settings: Settings, runs: int = 5,
                progress: Callable[[str], None] | None = None) -> StartReport:
    """Start the server `runs` times by each path (see the module's docstring) and report."""
    from edged.client.health import channel_credentials, check_health, local_address

    _check_free(settings)
    config = config.resolve() if config else None
    address = local_address(settings.listen_address, settings.riva_speech_api_port)
    creds = channel_credentials(settings)

    def ready() -> bool:
        return check_health(address, "", 1.0, creds) == "SERVING"

    figures: dict[str, list[float]] = {k: [] for k in ("detach", "foreground", "in_process", "startup",
                                                          "health", "status")}
    # The in-process start-up would log like a server (the measured commands log to a file).
    edged_logger = logging.getLogger("edged")
    level = edged_logger.level
    edged_logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="edged-bench-start-") as tmp:
            log = Path(tmp) / "commands.log"
            for run in range(runs):
                figures["detach"].append(_run_detach(config, log))
                took, health_s, status_s = _run_foreground(config, log, None)
                figures["foreground"].append(took)
                figures["health"].append(health_s or 0.0)
                figures["status"].append(status_s or 0.0)
                figures["in_process"].append(_run_foreground(config, log, ready)[0])
                figures["startup"].append(asyncio.run(_startup_in_process(settings)))
                if progress:
                    progress(f"run {run + 1}/{runs}: "
                             + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in figures.items()))
    finally:
        edged_logger.setLevel(level)
    return StartReport(runs, **{k: Spread.of(v) for k, v in figures.items()})
