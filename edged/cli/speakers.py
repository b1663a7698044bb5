"""`edged speakers enroll|list|remove`: the voices named in transcripts (edged.pipelines.speaker.enrolled).

With a daemon running (as config.sh describes it, serving ASR), the commands go through its
edged.v1 RPCs, so that its speaker model makes the voice print; else they use the store directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edged.cli.app import ConfigOpt, app, load_config, setup_logging, table

speakers_app = typer.Typer(no_args_is_help=True, help="Enrolled speakers: voices named instead of numbered.")
app.add_typer(speakers_app, name="speakers")


def _daemon(settings: Any) -> Any:
    """A client Target for the running daemon config.sh describes, else None (see running_server)."""
    from edged.client.asr import running_server
    from edged.client.local import Target

    address = running_server(settings)
    return None if address is None else Target(address)


@speakers_app.command("enroll")
def enroll(
    name: Annotated[str, typer.Argument(help="The speaker's name, as labels will show it.")],
    files: Annotated[list[Path], typer.Argument(help="Clips of the speaker (WAV or FLAC; with a running "
                                                     "daemon also MP3, Ogg, WebM; 3 s of speech at least).")],
    config: ConfigOpt = None,
    model: Annotated[str, typer.Option(help="The deployed speaker model (default: the first; a running daemon "
                                            "is used only for the default).")] = "",
) -> None:
    """Enrol (or re-enrol) a speaker from clips of their voice, with the speaker model of config.sh's repository."""
    from edged.errors import RequestError
    from edged.pipelines.speaker.enrolled import SpeakerStore, check_name, enrolment
    from edged.proto import edged_pb2

    setup_logging("WARNING")
    name = check_name(name)
    clips = []
    for path in files:
        try:
            clips.append((str(path), path.read_bytes()))
        except OSError as exc:
            raise RequestError(f"{path}: {exc.strerror}") from None
    settings = load_config(config)
    daemon = None if model else _daemon(settings)
    if daemon is not None:
        done = daemon.call("EnrollSpeaker", edged_pb2.EnrollSpeakerRequest(name=name, audio=[c for _, c in clips]))
        typer.echo(f"Enrolled {done.name} ({done.seconds:.1f} s of speech, {done.model}) in the running daemon.")
        return
    from edged.client.speakerbench import deployed_encoder

    store = SpeakerStore(settings.model_loc)
    store.load()  # a corrupt store is reported before any work
    encoder = deployed_encoder(settings, model)
    embedding, seconds = enrolment(encoder, clips)
    store.enrol(name, embedding, encoder.name, seconds)
    typer.echo(f"Enrolled {name} ({seconds:.1f} s of speech, {encoder.name}) in {store.path}.")


@speakers_app.command("list")
def list_speakers(config: ConfigOpt = None) -> None:
    """The enrolled speakers."""
    from edged.pipelines.speaker.enrolled import SpeakerStore
    from edged.proto import edged_pb2

    settings = load_config(config)
    daemon = _daemon(settings)
    if daemon is not None:
        speakers: list[Any] = list(daemon.call("ListSpeakers", edged_pb2.ListSpeakersRequest()).speakers)
    else:
        speakers = sorted(SpeakerStore(settings.model_loc).load().values(), key=lambda s: s.name)
    if not speakers:
        typer.echo("No speakers are enrolled (edged speakers enroll NAME FILE...).")
        return
    typer.echo(table(["name", "speech s", "model"], [[s.name, f"{s.seconds:.1f}", s.model] for s in speakers]))


@speakers_app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="An enrolled speaker's name.")], config: ConfigOpt = None) -> None:
    """Forget an enrolled speaker."""
    from edged.pipelines.speaker.enrolled import SpeakerStore
    from edged.proto import edged_pb2

    settings = load_config(config)
    daemon = _daemon(settings)
    if daemon is not None:
        daemon.call("RemoveSpeaker", edged_pb2.RemoveSpeakerRequest(name=name.strip()))
        typer.echo(f"Removed {name.strip()} in the running daemon.")
        return
    SpeakerStore(settings.model_loc).remove(name.strip())
    typer.echo(f"Removed {name.strip()}.")
