"""OpenAI-compatible API commands: `edged bench formats`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edged.cli.app import ConfigOpt, bench_app, load_config, setup_logging


@bench_app.command("formats")
def bench_formats_command(
    url: Annotated[str | None, typer.Option(
        help="Base URL of a running server's HTTP door, http[s]://HOST:PORT (default: config.sh's).")] = None,
    config: ConfigOpt = None,
    clip: Annotated[Path | None, typer.Option(
        help="A sound file whose first 10 s are uploaded (default: 10 s of the server's first voice).")] = None,
    runs: Annotated[int, typer.Option(min=1, max=200, help="Counted rounds (one more warms up).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Transcription of a 10 s clip uploaded as WebM/Opus, MP3 and Ogg Opus against the same clip
    as WAV (p50 of alternated rounds, and the difference), and speech as mp3's first byte p50."""
    from edged.client.formatbench import CLIP_S, bench_formats, read_clip
    from edged.client.health import local_address

    setup_logging("WARNING")
    settings = load_config(config)
    if url is None:
        scheme = "https" if settings.ssl_server_cert is not None else "http"
        url = f"{scheme}://{local_address(settings.listen_address, settings.http_port)}"
    report = bench_formats(url, settings.api_key, read_clip(clip, CLIP_S) if clip else None, runs,
                           progress=None if as_json else lambda line: typer.echo(line, err=True))
    typer.echo(report.json() if as_json else report.text())
