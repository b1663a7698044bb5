"""Commands for model archives and the model repository: init, build, inspect, verify, deploy, models, config."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edged.cli.app import (
    ConfigOpt,
    Pipeline,
    app,
    load_config,
    mb,
    progress_bar,
    setup_logging,
    table,
)
from edged.errors import ConfigError


@app.command()
def init(config: ConfigOpt = None) -> None:
    """Gather the RMIRs config.sh names into $model_loc/rmir and deploy them for this device."""
    from edged.repository.init import run_init

    settings = load_config(config)
    t0 = time.perf_counter()
    report = run_init(settings, progress_bar)
    rows = [[r.rmir, r.gathered, r.deployed, r.detail] for r in report.rows]
    typer.echo(table(["RMIR", "GATHERED", "DEPLOYED", "DETAIL"], rows))
    typer.echo(f"Model repository: {settings.model_loc} ({time.perf_counter() - t0:.1f} s)")
    if report.failed:
        typer.echo("edged: some models failed (see DETAIL); the others are deployed.", err=True)
        raise typer.Exit(1)


@app.command()
def build(
    pipeline: Annotated[Pipeline, typer.Argument(help="speech_recognition, speech_synthesis or vad.")],
    out: Annotated[str, typer.Argument(help="Output archive, OUT.rmir or OUT.rmir:KEY to encrypt.")],
    sources: Annotated[list[Path] | None, typer.Argument(
        help="A model description .yaml, or .onnx networks plus artifact files.")] = None,
    builtin: Annotated[str | None, typer.Option(
        help="Built-in importer: moonshine-base-en, whisper-base, whisper-tiny-en, piper-joe-medium, "
             "silero-vad, ...")] = None,
    from_wheel: Annotated[Path | None, typer.Option(
        help="Read the built-in model pack from this .whl instead of the installed package.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Model name (loose files, --nemo, --piper or --whisper; overrides the YAML).")] = None,
    language_code: Annotated[str | None, typer.Option(help="Language code, e.g. en-US.")] = None,
    sample_rate: Annotated[int | None, typer.Option(help="Sample rate in Hz.")] = None,
    model_family: Annotated[str | None, typer.Option(help="Model family a pipeline drives.")] = None,
    license: Annotated[str | None, typer.Option(help="Licence of the weights.")] = None,
    nemo: Annotated[Path | None, typer.Option(
        help="A NeMo ASR checkpoint (.nemo: RNN-T, TDT or CTC); give its ONNX export with --onnx.")] = None,
    onnx: Annotated[Path | None, typer.Option(
        help="The folder NeMo's model.export('model.onnx') wrote "
             "(alone: with nemo.yaml or model_config.yaml).")] = None,
    piper: Annotated[Path | None, typer.Option(
        help="A Piper voice, VOICE.onnx with its VOICE.onnx.json beside it (speech_synthesis).")] = None,
    whisper: Annotated[Path | None, typer.Option(
        help="A Whisper model's folder: CTranslate2's (model.bin, config.json, tokenizer.json or "
             "vocabulary.txt) or optimum's ONNX export (encoder_model.onnx, decoder_model_merged.onnx, "
             "config.json, generation_config.json, tokenizer.json) (speech_recognition).")] = None,
) -> None:
    """Pack ONNX networks and artifacts into an RMIR archive."""
    from edged.importers import source_for_build
    from edged.rmir import parse_rmir_ref
    from edged.rmir.build import build_rmir

    setup_logging("WARNING")
    ref = parse_rmir_ref(out)
    if not ref.path.name.endswith(".rmir"):
        raise ConfigError(f"The output {ref.path} should end in .rmir (add :KEY to encrypt it).")
    overrides = {"name": name, "language_code": language_code, "sample_rate": sample_rate,
                 "model_family": model_family, "license": license}
    with tempfile.TemporaryDirectory(prefix=".edged-build-", dir=ref.path.parent.resolve()) as work:
        src = source_for_build(pipeline.value, sources or [], builtin, from_wheel, overrides, Path(work),
                               nemo=nemo, onnx_dir=onnx, piper=piper, whisper=whisper)
        manifest = build_rmir(src, ref, progress_bar(f"build {ref.path.name}"))
    typer.echo(f"Built {ref.path} ({manifest.name}, {manifest.pipeline}, "
               f"{mb(ref.path.stat().st_size)}{', encrypted' if ref.key else ''})")


@app.command()
def inspect(
    rmir: Annotated[str, typer.Argument(help="Archive, X.rmir or X.rmir:KEY.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show an RMIR's manifest: networks, artifacts, sizes and hashes."""
    from edged.rmir import parse_rmir_ref, read_manifest

    ref = parse_rmir_ref(rmir, os.environ.get("MODEL_DEPLOY_KEY"))
    m = read_manifest(ref)
    if as_json:
        typer.echo(json.dumps(m.to_dict(), indent=2))
        return
    typer.echo(f"{m.name}: {m.pipeline}, {m.language_code}, {m.sample_rate} Hz, family {m.model_family}, "
               f"licence {m.license}, format {m.format_version}, ~{m.memory_estimate_mb} MB to load")
    rows = [[n.file, "network", mb(n.size), n.sha256] for n in m.networks]
    rows += [[a.file, "artifact", mb(a.size), a.sha256] for a in m.artifacts]
    typer.echo(table(["MEMBER", "KIND", "SIZE", "SHA256"], rows))
    for n in m.networks:
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in n.inputs[:4])
        more = f" (+{len(n.inputs) - 4} more)" if len(n.inputs) > 4 else ""
        typer.echo(f"  {n.name} inputs: {ins}{more}")
    if m.provenance:
        typer.echo("provenance: " + ", ".join(f"{k}={v}" for k, v in m.provenance.items()))


@app.command()
def verify(rmir: Annotated[str, typer.Argument(help="Archive, X.rmir or X.rmir:KEY.")]) -> None:
    """Check every member of an RMIR against its manifest's sha256."""
    from edged.rmir import extract_rmir, parse_rmir_ref

    ref = parse_rmir_ref(rmir, os.environ.get("MODEL_DEPLOY_KEY"))
    result = extract_rmir(ref, None)
    typer.echo(f"OK: {ref.path} ({result.manifest.name}), {len(result.manifest.members())} members "
               f"verified, archive sha256 {result.sha256}")


@app.command()
def deploy(
    rmir: Annotated[str, typer.Argument(help="Archive, X.rmir or X.rmir:KEY.")],
    models_dir: Annotated[Path, typer.Argument(help="The repository's models/ folder.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Redeploy even if up to date.")] = False,
    backend: Annotated[str, typer.Option(help="auto, cpu or tensorrt.")] = "auto",
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = auto).")] = 0,
) -> None:
    """Deploy one RMIR into a model repository for this device."""
    from edged.backends import BackendOptions
    from edged.backends.probe import probe
    from edged.repository.deploy import deploy as run_deploy
    from edged.repository.records import current_target
    from edged.rmir import parse_rmir_ref

    setup_logging("INFO")
    ref = parse_rmir_ref(rmir, os.environ.get("MODEL_DEPLOY_KEY"))
    target = current_target(probe(), backend)
    outcome = run_deploy(ref, models_dir, target, BackendOptions(threads, 1), force,
                         progress_bar(f"deploy {ref.path.name}"))
    typer.echo(f"{outcome.name}: {outcome.status} ({outcome.detail})")


@app.command()
def models(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List deployed models: pipeline, language, backend, model family, size, load memory, staleness."""
    from edged.backends.probe import probe
    from edged.repository.records import backend_summary, current_target, list_models

    settings = load_config(config)
    found = list_models(settings.model_loc / "models", current_target(probe(), settings.backend))
    items: list[dict[str, Any]] = []
    for m in found:
        state = m.problem or ("stale: " + "; ".join(m.stale) if m.stale else "ok")
        items.append({
            "name": m.name,
            "pipeline": m.manifest.pipeline if m.manifest else "?",
            "language": m.manifest.language_code if m.manifest else "?",
            "family": m.manifest.model_family if m.manifest else "?",
            "backend": backend_summary(m.record),
            "size_mb": round(m.size_bytes / 2**20, 1),
            "load_memory_mb": m.record.load.memory_mb if m.record else None,
            "load_seconds": m.record.load.load_seconds if m.record else None,
            "state": state,
        })
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        typer.echo(f"No deployed models in {settings.model_loc / 'models'}; run `edged init`.")
        return
    rows = [[i["name"], i["pipeline"], i["language"], i["backend"], i["family"], f"{i['size_mb']} MB",
             f"{i['load_memory_mb']} MB", str(i["state"])] for i in items]
    typer.echo(table(["NAME", "PIPELINE", "LANGUAGE", "BACKEND", "FAMILY", "SIZE", "LOAD MEMORY", "STATE"], rows))


@app.command("config")
def config_cmd(
    config: ConfigOpt = None,
    example: Annotated[bool, typer.Option("--example", help="Print a commented config.sh with every default.")] = False,
    docs: Annotated[bool, typer.Option("--docs", help="Print the settings reference (Markdown).")] = False,
    get: Annotated[str | None, typer.Option("--get", help="Print one setting's value (for scripts).")] = None,
) -> None:
    """Check config.sh and show the settings it gives (or print an example / the reference)."""
    from edged.config import example_config_sh, settings_reference_markdown

    if example:
        typer.echo(example_config_sh(), nl=False)
    elif docs:
        typer.echo(settings_reference_markdown(), nl=False)
    elif get:
        settings = load_config(config)
        if get not in type(settings).__dataclass_fields__:
            raise ConfigError(f"There is no setting {get!r}; `edged config --docs` lists them.")
        value = getattr(settings, get)
        if isinstance(value, tuple):
            typer.echo("\n".join(value))
        else:
            typer.echo(str(value).lower() if isinstance(value, bool) else str(value))
    else:
        typer.echo(repr(load_config(config)))
