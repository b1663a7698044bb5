"""ONNX rewrites before a TensorRT build (TensorRT takes neither of the originals).

Weights stored as int8 with a Cast/Mul/Add dequantisation (Moonshine) are folded into float
weights, which TensorRT requires, and a top-level `If` switched by a boolean input
(`use_cache_branch` of the merged Moonshine decoder in RMIRs of importer revision 1) is split into
one graph per value, each built into its own engine, chosen at run time from that input.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.onnxgraph import drop_unused_initializers

_LOGGER = logging.getLogger(__name__)

_FOLDABLE = ("Cast", "Mul", "Add", "Sub", "Div")


def fold_constant_weights(model: Any) -> int:
    """Fold Cast/Mul/Add/Sub/Div nodes whose inputs are all initializers into new initializers.

    Weights stored as int8 and dequantised by such a chain are not allowed in TensorRT (a
    quantised constant must feed a DequantizeLinear); folded, they are plain float weights.
    Returns how many nodes were folded. Edits `model` in place.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    consts: dict[str, np.ndarray] = {}
    tensors = {t.name: t for t in graph.initializer}
    init_names = set(tensors)
    outputs = {o.name for o in graph.output}
    keep, folded = [], 0
    ops = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}

    def value(name: str) -> np.ndarray:
        if name not in consts:
            consts[name] = numpy_helper.to_array(tensors[name])
        return consts[name]

    for node in graph.node:
        foldable = (node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx") and node.input
                    and all(i in init_names for i in node.input) and node.output[0] not in outputs)
        if not foldable:
            keep.append(node)
            continue
        args = [value(i) for i in node.input]
        if node.op_type == "Cast":
            to = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")
            result = args[0].astype(helper.tensor_dtype_to_np_dtype(to))
        else:
            if args[0].dtype.kind != "f":
                keep.append(node)  # integer arithmetic follows ONNX rules numpy does not share
                continue
            result = ops[node.op_type](args[0], args[1]).astype(args[0].dtype)
        consts[node.output[0]] = result
        graph.initializer.append(numpy_helper.from_array(np.asarray(result), node.output[0]))
        init_names.add(node.output[0])
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    drop_unused_initializers(model)
    return folded


def boolean_switches(model: Any) -> list[str]:
    """Boolean graph inputs of one element that directly switch a top-level `If`."""
    from onnx import TensorProto

    conditions = {node.input[0] for node in model.graph.node if node.op_type == "If"}
    switches = []
    for vi in model.graph.input:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if vi.name in conditions and t.elem_type == TensorProto.BOOL and all(d == 1 for d in dims):
            switches.append(vi.name)
    return switches


def specialise(model: Any, values: dict[str, bool]) -> Any:
    """A copy of `model` with boolean inputs fixed to `values` and the `If`s they switch inlined."""
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    for name, value in values.items():
        vi = next(i for i in graph.input if i.name == name)
        dims = [1] * len(vi.type.tensor_type.shape.dim)
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(np.full(dims, value, dtype=np.bool_), name))
    nodes = []
    for node in graph.node:
        if node.op_type != "If" or node.input[0] not in values:
            nodes.append(node)
            continue
        branch_name = "then_branch" if values[node.input[0]] else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == branch_name)
        rename = {bo.name: out for bo, out in zip(branch.output, node.output)}
        produced = {o for n in branch.node for o in n.output}
        for inner in branch.node:
            inner.input[:] = [rename.get(i, i) for i in inner.input]
            inner.output[:] = [rename.get(o, o) for o in inner.output]
            nodes.append(inner)
        for init in branch.initializer:
            if init.name in rename:
                init.name = rename[init.name]
                produced.add(init.name)
            graph.initializer.append(init)
        for bo, out in zip(branch.output, node.output):
            if bo.name not in produced and out not in produced:
                # The branch hands out an outer-scope value unchanged.
                nodes.append(helper.make_node("Identity", [bo.name], [out]))
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(model)
    return model


@dataclass(frozen=True)
class Variant:
    """One engine of a network: the switch values it was specialised for and its ONNX file."""

    when: dict[str, bool]
    onnx: Path


def prepare_onnx(src: Path, work: Path) -> list[Variant]:
    """Write the graph(s) TensorRT builds from `src` into `work`: folded weights, one per switch value."""
    import onnx

    model = onnx.load(str(src))
    folded = fold_constant_weights(model)
    switches = boolean_switches(model)
    combos: list[dict[str, bool]] = [{}]
    for name in switches:
        combos = [{**c, name: v} for c in combos for v in (False, True)]
    if folded or switches:
        _LOGGER.info("Prepared %s for TensorRT: %d weight nodes folded, switches %s",
                     src.name, folded, switches or "none")
    work.mkdir(parents=True, exist_ok=True)
    variants = []
    for i, when in enumerate(combos):
        path = work / f"{src.stem}.{i}.onnx"
        prepared = specialise(model, when) if when else model
        large = prepared.ByteSize() > 1_900_000_000  # protobuf's 2 GB limit
        onnx.save(prepared, str(path), save_as_external_data=large)
        variants.append(Variant(when, path))
    return variants
