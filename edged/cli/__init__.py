"""The `edged` command line: each command parses, calls one library function, prints the result.

Commands live in modules by subject; each registers itself on the shared Typer app when imported.
`edged start`, `edged status` and `edged health` written the usual way run without Typer
(edged.cli.quick), which alone takes longer than a health probe should.
"""

from __future__ import annotations

import sys
from typing import Any

from edged.errors import EdgedError

__all__ = ["main", "typer_app"]


def typer_app() -> Any:
    """The Typer app (edged.cli.app) with every command registered."""
    from edged.cli import asr, audio, devices, openai_api, repository, server, speakers, tts, wake  # noqa: F401  (register their commands)
    from edged.cli.app import app

    return app


def main() -> None:
    """Console entry point: an EdgedError is one line on stderr and exit status 1."""
    from edged.cli.common import echo
    from edged.cli.quick import run

    try:
        code = run(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        typer_app()()
    except EdgedError as exc:
        echo(f"edged: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        echo("edged: interrupted", err=True)
        sys.exit(130)
