"""A small Whisper as Hugging Face `optimum` exports it to ONNX, generated for tests.

The weights are tests/whisper_models.py's random ones; the graphs have optimum's interface:
`encoder_model.onnx` (`input_features` -> `last_hidden_state`) and `decoder_model_merged.onnx`,
one `If` on `use_cache_branch` whose first-call branch projects `encoder_hidden_states` to the
cross-attention K/V (taking the batch size of its reshapes from the decoder's `input_ids`, as
the exporter does) and whose cached branch reads them from `past_key_values.N.encoder.*` (its
`present.N.encoder.*` are empty placeholders, as in optimum's exports); the outputs `logits` and
`present.N.decoder/encoder.key/value`, and no `alignment_attention` (edged's importer finds the
cross-attention by the graph's structure). Beside them `config.json` and `generation_config.json`
with transformers' keys, and the tokenizer.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.importers.ctranslate2 import read_ct2_model
from edged.importers.whisper_graphs import WhisperShape, build_cross_kv, build_decoder, build_encoder, whisper_shape
from tests.whisper_models import make_ct2_whisper

_OUTER = ("input_ids", "encoder_hidden_states", "use_cache_branch", "past_key_values.")


def make_optimum_whisper(folder: Path, multilingual: bool = True, layers: int = 2, seed: int = 0,
                         timestamps: int = 4, sliced_batch: bool = False, script: list[int] | None = None,
                         alignment_heads: list[list[int]] | None = None, keep_ct2: bool = False) -> Path:
    """An optimum-layout Whisper folder (see the module docstring); `multilingual` False: an
    English-only `.en` model as its generation_config.json says (`is_multilingual: false`);
    `sliced_batch`: the cross K/V reshapes read the batch size as `Shape(input_ids, start=0,
    end=1)`, not by a Gather of the whole shape; `script`: what the model writes (see
    make_ct2_whisper); `alignment_heads`: generation_config.json's; `keep_ct2`: the CTranslate2
    folder of the same weights (and heads, in its config.json) is kept beside, `FOLDER.ct2`."""
    ct2 = make_ct2_whisper(folder.parent / f"{folder.name}.ct2", layers=layers, seed=seed, timestamps=timestamps,
                           script=script, config={"alignment_heads": alignment_heads} if alignment_heads else None)
    model = read_ct2_model(ct2 / "model.bin")
    shape = whisper_shape(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(build_encoder(model, shape), str(folder / "encoder_model.onnx"))
    onnx.save(_merged(build_decoder(model, shape, [], [], []), build_cross_kv(model, shape), shape, sliced_batch),
              str(folder / "decoder_model_merged.onnx"))
    spec = json.loads((ct2 / "tokenizer.json").read_text(encoding="utf-8"))
    shutil.copy(ct2 / "tokenizer.json", folder / "tokenizer.json")
    if not keep_ct2:
        shutil.rmtree(ct2)
    special = {t["content"]: t["id"] for t in spec["added_tokens"]}
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    (folder / "config.json").write_text(json.dumps({
        "_name_or_path": "tiny-random-whisper", "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper", "d_model": shape.width, "encoder_layers": shape.encoder_layers,
        "decoder_layers": shape.decoder_layers, "encoder_attention_heads": shape.heads,
        "decoder_attention_heads": shape.heads, "num_mel_bins": shape.mels,
        "max_source_positions": shape.audio_positions, "max_target_positions": shape.text_positions,
        "vocab_size": shape.vocab, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
        "decoder_start_token_id": sot, "begin_suppress_tokens": None, "suppress_tokens": None,
        "use_cache": True, "transformers_version": "4.57.6"}, indent=2))
    languages = {name: special[name] for name in ("<|en|>", "<|de|>", "<|es|>")}
    (folder / "generation_config.json").write_text(json.dumps({
        "begin_suppress_tokens": [220, eot], "bos_token_id": eot, "decoder_start_token_id": sot,
        "eos_token_id": eot, "pad_token_id": eot, "is_multilingual": multilingual,
        "lang_to_id": languages if multilingual else {},
        "task_to_id": {"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]},
        "no_timestamps_token_id": special["<|notimestamps|>"], "max_length": shape.text_positions,
        "suppress_tokens": [ord("#"), ord("*")], "transformers_version": "4.57.6",
        **({"alignment_heads": alignment_heads} if alignment_heads else {})}, indent=2))
    return folder


def _merged(step: onnx.ModelProto, cross: onnx.ModelProto, shape: WhisperShape, sliced_batch: bool
            ) -> onnx.ModelProto:
    """The merged decoder: `step` (edged's own, without suppression) in both branches, the first
    call's fed the K/V of `cross`; the weights of `step` shared in the outer graph."""
    layers = range(shape.decoder_layers)
    encoder_kv = [f"present.{layer}.encoder.{kv}" for layer in layers for kv in ("key", "value")]
    decoder_kv = [f"present.{layer}.decoder.{kv}" for layer in layers for kv in ("key", "value")]
    shared = {t.name for t in step.graph.initializer}

    then_nodes = _scoped(list(step.graph.node), "then/", shared)
    # The cached branch gives no cross K/V: its present.N.encoder.* are empty placeholders.
    placeholder = numpy_helper.from_array(np.zeros((0, shape.heads, 1, shape.head_dim), np.float32))
    then_nodes += [helper.make_node("Constant", [], [f"then/{name}"], name=f"then/{name}", value=placeholder)
                   for name in encoder_kv]
    cross_nodes = _scoped(_batch_from_input_ids(cross, shape, sliced_batch), "else/cross/", set())
    read = {i for n in cross_nodes for i in n.input}
    cross_inits = [numpy_helper.from_array(numpy_helper.to_array(t), f"else/cross/{t.name}")
                   for t in cross.graph.initializer if f"else/cross/{t.name}" in read]
    past_encoder = {name.replace("present", "past_key_values"): f"else/cross/{name}" for name in encoder_kv}
    else_nodes = cross_nodes + _scoped(list(step.graph.node), "else/", shared, past_encoder)

    def branch(name: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], prefix: str,
               cross_prefix: str) -> onnx.GraphProto:
        names = [f"{prefix}logits"] + [f"{cross_prefix if '.encoder.' in o else prefix}{o}" for layer in layers
                                       for o in (*decoder_kv[2 * layer:2 * layer + 2],
                                                 *encoder_kv[2 * layer:2 * layer + 2])]
        outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in names]
        return helper.make_graph(nodes, name, [], outputs, inits)

    batch = "batch_size"
    kv = [batch, shape.heads, "past_decoder_sequence_length", shape.head_dim]
    enc = [batch, shape.heads, "encoder_sequence_length_out", shape.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "decoder_sequence_length"]),
              helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT,
                                            [batch, "encoder_sequence_length / 2", shape.width])]
    for layer in layers:
        for part, dims in (("decoder", kv), ("encoder", enc)):
            inputs += [helper.make_tensor_value_info(f"past_key_values.{layer}.{part}.{k}", TensorProto.FLOAT, dims)
                       for k in ("key", "value")]
    inputs.append(helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]))
    grown = [batch, shape.heads, "past_decoder_sequence_length + 1", shape.head_dim]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             [batch, "decoder_sequence_length", shape.vocab])]
    for layer in layers:
        for part, dims in (("decoder", grown), ("encoder", enc)):
            outputs += [helper.make_tensor_value_info(f"present.{layer}.{part}.{k}", TensorProto.FLOAT, dims)
                        for k in ("key", "value")]
    node = helper.make_node("If", ["use_cache_branch"], [o.name for o in outputs], name="optimum::if",
                            then_branch=branch("with_past", then_nodes, [], "then/", "then/"),
                            else_branch=branch("without_past", else_nodes, cross_inits, "else/", "else/cross/"))
    graph = helper.make_graph([node], "merged", inputs, outputs, list(step.graph.initializer))
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    merged.ir_version = 8
    onnx.checker.check_model(merged)
    return merged


def _batch_from_input_ids(cross: onnx.ModelProto, shape: WhisperShape, sliced: bool) -> list[onnx.NodeProto]:
    """The cross K/V graph's nodes, its head reshapes taking the batch from `input_ids`."""
    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))

    nodes = [const("/rest", np.array([-1, shape.heads, shape.head_dim], np.int64))]
    if sliced:
        nodes.append(helper.make_node("Shape", ["input_ids"], ["/batch_1d"], start=0, end=1))
    else:
        nodes += [const("/zero_index", np.array(0, np.int64)), const("/axes0", np.array([0], np.int64)),
                  helper.make_node("Shape", ["input_ids"], ["/ids_shape"]),
                  helper.make_node("Gather", ["/ids_shape", "/zero_index"], ["/batch"], axis=0),
                  helper.make_node("Unsqueeze", ["/batch", "/axes0"], ["/batch_1d"])]
    nodes.append(helper.make_node("Concat", ["/batch_1d", "/rest"], ["/kv_shape"], axis=0))
    for node in cross.graph.node:
        if node.op_type == "Reshape":
            node.input[1] = "/kv_shape"
        nodes.append(node)
    return nodes


def _scoped(nodes: list[onnx.NodeProto], prefix: str, keep: set[str], rename: dict[str, str] | None = None
            ) -> list[onnx.NodeProto]:
    """Copies of `nodes` with every name they produce or read prefixed, but the graph inputs and
    `keep` (outer-scope weights); `rename`: other names read, replaced."""
    rename = rename or {}
    out = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)

        def scoped(name: str) -> str:
            if name in rename:
                return rename[name]
            if not name or name in keep or name.startswith(_OUTER):
                return name
            return prefix + name

        copy.input[:] = [scoped(i) for i in copy.input]
        copy.output[:] = [scoped(o) for o in copy.output]
        copy.name = prefix + (copy.name or copy.output[0])
        out.append(copy)
    return out
