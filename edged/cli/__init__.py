"""The `edged` command line: each command parses, calls one library function, prints the result.

Commands live in modules by subject; each registers itself on the shared Typer app when imported.
"""

from __future__ import annotations

import sys

import typer

from edged.cli import asr, audio, devices, repository, server, tts  # noqa: F401  (register their commands)
from edged.cli.app import app
from edged.errors import EdgedError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: an EdgedError is one line on stderr and exit status 1."""
    try:
        app()
    except EdgedError as exc:
        typer.echo(f"edged: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("edged: interrupted", err=True)
        sys.exit(130)
