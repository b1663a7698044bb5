"""The LAN advertisement of a Wyoming server (mDNS `_wyoming._tcp.local.`), for Home Assistant to
discover it: the Wyoming door, and the satellite (edged.doors.wyoming.satellite), each under a
name of its own. Without multicast it only logs a warning: Home Assistant then needs host:port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from edged import __version__

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."


class Advertisement:
    """`<prefix>-<hostname>._wyoming._tcp.local.` on `port`, from start() to stop()."""

    def __init__(self, listen_address: str, port: int, prefix: str, what: str) -> None:
        self._listen_address = listen_address
        self._port = port
        self._prefix = prefix
        self._what = what
        """What is advertised, for the log ("Wyoming", "the Wyoming satellite")."""
        self._zeroconf: Any = None
        self._registering: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Register in the background (mDNS takes some seconds)."""
        self._registering = asyncio.get_running_loop().create_task(self._register(), name="edged-wyoming-zeroconf")

    async def stop(self) -> None:
        """Withdraw the advertisement."""
        if self._registering is not None:
            self._registering.cancel()
            await asyncio.gather(self._registering, return_exceptions=True)
        if self._zeroconf is not None:
            try:
                await self._zeroconf.async_unregister_all_services()
                await self._zeroconf.async_close()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                _LOGGER.warning("Could not withdraw the %s zeroconf advertisement: %s", self._what, exc)
            self._zeroconf = None

    async def _register(self) -> None:
        """Register the service; a failure is a warning, never fatal."""
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        hostname = socket.gethostname().split(".")[0] or "host"
        instance = f"{self._prefix}-{hostname}"
        try:
            address = _advertised_address(self._listen_address)
            info = AsyncServiceInfo(SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}",
                                    addresses=[socket.inet_aton(address)], port=self._port,
                                    server=f"{hostname}.local.", properties={"version": __version__})
            self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
            await self._zeroconf.async_register_service(info)
            _LOGGER.info("Advertising %s as %s on %s:%d (zeroconf)", self._what, instance, address, self._port)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - no multicast here: Home Assistant needs host:port
            _LOGGER.warning("Cannot advertise %s on the LAN (zeroconf: %s); add it in Home Assistant by "
                            "host and port %d", self._what, exc or type(exc).__name__, self._port)


def _advertised_address(listen_address: str) -> str:
    """The IPv4 address Home Assistant should connect to: the one listened on, or the LAN's."""
    if listen_address not in ("", "0.0.0.0", "::"):
        return socket.gethostbyname(listen_address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("224.0.0.251", 5353))  # no packet is sent: this only picks the route
        return str(probe.getsockname()[0])
