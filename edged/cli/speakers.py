"""`edged speakers enroll|list|remove`: the voices named in transcripts (edged.pipelines.speaker.enrolled)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edged.cli.app import ConfigOpt, app, load_config, setup_logging, table

speakers_app = typer.Typer(no_args_is_help=True, help="Enrolled speakers: voices named instead of numbered.")
app.add_typer(speakers_app, name="speakers")


@speakers_app.command("enroll")
def enroll(
    name: Annotated[str, typer.Argument(help="The speaker's name, as labels will show it.")],
    files: Annotated[list[Path], typer.Argument(help="WAV or FLAC clips of the speaker (3 s of speech at least).")],
    config: ConfigOpt = None,
    model: Annotated[str, typer.Option(help="The deployed speaker model (default: the first).")] = "",
) -> None:
    """Enrol (or re-enrol) a speaker from clips of their voice, with the speaker model of config.sh's repository."""
    from edged.client.speakerbench import deployed_encoder
    from edged.errors import RequestError
    from edged.pipelines.speaker.enrolled import SpeakerStore, check_name, enrolment

    setup_logging("WARNING")
    name = check_name(name)
    clips = []
    for path in files:
        try:
            clips.append((str(path), path.read_bytes()))
        except OSError as exc:
            raise RequestError(f"{path}: {exc.strerror}") from None
    settings = load_config(config)
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

    speakers = SpeakerStore(load_config(config).model_loc).load()
    if not speakers:
        typer.echo("No speakers are enrolled (edged speakers enroll NAME FILE...).")
        return
    typer.echo(table(["name", "speech s", "model"], [[s.name, f"{s.seconds:.1f}", s.model]
                                                   for s in sorted(speakers.values(), key=lambda s: s.name)]))


@speakers_app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="An enrolled speaker's name.")], config: ConfigOpt = None) -> None:
    """Forget an enrolled speaker."""
    from edged.pipelines.speaker.enrolled import SpeakerStore

    store = SpeakerStore(load_config(config).model_loc)
    store.remove(name.strip())
    typer.echo(f"Removed {name.strip()}.")
