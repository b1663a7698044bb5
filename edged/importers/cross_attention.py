"""An exported decoder's cross-attention probabilities, found by the graph's structure, and an
output of some of their heads (Whisper's `alignment_attention`, for word times).

In each layer an exported decoder step computes softmax(Q·K^T) with K the layer's encoder keys
(`past_key_values.N.encoder.key`) and multiplies the probabilities by the encoder values
(`past_key_values.N.encoder.value`). A layer's probabilities are the output of the one Softmax
that its K reaches by data flow (not through a `Shape` or `Size`, which read no values, nor
through another Softmax), and whose output meets the layer's V in a MatMul. Node and tensor
names are never read: exporters name them as they please. A fused attention (ONNX Runtime's
`MultiHeadAttention`) has no Softmax: none are found.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_NO_VALUES = ("Shape", "Size")
"""Ops that read only their input's shape: no data flows through them."""
_PREFIX = "/edged/alignment"


def cross_attention_probabilities(model: onnx.ModelProto, layers: int) -> list[str] | None:
    """Each layer's cross-attention probabilities tensor (see the module docstring), by layer;
    None where a layer has not exactly one such Softmax over its last axis."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in set(node.input):
            consumers[name].append(node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    found = []
    for layer in range(layers):
        _, softmaxes = _flow(consumers, f"past_key_values.{layer}.encoder.key")
        values, _ = _flow(consumers, f"past_key_values.{layer}.encoder.value")
        if len(softmaxes) != 1 or _axis(softmaxes[0], opset) != -1:
            return None
        probabilities = softmaxes[0].output[0]
        if not _weighs(consumers, _flow(consumers, probabilities)[0], values):
            return None
        found.append(probabilities)
    return found if len(set(found)) == len(found) else None


def _flow(consumers: dict[str, list[onnx.NodeProto]], start: str) -> tuple[set[str], list[onnx.NodeProto]]:
    """The tensors `start` flows into (itself included) up to the Softmaxes it reaches, and those Softmaxes."""
    reached, softmaxes, todo = {start}, {}, [start]
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.op_type in _NO_VALUES:
                continue
            if node.op_type == "Softmax":
                softmaxes[node.output[0]] = node
                continue
            for out in node.output:
                if out and out not in reached:
                    reached.add(out)
                    todo.append(out)
    return reached, list(softmaxes.values())


def _weighs(consumers: dict[str, list[onnx.NodeProto]], probabilities: set[str], values: set[str]) -> bool:
    """Whether a MatMul multiplies a tensor the probabilities flow into (the values not) by one the values flow into."""
    return any(node.op_type == "MatMul" and any(i in values for i in node.input if i != name)
               for name in probabilities - values for node in consumers.get(name, []))


def _axis(softmax: onnx.NodeProto, opset: int) -> int:
    """The axis a Softmax normalises (before opset 13 its default was 1)."""
    return next((a.i for a in softmax.attribute if a.name == "axis"), -1 if opset >= 13 else 1)


def add_alignment_output(model: onnx.ModelProto, probabilities: Sequence[str], heads: Sequence[tuple[int, int]],
                         head_count: int, output: str, dims: list[str | int]) -> None:
    """Give the graph `output`: the probabilities of these (layer, head) pairs (in layer order, as
    edged.importers.whisper_graphs.alignment_heads gives them), [batch, len(heads), tokens, frames]
    (`dims`), in place. `probabilities`: each layer's, [batch, heads, tokens, frames] or as some
    exporters keep them, [batch x heads, tokens, frames]."""
    graph = model.graph
    ints = {"shape_head": [-1, head_count], "last_two": [-2], "to_end": [np.iinfo(np.int64).max]}
    graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), f"{_PREFIX}/{k}") for k, v in ints.items())
    picked = []
    for layer in sorted({layer for layer, _ in heads}):
        at = f"{_PREFIX}/layer_{layer}"
        indices = [head for at_layer, head in heads if at_layer == layer]
        graph.initializer.append(numpy_helper.from_array(np.array(indices, np.int64), f"{at}/heads"))
        graph.node.extend([
            helper.make_node("Shape", [probabilities[layer]], [f"{at}/shape"], name=f"{at}/Shape"),
            helper.make_node("Slice", [f"{at}/shape", f"{_PREFIX}/last_two", f"{_PREFIX}/to_end"],
                             [f"{at}/tokens_frames"], name=f"{at}/Slice"),
            helper.make_node("Concat", [f"{_PREFIX}/shape_head", f"{at}/tokens_frames"], [f"{at}/by_head"],
                             name=f"{at}/ConcatShape", axis=0),
            helper.make_node("Reshape", [probabilities[layer], f"{at}/by_head"], [f"{at}/probabilities"],
                             name=f"{at}/Reshape"),
            helper.make_node("Gather", [f"{at}/probabilities", f"{at}/heads"], [f"{at}/picked"],
                             name=f"{at}/Gather", axis=1)])
        picked.append(f"{at}/picked")
    graph.node.append(helper.make_node("Concat", picked, [output], name=f"{_PREFIX}/Concat", axis=1))
    graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, dims))
