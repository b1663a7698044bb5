"""What commands share that needs no Typer: config loading, logging and output.

Kept apart from `edged.cli.app` so that the quick commands (`edged.cli.quick`) can use it without
importing Typer.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any


def echo(text: str, err: bool = False) -> None:
    """One line of output on stdout (or stderr), flushed as `typer.echo` does."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def setup_logging(level: str) -> None:
    """Log records at `level` and above to stderr, with time, level and logger."""
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_config(config: Path | None, overrides: list[str] | None = None) -> Any:
    """The settings from `config` (else ./config.sh, else the defaults), with `NAME=VALUE`
    overrides after it; logging set up from them."""
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


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, under a header line."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
