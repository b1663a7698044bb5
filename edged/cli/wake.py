"""Wake-word commands: `edged bench wake`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edged.cli.app import ConfigOpt, bench_app, load_config, setup_logging


@bench_app.command("wake")
def bench_wake(
    wyoming: Annotated[str | None, typer.Option(
        help="HOST:PORT of a running server's Wyoming port (default: config.sh's).")] = None,
    config: ConfigOpt = None,
    corpus: Annotated[Path | None, typer.Option(
        help="JSON lines (audio path relative to it per clip): more ordinary speech for false accepts.")] = None,
    streams: Annotated[int, typer.Option(min=1, max=64, help="Listening streams at once.")] = 8,
    pid: Annotated[int | None, typer.Option(help="The server's process id, for CPU per stream "
                                                 "(default: whoever listens on the port here).")] = None,
    words: Annotated[list[str] | None, typer.Option(
        "--word", help="Only this built-in wake word (wake-okay-nabu ...); repeatable. Default: all.")] = None,
    voices: Annotated[int, typer.Option(min=1, max=8, help="espeak-ng voices saying each phrase.")] = 8,
    cpu_seconds: Annotated[float, typer.Option(min=2, help="Seconds the streams listen for the CPU figure.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Detection rate per SNR, false accepts per hour, latency, CPU per stream (beside pymicro-wakeword)."""
    from edged.client.health import local_address
    from edged.client.wakebench import run_wake_bench, server_pid

    setup_logging("WARNING")
    if wyoming is None:
        settings = load_config(config)
        wyoming = local_address(settings.listen_address, settings.wyoming_port)
    host, _, port_text = wyoming.rpartition(":")
    port = int(port_text)
    from edged.client.wake_audio import ESPEAK_VOICES

    report = run_wake_bench(host.strip("[]") or "127.0.0.1", port, pid or server_pid(port), corpus, streams,
                            ESPEAK_VOICES[:voices], cpu_seconds, tuple(words or ()))
    typer.echo(report.json() if as_json else report.text())
