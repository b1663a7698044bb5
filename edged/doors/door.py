"""What the daemon needs of a door: start, stop accepting, stop within a grace period."""

from __future__ import annotations

from typing import Protocol


class Door(Protocol):
    """A way in to the speech services (gRPC, HTTP, Wyoming, the machine's own audio) that the
    daemon runs as one of a list: started at start-up, and at shutdown first told to take no
    more, then stopped together with the others within the grace period."""

    name: str
    """What it is, for the log ("gRPC", "HTTP", "Wyoming", "local audio")."""

    async def start(self) -> None:
        """Listen or open devices; EdgedError naming the setting to change when it cannot."""

    async def stop_accepting(self) -> None:
        """Shutdown, first: no new connections or requests; what is open goes on."""

    async def stop(self, grace_s: float) -> None:
        """Shutdown: let what is open finish within `grace_s`, then end it and close."""
