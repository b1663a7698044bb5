"""The machine's microphone and speaker: `edged say`, `edged mic`, `edged transcripts`, `edged dictate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edged.cli.app import ConfigOpt, app, table
from edged.cli.daemon import client as _client
from edged.cli.server import AddressOpt, ClientCertOpt, ClientKeyOpt


def _target(config: Path | None, address: str | None, cert: Path | None, key: Path | None) -> Any:
    from edged.client.local import Target

    settings, address, creds = _client(config, address, cert, key)
    return Target(address, creds, settings.api_key)


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="Text or SSML (<speak>...</speak>) to say.")],
    voice: Annotated[str, typer.Option(help="Voice name, e.g. English-US.Joe (default: the first).")] = "",
    interrupt: Annotated[bool, typer.Option("--interrupt", "-i", help="Stop what is playing first.")] = False,
    wait: Annotated[bool, typer.Option(help="Return when it has been said (--no-wait: when queued).")] = True,
    config: ConfigOpt = None,
    address: AddressOpt = None,
    tls_cert: ClientCertOpt = None,
    tls_key: ClientKeyOpt = None,
) -> None:
    """Say a text on the daemon's speaker (local_speaker_enabled)."""
    from edged.client.local import say as speak

    response = speak(_target(config, address, tls_cert, tls_key), text, voice, interrupt, wait)
    if not wait:
        typer.echo(f"queued as #{response.id}" + (f" behind {response.queued}" if response.queued else ""))
    elif response.interrupted:
        typer.echo(f"interrupted after {response.seconds:.2f} s")
    else:
        typer.echo(f"said {response.seconds:.2f} s of speech (first audio after {response.first_audio_ms:.0f} ms)")


@app.command()
def mic(
    state: Annotated[str, typer.Argument(help="on (unmute), off (mute) or status.")] = "status",
    config: ConfigOpt = None,
    address: AddressOpt = None,
    tls_cert: ClientCertOpt = None,
    tls_key: ClientKeyOpt = None,
) -> None:
    """Mute or unmute the daemon's microphone, or show its state."""
    from edged.client.local import microphone_status, set_microphone
    from edged.errors import ConfigError

    target = _target(config, address, tls_cert, tls_key)
    if state == "status":
        status = microphone_status(target)
    elif state in ("on", "off"):
        status = set_microphone(target, muted=state == "off")
    else:
        raise ConfigError(f"Unknown microphone state {state!r}; use on, off or status.")
    rate = f" at {status.device_rate} Hz" if status.device_rate else ""
    typer.echo(f"microphone: {status.state}" + (f" ({status.device}{rate})" if status.device else "")
               + f"; heard {status.audio_s:.0f} s, {status.finals} transcripts, {status.overflows} overflows")


@app.command()
def transcripts(
    interim: Annotated[bool, typer.Option(help="Also show interim results.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines with times and words.")] = False,
    config: ConfigOpt = None,
    address: AddressOpt = None,
    tls_cert: ClientCertOpt = None,
    tls_key: ClientKeyOpt = None,
) -> None:
    """Follow what the daemon's microphone hears (local_mic_enabled), one final per line."""
    from edged.client.local import follow_transcripts, transcript_json

    for message in follow_transcripts(_target(config, address, tls_cert, tls_key), interim):
        if as_json:
            typer.echo(transcript_json(message))
        else:
            tag = "".join(f"[{t}] " for t in (message.wake_word, message.speaker) if t)
            typer.echo(tag + (message.text if message.is_final else f"… {message.text}"))


@app.command()
def dictate(
    server: Annotated[str | None, typer.Option(
        "--server", help="HOST:PORT of an edged or Riva server (default: the local edged from config.sh).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="Microphone: PortAudio index or part of its name (default: the default input).")] = None,
    list_devices: Annotated[bool, typer.Option("--list-devices", help="List audio devices and exit.")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Also append each final transcript to this file.")] = None,
    language: Annotated[str, typer.Option(help="Language code sent to the server.")] = "en-US",
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: at Ctrl-C).")] = 0.0,
    config: ConfigOpt = None,
    tls_cert: ClientCertOpt = None,
    tls_key: ClientKeyOpt = None,
) -> None:
    """Dictate: stream this machine's microphone to a server; interim text in place, finals as lines.

    When the output is a pipe only finals are written, one per line.
    """
    if list_devices:
        from edged.audio.devices import list_devices as devices

        rows = [[str(d.index), d.name, str(d.max_input_channels), str(d.max_output_channels), f"{d.default_rate:.0f}",
                 ("in " if d.is_default_input else "") + ("out" if d.is_default_output else "")]
                for d in devices()]
        typer.echo(table(["index", "name", "in", "out", "rate", "default"], rows))
        return
    from edged.client.local import dictate as run

    target = _target(config, server, tls_cert, tls_key)
    tty = sys.stdout.isatty()
    if tty:
        typer.echo(f"Listening (server {target.address}); Ctrl-C to stop.", err=True)
    run(target, device, sys.stdout, tty, output, language, duration)
