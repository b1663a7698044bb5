"""What edged needs from a NeMo ASR model's description: its `model_config.yaml` (from the `.nemo`
archive or beside the ONNX files), or the no-.nemo layout's `nemo.yaml`, and its vocabulary.

A `.nemo` is a tar (gzipped by old NeMo, members often under `./`) of `model_config.yaml`, the
tokenizer files (names prefixed by a hash, e.g. `a1b2..._tokenizer.model`) and the weights,
which edged does not read: the ONNX export holds them. No PyTorch, NeMo or OmegaConf is needed;
whole-value interpolations (`${model_defaults.x}`) are resolved here.
"""

from __future__ import annotations

import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edged.errors import ModelImportError
from edged.importers.nemo_onnx import one_line
from edged.importers.spmodel import read_pieces

FAMILIES = ("nemo-rnnt", "nemo-tdt", "nemo-ctc")
_TRANSDUCERS = {"EncDecRNNTBPEModel", "EncDecRNNTModel"}
_CTCS = {"EncDecCTCModelBPE", "EncDecCTCModel"}
_HYBRIDS = {"EncDecHybridRNNTCTCBPEModel", "EncDecHybridRNNTCTCModel"}
SUPPORTED_TARGETS = sorted(_TRANSDUCERS | _CTCS | _HYBRIDS)

# AudioToMelSpectrogramPreprocessor's own defaults, for keys a config leaves out (dither aside:
# edged always computes features without dither, as NeMo does at inference).
PREPROCESSOR_DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000, "window_size": 0.02, "window_stride": 0.01, "n_fft": None, "features": 64,
    "window": "hann", "normalize": "per_feature", "dither": 0.0, "preemph": 0.97, "log": True,
    "log_zero_guard_type": "add", "log_zero_guard_value": 2**-24, "mag_power": 2.0, "lowfreq": 0,
    "highfreq": None, "pad_to": 16, "pad_value": 0.0, "frame_splicing": 1, "exact_pad": False,
    "mel_norm": "slaney",
}
# torch.finfo(float32) values NeMo uses for log_zero_guard_value "tiny" / "eps".
_GUARDS = {"tiny": 1.1754943508222875e-38, "eps": 1.1920928955078125e-07}

LAYOUT_KEYS = {
    "model_family": "nemo-rnnt, nemo-tdt or nemo-ctc (required)",
    "preprocessor": "NeMo's AudioToMelSpectrogramPreprocessor settings (missing ones take NeMo's defaults)",
    "subsampling_factor": "encoder frames per feature frame (4 Conformer, 8 FastConformer; measured if absent)",
    "durations": "TDT durations, e.g. [0, 1, 2, 3, 4] (nemo-tdt only)",
    "max_symbols_per_step": "most tokens a transducer emits at one frame (default 10)",
    "name": "model name (default: the folder's name)",
    "language_code": "e.g. en-US (default)",
}
"""Keys of `nemo.yaml`, the no-.nemo layout's description (README, "Your own NeMo model")."""

_DEFAULT_MAX_SYMBOLS = 10
_BLANK_NAMES = ("<blk>", "<blank>")


@dataclass(frozen=True)
class NemoDescription:
    """What edged needs from a NeMo model, however it was given (.nemo, config or nemo.yaml)."""

    kind: str
    """"transducer", "ctc" or "hybrid" (the export decides which a hybrid is)."""
    durations: tuple[int, ...]
    preprocessor: dict[str, Any]
    subsampling_factor: int | None
    max_symbols_per_step: int
    decoder_state: dict[str, int] | None
    """From the config (pred_rnn_layers, pred_hidden); the ONNX shapes win where they are static."""
    pieces: list[str]
    tokenizer_model: bytes | None
    target: str
    source: str
    """Where the description came from, for messages and provenance."""
    name: str | None = None
    language_code: str | None = None


def read_nemo_archive(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """`model_config.yaml` (parsed) and the small tokenizer members of a .nemo, by base name."""
    if not path.is_file():
        raise ModelImportError(f"{path} does not exist.")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            configs = sorted((m for m in members if Path(m.name).name == "model_config.yaml"),
                             key=lambda m: m.name.count("/"))
            if not configs:
                raise ModelImportError(f"{path} holds no model_config.yaml, so it is not a NeMo checkpoint.")
            wanted = {Path(m.name).name: m for m in members
                      if m.name.endswith(("tokenizer.model", "vocab.txt")) and m.size < 64 << 20}
            files = {name: _read_member(tar, m) for name, m in wanted.items()}
            config_text = _read_member(tar, configs[0])
    except tarfile.ReadError:
        raise ModelImportError(f"{path} is not a .nemo archive (a tar file, plain or gzipped).") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelImportError(f"{path} cannot be read as a .nemo archive ({one_line(exc)}).") from None
    return _parse_config(config_text, f"{path.name}: model_config.yaml"), files


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise ModelImportError(f"{member.name} in the archive cannot be read.")
    return f.read()


def _parse_config(text: bytes | str, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelImportError(f"{what} is not readable YAML ({one_line(exc)}).") from None
    if not isinstance(data, dict):
        raise ModelImportError(f"{what} is not a NeMo model config (a mapping).")
    return _resolve(data, data)


def _resolve(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """Resolve OmegaConf interpolations that are a whole value (`${model_defaults.x}`), as NeMo would."""
    if isinstance(node, dict):
        return {k: _resolve(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, depth) for v in node]
    if isinstance(node, str) and node.startswith("${") and node.endswith("}") and depth < 8:
        path = node[2:-1].split(".")
        if path and path[0] == "model":  # configs written inside a `model:` section refer to it by name
            path = path[1:]
        value: Any = root
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return node
            value = value[part]
        return _resolve(value, root, depth + 1)
    return node


def describe_config(config: dict[str, Any], files: dict[str, bytes], *, source: str,
                    tokens_dir: Path | None) -> NemoDescription:
    """Read a NeMo model_config (and its tokenizer among `files`, or in `tokens_dir`)."""
    target = str(config.get("target") or "")
    cls = target.rsplit(".", 1)[-1]
    decoder = _section(config, "decoder")
    dec_target = str(decoder.get("_target_", ""))
    if not cls:  # very old configs: tell the family by the decoder
        cls = "EncDecRNNTModel" if dec_target.endswith("RNNTDecoder") else (
            "EncDecCTCModel" if dec_target.endswith("ConvASRDecoder") else "")
    if cls not in SUPPORTED_TARGETS:
        raise ModelImportError(
            f"{source} is a NeMo {cls or 'model of unknown type'} ({target or 'no target in its config'}); edged "
            f"builds NeMo RNN-T, TDT and CTC speech recognisers: {', '.join(SUPPORTED_TARGETS)}.")
    kind = "transducer" if cls in _TRANSDUCERS else "ctc" if cls in _CTCS else "hybrid"
    if kind != "ctc" and "Stateless" in dec_target:
        raise ModelImportError(f"{source} has a stateless prediction network ({dec_target}); edged supports "
                               "NeMo's RNNTDecoder (LSTM) transducers.")
    durations = _durations(config, source) if kind != "ctc" else ()
    prednet = _section(decoder, "prednet")
    state = None
    if isinstance(prednet.get("pred_hidden"), int):
        layers = prednet.get("pred_rnn_layers", 1)
        if isinstance(layers, int):
            state = {"layers": layers, "hidden": int(prednet["pred_hidden"])}
    greedy = _section(_section(config, "decoding"), "greedy")
    max_symbols = greedy.get("max_symbols")
    if not isinstance(max_symbols, int) or max_symbols <= 0:
        max_symbols = _DEFAULT_MAX_SYMBOLS  # NeMo's None is no limit; edged caps it
    encoder = _section(config, "encoder")
    tokenizer = _section(config, "tokenizer")
    if "BPE" in cls or tokenizer:
        pieces, model = _bpe_pieces(tokenizer, files, source, tokens_dir)
    else:
        pieces, model = _char_labels(config, kind, source), None
    return NemoDescription(
        kind=kind,
        durations=durations,
        preprocessor=preprocessor_settings(_section(config, "preprocessor"), source),
        subsampling_factor=_subsampling(encoder),
        max_symbols_per_step=max_symbols,
        decoder_state=state,
        pieces=pieces,
        tokenizer_model=model,
        target=target or cls,
        source=source,
    )


def describe_layout_dir(onnx_dir: Path) -> NemoDescription:
    """The no-.nemo layout: DIR's model_config.yaml, or nemo.yaml; tokenizer.model or tokens.txt."""
    config = onnx_dir / "model_config.yaml"
    if config.is_file():
        return describe_config(_parse_config(config.read_bytes(), str(config)), {}, source=onnx_dir.name,
                               tokens_dir=onnx_dir)
    desc_file = onnx_dir / "nemo.yaml"
    if not desc_file.is_file():
        raise ModelImportError(f"{onnx_dir} has neither model_config.yaml nor nemo.yaml; give --nemo MODEL.nemo, "
                               "or describe the model in nemo.yaml (README, \"Your own NeMo model\").")
    data = _parse_config(desc_file.read_bytes(), str(desc_file))
    unknown = sorted(set(data) - set(LAYOUT_KEYS))
    if unknown:
        raise ModelImportError(f"{desc_file}: unknown key(s) {', '.join(unknown)}; allowed: "
                               f"{', '.join(LAYOUT_KEYS)}.")
    family = data.get("model_family")
    if family not in FAMILIES:
        raise ModelImportError(f"{desc_file}: model_family should be one of {', '.join(FAMILIES)}, not {family!r}.")
    durations: tuple[int, ...] = ()
    if family == "nemo-tdt":
        durations = _duration_list(data.get("durations"), f"{desc_file}: durations")
    elif data.get("durations"):
        raise ModelImportError(f"{desc_file}: durations are for model_family nemo-tdt only.")
    pieces, model = _bpe_pieces({}, {}, str(desc_file), onnx_dir)
    preprocessor = data.get("preprocessor") or {}
    if not isinstance(preprocessor, dict):
        raise ModelImportError(f"{desc_file}: preprocessor should be a mapping of NeMo's preprocessor settings.")
    try:
        sub = data.get("subsampling_factor")
        max_symbols = int(data.get("max_symbols_per_step") or _DEFAULT_MAX_SYMBOLS)
        sub = int(sub) if sub is not None else None
    except (TypeError, ValueError) as exc:
        raise ModelImportError(f"{desc_file} has a malformed value ({one_line(exc)}).") from None
    return NemoDescription(
        kind="ctc" if family == "nemo-ctc" else "transducer",
        durations=durations,
        preprocessor=preprocessor_settings(preprocessor, str(desc_file)),
        subsampling_factor=sub,
        max_symbols_per_step=max_symbols,
        decoder_state=None,
        pieces=pieces,
        tokenizer_model=model,
        target=family,
        source=onnx_dir.name,
        name=data.get("name"),
        language_code=data.get("language_code"),
    )


def preprocessor_settings(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """NeMo's log-mel settings with every key the contract lists, defaults filled, dither off."""
    target = str(cfg.get("_target_", "AudioToMelSpectrogramPreprocessor"))
    if not target.endswith("AudioToMelSpectrogramPreprocessor"):
        raise ModelImportError(f"{source}: the preprocessor is {target}; edged computes NeMo's "
                               "AudioToMelSpectrogramPreprocessor features only.")
    out = {k: cfg.get(k, v) for k, v in PREPROCESSOR_DEFAULTS.items()}
    try:
        sr = int(out["sample_rate"])
        out["sample_rate"] = sr
        # A config gives the window either in seconds or in samples (n_window_size).
        if cfg.get("n_window_size"):
            out["window_size"] = int(cfg["n_window_size"]) / sr
        if cfg.get("n_window_stride"):
            out["window_stride"] = int(cfg["n_window_stride"]) / sr
        out["window_size"] = float(out["window_size"])
        out["window_stride"] = float(out["window_stride"])
        if not out["n_fft"]:
            out["n_fft"] = 2 ** math.ceil(math.log2(int(out["window_size"] * sr)))
        for key in ("n_fft", "features", "pad_to", "frame_splicing"):
            out[key] = int(out[key])
        for key in ("preemph", "pad_value", "mag_power", "lowfreq"):
            out[key] = float(out[key] or 0.0)
        if out["highfreq"] is not None:
            out["highfreq"] = float(out["highfreq"])
        guard = out["log_zero_guard_value"]
        out["log_zero_guard_value"] = _GUARDS[guard] if isinstance(guard, str) and guard in _GUARDS else float(guard)
    except (TypeError, ValueError) as exc:
        raise ModelImportError(f"{source}: a preprocessor setting is malformed ({one_line(exc)}).") from None
    out["window"] = out["window"] or "none"  # FilterbankFeatures: None or "none" is a rectangular window
    if isinstance(out["normalize"], dict):
        raise ModelImportError(f"{source}: the preprocessor normalises with fixed_mean/fixed_std, which edged "
                               "does not compute; it takes per_feature, all_features or none.")
    if out["frame_splicing"] != 1:
        raise ModelImportError(f"{source}: the preprocessor splices {out['frame_splicing']} frames; edged "
                               "computes frame_splicing 1 only.")
    if out["normalize"] not in ("per_feature", "all_features"):
        out["normalize"] = "NA"  # NeMo: anything else means no normalisation
    out["log"] = bool(out["log"])
    out["exact_pad"] = bool(out["exact_pad"])
    out["dither"] = 0.0
    return out


def _section(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    value = cfg.get(key)
    return value if isinstance(value, dict) else {}


def _durations(config: dict[str, Any], source: str) -> tuple[int, ...]:
    loss = _section(config, "loss")
    found = (_section(config, "model_defaults").get("tdt_durations")
             or _section(loss, "tdt_kwargs").get("durations")
             or _section(config, "decoding").get("durations"))
    if found:
        return _duration_list(found, f"{source}: TDT durations")
    if str(loss.get("loss_name", "")).lower() == "tdt" or _section(config, "decoding").get("model_type") == "tdt":
        raise ModelImportError(f"{source} is a TDT model but its config lists no durations "
                               "(model_defaults.tdt_durations or loss.tdt_kwargs.durations).")
    return ()


def _duration_list(value: Any, what: str) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise ModelImportError(f"{what} should be a list of frame counts like [0, 1, 2, 3, 4], not {value!r}.")
    return tuple(value)


def _subsampling(encoder: dict[str, Any]) -> int | None:
    """Encoder frames per feature frame from its config; None where it cannot tell (then measured)."""
    if "subsampling_factor" in encoder:  # an unresolved interpolation is measured, not guessed
        value = encoder["subsampling_factor"]
        return value if isinstance(value, int) and value > 0 else None
    blocks = encoder.get("jasper")  # ConvASREncoder (QuartzNet, Citrinet, ContextNet): strided blocks
    if isinstance(blocks, list) and blocks:
        factor = 1
        try:
            for block in blocks:
                stride = block.get("stride", [1]) if isinstance(block, dict) else [1]
                factor *= int(stride[0] if isinstance(stride, list) else stride)
        except (TypeError, ValueError, IndexError):
            return None
        return factor if factor > 0 else None
    if str(encoder.get("_target_", "")).endswith("ConformerEncoder"):
        return 4  # ConformerEncoder's default
    return None


def _bpe_pieces(tokenizer: dict[str, Any], files: dict[str, bytes], source: str,
                tokens_dir: Path | None) -> tuple[list[str], bytes | None]:
    """Token list (and the model file) from the SentencePiece model, or DIR's tokens.txt."""
    kind = tokenizer.get("type", "bpe")
    if kind != "bpe":
        raise ModelImportError(f"{source} has a {kind!r} tokenizer; edged reads SentencePiece (type: bpe) "
                               "tokenizers and char vocabularies.")
    data = None
    path = str(tokenizer.get("model_path") or "")
    named = Path(path.removeprefix("nemo:")).name if path else ""
    if named and named in files:
        data = files[named]
    else:
        found = sorted(n for n in files if n.endswith("tokenizer.model"))
        data = files[found[0]] if found else None
    if data is None and tokens_dir is not None:
        found_files = sorted(tokens_dir.glob("*tokenizer.model"))
        if found_files:
            data = found_files[0].read_bytes()
        elif (tokens_dir / "tokens.txt").is_file():
            return read_tokens_txt(tokens_dir / "tokens.txt"), None
    if data is None:
        where = f" (its config names {path})" if path else ""
        beside = " and no tokenizer.model or tokens.txt is beside the ONNX files" if tokens_dir else ""
        raise ModelImportError(f"{source} has no SentencePiece tokenizer file{where}{beside}; "
                               "the tokenizer is needed to turn token ids into text.")
    pieces = [p.piece.replace(" ", "\u2581") for p in read_pieces(data, f"{source}: tokenizer.model")]
    return pieces, data


def _char_labels(config: dict[str, Any], kind: str, source: str) -> list[str]:
    """A char model's labels (the space written as '▁', the word boundary tokens.txt marks)."""
    for section in (("joint",) if kind != "ctc" else ()) + ("decoder",):
        labels = _section(config, section).get("vocabulary")
        if isinstance(labels, list) and labels:
            break
    else:
        labels = config.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(c, str) for c in labels):
        raise ModelImportError(f"{source} is a char model without a vocabulary (labels or decoder.vocabulary).")
    return ["\u2581" if c == " " else c.replace(" ", "\u2581") for c in labels]


def read_tokens_txt(path: Path) -> list[str]:
    """Tokens of a `<piece> <id>` file in id order; a trailing `<blk>` (sherpa-onnx's) is the blank, dropped."""
    pieces: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelImportError(f"{path} cannot be read as UTF-8 text ({one_line(exc)}).") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        piece, _, index = line.rpartition(" ")
        if not piece or not index.isdigit() or int(index) != len(pieces):
            raise ModelImportError(f"{path} line {number} should be '<token> {len(pieces)}', not {line!r}.")
        pieces.append(piece)
    if pieces and pieces[-1] in _BLANK_NAMES:
        pieces.pop()
    if not pieces:
        raise ModelImportError(f"{path} lists no tokens.")
    return pieces
