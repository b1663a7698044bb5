"""The Typer app and what every command shares: config loading, logging, tables, progress."""

from __future__ import annotations

import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

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


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_config(config: Path | None, overrides: list[str] | None = None) -> Any:
    """config.sh (or ./config.sh, or the defaults), with `NAME=VALUE` overrides after it."""
    from edged.config import load_settings
    from edged.errors import ConfigError

    if config is None and Path("config.sh").is_file():
        config = Path("config.sh")
    pairs = [item.partition("=") for item in overrides or []]
    bad = [name for name, eq, _ in pairs if not eq or not name]
    if bad:
        raise ConfigError(f"--set takes NAME=VALUE, not {bad[0]!r}.")
    settings, warnings = load_settings(config, overrides={name: value for name, _, value in pairs})
    setup_logging(settings.log_level)
    for warning in warnings:
        logging.getLogger("edged.config").warning("%s", warning)
    return settings


def progress_bar(label: str) -> Any:
    from edged.progress import ProgressBar

    return ProgressBar(label)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"
