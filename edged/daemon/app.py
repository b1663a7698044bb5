"""The daemon's server: start-up, a ticking main loop, shutdown.

Start-up checks the config, binds the gRPC port (and the HTTP metrics port) first and serves
health as NOT_SERVING while the models load, so a probe can tell "loading" from "dead"; SERVING
and systemd's READY=1 follow once the models that fit the memory budget are loaded. The main
loop ticks once a second: idle unloads, memory pressure, health and the systemd watchdog.
SIGTERM or SIGINT stops accepting, lets open streams finish within `shutdown_grace_s`, unloads;
the whole stop takes at most STOP_MARGIN_S more: inference calls still running by then are left
behind and the process exits without waiting for them (see `run`).
The speech services (`edged.service`) are made at start-up; gRPC servicers, added by installers
(see `edged.doors.grpc.services`), translate Riva's messages to them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edged.config import Settings
from edged.daemon import systemd
from edged.daemon.exits import EXIT_BOOT_FAILURE, EXIT_OK
from edged.daemon.probes import HttpEndpoint
from edged.daemon.security import ApiKeyInterceptor, server_credentials, warn_if_exposed
from edged.doors.door import Door
from edged.doors.grpc.context import ServerContext, ServiceInstaller
from edged.doors.grpc.control import install as install_control
from edged.doors.grpc.door import GrpcDoor
from edged.doors.local.audio import LocalAudio
from edged.doors.web.guard import OriginPolicy
from edged.doors.wyoming.door import WyomingServer
from edged.errors import EdgedError
from edged.pipelines.pools import Pools
from edged.service.admission import high_water_mb
from edged.service.context import ServiceContext
from edged.service.memory import AllocatorTrim, limit_allocator_arenas, rss_mb
from edged.service.registry import ModelState, available_mb

_LOGGER = logging.getLogger(__name__)

TICK_S = 1.0
STOP_MARGIN_S = 0.5
"""How long past `shutdown_grace_s` the stop may wait for running inference calls (the pools'
threads); issue 25's bound is the grace period + 1 s, signal to exit."""


def _address(settings: Settings) -> str:
    host = settings.listen_address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{settings.riva_speech_api_port}"


def _calls_cancelled_at_stop(record: logging.LogRecord) -> bool:
    """Logging filter: grpc logs a traceback for each call still open when the server stops (a
    stream whose client went away just before SIGTERM); that is the drain working, not an error."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, asyncio.CancelledError)


class Server:
    """One run of the server: `serve()` is start-up, main loop and shutdown."""

    def __init__(self, settings: Settings, installers: list[ServiceInstaller] | None = None) -> None:
        self.settings = settings
        self._installers = installers or []
        self._stop = asyncio.Event()
        self._http: HttpEndpoint | None = None
        self._doors: list[Door] = []
        """The doors started so far, in order; stopped together at shutdown."""
        self.ctx: ServerContext | None = None
        self._last_status = ""
        self._under_pressure = False
        self._trim = AllocatorTrim()
        """Gives a burst's freed memory back to the system at the next tick."""
        self._health_task: asyncio.Task[None] | None = None
        self.left_running: list[str] = []
        """Threads whose inference calls still ran when shutdown stopped waiting for them."""

    def drain(self, on: bool = True) -> None:
        """NOT_SERVING and no new streams (UNAVAILABLE) while open ones finish: a pod's preStop
        hook calls this so the balancer takes the pod out before SIGTERM; the process stays up.
        `on=False` undoes it (`edged drain --undo`): SERVING again once the models serve."""
        ctx = self.ctx
        if ctx is None:
            return
        admission = ctx.services.admission
        if on:
            admission.drain()
        else:
            admission.resume()
        self._health_task = asyncio.get_running_loop().create_task(ctx.publish_health())  # held: not GC'd
        systemd.status(f"Draining: {admission.total} stream(s) open" if on else ctx.services.status_line())

    def request_stop(self) -> None:
        """Ask the main loop to shut down (signal handlers only do this)."""
        self._stop.set()

    async def serve(self, ready: Callable[[ServerContext], None] | None = None) -> int:
        """Run until SIGINT or SIGTERM; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            try:
                await self.startup()
            except EdgedError as exc:
                _LOGGER.error("%s", exc)
                systemd.status(f"Cannot boot: {exc}")
                return EXIT_BOOT_FAILURE
            if ready and self.ctx:
                ready(self.ctx)
            await self.main_loop()
            return EXIT_OK
        finally:
            await self.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def startup(self) -> None:
        """Bind, answer health as NOT_SERVING, load the models, then SERVING and READY=1."""
        settings = self.settings
        logging.getLogger("grpc._cython.cygrpc").addFilter(_calls_cancelled_at_stop)
        credentials = server_credentials(settings)
        interceptors = [ApiKeyInterceptor(settings.api_key)] if settings.api_key else []
        max_bytes = settings.max_message_mb * 2**20
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ])
        core = ServiceContext.create(settings, Pools())
        ctx = ServerContext(core, server)
        self.ctx = ctx
        health_pb2_grpc.add_HealthServicer_to_server(ctx.health, server)
        core.health_services += install_control(ctx)
        for install in self._installers:
            core.health_services += install(ctx)
        reflection.enable_server_reflection(
            [*core.health_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        self._bind(server, credentials)
        if settings.metrics_port:
            self._http = HttpEndpoint(lambda: core.ready, self.drain, OriginPolicy.from_settings(settings))
            try:
                await self._http.start(settings.listen_address, settings.metrics_port)
            except OSError as exc:
                self._http = None
                raise EdgedError(
                    f"Cannot listen on {settings.listen_address}:{settings.metrics_port} for metrics "
                    f"({exc.strerror}); change metrics_port in config.sh (0 turns it off).") from None
        await ctx.publish_health()
        await self._start(GrpcDoor(server))
        if settings.http_enabled:
            await self._start(self._web_door(ctx))
        warn_if_exposed(settings)
        _LOGGER.info("Listening on %s (%s)%s; loading models", _address(settings),
                     "TLS" if credentials else "plaintext",
                     f", metrics on port {settings.metrics_port}" if settings.metrics_port else "")
        if settings.wyoming_enabled:  # answers while models load: requests load them or say why not
            await self._start(WyomingServer(core))
        systemd.status("Loading models")
        if core.tts is not None:
            core.tts.warm_up()  # each voice as soon as it is loaded, while the others load
        await core.registry.load_initial()
        entries = core.registry.entries.values()
        waiting = settings.lazy_loading and any(e.state is ModelState.UNLOADED for e in entries)
        if not core.registry.loaded and not waiting:
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in entries)
            raise EdgedError(
                f"No deployed model could be loaded from {settings.model_loc / 'models'}"
                + (f" ({reasons})" if reasons else "") + "; run `edged init` first.")
        registry = core.registry
        core.admission.high_water_mb = high_water_mb(settings.memory_high_water_mb, rss_mb(),
                                                     registry.budget_mb - registry.used_mb())
        core.serving = True
        if core.tts is not None:
            core.tts.loaded()
        await ctx.publish_health()
        if settings.local_mic_enabled or settings.local_speaker_enabled:
            ctx.local_audio = LocalAudio(core)
            await self._start(ctx.local_audio)
        if settings.wyoming_satellite_enabled:
            await self._start_satellite(ctx.local_audio)
        self._last_status = core.status_line()
        _LOGGER.info("Ready: %s; new streams refused past %.0f MB of RSS (memory_high_water_mb)",
                     self._last_status, core.admission.high_water_mb)
        systemd.ready(self._last_status)

    async def _start_satellite(self, audio: LocalAudio | None) -> None:
        """The Wyoming satellite, on the microphone's wake words (or one log line saying why not)."""
        from edged.doors.wyoming.satellite import SatelliteServer

        if audio is None or not audio.mic_enabled or not audio.wake_words:
            _LOGGER.error("wyoming_satellite_enabled=true needs the microphone with wake words "
                          "(local_mic_enabled=true, local_wake_words); the satellite stays off")
            return
        await self._start(SatelliteServer(audio))

    async def _start(self, door: Door) -> None:
        """Start a door; it is stopped at shutdown (with those started before it)."""
        await door.start()
        self._doors.append(door)

    @staticmethod
    def _web_door(ctx: ServerContext) -> Door:
        """The HTTP door (realtime WebSocket, OpenAI audio API, console) on http_port."""
        from edged.doors.web import WebDoor

        return WebDoor(ctx.services, lambda: asdict(ctx.status()))

    def _bind(self, server: grpc.aio.Server, credentials: grpc.ServerCredentials | None) -> None:
        address = _address(self.settings)
        try:
            port = (server.add_secure_port(address, credentials) if credentials
                    else server.add_insecure_port(address))
        except RuntimeError:
            port = 0
        if not port:
            raise EdgedError(
                f"Cannot listen on {address}: the address is in use or not on this machine; "
                "change riva_speech_api_port or listen_address in config.sh.")

    async def main_loop(self) -> None:
        """Tick until asked to stop: idle unloads, memory pressure, health, watchdog, status."""
        interval = min(TICK_S, systemd.watchdog_interval_s() or TICK_S)
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
            except asyncio.TimeoutError:
                await self.tick()

    async def tick(self) -> None:
        """One round of housekeeping; an error is logged, never ends the loop."""
        ctx = self.ctx
        if ctx is None:
            return
        core = ctx.services
        try:
            await core.registry.unload_idle(time.monotonic())
            free = available_mb()
            pressure = free < self.settings.memory_reserve_mb
            if pressure != self._under_pressure:
                self._under_pressure = pressure
                if pressure:
                    _LOGGER.warning("Memory is short (%.0f MB available, memory_reserve_mb=%d): "
                                    "refusing new streams", free, self.settings.memory_reserve_mb)
                else:
                    _LOGGER.info("Memory recovered (%.0f MB available): accepting streams", free)
            if self._trim.due():  # a burst's freed memory goes back to the system
                await asyncio.to_thread(self._trim.trim)
            await ctx.publish_health()
            line = core.status_line()
            if line != self._last_status:
                self._last_status = line
                systemd.status(line)
            if core.serving:
                systemd.watchdog()
        except Exception:
            _LOGGER.exception("Housekeeping failed; trying again at the next tick")

    async def shutdown(self) -> None:
        """Stop accepting, let open calls finish within the grace period, unload."""
        ctx = self.ctx
        if ctx is None:
            return
        core = ctx.services
        core.serving = False
        deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        streams = core.admission.total
        systemd.stopping(f"Stopping: draining {streams} stream(s)")
        _LOGGER.info("Stopping: draining %d stream(s), at most %d s", streams, self.settings.shutdown_grace_s)
        await ctx.publish_health()
        doors, self._doors = self._doors, []
        for door in doors:
            await door.stop_accepting()
        grace = self.settings.shutdown_grace_s
        await asyncio.gather(*(self._stop_door(door, grace) for door in doors))
        if self._http is not None:
            await self._http.stop()
        # Cancelled calls end their streams' work on the pools: let them, then shut the pools.
        if not await core.admission.settled(max(0.0, deadline - time.monotonic())):
            _LOGGER.warning("%d stream(s) still open at the stop's deadline", core.admission.total)
        # Every pool the server made, waiting for running calls only until the deadline.
        self.left_running = await asyncio.to_thread(core.pools.shutdown, max(0.0, deadline - time.monotonic()))
        core.registry.unload_all()
        _LOGGER.info("Stopped")

    @staticmethod
    async def _stop_door(door: Door, grace_s: float) -> None:
        """Stop one door; a failure is logged and the others still stop."""
        try:
            await door.stop(grace_s)
        except Exception:
            _LOGGER.exception("The %s door did not stop cleanly", door.name)


async def serve(settings: Settings, installers: list[ServiceInstaller] | None = None,
                ready: Callable[[ServerContext], None] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the process exit code."""
    return await Server(settings, installers).serve(ready)


def run(settings: Settings) -> int:
    """Programmatic entry point of `edged start` (foreground), logging to journald under systemd."""
    from edged.doors.grpc.services import default_installers

    if systemd.under_journald():
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(systemd.journal_handler())
    limit_allocator_arenas()  # before the server starts its threads
    server = Server(settings, default_installers())
    code = asyncio.run(server.serve())
    if server.left_running:
        # A running ONNX Runtime call cannot be interrupted, and the interpreter would wait for
        # its thread at exit: leave now, within the stop's bound (everything else is stopped).
        logging.shutdown()
        os._exit(code)
    return code


__all__ = ["EXIT_BOOT_FAILURE", "EXIT_OK", "Server", "run", "serve"]
