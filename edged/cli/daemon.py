"""What `edged start`, `edged status` and `edged health` do, without Typer.

Typer's commands (`edged.cli.server`) and their quick twins (`edged.cli.quick`) both call these;
each returns the command's exit status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edged.cli.common import echo, load_config, table


def config_path(config: Path | None) -> Path | None:
    """The config.sh a command reads, as an absolute path for a process started elsewhere."""
    if config is None and Path("config.sh").is_file():
        return Path("config.sh").resolve()
    return config.resolve() if config else None


def client(config: Path | None, address: str | None, cert: Path | None, key: Path | None) -> tuple[Any, str, Any]:
    """Settings, the server's address and channel credentials for a client on this machine."""
    from edged.client.health import channel_credentials, local_address

    settings = load_config(config)
    if address is None:
        address = local_address(settings.listen_address, settings.riva_speech_api_port)
    return settings, address, channel_credentials(settings, cert, key)


def start(config: Path | None, detach: bool = False, wait: float = 300.0, supervise: bool = False,
          overrides: list[str] | None = None) -> int:
    """Run the server in the foreground, under a supervisor (`supervise`), or detached until SERVING;
    `overrides` (NAME=VALUE, foreground only) win over config.sh."""
    if overrides and (detach or supervise):
        from edged.errors import ConfigError

        raise ConfigError("--set works for a server in the foreground; put the setting in config.sh for --detach.")
    if supervise:
        from edged.daemon.supervisor import supervise as run_supervisor

        return run_supervisor(config_path(config), lambda: load_config(config))
    settings = load_config(config, overrides)
    if detach:
        from edged.client.health import local_address
        from edged.daemon.supervisor import LOG_NAME
        from edged.daemon.supervisor import detach as run_detached

        code = run_detached(config_path(config), settings.model_loc, wait)
        if code:
            log = settings.model_loc / LOG_NAME
            echo("\n".join([f"edged: the server could not start; {log} says why:", *_why_not_started(log)]),
                 err=True)
            return code
        address = local_address(settings.listen_address, settings.riva_speech_api_port)
        echo(f"edged is SERVING at {address} (log: {settings.model_loc / LOG_NAME})")
        return 0
    from edged.daemon.app import run

    return run(settings)


def _why_not_started(log: Path) -> list[str]:
    """The error lines the last run wrote to the log (else its last lines): a traceback that a
    library prints while the server stops must not hide the reason."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    starts = [i for i, line in enumerate(lines) if "Started server" in line]
    run = lines[starts[-1]:] if starts else lines
    errors = [line for line in run if " ERROR " in line]
    return errors[-5:] or run[-5:]


def status(config: Path | None, address: str | None = None, as_json: bool = False,
           tls_cert: Path | None = None, tls_key: Path | None = None) -> int:
    """Print the running server's status; 3 (LSB: not running) if it does not answer."""
    from edged.client.status import fetch_status
    from edged.daemon.supervisor import PID_NAME, read_pid
    from edged.errors import DaemonError

    settings, address, creds = client(config, address, tls_cert, tls_key)
    try:
        info = fetch_status(address, creds, settings.api_key)
    except DaemonError as exc:
        echo(f"edged: {exc}", err=True)
        return 3
    info["supervisor_pid"] = read_pid(settings.model_loc / PID_NAME)
    if as_json:
        echo(json.dumps(info, indent=2))
        return 0
    supervisor = f", supervisor {info['supervisor_pid']}" if info["supervisor_pid"] else ""
    mem, mic, spk = info["memory"], info["microphone"], info["speaker"]
    lines = [
        (f"edged {info['version']} at {address}: {info['health']}, up {info['uptime_s']:.0f} s, "
         f"pid {info['pid']}{supervisor}"),
        (f"memory: server {mem['rss_mb']} MB"
         + (f" (new streams refused past {mem['high_water_mb']} MB)" if mem["high_water_mb"] else "")
         + f", models budget {mem['budget_mb']} MB, {mem['available_mb']} MB available"),
        "health: " + ", ".join(f"{name} {state}" for name, state in info["services"].items()),
        "streams: " + (", ".join(f"{s} {c['active']}" + (f"/{c['limit']}" if c["limit"] else "")
                                 for s, c in info["streams"].items()) or "none"),
        (f"microphone: {mic['state']}" + (f" ({mic['device']}, {mic['overflows']} overflows)" if mic["device"] else "")
         + f"; speaker: {spk['state']}" + (f" ({spk['device']}, {spk['queued']} queued)" if spk["device"] else "")),
        "",
        table(["model", "pipeline", "state", "memory", "note"],
              [[m["name"], m["pipeline"], m["state"], f"{m['memory_mb']:.0f} MB", m["reason"]]
               for m in info["models"]]),
    ]
    echo("\n".join(lines))
    return 0


def health(config: Path | None, address: str | None = None, service: str = "", timeout: float = 3.0,
           tls_cert: Path | None = None, tls_key: Path | None = None) -> int:
    """Print the server's health; 0 if it answers SERVING, else 1."""
    from edged.client.health import server_health

    settings, shown, creds = client(config, address, tls_cert, tls_key)
    state = server_health(settings, service, timeout, creds, address)
    echo(f"{shown}: {state}")
    return 0 if state == "SERVING" else 1
