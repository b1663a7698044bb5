"""The gRPC services the server offers, each added by an installer (see ServiceInstaller).

A service module provides `install(ctx) -> list[str]`: it adds its servicer to `ctx.server` and
returns the full names of the services it registered (for health and reflection). Servicers
look models up in `ctx.models` at request time, since models load after the port is open.
"""

from __future__ import annotations

from edged.server.app import ServiceInstaller


def default_installers() -> list[ServiceInstaller]:
    """Every service this edged serves, in registration order."""
    installers: list[ServiceInstaller] = []
    return installers
