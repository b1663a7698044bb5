"""Commands that run or ask the server: start, stop, status, health, version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edged import __version__
from edged.cli.app import ConfigOpt, app, load_config, table
from edged.errors import ConfigError

AddressOpt = Annotated[str | None, typer.Option(help="HOST:PORT (default: from config.sh).")]
ClientCertOpt = Annotated[Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")]
ClientKeyOpt = Annotated[Path | None, typer.Option(help="Client key (PEM) for mutual TLS.")]


def _config_path(config: Path | None) -> Path | None:
    if config is None and Path("config.sh").is_file():
        return Path("config.sh").resolve()
    return config.resolve() if config else None


def _client(config: Path | None, address: str | None, cert: Path | None, key: Path | None) -> tuple[Any, str, Any]:
    """Settings, the server's address and channel credentials for a client on this machine."""
    from edged.client.health import channel_credentials, local_address

    settings = load_config(config)
    if address is None:
        address = local_address(settings.listen_address, settings.riva_speech_api_port)
    return settings, address, channel_credentials(settings, cert, key)


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
    if overrides and (detach or supervise):
        raise ConfigError("--set works for a server in the foreground; put the setting in config.sh for --detach.")
    settings = load_config(config, overrides)
    if supervise:
        from edged.daemon.supervisor import supervise as run_supervisor

        raise typer.Exit(run_supervisor(_config_path(config), settings.model_loc, settings.shutdown_grace_s))
    if detach:
        from edged.client.health import channel_credentials, check_health, local_address
        from edged.daemon.supervisor import LOG_NAME
        from edged.daemon.supervisor import detach as run_detached

        address = local_address(settings.listen_address, settings.riva_speech_api_port)
        creds = channel_credentials(settings)
        code = run_detached(_config_path(config), settings.model_loc,
                            lambda: check_health(address, "", 1.0, creds) == "SERVING", wait)
        if code:
            log = settings.model_loc / LOG_NAME
            typer.echo("\n".join([f"edged: the server could not start; {log} says why:",
                                  *_why_not_started(log)]), err=True)
            raise typer.Exit(code)
        typer.echo(f"edged is SERVING at {address} (log: {settings.model_loc / LOG_NAME})")
        return
    from edged.daemon.app import run

    raise typer.Exit(run(settings))


def _why_not_started(log: Path) -> list[str]:
    """The error lines the last run wrote to the log (else its last lines): a traceback that a
    library prints while the server stops must not hide the reason."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    starts = [i for i, line in enumerate(lines) if "Started server" in line]
    run = lines[starts[-1]:] if starts else lines
    errors = [line for line in run if " ERROR " in line]
    return errors[-5:] or run[-5:]


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
    from edged.client.status import fetch_status
    from edged.daemon.supervisor import PID_NAME, read_pid
    from edged.errors import DaemonError

    settings, address, creds = _client(config, address, tls_cert, tls_key)
    try:
        info = fetch_status(address, creds, settings.api_key)
    except DaemonError as exc:
        typer.echo(f"edged: {exc}", err=True)
        raise typer.Exit(3) from None  # LSB: program is not running
    info["supervisor_pid"] = read_pid(settings.model_loc / PID_NAME)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    supervisor = f", supervisor {info['supervisor_pid']}" if info["supervisor_pid"] else ""
    mem, mic, spk = info["memory"], info["microphone"], info["speaker"]
    lines = [
        f"edged {info['version']} at {address}: {info['health']}, up {info['uptime_s']:.0f} s, "
        f"pid {info['pid']}{supervisor}",
        f"memory: server {mem['rss_mb']} MB, models budget {mem['budget_mb']} MB, "
        f"{mem['available_mb']} MB available",
        "health: " + ", ".join(f"{name} {state}" for name, state in info["services"].items()),
        "streams: " + (", ".join(f"{s} {c['active']}" + (f"/{c['limit']}" if c["limit"] else "")
                                 for s, c in info["streams"].items()) or "none"),
        f"microphone: {mic['state']}" + (f" ({mic['device']}, {mic['overflows']} overflows)" if mic["device"] else "")
        + f"; speaker: {spk['state']}" + (f" ({spk['device']}, {spk['queued']} queued)" if spk["device"] else ""),
        "",
        table(["model", "pipeline", "state", "memory", "note"],
              [[m["name"], m["pipeline"], m["state"], f"{m['memory_mb']:.0f} MB", m["reason"]]
               for m in info["models"]]),
    ]
    typer.echo("\n".join(lines))


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
    from edged.client.health import check_health

    _, address, creds = _client(config, address, tls_cert, tls_key)
    state = check_health(address, service, timeout, creds)
    typer.echo(f"{address}: {state}")
    raise typer.Exit(0 if state == "SERVING" else 1)


@app.command()
def version() -> None:
    """Print edged's version."""
    typer.echo(f"edged {__version__}")


@app.command()
def drain(
    config: ConfigOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the open streams to end.")] = 0.0,
) -> None:
    """Stop taking new streams (NOT_SERVING, UNAVAILABLE) while open ones finish; for preStop hooks."""
    from edged.client.drain import drain as drain_server

    settings = load_config(config)
    left = drain_server(settings.listen_address, settings.metrics_port, wait)
    typer.echo(f"draining: {left} stream(s) still open")
