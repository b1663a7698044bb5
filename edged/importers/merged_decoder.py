"""A Hugging Face `optimum` "merged" decoder split into the two plain graphs edged's recognisers run.

optimum exports an encoder-decoder speech model's decoder (Moonshine, Whisper) as one graph
whose top-level `If` on `use_cache_branch` picks a first-call graph (no cache; projects
`encoder_hidden_states` to every layer's cross-attention keys and values) or a step graph
(reads them from `past_key_values.N.encoder.*`). Split, the recogniser calls `cross_kv`
(`encoder_hidden_states` -> `present.N.encoder.key/value`) once per utterance and `decoder`
(the step graph, which with an empty decoder cache is also the first call) per token: ONNX
Runtime runs a step a few per cent faster without the `If`, and holds each weight once.

Nothing here depends on a model's node names or layer count: the layers are counted from the
graph's `past_key_values.N.decoder.key` inputs, and the batch size the exporter reads from the
decoder's hidden state is found by where it flows (see `_batch_from_encoder`).
"""

from __future__ import annotations

import re
from typing import Any

import onnx
from onnx import helper, numpy_helper

from edged.errors import ModelImportError
from edged.onnxgraph import live_nodes

_PAST = re.compile(r"past_key_values\.(\d+)\.decoder\.key$")
_BATCH = "/edged/encoder_hidden_states/Shape_output_0"


def decoder_layers(model: onnx.ModelProto) -> int:
    """The decoder's layer count: its `past_key_values.N.decoder.key` inputs, N = 0..layers - 1."""
    found = sorted(int(m.group(1)) for i in model.graph.input if (m := _PAST.match(i.name)))
    if not found or found != list(range(len(found))):
        raise ModelImportError(f"the merged decoder's inputs past_key_values.N.decoder.key are N = {found}, "
                               "expected 0, 1, ...")
    return len(found)


def present(layers: int, part: str) -> list[str]:
    """The cache outputs `present.N.{part}.key/value` of every layer."""
    return [f"present.{layer}.{part}.{kv}" for layer in range(layers) for kv in ("key", "value")]


def split_merged_decoder(merged: onnx.ModelProto, what: str, step_outputs: tuple[str, ...] = ()
                         ) -> dict[str, onnx.ModelProto]:
    """The merged decoder as `decoder` and `cross_kv` graphs (see the module docstring).

    `decoder`: the `use_cache_branch` = true graph, reading `input_ids` and the decoder and
    encoder parts of `past_key_values.N`, giving `logits`, `present.N.decoder.*` and
    `step_outputs` (its `present.N.encoder.*` are only copies of its inputs and are left out).
    `cross_kv`: the nodes of the first-call graph that give `present.N.encoder.key/value` from
    `encoder_hidden_states`. `what` names the model in messages."""
    from edged.backends.tensorrt.graph import specialise

    if [n.op_type for n in merged.graph.node].count("If") != 1 or not any(
            i.name == "use_cache_branch" for i in merged.graph.input):
        raise ModelImportError(f"{what}'s merged decoder has no If on a use_cache_branch input.")
    layers = decoder_layers(merged)
    step = prune(specialise(merged, {"use_cache_branch": True}),
                 ["logits", *present(layers, "decoder"), *step_outputs], what)
    cross = prune(_batch_from_encoder(specialise(merged, {"use_cache_branch": False})),
                  present(layers, "encoder"), what)
    if [i.name for i in cross.graph.input] != ["encoder_hidden_states"]:
        raise ModelImportError(f"{what}'s cross K/V graph reads {[i.name for i in cross.graph.input]}, "
                               "expected only encoder_hidden_states.")
    if any(i.name in ("encoder_hidden_states", "use_cache_branch") for i in step.graph.input):
        raise ModelImportError(f"{what}'s decoder step graph reads encoder_hidden_states or use_cache_branch.")
    return {"decoder": step, "cross_kv": cross}


def _batch_from_encoder(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read the batch size of the cross-attention K/V reshapes from `encoder_hidden_states`.

    The exporters take it from the decoder's hidden state (`Shape` -> `Gather` index 0), which
    would make the K/V depend on `input_ids` and the whole decoder before them; both tensors
    have the batch first. Every such Gather of a shape computed from `input_ids` reads the
    encoder states' instead, and so does a `Shape` that gives the batch size alone (start 0,
    end 1; those the K/V do not need are pruned away after). Edits `model` in place."""
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    from_ids = {"input_ids"}
    for node in graph.node:  # topological order: what input_ids flows into
        if any(i in from_ids for i in node.input):
            from_ids.update(node.output)
    shapes = set()
    for node in graph.node:
        if node.op_type != "Shape" or node.input[0] not in from_ids:
            continue
        span = {a.name: a.i for a in node.attribute}
        if span.get("start", 0) == 0 and span.get("end") == 1:
            node.input[0] = "encoder_hidden_states"
        elif span.get("start", 0) == 0:
            shapes.add(node.output[0])
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in shapes and node.input[1] in consts:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0 and numpy_helper.to_array(consts[node.input[1]]).tolist() == 0:
                node.input[0] = _BATCH
    graph.node.insert(0, helper.make_node("Shape", ["encoder_hidden_states"], [_BATCH],
                                          name="/edged/encoder_hidden_states/Shape"))
    return model


def prune(model: onnx.ModelProto, outputs: list[str], what: str) -> onnx.ModelProto:
    """A graph without `If`s reduced to what `outputs` need: nodes, initializers, inputs (in
    place: the callers hand a fresh copy, and a large decoder is not held twice more)."""
    graph = model.graph
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        raise ModelImportError(f"{what}'s decoder: cannot prune a graph with subgraphs.")
    by_name = {o.name: o for o in graph.output}
    missing = [o for o in outputs if o not in by_name]
    if missing:
        raise ModelImportError(f"{what}'s merged decoder lacks the outputs {', '.join(missing)}.")
    kept = live_nodes(graph.node, outputs)
    needed = set(outputs) | {i for n in kept for i in n.input if i}
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
