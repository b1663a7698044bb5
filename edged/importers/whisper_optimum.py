"""Whisper as Hugging Face `optimum` exports it to ONNX, made into edged's three Whisper networks.

An export (`optimum-cli export onnx --model openai/whisper-small DIR`, or Hugging Face's
`onnx-community/...` and `Xenova/...` repositories, there in `onnx/`) holds `encoder_model.onnx`
(log-mel `input_features` -> `last_hidden_state`), `decoder_model_merged.onnx` (one `If` on
`use_cache_branch` around a first-call and a cached-step graph), `config.json`,
`generation_config.json` and `tokenizer.json`. The encoder is kept as it is; the merged decoder
is split (edged.importers.merged_decoder) into `cross_kv` and the step `decoder`, and the step
gets what edged's own Whisper decoder has (edged.importers.whisper_graphs): `logits` with the
tokens Whisper never samples pushed to -1e9, and `language_logits`, the raw logits of the
language tokens, and `alignment_attention`, the cross-attention probabilities of the alignment
heads (generation_config.json's or config.json's `alignment_heads`, else the last half of the
layers' heads), for word times: each layer's Softmax is found by the graph's structure
(edged.importers.cross_attention); where it is not, the decoder is imported without the output and
words get their utterance's span. The graphs' inputs and outputs take the dimension names of
edged's own, so the Whisper recogniser runs either alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.errors import ModelImportError
from edged.importers.cross_attention import add_alignment_output, cross_attention_probabilities
from edged.importers.merged_decoder import decoder_layers, split_merged_decoder
from edged.importers.whisper_graphs import WhisperShape, alignment_heads
from edged.pipelines.asr.whisper.recogniser import ALIGNMENT_OUTPUT

ENCODER = "encoder_model.onnx"
DECODER = "decoder_model_merged.onnx"
_LAYOUT_FILES = ("config.json", "tokenizer.json")
"""Beside the graphs, what an optimum Whisper export must hold (generation_config.json is read
where present)."""
_MASKED = -1e9
_RAW_LOGITS = "/edged/raw_logits"
Dims = list[str | int]
"""A tensor's dimensions: fixed sizes and symbolic names."""
_LOGGER = logging.getLogger(__name__)


def graph_folder(folder: Path) -> Path | None:
    """Where an optimum export keeps its ONNX graphs: the folder itself (optimum-cli's layout)
    or its `onnx/` (Hugging Face's onnx-community and Xenova repositories); None: neither holds one."""
    for place in (folder, folder / "onnx"):
        if (place / ENCODER).is_file() or (place / DECODER).is_file():
            return place
    return None


def missing_files(folder: Path) -> list[str]:
    """The files an optimum export in `folder` lacks (graphs named as where they were looked for)."""
    graphs = graph_folder(folder) or folder
    return [str((graphs / f).relative_to(folder)) for f in (ENCODER, DECODER) if not (graphs / f).is_file()] + \
        [f for f in _LAYOUT_FILES if not (folder / f).is_file()]


def read_optimum_config(folder: Path) -> dict[str, Any]:
    """config.json with generation_config.json over it (where newer exports keep
    `suppress_tokens`, `is_multilingual` and `lang_to_id`)."""
    config: dict[str, Any] = {}
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelImportError(f"{path} is not readable JSON ({exc}).") from None
        if not isinstance(found, dict):
            raise ModelImportError(f"{path} is not a JSON object.")
        config |= {k: v for k, v in found.items() if v is not None}
    if config.get("model_type", "whisper") != "whisper":
        raise ModelImportError(f"{folder}/config.json is a {config['model_type']} model, not Whisper.")
    return config


class OptimumWhisper:
    """An optimum Whisper export's encoder and split decoder, its dimensions and alignment heads."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        graphs = graph_folder(folder) or folder
        encoder, merged = (_load(graphs / name) for name in (ENCODER, DECODER))
        _expect(encoder, ENCODER, ["input_features"], ["last_hidden_state"])
        _expect(merged, DECODER, ["input_ids", "encoder_hidden_states", "use_cache_branch",
                                  "past_key_values.0.decoder.key", "past_key_values.0.encoder.key"], ["logits"])
        layers = decoder_layers(merged)
        parts = split_merged_decoder(merged, str(graphs / DECODER))
        past = _dims(merged, "past_key_values.0.decoder.key")
        vocab = _dims(merged, "logits", output=True)[2]
        features = _dims(encoder, "input_features")
        states = _dims(encoder, "last_hidden_state", output=True)
        self.shape = WhisperShape(
            width=_int(states[2], config.get("d_model"), "d_model"),
            heads=_int(past[1], config.get("decoder_attention_heads"), "decoder_attention_heads"),
            encoder_layers=int(config.get("encoder_layers", 0)), decoder_layers=layers,
            vocab=_int(vocab, config.get("vocab_size"), "vocab_size"),
            mels=_int(features[1], config.get("num_mel_bins"), "num_mel_bins"),
            audio_positions=_int(states[1], config.get("max_source_positions"), "max_source_positions"),
            text_positions=_int(None, config.get("max_target_positions"), "max_target_positions"))
        self.head_dim = _int(past[3], None, "the cache's head width")
        self.encoder = encoder
        self.cross_kv = parts["cross_kv"]
        self.step = parts["decoder"]
        heads = alignment_heads(config.get("alignment_heads"), self.shape)
        self.probabilities = cross_attention_probabilities(self.step, layers)
        """Each decoder layer's cross-attention probabilities tensor in the step graph (None: not found)."""
        if self.probabilities is None:
            _LOGGER.warning("%s: no cross-attention Softmax found in each decoder layer; imported without "
                            "alignment heads (words get their utterance's span).", graphs / DECODER)
        self.alignment_heads = heads if self.probabilities is not None else []
        """The (layer, head) pairs of the decoder's `alignment_attention` (none: it has no such output)."""

    def graphs(self, suppressed: list[int], language_ids: list[int]) -> dict[str, onnx.ModelProto]:
        """edged's `encoder`, `cross_kv` and `decoder` (with the suppression, language logits and
        alignment attention)."""
        s, batch = self.shape, "batch_size"
        encoder_kv: Dims = [batch, s.heads, "encoder_sequence_length_out", self.head_dim]
        _name_dims(self.encoder, {"input_features": [batch, s.mels, "num_frames"],
                                  "last_hidden_state": [batch, "encoder_sequence_length", s.width]})
        present: dict[str, Dims] = {f"present.{layer}.encoder.{kv}": encoder_kv for layer in range(s.decoder_layers)
                   for kv in ("key", "value")}
        _name_dims(self.cross_kv, {"encoder_hidden_states": [batch, "encoder_sequence_length_out", s.width],
                                   **present})
        return {"encoder": self.encoder, "cross_kv": self.cross_kv,
                "decoder": self._decoder(suppressed, language_ids)}

    def _decoder(self, suppressed: list[int], language_ids: list[int]) -> onnx.ModelProto:
        """The step graph's logits as edged's Whisper decoder gives them, and its alignment heads'
        attention (see the module docstring)."""
        s, batch = self.shape, "batch_size"
        graph = self.step.graph
        for node in graph.node:
            node.input[:] = [_RAW_LOGITS if i == "logits" else i for i in node.input]
            node.output[:] = [_RAW_LOGITS if o == "logits" else o for o in node.output]
        bias = np.zeros(s.vocab, np.float32)
        bias[suppressed] = _MASKED
        graph.initializer.append(numpy_helper.from_array(bias, "/edged/suppressed"))
        graph.node.append(helper.make_node("Add", [_RAW_LOGITS, "/edged/suppressed"], ["logits"],
                                           name="/edged/suppress"))
        scores = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                [batch, "decoder_sequence_length", s.vocab])]
        if language_ids:  # an English-only model has none to identify
            graph.initializer.append(numpy_helper.from_array(np.array(language_ids, np.int64), "/edged/language_ids"))
            graph.node.append(helper.make_node("Gather", [_RAW_LOGITS, "/edged/language_ids"], ["language_logits"],
                                               name="/edged/languages", axis=2))
            scores.append(helper.make_tensor_value_info("language_logits", TensorProto.FLOAT,
                                                        [batch, "decoder_sequence_length", len(language_ids)]))
        cache = [o for o in graph.output if o.name != "logits"]
        del graph.output[:]
        graph.output.extend([*scores, *cache])
        if self.probabilities is not None:
            add_alignment_output(self.step, self.probabilities, self.alignment_heads, s.heads, ALIGNMENT_OUTPUT,
                                 [batch, len(self.alignment_heads), "decoder_sequence_length",
                                  "encoder_sequence_length_out"])
        dims: dict[str, Dims] = {"input_ids": [batch, "decoder_sequence_length"]}
        for layer in range(s.decoder_layers):
            for kv in ("key", "value"):
                dims[f"past_key_values.{layer}.decoder.{kv}"] = [batch, s.heads, "past_decoder_sequence_length",
                                                                 self.head_dim]
                dims[f"past_key_values.{layer}.encoder.{kv}"] = [batch, s.heads, "encoder_sequence_length_out",
                                                                 self.head_dim]
                dims[f"present.{layer}.decoder.{kv}"] = [batch, s.heads, "past_decoder_sequence_length + 1",
                                                         self.head_dim]
        _name_dims(self.step, dims)
        return self.step


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
        raise ModelImportError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}).") from None


def _expect(model: onnx.ModelProto, file: str, inputs: list[str], outputs: list[str]) -> None:
    """ModelImportError naming what a graph lacks of optimum's Whisper inputs and outputs, or a
    tensor of them that is not float32 (a float16 export)."""
    have_in = {i.name: i for i in model.graph.input}
    have_out = {o.name: o for o in model.graph.output}
    lacking = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if lacking:
        raise ModelImportError(f"{file} is not optimum's Whisper export: it lacks {', '.join(lacking)} "
                               f"(it reads {', '.join(have_in)}).")
    for value in (*have_in.values(), *have_out.values()):
        if value.name.startswith(("input_features", "last_hidden_state", "logits", "past_key_values")) and \
                value.type.tensor_type.elem_type != TensorProto.FLOAT:
            kind = TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()
            raise ModelImportError(f"{file}'s {value.name} is {kind}; edged imports float32 exports only.")


def _dims(model: onnx.ModelProto, name: str, output: bool = False) -> list[int | None]:
    """A graph input's (or output's) dimensions, None where symbolic."""
    value = next(v for v in (model.graph.output if output else model.graph.input) if v.name == name)
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _int(in_graph: int | None, in_config: Any, what: str) -> int:
    """A dimension from the graph where it is fixed there, else from config.json."""
    if in_graph:
        return in_graph
    if isinstance(in_config, int) and in_config > 0:
        return in_config
    raise ModelImportError(f"the optimum Whisper export tells neither in its graphs nor in config.json its {what}.")


def _name_dims(model: onnx.ModelProto, dims: dict[str, Dims]) -> None:
    """Give graph inputs and outputs these dimensions (edged's names for the dynamic ones), in place."""
    for value in (*model.graph.input, *model.graph.output):
        if value.name not in dims:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims[value.name]:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d
