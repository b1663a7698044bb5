"""The daemon's server: start-up, a ticking main loop, shutdown.

Start-up checks the config, binds the gRPC port (and the HTTP metrics port) first and serves
health as NOT_SERVING while the models load, so a probe can tell "loading" from "dead"; SERVING
and systemd's READY=1 follow once the models that fit the memory budget are loaded. The main
loop ticks once a second: idle unloads, memory pressure, health and the systemd watchdog.
SIGTERM or SIGINT stops accepting, lets open streams finish within `shutdown_grace_s`, unloads.
Services plug their servicers in through `ServerContext` (see `edged.server.services`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edged.config import Settings
from edged.errors import EdgedError
from edged.loader import LoadedModel
from edged.server import systemd
from edged.server.admission import Admission
from edged.server.control import install as install_control
from edged.server.exits import EXIT_BOOT_FAILURE, EXIT_OK
from edged.server.http import HttpEndpoint
from edged.server.localaudio import LocalAudio
from edged.server.models import ModelRegistry, ModelState, available_mb
from edged.server.security import ApiKeyInterceptor, server_credentials, warn_if_exposed

_LOGGER = logging.getLogger(__name__)

TICK_S = 1.0
SERVICE_PIPELINES = {
    "asr": "speech_recognition",
    "tts": "speech_synthesis",
    "nvidia.riva.asr.RivaSpeechRecognition": "speech_recognition",
    "nvidia.riva.tts.RivaSpeechSynthesis": "speech_synthesis",
}
"""Health names that serve only while a model of their pipeline is loaded (or loadable)."""


@dataclass
class ServerContext:
    """What a running server holds: settings, loaded models, the gRPC server, health, limits."""

    settings: Settings
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    executor: ThreadPoolExecutor
    models: dict[str, LoadedModel] = field(default_factory=dict)
    service_names: list[str] = field(default_factory=list)
    admission: Admission = field(default_factory=lambda: Admission(0, available_mb))
    """Stream slots and memory pressure: `async with ctx.admission.stream("asr", limit):`."""
    registry: ModelRegistry | None = None
    """Model states and memory; `await ctx.registry.use(name)` loads lazily and marks use."""
    servicers: dict[str, Any] = field(default_factory=dict)
    """Servicers by edged service name ("asr", "tts"), for in-process users such as the microphone."""
    local_audio: LocalAudio | None = None
    """The machine's microphone and speaker (None when config.sh turns both off)."""
    started: float = field(default_factory=time.monotonic)
    serving: bool = False
    """True from the end of start-up until shutdown begins."""
    _published: dict[str, int] = field(default_factory=dict, repr=False)

    def health_names(self) -> list[str]:
        """Every name health answers for: "" (the server), edged's services, the gRPC services."""
        return ["", *self.settings.enabled_services(), *self.service_names]

    def is_serving(self, name: str = "") -> bool:
        """Whether health should say SERVING for `name`."""
        if not self.serving:
            return False
        pipeline = SERVICE_PIPELINES.get(name)
        if pipeline is None or self.registry is None:
            return True
        usable = (ModelState.LOADED, ModelState.LOADING, ModelState.UNLOADED)
        return any(e.pipeline == pipeline and e.state in usable for e in self.registry.entries.values())

    async def publish_health(self) -> None:
        """Set every health name to SERVING or NOT_SERVING from the current state, where it changed."""
        for name in self.health_names():
            status = (health_pb2.HealthCheckResponse.SERVING if self.is_serving(name)
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            if self._published.get(name) != status:  # Watch clients hear of changes only
                self._published[name] = status
                await self.health.set(name, status)


ServiceInstaller = Callable[[ServerContext], list[str]]
"""Adds servicers to `ctx.server`; returns the full gRPC service names it registered."""


def _address(settings: Settings) -> str:
    host = settings.listen_address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{settings.riva_speech_api_port}"


def status_line(ctx: ServerContext) -> str:
    """One line for systemd's STATUS= and the log."""
    if ctx.registry is None:
        return "starting"
    loaded = [e.name for e in ctx.registry.entries.values() if e.state is ModelState.LOADED]
    out = [e.name for e in ctx.registry.entries.values() if e.state in (ModelState.LEFT_OUT, ModelState.FAILED)]
    line = f"Serving {len(loaded)} model(s) ({', '.join(loaded) or 'none yet'}), {ctx.admission.total} stream(s)"
    return line + (f"; not loaded: {', '.join(out)}" if out else "")


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
        self.ctx: ServerContext | None = None
        self._last_status = ""
        self._under_pressure = False

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
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edged-infer")
        ctx = ServerContext(settings, server, health.aio.HealthServicer(), executor,
                            admission=Admission(settings.memory_reserve_mb, available_mb))
        ctx.registry = ModelRegistry(settings, executor, ctx.models)
        self.ctx = ctx
        health_pb2_grpc.add_HealthServicer_to_server(ctx.health, server)
        ctx.service_names += install_control(ctx)
        for install in self._installers:
            ctx.service_names += install(ctx)
        reflection.enable_server_reflection(
            [*ctx.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        self._bind(server, credentials)
        if settings.metrics_port:
            self._http = HttpEndpoint(lambda: ctx.serving)
            try:
                await self._http.start(settings.listen_address, settings.metrics_port)
            except OSError as exc:
                self._http = None
                raise EdgedError(
                    f"Cannot listen on {settings.listen_address}:{settings.metrics_port} for metrics "
                    f"({exc.strerror}); change metrics_port in config.sh (0 turns it off).") from None
        await ctx.publish_health()
        await server.start()
        warn_if_exposed(settings)
        _LOGGER.info("Listening on %s (%s)%s; loading models", _address(settings),
                     "TLS" if credentials else "plaintext",
                     f", metrics on port {settings.metrics_port}" if settings.metrics_port else "")
        systemd.status("Loading models")
        await ctx.registry.load_initial()
        entries = ctx.registry.entries.values()
        if not ctx.models and not (settings.lazy_loading and any(e.state is ModelState.UNLOADED for e in entries)):
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in entries)
            raise EdgedError(
                f"No deployed model could be loaded from {settings.model_loc / 'models'}"
                + (f" ({reasons})" if reasons else "") + "; run `edged init` first.")
        ctx.serving = True
        await ctx.publish_health()
        if settings.local_mic_enabled or settings.local_speaker_enabled:
            ctx.local_audio = LocalAudio(ctx)
            await ctx.local_audio.start()
        self._last_status = status_line(ctx)
        _LOGGER.info("Ready: %s", self._last_status)
        systemd.ready(self._last_status)

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
        if ctx is None or ctx.registry is None:
            return
        try:
            await ctx.registry.unload_idle(time.monotonic())
            free = available_mb()
            pressure = free < self.settings.memory_reserve_mb
            if pressure != self._under_pressure:
                self._under_pressure = pressure
                if pressure:
                    _LOGGER.warning("Memory is short (%.0f MB available, memory_reserve_mb=%d): "
                                    "refusing new streams", free, self.settings.memory_reserve_mb)
                else:
                    _LOGGER.info("Memory recovered (%.0f MB available): accepting streams", free)
            await ctx.publish_health()
            line = status_line(ctx)
            if line != self._last_status:
                self._last_status = line
                systemd.status(line)
            if ctx.serving:
                systemd.watchdog()
        except Exception:
            _LOGGER.exception("Housekeeping failed; trying again at the next tick")

    async def shutdown(self) -> None:
        """Stop accepting, let open calls finish within the grace period, unload."""
        ctx = self.ctx
        if ctx is None:
            return
        ctx.serving = False
        streams = ctx.admission.total
        systemd.stopping(f"Stopping: draining {streams} stream(s)")
        _LOGGER.info("Stopping: draining %d stream(s), at most %d s", streams, self.settings.shutdown_grace_s)
        await ctx.publish_health()
        if ctx.local_audio is not None:
            await ctx.local_audio.stop()  # also ends Transcripts subscriptions, which never end alone
        await ctx.server.stop(grace=self.settings.shutdown_grace_s)
        if self._http is not None:
            await self._http.stop()
        if ctx.registry is not None:
            ctx.registry.unload_all()
        ctx.executor.shutdown(wait=False, cancel_futures=True)
        _LOGGER.info("Stopped")


async def serve(settings: Settings, installers: list[ServiceInstaller] | None = None,
                ready: Callable[[ServerContext], None] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the process exit code."""
    return await Server(settings, installers).serve(ready)


def run(settings: Settings) -> int:
    """Programmatic entry point of `edged start` (foreground), logging to journald under systemd."""
    from edged.server.services import default_installers

    if systemd.under_journald():
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(systemd.journal_handler())
    return asyncio.run(serve(settings, default_installers()))


__all__ = ["EXIT_BOOT_FAILURE", "EXIT_OK", "Server", "ServerContext", "ServiceInstaller", "run", "serve"]
