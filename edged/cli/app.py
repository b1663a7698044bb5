"""The Typer app and what every command shares: config loading, logging, tables, progress."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from edged.cli.common import load_config, setup_logging, table

__all__ = ["ConfigOpt", "Pipeline", "app", "bench_app", "load_config", "mb", "progress_bar", "setup_logging",
           "table"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="edged: a local speech server (Riva API) for Jetson and workstations.",
)

bench_app = typer.Typer(no_args_is_help=True, help="Measure a running server (or a private one).")
app.add_typer(bench_app, name="bench")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar="EDGED_CONFIG",
        help="config.sh to read (default: ./config.sh if present, else built-in defaults).",
    ),
]


class Pipeline(str, Enum):
    """Pipelines `edged build` can pack."""

    speech_recognition = "speech_recognition"
    speech_synthesis = "speech_synthesis"
    vad = "vad"
    speaker = "speaker"
    wake_word = "wake_word"


def progress_bar(label: str) -> Any:
    from edged.progress import ProgressBar

    return ProgressBar(label)


def mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"
