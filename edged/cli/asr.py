"""Speech recognition commands: transcribe files, benchmark a server."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from edged.cli.app import ConfigOpt, app, bench_app, load_config, setup_logging

ServerOpt = Annotated[str | None, typer.Option(
    "--server", help="HOST:PORT of a running edged/Riva server (default: start a private one from config.sh).")]


def _server(address: str | None, config: Path | None, use_running: bool = False) -> Any:
    """The given address; else (with `use_running`) the daemon config.sh describes if it serves
    ASR; else a private server from config.sh for the duration of the command."""
    from edged.client.asr import private_server

    if address:
        return nullcontext((address, None))
    if config is None and Path("config.sh").is_file():
        config = Path("config.sh")
    if use_running:
        from edged.client.asr import running_server

        running = running_server(load_config(config))
        if running:
            typer.echo(f"edged: using the server at {running}", err=True)
            return nullcontext((running, None))
    return private_server(config)


@app.command()
def transcribe(
    files: Annotated[list[Path], typer.Argument(help="Audio files (WAV or FLAC).")],
    server: ServerOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Words, times and confidences as JSON.")] = False,
    language: Annotated[str, typer.Option(
        help="Language of the speech, e.g. en-US or de; `multi`: a multilingual model (Whisper) "
             "identifies it.")] = "en-US",
    speakers: Annotated[bool, typer.Option(
        help="Who said what: a speaker number on each result and word (needs models_speaker).")] = False,
) -> None:
    """Transcribe audio files (offline recognition)."""
    from edged.client.asr import transcribe_files

    setup_logging("WARNING")
    with _server(server, config, use_running=True) as (address, _):
        results = transcribe_files(address, files, language=language, speakers=speakers)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for item in results:
        if speakers:
            typer.echo("\n".join([*([item["file"]] if len(files) > 1 else []),
                                   *(f"Speaker {r['speaker']}: {r['transcript']}" for r in item["results"])]))
            continue
        typer.echo(f"{item['file']}: {item['transcript']}" if len(files) > 1 else item["transcript"])


@bench_app.command("asr")
def bench_asr(
    manifest: Annotated[Path, typer.Option(help="JSON lines: audio (path relative to it) and text per clip.")],
    server: ServerOpt = None,
    config: ConfigOpt = None,
    streams: Annotated[int, typer.Option(min=1, max=64, help="Concurrent streams.")] = 1,
    chunk_ms: Annotated[int, typer.Option(min=10, max=5000, help="Audio per streamed chunk.")] = 160,
    realtime: Annotated[bool, typer.Option(help="Send chunks at the pace of speech.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    sweep: Annotated[bool, typer.Option(
        help="Instead: real-time streaming at 1, 2, 4, ... up to --streams streams, "
             "to see where it saturates.")] = False,
    sweep_seconds: Annotated[float, typer.Option(min=5, help="Seconds of clips started per stream count.")] = 60.0,
    stagger: Annotated[float, typer.Option(
        min=0, help="Start the streams at random offsets within this many seconds (0: all together).")] = 0.0,
    diarize: Annotated[bool, typer.Option(
        help="Streams ask for speaker labels (diarization_config; needs a speaker model).")] = False,
) -> None:
    """WER (offline and streaming), RTF, final latency, interim cadence, server CPU and memory."""
    from dataclasses import asdict

    from edged.client.asr import run_bench, run_sweep, sweep_text

    setup_logging("WARNING")
    with _server(server, config) as (address, pid):
        if sweep:
            rows = run_sweep(address, manifest, streams, chunk_ms, sweep_seconds, pid)
            typer.echo(json.dumps([asdict(r) for r in rows], indent=2) if as_json else sweep_text(rows))
            return
        report = run_bench(address, manifest, streams, chunk_ms, realtime, pid, stagger, diarize)
    typer.echo(report.json() if as_json else report.text())


@bench_app.command("languages")
def bench_languages(
    manifest: Annotated[Path, typer.Option(
        help="JSON lines: audio (path relative to it; WAV, FLAC or Ogg), text and language (e.g. de) per clip.")],
    server: ServerOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """WER per language and language identification: each clip asked as "multi" and in its language."""
    from edged.client.langbench import language_json, language_text, read_manifest, riva_recogniser, run_language_bench

    setup_logging("WARNING")
    clips = read_manifest(manifest)
    with _server(server, config) as (address, _pid):
        rows = run_language_bench(riva_recogniser(address), clips)
    typer.echo(language_json(rows) if as_json else language_text(rows))


@bench_app.command("speakers")
def bench_speakers_command(
    manifest: Annotated[Path | None, typer.Option(
        help="JSON lines with audio (path relative to it) and speaker per clip, e.g. an evalcorpus.")] = None,
    espeak: Annotated[bool, typer.Option(help="Add espeak-ng's voices as extra speakers.")] = True,
    conversations: Annotated[int, typer.Option(min=0, max=1000, help="Simulated conversations for DER.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the simulated conversations.")] = 0,
    model: Annotated[str, typer.Option(help="The deployed speaker model (default: the first).")] = "",
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Speaker identification EER, diarization DER on simulated conversations, and the encoder's CPU cost,
    with the speaker model deployed in config.sh's repository (run here, no server)."""
    from edged.client.speakerbench import bench_speakers, deployed_encoder, espeak_utterances, evalcorpus_utterances

    setup_logging("WARNING")
    encoder = deployed_encoder(load_config(config), model)
    utterances = (evalcorpus_utterances(manifest) if manifest else []) + (espeak_utterances() if espeak else [])
    figures = bench_speakers(encoder, utterances, conversations, seed)
    typer.echo(figures.json() if as_json else figures.text())
