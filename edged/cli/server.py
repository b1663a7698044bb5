"""Commands that run or ask the server: start, stop, status, health, version, drain, bench start, bench soak.

`start`, `status` and `health` also run without Typer (edged.cli.quick); their work is in
edged.cli.daemon, shared by both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edged import __version__
from edged.cli import daemon
from edged.cli.app import ConfigOpt, app, bench_app, load_config, setup_logging

AddressOpt = Annotated[str | None, typer.Option(help="HOST:PORT (default: from config.sh).")]
ClientCertOpt = Annotated[Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")]
ClientKeyOpt = Annotated[Path | None, typer.Option(help="Client key (PEM) for mutual TLS.")]


@app.command()
def start(
    config: ConfigOpt = None,
    detach: Annotated[bool, typer.Option(
        "--detach", "-d", help="Run in the background under a supervisor that restarts it; "
                               "pid file and log in $model_loc.")] = False,
    wait: Annotated[float, typer.Option(help="With --detach: seconds to wait for SERVING.")] = 300.0,
    supervise: Annotated[bool, typer.Option(hidden=True)] = False,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="NAME=VALUE",
        help="Override one setting of config.sh for this run (repeatable; foreground only).")] = None,
) -> None:
    """Run the server in the foreground until SIGINT or SIGTERM (or in the background with --detach)."""
    raise typer.Exit(daemon.start(config, detach, wait, supervise, overrides))


@app.command()
def stop(config: ConfigOpt = None) -> None:
    """Stop a server started with --detach: SIGTERM, drain, SIGKILL after the grace period."""
    from edged.daemon.supervisor import stop as stop_daemon

    settings = load_config(config)
    typer.echo(stop_daemon(settings.model_loc, settings.shutdown_grace_s))


@app.command()
def status(
    config: ConfigOpt = None,
    address: AddressOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tls_cert: ClientCertOpt = None,
    tls_key: ClientKeyOpt = None,
) -> None:
    """Models with state and memory, streams, uptime and health of the running server."""
    raise typer.Exit(daemon.status(config, address, as_json, tls_cert, tls_key))


@app.command()
def health(
    config: ConfigOpt = None,
    address: AddressOpt = None,
    service: Annotated[str, typer.Option(help="Service name; empty for the whole server.")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 3.0,
    tls_cert: ClientCertOpt = None,
    tls_key: ClientKeyOpt = None,
) -> None:
    """Exit 0 if the server answers SERVING, 1 otherwise (for scripts and probes)."""
    raise typer.Exit(daemon.health(config, address, service, timeout, tls_cert, tls_key))


@app.command()
def version() -> None:
    """Print edged's version."""
    typer.echo(f"edged {__version__}")


@app.command()
def drain(
    config: ConfigOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the open streams to end.")] = 0.0,
    undo: Annotated[bool, typer.Option("--undo", help="Take new streams again (undo a drain).")] = False,
) -> None:
    """Stop taking new streams (NOT_SERVING, UNAVAILABLE) while open ones finish; for preStop hooks.
    `edged status` shows DRAINING meanwhile; `--undo` serves again."""
    from edged.client.drain import drain as drain_server
    from edged.client.drain import undo_drain

    settings = load_config(config)
    if undo:
        undo_drain(settings.listen_address, settings.metrics_port)
        typer.echo("serving: the drain is undone")
        return
    left = drain_server(settings.listen_address, settings.metrics_port, wait)
    typer.echo(f"draining: {left} stream(s) still open")


@bench_app.command("start")
def bench_start(
    config: ConfigOpt = None,
    runs: Annotated[int, typer.Option(min=1, max=50, help="Starts by each path.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Start to SERVING through the command line and in-process, and `edged health`'s wall time.

    Starts the server from config.sh `runs` times by each path (it must not be running):
    `edged start --detach` until it returns, `edged start` until `edged health` says SERVING,
    `edged start` polled by this process, the server's start-up in this process. Medians and ranges.
    """
    from edged.client.startbench import bench_start as run_bench

    settings = load_config(config)
    report = run_bench(daemon.config_path(config), settings, runs,
                       None if as_json else lambda line: typer.echo(line, err=True))
    typer.echo(report.json() if as_json else report.text())


@bench_app.command("soak")
def bench_soak(
    manifest: Annotated[Path, typer.Option(help="JSON lines: audio (path relative to it) per clip.")],
    minutes: Annotated[float, typer.Option(min=0.5, help="How long to run.")] = 10.0,
    server: Annotated[str | None, typer.Option(
        "--server", help="HOST:PORT of a running edged (default: start a private one from config.sh).")] = None,
    pid: Annotated[int | None, typer.Option(help="With --server: the server's process, to sample.")] = None,
    config: ConfigOpt = None,
    asr_streams: Annotated[int, typer.Option(min=0, max=64, help="Real-time ASR streams.")] = 4,
    tts_streams: Annotated[int, typer.Option(min=0, max=64, help="TTS streams.")] = 2,
    abusers: Annotated[int, typer.Option(min=0, max=32, help="Abusive clients of each kind.")] = 2,
    interval: Annotated[float, typer.Option(min=5, help="Seconds between samples.")] = 30.0,
    abuse: Annotated[list[str] | None, typer.Option(
        help="An abusive client kind to run (repeat; default all): idle-asr, ssml-bomb, junk-audio.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Real-time ASR and TTS streams with abusive clients beside them: RSS, file descriptors,
    threads, latency p95 and failures every --interval seconds (see edged.client.soak)."""
    from contextlib import nullcontext

    from edged.client.asr import private_server
    from edged.client.soak import ABUSERS, run_soak

    unknown = sorted(set(abuse or ()) - set(ABUSERS))
    if unknown:
        raise typer.BadParameter(f"unknown abusive clients {unknown}; choose from {', '.join(ABUSERS)}",
                                 param_hint="--abuse")
    setup_logging("WARNING")
    serving = nullcontext((server, pid)) if server else private_server(
        config or (Path("config.sh") if Path("config.sh").is_file() else None), tts=True)
    with serving as (address, server_pid):
        report = run_soak(address, manifest, minutes, server_pid, asr_streams, tts_streams, abusers, interval,
                          tuple(abuse) if abuse else ABUSERS)
    typer.echo(report.json() if as_json else report.text())
