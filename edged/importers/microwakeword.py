"""Importer for microWakeWord models: a streaming TFLite Micro graph (.tflite) and its JSON.

The built-in ones are those `pymicro-wakeword` (Apache-2.0) ships inside its wheel; a user's own
model is the same pair of files (`edged build wake_word MODEL.rmir NAME.tflite NAME.json`).
The RMIR holds both files as artifacts (the pipeline has no ONNX network, see
edged.rmir.manifest.ARTIFACT_ONLY_PIPELINES) and the JSON's settings as parameters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edged.errors import ModelImportError
from edged.importers.package import locate_pack
from edged.rmir.build import ModelSource

BUILTIN_WAKE_WORDS = {
    "wake-okay-nabu": "okay_nabu",
    "wake-hey-jarvis": "hey_jarvis",
    "wake-alexa": "alexa",
    "wake-hey-mycroft": "hey_mycroft",
}
"""Built-in importer name -> the model's file stem inside pymicro_wakeword/models/."""


def import_builtin_wake_word(name: str, workdir: Path, wheel: Path | None = None) -> ModelSource:
    """One of the models pymicro-wakeword ships (from the installed package or its wheel)."""
    stem = BUILTIN_WAKE_WORDS[name]
    rels = [f"models/{stem}.tflite", f"models/{stem}.json"]
    pack = locate_pack("pymicro-wakeword", "pymicro_wakeword", rels, workdir, wheel)
    return wake_word_source(pack.files[rels[0]], pack.files[rels[1]], name=name, license="Apache-2.0",
                            provenance=pack.provenance)


def wake_word_source(tflite: Path, config: Path, name: str = "", license: str = "unknown",
                     provenance: dict[str, Any] | None = None) -> ModelSource:
    """A microWakeWord model's .tflite and JSON as a wake_word ModelSource (ModelImportError if the
    JSON is not a microWakeWord model's)."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        micro = data["micro"]
        cutoff, window = float(micro["probability_cutoff"]), int(micro["sliding_window_size"])
        languages = [str(x) for x in data.get("trained_languages", [])]
        parameters: dict[str, Any] = {
            "wake_word": str(data["wake_word"]),
            "model_file": tflite.name,
            "config_file": config.name,
            "probability_cutoff": cutoff,
            "sliding_window_size": window,
            "feature_step_ms": int(micro.get("feature_step_size", 10)),
            "trained_languages": languages,
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelImportError(
            f"{config} is not a microWakeWord model's JSON ({type(exc).__name__}: {exc}); it needs "
            "`wake_word` and `micro` with `probability_cutoff` and `sliding_window_size`.") from None
    if data.get("model") not in (None, tflite.name):
        raise ModelImportError(f"{config.name} describes {data.get('model')}, not {tflite.name}.")
    if not 0.0 < cutoff < 1.0 or window < 1:
        raise ModelImportError(f"{config.name}: probability_cutoff must lie in (0, 1) and "
                               "sliding_window_size be at least 1.")
    return ModelSource(
        name=name or "wake-" + re.sub(r"[^A-Za-z0-9]+", "-", tflite.stem).strip("-").lower(),
        pipeline="wake_word",
        language_code=languages[0] if languages else "en",
        sample_rate=16000,
        model_family="microwakeword",
        networks={},
        artifacts=(tflite, config),
        parameters=parameters,
        license=license,
        provenance=provenance or {"from": "user files"},
    )


def source_from_wake_files(files: list[Path], overrides: dict[str, Any]) -> ModelSource:
    """`edged build wake_word OUT.rmir NAME.tflite NAME.json [--name N]`: a user's own model."""
    tflites = [f for f in files if f.suffix == ".tflite"]
    configs = [f for f in files if f.suffix == ".json"]
    if len(tflites) != 1 or len(configs) != 1 or len(files) != 2:
        raise ModelImportError("A wake_word model is one .tflite and its .json (microWakeWord's pair).")
    for f in files:
        if not f.is_file():
            raise ModelImportError(f"Source file {f} does not exist.")
    return wake_word_source(tflites[0], configs[0], name=str(overrides.get("name") or ""),
                            license=str(overrides.get("license") or "unknown"))
