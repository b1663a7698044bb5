"""Drain a server on this machine before it stops (a Kubernetes preStop hook: `edged drain --wait 30`).

`POST /v2/drain` on the metrics port makes the server NOT_SERVING (readiness 503) and refuse new
streams with UNAVAILABLE; its open streams go on. With a wait, this returns once they have ended
(read from `edged_active_streams` on `/metrics`) or the wait is over, so the SIGTERM that follows
finds nothing left to cut. `undo_drain` (`DELETE /v2/drain`, `edged drain --undo`) serves again.
"""

from __future__ import annotations

import time
import urllib.request

from edged.client.health import local_address
from edged.errors import EdgedError

_POLL_S = 0.5


def open_streams(metrics_text: str) -> int:
    """Streams open now, summed over services, from a Prometheus text page."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("edged_active_streams{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def drain(listen_address: str, metrics_port: int, wait_s: float = 0.0, timeout: float = 5.0) -> int:
    """Drain the server at `metrics_port`; returns the streams still open when it stopped waiting."""
    if not metrics_port:
        raise EdgedError("metrics_port is 0 in config.sh, so there is no drain endpoint; set it.")
    base = "http://" + local_address(listen_address, metrics_port)
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/v2/drain", method="POST"), timeout=timeout).read()
        deadline = time.monotonic() + wait_s
        while True:
            with urllib.request.urlopen(base + "/metrics", timeout=timeout) as reply:
                left = open_streams(reply.read().decode())
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(_POLL_S)
    except OSError as exc:
        raise EdgedError(f"Cannot drain the server at {base} ({exc}); is it running?") from None


def undo_drain(listen_address: str, metrics_port: int, timeout: float = 5.0) -> None:
    """Make a drained server at `metrics_port` take new streams again (SERVING once its models serve)."""
    if not metrics_port:
        raise EdgedError("metrics_port is 0 in config.sh, so there is no drain endpoint; set it.")
    base = "http://" + local_address(listen_address, metrics_port)
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/v2/drain", method="DELETE"), timeout=timeout).read()
    except OSError as exc:
        raise EdgedError(f"Cannot undo the drain of the server at {base} ({exc}); is it running?") from None
