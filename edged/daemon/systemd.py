"""systemd integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING) and journald logging.

Through systemd-python's `systemd.daemon` where it is installed; otherwise the protocol itself
(one datagram to $NOTIFY_SOCKET), so it works without the C extension. Outside systemd every
call is a no-op, and no call ever raises: a notification must not take the server down.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import ClassVar

_LOGGER = logging.getLogger(__name__)


def _send(message: str) -> bool:
    """Send one notification; False outside systemd or if it could not be sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    try:
        from systemd import daemon
    except ImportError:
        pass
    else:
        try:
            return bool(daemon.notify(message))
        except Exception as exc:  # noqa: BLE001 - never let systemd-python take the server down
            _LOGGER.debug("sd_notify(%s) failed: %s", message, exc)
            return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        _LOGGER.debug("sd_notify(%s) failed: %s", message, exc)
        return False
    return True


def ready(status: str) -> bool:
    """READY=1 with a status line: models loaded, port bound."""
    return _send(f"READY=1\nSTATUS={status}")


def status(text: str) -> bool:
    """STATUS=: what `systemctl status` shows."""
    return _send(f"STATUS={text}")


def watchdog() -> bool:
    """WATCHDOG=1: the main loop is alive and healthy."""
    return _send("WATCHDOG=1")


def stopping(text: str) -> bool:
    """STOPPING=1 with a status line."""
    return _send(f"STOPPING=1\nSTATUS={text}")


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1 (half of WatchdogSec), or None if systemd does not watch us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def under_journald() -> bool:
    """True when stderr is connected to the journal ($JOURNAL_STREAM names its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class _JournalPrefixFormatter(logging.Formatter):
    """`<N>` syslog priority prefixes that journald turns into levels (sd-daemon.h); no timestamp."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2
    }

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self._PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def journal_handler() -> logging.Handler:
    """A handler for the journal: systemd-python's JournalHandler, else prefixed stderr lines."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalPrefixFormatter("%(name)s: %(message)s"))
        return handler
    return JournalHandler(SYSLOG_IDENTIFIER="edged")
