"""`edged start`, `edged status` and `edged health` without Typer, for the paths users time.

Typer takes 0.15 to 0.3 s of every command before it runs (importing it and pydantic, and building
a validator for each parameter): more than a health probe's whole budget, and paid three times on
the way to SERVING (`edged start --detach`, its supervisor, the server). These twins parse the
same options with argparse and call the same functions (edged.cli.daemon). Anything they do not
take as written (`--help`, a mistake, a spelling such as `--no-supervise`) is left to Typer, so
help and error messages stay Typer's; tests/test_start_path.py checks that the options match.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class _NotQuick(Exception):
    """The arguments are not for the quick path: Typer will parse them."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that gives the arguments back instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _NotQuick(message)


def _parser(command: str) -> _Parser:
    parser = _Parser(prog=f"edged {command}", add_help=False, allow_abbrev=False)
    parser.add_argument("-c", "--config", type=Path, default=None)
    if command in ("status", "health"):
        parser.add_argument("--address", default=None)
        parser.add_argument("--tls-cert", type=Path, default=None)
        parser.add_argument("--tls-key", type=Path, default=None)
    if command == "status":
        parser.add_argument("--json", dest="as_json", action="store_true")
    elif command == "health":
        parser.add_argument("--service", default="")
        parser.add_argument("--timeout", type=float, default=3.0)
    elif command == "start":
        parser.add_argument("-d", "--detach", action="store_true")
        parser.add_argument("--wait", type=float, default=300.0)
        parser.add_argument("--supervise", action="store_true")
        parser.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE")
    return parser


def parsers() -> dict[str, argparse.ArgumentParser]:
    """The quick commands' parsers, by command name."""
    return {name: _parser(name) for name in ("start", "status", "health")}


def run(argv: list[str]) -> int | None:
    """Run `edged ARGV` here and return its exit status, or None to leave it to Typer."""
    if not argv or argv[0] not in ("start", "status", "health") or any(a in ("-h", "--help") for a in argv[1:]):
        return None
    try:
        options = vars(_parser(argv[0]).parse_args(argv[1:]))
    except (_NotQuick, ValueError):
        return None
    if options["config"] is None and os.environ.get("EDGED_CONFIG"):
        options["config"] = Path(os.environ["EDGED_CONFIG"])
    from edged.cli import daemon

    command: Callable[..., int] = getattr(daemon, argv[0])
    return command(**options)
