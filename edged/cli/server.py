"""Commands that run or ask the server: start, health, version."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edged import __version__
from edged.cli.app import ConfigOpt, app, load_config


@app.command()
def start(config: ConfigOpt = None) -> None:
    """Run the server in the foreground until SIGINT or SIGTERM."""
    from edged.server.app import run

    raise typer.Exit(run(load_config(config)))


@app.command()
def health(
    config: ConfigOpt = None,
    address: Annotated[Optional[str], typer.Option(help="HOST:PORT (default: from config.sh).")] = None,
    service: Annotated[str, typer.Option(help="Service name; empty for the whole server.")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 3.0,
) -> None:
    """Exit 0 if the server answers SERVING, 1 otherwise (for scripts and probes)."""
    from edged.client.health import check_health, local_address

    if address is None:
        settings = load_config(config)
        address = local_address(settings.listen_address, settings.riva_speech_api_port)
    status = check_health(address, service, timeout)
    typer.echo(f"{address}: {status}")
    raise typer.Exit(0 if status == "SERVING" else 1)


@app.command()
def version() -> None:
    """Print edged's version."""
    typer.echo(f"edged {__version__}")
