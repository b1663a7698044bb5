"""The daemon's server: start-up, a ticking main loop, shutdown.

Start-up binds the port first and serves health as NOT_SERVING while the models load, so a
probe can tell "loading" from "dead"; SERVING follows once every enabled model is loaded.
Services plug their servicers in through `ServerContext` (see `edged.server.services`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edged.backends import BackendOptions
from edged.backends.probe import probe
from edged.config import Settings
from edged.errors import BackendError, ConfigError, EdgedError
from edged.loader import LoadedModel, load_model
from edged.repository.records import current_target, list_models

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BOOT_FAILURE = 78
"""sysexits' EX_CONFIG: the server cannot boot (bad config, nothing deployed); do not restart it."""

MAX_MESSAGE_BYTES = 64 * 2**20
_PIPELINE_SERVICE = {"speech_recognition": "asr", "vad": "asr", "speech_synthesis": "tts"}


@dataclass
class ServerContext:
    """What a running server holds: settings, loaded models, the gRPC server and health."""

    settings: Settings
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    executor: ThreadPoolExecutor
    models: dict[str, LoadedModel] = field(default_factory=dict)
    service_names: list[str] = field(default_factory=list)


ServiceInstaller = Callable[[ServerContext], list[str]]
"""Adds servicers to `ctx.server`; returns the full gRPC service names it registered."""


def _address(settings: Settings) -> str:
    host = settings.listen_address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{settings.riva_speech_api_port}"


async def _set_health(ctx: ServerContext, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *ctx.service_names]:
        await ctx.health.set(name, status)


async def _load_enabled(ctx: ServerContext) -> None:
    """Load every deployed model of an enabled service, side by side on the inference executor."""
    settings = ctx.settings
    enabled = {"asr": settings.service_enabled_asr, "tts": settings.service_enabled_tts}
    target = current_target(probe(), settings.backend)
    options = BackendOptions(settings.ort_intra_op_threads, settings.ort_inter_op_threads)
    wanted = [
        m for m in list_models(settings.model_loc / "models", target)
        if not m.manifest or enabled[_PIPELINE_SERVICE[m.manifest.pipeline]]
    ]
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        *(loop.run_in_executor(ctx.executor, load_model, m, options) for m in wanted),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, LoadedModel):
            ctx.models[result.name] = result
        elif isinstance(result, BackendError):
            _LOGGER.error("%s", result)
        else:
            raise result
    if not ctx.models:
        raise ConfigError(
            f"No deployed model could be loaded from {settings.model_loc / 'models'}; "
            "run `edged init` first."
        )


async def serve(settings: Settings, installers: list[ServiceInstaller] | None = None,
                ready: Callable[[ServerContext], None] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the process exit code."""
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edged-infer")
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ])
    ctx = ServerContext(settings, server, health.aio.HealthServicer(), executor)
    health_pb2_grpc.add_HealthServicer_to_server(ctx.health, server)
    for install in installers or []:
        ctx.service_names += install(ctx)
    reflection.enable_server_reflection(
        [*ctx.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)
    address = _address(settings)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        _LOGGER.error("Cannot listen on %s: the address is in use or not on this machine; "
                      "change riva_speech_api_port or listen_address in config.sh.", address)
        return EXIT_BOOT_FAILURE
    await _set_health(ctx, serving=False)
    await server.start()
    _LOGGER.info("Listening on %s; loading models", address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await _load_enabled(ctx)
        except EdgedError as exc:
            _LOGGER.error("%s", exc)
            return EXIT_BOOT_FAILURE
        await _set_health(ctx, serving=True)
        _LOGGER.info("Ready: %d model(s) loaded (%s)", len(ctx.models), ", ".join(ctx.models))
        if ready:
            ready(ctx)
        await stop.wait()
        _LOGGER.info("Stopping: draining requests")
        return EXIT_OK
    finally:
        await _set_health(ctx, serving=False)
        await server.stop(grace=5)
        executor.shutdown(wait=False, cancel_futures=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        _LOGGER.info("Stopped")


def run(settings: Settings) -> int:
    """Programmatic entry point of `edged start` (foreground)."""
    from edged.server.services import default_installers

    return asyncio.run(serve(settings, default_installers()))
