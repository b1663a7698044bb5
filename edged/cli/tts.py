"""Speech synthesis commands: `edged speak` and `edged bench tts`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from edged.cli.app import ConfigOpt, app, bench_app, load_config
from edged.errors import ConfigError

ServerOpt = Annotated[str | None, typer.Option(
    "--server", help="HOST:PORT of an edged or Riva server; without it the local model is used.")]
VoiceOpt = Annotated[str, typer.Option("--voice", help="Voice name, e.g. English-US.Joe (default: the first).")]


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process(os.getpid()).memory_info().rss) / 2**20


@app.command()
def speak(
    text: Annotated[str | None, typer.Argument(help="Text or SSML (<speak>...</speak>) to say.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read a text document instead.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="WAV file to write.")] = None,
    play_audio: Annotated[bool, typer.Option("--play", help="Play on this machine's speaker.")] = False,
    voice: VoiceOpt = "",
    rate: Annotated[float, typer.Option(help="Speaking rate: 1 as trained, 2 twice as fast.")] = 1.0,
    sample_rate: Annotated[int, typer.Option("--sample-rate", help="Output rate in Hz; 0: the voice's.")] = 0,
    server: ServerOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Say a text (or a whole document, streamed paragraph by paragraph) into a WAV file or aloud."""
    from edged.client.speak import (
        LocalSpeaker,
        RemoteSpeaker,
        Speaker,
        load_local_tts,
        paragraphs,
        play,
        write_wav,
    )
    from edged.pipelines.pools import Pools

    if (text is None) == (file is None):
        raise ConfigError("Give either a text or --file DOCUMENT.")
    if (output is None) == (not play_audio):
        raise ConfigError("Give either -o OUT.wav or --play.")
    texts = paragraphs(file) if file is not None else iter([text or ""])
    with Pools() as pools:
        speaker: Speaker = RemoteSpeaker(server) if server else LocalSpeaker(
            load_local_tts(load_config(config), pools, voice))
        chunks = speaker.speak(texts, sample_rate, voice, rate)
        seconds = write_wav(chunks, output) if output is not None else play(chunks)
    typer.echo(f"{seconds:.2f} s of speech" + (f" written to {output}" if output else " played"))


@bench_app.command("tts")
def bench_tts_command(
    sentences: Annotated[Path, typer.Option(help="Sentences to speak, one per line (20 or more).")],
    streams: Annotated[int, typer.Option(min=1, max=64, help="Concurrent streams.")] = 1,
    sample_rate: Annotated[int, typer.Option("--sample-rate", help="Output rate in Hz.")] = 22050,
    voice: VoiceOpt = "",
    intra_threads: Annotated[int | None, typer.Option(
        help="ONNX Runtime intra-op threads for the local model (default: from config.sh).")] = None,
    server: ServerOpt = None,
    reference: Annotated[bool, typer.Option(
        "--reference", help="Also speak each sentence with the voice's original whole graph (one "
        "ONNX Runtime call per sentence, piper's way), alternately, and print both RTFs and their ratio.")] = False,
    reference_graph: Annotated[Path | None, typer.Option(
        help="The original Piper graph for --reference (default: from the installed voice package).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    sweep: Annotated[bool, typer.Option(
        help="Instead: 1, 2, 4, ... up to --streams streams, to see where synthesis stops keeping up "
             "with real-time listeners.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Time to first audio (p50, p95), real-time factor and memory, locally or against a server."""
    from dataclasses import replace

    from edged.client.speak import LocalSpeaker, RemoteSpeaker, Speaker, load_local_tts
    from edged.client.ttsbench import bench_tts, read_sentences, sweep_text, sweep_tts
    from edged.pipelines.pools import Pools

    texts = read_sentences(sentences)
    if server and (reference or reference_graph):
        raise ConfigError("--reference runs the local voice; leave out --server.")
    if sweep and (reference or reference_graph):
        raise ConfigError("--sweep runs edged alone; leave out --reference.")
    with Pools() as pools:  # the local voice's lanes, shut down when the bench ends
        memory_mb = None
        speaker: Speaker
        whole = None
        if server:
            speaker = RemoteSpeaker(server)
        else:
            settings = load_config(config)
            if intra_threads is not None:
                settings = replace(settings, ort_intra_op_threads=intra_threads)
            before = _rss_mb()
            model = load_local_tts(settings, pools)
            speaker = LocalSpeaker(model)
            memory_mb = _rss_mb() - before
            if reference or reference_graph:
                from edged.backends import BackendOptions
                from edged.client.ttsref import WholeGraphVoice, original_graph

                # The voice's threads: edged.loader runs a voice on one lane whatever
                # inference_lanes says (ASR's), so the reference must not divide the cores by it.
                options = replace(BackendOptions.from_settings(settings), lanes=1)
                whole = WholeGraphVoice(model, reference_graph or original_graph(model.manifest), options)
        if sweep:
            rows = sweep_tts(speaker, texts, streams, sample_rate, voice, local=not server)
            typer.echo(json.dumps([asdict(r) for r in rows], indent=2) if as_json else sweep_text(rows))
            return
        result = bench_tts(speaker, texts, streams, sample_rate, voice,
                           whole.speak if whole else None, whole.model.sample_rate if whole else 22050,
                           local=not server)
        figures = {**asdict(result), "model_memory_mb": memory_mb,
                   "process_rss_mb": None if server else _rss_mb()}
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(f"{result.sentences} sentences x {result.streams} stream(s), "
               f"{result.audio_seconds:.1f} s of audio in {result.wall_seconds:.1f} s")
    typer.echo(f"time to first audio: p50 {result.ttfa_p50 * 1000:.0f} ms, p95 {result.ttfa_p95 * 1000:.0f} ms")
    typer.echo(f"real-time factor: {result.rtf:.3f} per stream, {result.aggregate_rtf:.3f} aggregate "
               f"({result.streams} stream(s) together)")
    if result.reference is not None:
        ref = result.reference
        typer.echo(f"whole-graph reference: real-time factor {ref.rtf:.3f} per stream, "
                   f"{ref.aggregate_rtf:.3f} aggregate, first audio p50 {ref.ttfa_p50 * 1000:.0f} ms; "
                   f"edged/reference RTF ratio {result.rtf_ratio:.3f}, CPU time ratio {result.cpu_ratio:.3f}")
    typer.echo(f"playback stalls: {result.stall_seconds:.2f} s in {result.stalled} of "
               f"{result.sentences * result.streams} requests (longest {result.stall_max_seconds:.2f} s); "
               f"listeners of whole streams: {sum(result.stream_stall_seconds):.2f} s (longest "
               f"{result.stream_stall_max_seconds:.2f} s)")
    if memory_mb is not None:
        typer.echo(f"memory: model load {memory_mb:.0f} MB, process {figures['process_rss_mb']:.0f} MB")
