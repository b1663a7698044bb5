"""Importer for a user's own NeMo model: a `.nemo` checkpoint plus the ONNX files NeMo exported.

Supported: RNN-T (`EncDecRNNTBPEModel`, char-based `EncDecRNNTModel`), TDT (an RNN-T model whose
config lists TDT durations, e.g. Parakeet-TDT), CTC (`EncDecCTCModelBPE`, `EncDecCTCModel`) and
hybrid RNNT-CTC models (exported as RNNT by default, or as CTC), with a SentencePiece tokenizer
or a char vocabulary. The description comes from edged.importers.nemo_config, the networks'
checks from edged.importers.nemo_onnx. Without a `.nemo`, `--onnx DIR` alone reads DIR's NeMo
`model_config.yaml`, or else `nemo.yaml` (nemo_config.LAYOUT_KEYS), and `tokenizer.model` or
`tokens.txt` beside the ONNX. The manifest is described in /work/notes/s7/nemo_contract.md.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from edged.errors import ModelImportError
from edged.importers.nemo_config import (
    NemoDescription,
    describe_config,
    describe_layout_dir,
    read_nemo_archive,
)
from edged.importers.nemo_onnx import (
    ExportFiles,
    check_signature,
    find_export,
    load_network,
    name_dynamic_dims,
    one_line,
)
from edged.rmir.archive import file_sha256
from edged.rmir.build import ModelSource

_LOGGER = logging.getLogger(__name__)

# Same endpointing defaults as the Moonshine importer writes (Riva EndpointingConfig semantics).
_ENDPOINTING = {
    "start_history_ms": 200, "start_threshold": 0.5, "stop_history_ms": 700, "stop_threshold": 0.35,
    "stop_history_eou_ms": 300, "stop_threshold_eou": 0.35, "max_utterance_ms": 8000,
    "pause_split_ms": 4000,
}
_MAX_AUDIO_S = 30
_OPT_AUDIO_S = 10
_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def import_nemo(
    nemo: Path | None, onnx_dir: Path | None, workdir: Path, overrides: dict[str, Any] | None = None
) -> ModelSource:
    """A NeMo model (`nemo` checkpoint and/or `onnx_dir` export) as a ModelSource for `edged build`."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in ("sample_rate", "model_family"):
        if key in overrides:
            raise ModelImportError(f"--{key.replace('_', '-')} does not apply to a NeMo model: "
                                   "it comes from the model's config.")
    if onnx_dir is None:
        raise ModelImportError("A NeMo model needs --onnx DIR: the folder where NeMo's model.export('model.onnx') "
                               "wrote its ONNX files (README, \"Your own NeMo model\").")
    export = find_export(onnx_dir)
    if nemo is not None:
        desc = describe_config(*read_nemo_archive(nemo), source=nemo.name, tokens_dir=None)
    else:
        desc = describe_layout_dir(onnx_dir)
    family = _family(desc, export, onnx_dir)
    networks, sizes = _check_networks(export, family, desc, workdir)
    vocab = len(desc.pieces)
    classes = sizes.get("classes")
    expected = vocab + 1 + len(desc.durations)
    if classes is not None and classes != expected:
        raise ModelImportError(_classes_mismatch(export, family, desc, classes, expected))
    subsampling = desc.subsampling_factor or _measure_subsampling(export.networks.get("encoder")
                                                                  or export.networks["model"], sizes)
    tokens = workdir / "tokens.txt"
    tokens.write_text("".join(f"{p} {i}\n" for i, p in enumerate(desc.pieces)), encoding="utf-8")
    artifacts = [tokens]
    params: dict[str, Any] = {"vocabulary_size": vocab, "blank_id": vocab, "subsampling_factor": subsampling}
    if desc.tokenizer_model is not None:
        tok = workdir / "tokenizer.model"
        tok.write_bytes(desc.tokenizer_model)
        artifacts.append(tok)
        params["tokenizer"] = tok.name
    if family != "nemo-ctc":
        state = _decoder_state(sizes, desc)
        params.update({"max_symbols_per_step": desc.max_symbols_per_step, "decoder_state": state})
    if family == "nemo-tdt":
        params["durations"] = list(desc.durations)
    params.update({"preprocessor": desc.preprocessor, "endpointing": dict(_ENDPOINTING)})
    name = overrides.get("name") or desc.name or _default_name(nemo.stem if nemo else onnx_dir.resolve().name)
    provenance = {
        "importer": "nemo",
        "source": desc.source,
        "nemo_target": desc.target,
        "onnx_files": ", ".join(p.name for p in export.networks.values()),
    }
    if nemo is not None:
        provenance["source_sha256"] = file_sha256(nemo)
    return ModelSource(
        name=str(name),
        pipeline="speech_recognition",
        language_code=str(overrides.get("language_code") or desc.language_code or "en-US"),
        sample_rate=int(desc.preprocessor["sample_rate"]),
        model_family=family,
        networks=networks,
        artifacts=tuple(artifacts),
        parameters=params,
        dim_ranges=_dim_ranges(desc.preprocessor, subsampling),
        license=str(overrides.get("license") or "unknown"),
        provenance=provenance,
    )


def _family(desc: NemoDescription, export: ExportFiles, onnx_dir: Path) -> str:
    """nemo-rnnt / nemo-tdt / nemo-ctc from the model's kind and what its export holds."""
    files = ", ".join(p.name for p in export.networks.values())
    if desc.kind == "ctc" or (desc.kind == "hybrid" and not export.transducer):
        if export.transducer:
            raise ModelImportError(f"{desc.source} is a CTC model but {onnx_dir} holds a transducer export "
                                   f"({files}); NeMo exports a CTC model as one model.onnx.")
        return "nemo-ctc"
    if not export.transducer:
        raise ModelImportError(f"{desc.source} is a transducer but {onnx_dir} holds {files}; NeMo exports a "
                               "transducer as encoder-model.onnx and decoder_joint-model.onnx.")
    return "nemo-tdt" if desc.durations else "nemo-rnnt"


def _check_networks(export: ExportFiles, family: str, desc: NemoDescription,
                    workdir: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """Check each network's signature, write its copy with named dimensions; the sizes they share."""
    sizes: dict[str, int] = {}
    networks: dict[str, Path] = {}
    for net, path in export.networks.items():
        model = load_network(path)
        found = check_signature(net, model, path.name)
        for key, value in found.items():
            if sizes.setdefault(key, value) != value:
                raise ModelImportError(f"{path.name} has {key} {value} but the other network has {sizes[key]}; "
                                       "were they exported from the same model?")
        out = workdir / f"{net}.onnx"
        out.write_bytes(name_dynamic_dims(model, net).SerializeToString())
        networks[net] = out
    features = desc.preprocessor["features"]
    if sizes.get("features", features) != features:
        raise ModelImportError(f"The encoder takes {sizes['features']} features per frame but the preprocessor "
                               f"config gives {features}; the config and the ONNX export differ.")
    _LOGGER.info("NeMo %s export: %s", family, sizes)
    return networks, sizes


def _classes_mismatch(export: ExportFiles, family: str, desc: NemoDescription, classes: int,
                      expected: int) -> str:
    vocab = len(desc.pieces)
    file = (export.networks.get("decoder_joint") or export.networks["model"]).name
    what = f"{vocab} tokens + blank" + (f" + {len(desc.durations)} durations" if desc.durations else "")
    hint = ""
    if family == "nemo-rnnt" and classes > vocab + 1:
        hint = f"; if it is a TDT model, its config should list its {classes - vocab - 1} durations"
    return f"{file} gives {classes} outputs per step but the tokenizer has {what} = {expected}{hint}."


def _decoder_state(sizes: dict[str, int], desc: NemoDescription) -> dict[str, int]:
    """LSTM state shape of decoder_joint: the ONNX input's static sizes, else the config's."""
    config = desc.decoder_state or {}
    state = {"layers": sizes.get("layers", config.get("layers")), "hidden": sizes.get("hidden", config.get("hidden"))}
    missing = [k for k, v in state.items() if v is None]
    if missing:
        raise ModelImportError(f"The decoder_joint's input_states_1 has no static {' or '.join(missing)} size "
                               "and the config does not give them (decoder.prednet.pred_rnn_layers, pred_hidden).")
    if config and config != state:
        _LOGGER.warning("decoder_joint state %s differs from the config's %s; using the ONNX shapes", state, config)
    return {"layers": int(state["layers"] or 0), "hidden": int(state["hidden"] or 0)}


def _measure_subsampling(encoder: Path, sizes: dict[str, int]) -> int:
    """Encoder frames per feature frame, by running the encoder once (configs that do not say)."""
    import numpy as np
    import onnxruntime as ort

    features = sizes.get("features", 80)
    frames = 960  # divisible by 2, 4, 8 and 16
    feeds = {"audio_signal": np.zeros((1, features, frames), np.float32), "length": np.array([frames], np.int64)}
    try:
        session = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out = session.run(None, feeds)[names.index("outputs" if "outputs" in names else "logprobs")]
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for a graph it cannot run
        raise ModelImportError(f"{encoder.name} could not be run to measure its subsampling ({one_line(exc)}); give "
                               "subsampling_factor in nemo.yaml.") from None
    got = out.shape[2] if "outputs" in names else out.shape[1]
    factor = round(frames / max(1, got))
    _LOGGER.info("Measured the encoder's subsampling: %d feature frames -> %d (factor %d)", frames, got, factor)
    return factor


def _dim_ranges(pre: dict[str, Any], subsampling: int) -> dict[str, tuple[int, int, int]]:
    """TensorRT shape ranges: batch, feature frames (up to 30 s), encoder frames, one decoder step."""
    per_s = 1.0 / pre["window_stride"]
    lo, opt, hi = 16, int(_OPT_AUDIO_S * per_s), int(math.ceil(_MAX_AUDIO_S * per_s)) + 1

    def enc(t: int) -> int:
        return max(1, -(-t // subsampling))

    return {
        "batch": (1, 1, 8),
        "time": (lo, opt, hi),
        "frames": (enc(lo), enc(opt), enc(hi)),
        "decoder_frames": (1, 1, 1),
        "decoder_steps": (1, 1, 1),
    }


def _default_name(stem: str) -> str:
    name = _NAME_BAD.sub("-", stem).strip("-._")[:100]
    return name or "nemo-model"
