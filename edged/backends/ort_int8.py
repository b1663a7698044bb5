"""Int8 weights kept int8 in ONNX Runtime: MatMuls on them as MatMulNBits, Gathers before the cast.

Moonshine ships its weights as int8 with one scale and offset per tensor (`Cast(q) * s + z`).
ONNX Runtime folds that into float32 at load, so a decoder step, which multiplies one row of
activations per token by every weight, reads 4 bytes per weight: at batch 1 it is bound by
memory, not arithmetic. `keep_int8` rewrites such a network so that the weights stay 1 byte:

- `MatMul(A, W)` becomes `MatMulNBits(A, q + 128, s)` (com.microsoft, 8 bits, blocks of 32 along
  K, `accuracy_level` 4: the activations are quantised to int8 per block of 32 and multiplied in
  integers), plus `z * ReduceSum(A)` for the offset; the weights are the same numbers, the
  activations' rounding is the only change.
- `Gather(W, ids)` (an embedding table) becomes `Gather(q, ids)` then the cast, scale and offset
  on the few rows gathered: the same arithmetic, exactly.

Measured on Moonshine base's decoder (2 x86 cores, AVX2): a batch-1 step 14.9 -> 9.1 ms, the
deployed decoder 209 -> 57 MB (loaded model 357 -> 197 MB), evalcorpus WER 4.81 -> 4.71 %,
offline RTF 0.064 -> 0.054. The encoder, which multiplies hundreds of rows at once, got slower
(103 -> 155 ms for 5 s), so an importer asks for this per network (`NetworkSpec.int8_matmul`),
and the backend first checks the kernel on this CPU (`int8_speedup`): where ONNX Runtime lacks
a fast int8 kernel, MatMulNBits is many times slower than float32.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import numpy as np

from edged.onnxgraph import drop_unused_initializers, live_nodes

BLOCK = 32
"""MatMulNBits block along K (Moonshine's K: 416 = 13 x 32, 1664 = 52 x 32)."""
MIN_SPEEDUP = 1.3
"""A network is rewritten only where the int8 kernel beats float32 by this much here."""
_MS_DOMAIN = "com.microsoft"


@functools.lru_cache(maxsize=4)
def int8_speedup(threads: int = 0) -> float:
    """How many times faster ONNX Runtime multiplies one row by a 1024 x 4096 weight held as
    int8 (MatMulNBits) than held as float32, on this CPU (median of alternated runs)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = 1024, 4096
    q = np.random.default_rng(0).integers(-127, 128, (n, k), dtype=np.int8)
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])

    def model(node: Any, inits: list[Any]) -> bytes:
        graph = helper.make_graph([node], "probe", [a], [y], inits)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid(_MS_DOMAIN, 1)]
        return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()

    plain = model(helper.make_node("MatMul", ["a", "w"], ["y"]),
                  [numpy_helper.from_array(q.T.astype(np.float32) * 0.01, "w")])
    int8 = model(_nbits_node("a", "b", "s", "y", k, n, "probe"),
                 [numpy_helper.from_array(_codes(q), "b"),
                  numpy_helper.from_array(np.full(n * (k // BLOCK), 0.01, np.float32), "s")])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sessions = [ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]) for m in (plain, int8)]
    except Exception:  # noqa: BLE001 (ORT raises its own types) an ORT without 8-bit MatMulNBits
        return 0.0
    x = {"a": np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)}
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(30):
        for session, seconds in zip(sessions, times):
            t0 = time.perf_counter()
            session.run(None, x)
            seconds.append(time.perf_counter() - t0)
    return statistics.median(times[0]) / statistics.median(times[1])


def _codes(q: np.ndarray) -> np.ndarray:
    """MatMulNBits' B for int8 weights q [N, K]: q + 128 as uint8, [N, blocks, BLOCK], zero padded."""
    n, k = q.shape
    blocks = -(-k // BLOCK)
    codes = np.full((n, blocks * BLOCK), 128, np.uint8)
    codes[:, :k] = (q.astype(np.int16) + 128).astype(np.uint8)
    return codes.reshape(n, blocks, BLOCK)


def _nbits_node(a: str, b: str, scales: str, out: str, k: int, n: int, name: str) -> Any:
    from onnx import helper

    return helper.make_node("MatMulNBits", [a, b, scales], [out], name=name, domain=_MS_DOMAIN,
                            K=k, N=n, bits=8, block_size=BLOCK, accuracy_level=4)


def keep_int8(model: Any) -> int:
    """Rewrite `model` in place (see the module's docstring); returns the MatMuls rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def scalar(name: str) -> float | None:
        arr = numpy_helper.to_array(inits[name]) if name in inits else None
        return float(arr.reshape(-1)[0]) if arr is not None and arr.size == 1 else None

    def dequantised(name: str) -> tuple[str, float, float] | None:
        """(int8 initializer, scale, offset) of a weight made as Cast(q) * scale (+ offset)."""
        node = producer.get(name)
        offset: float | None = 0.0
        if node is not None and node.op_type == "Add":
            offset = scalar(node.input[1])
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Mul" or offset is None:
            return None
        scale, cast = scalar(node.input[1]), producer.get(node.input[0])
        if scale is None or cast is None or cast.op_type != "Cast" or cast.input[0] not in inits:
            return None
        q = inits[cast.input[0]]
        return (q.name, scale, offset) if q.data_type == TensorProto.INT8 and len(q.dims) == 2 else None

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return 0  # ReduceSum with its axes as an input
    nodes: list[Any] = []
    added: dict[str, Any] = {}
    sums: dict[str, str] = {}  # activations -> their row sums (q, k and v projections share one)
    rewritten = 0
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gather"):
            nodes.append(node)
            continue
        weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
        transposed = producer.get(weight)
        flipped = node.op_type == "MatMul" and transposed is not None and transposed.op_type == "Transpose" \
            and [list(a.ints) for a in transposed.attribute if a.name == "perm"] in ([[1, 0]], [])
        found = dequantised(transposed.input[0] if flipped and transposed else weight)
        axis = [a.i for a in node.attribute if a.name == "axis"]
        if found is None or (node.op_type == "Gather" and axis not in ([], [0])):
            nodes.append(node)
            continue
        q_name, scale, offset = found
        out, tag = node.output[0], f"{node.name or node.output[0]}/int8"
        if node.op_type == "Gather":
            nodes += [helper.make_node("Gather", [q_name, node.input[1]], [f"{tag}/q"], name=f"{tag}/gather"),
                      helper.make_node("Cast", [f"{tag}/q"], [f"{tag}/f"], to=TensorProto.FLOAT, name=f"{tag}/cast"),
                      helper.make_node("Mul", [f"{tag}/f", f"{tag}/scale"], [f"{tag}/scaled" if offset else out],
                                       name=f"{tag}/mul")]
            added[f"{tag}/scale"] = np.array(scale, np.float32)
        else:
            if q_name not in added:
                q = numpy_helper.to_array(inits[q_name])
                added[f"{q_name}/codes"] = _codes(q if flipped else q.T)
            n, blocks = added[f"{q_name}/codes"].shape[:2]
            added[f"{tag}/scales"] = np.full(n * blocks, scale, np.float32)
            k = int(inits[q_name].dims[1 if flipped else 0])
            nodes.append(_nbits_node(node.input[0], f"{q_name}/codes", f"{tag}/scales",
                                     f"{tag}/scaled" if offset else out, k, n, tag))
            if offset:  # A @ (W + z) = A @ W + z * sum(A)
                if node.input[0] not in sums:
                    sums[node.input[0]] = f"{tag}/sum"
                    nodes.append(helper.make_node("ReduceSum", [node.input[0], "edged_int8_last_axis"],
                                                  [f"{tag}/sum"], keepdims=1, name=f"{tag}/sum"))
                nodes.append(helper.make_node("Mul", [sums[node.input[0]], f"{tag}/offset"], [f"{tag}/shift"],
                                              name=f"{tag}/shift"))
            rewritten += 1
        if offset:
            added[f"{tag}/offset"] = np.array(offset, np.float32)
            last = f"{tag}/shift" if node.op_type == "MatMul" else f"{tag}/offset"
            nodes.append(helper.make_node("Add", [f"{tag}/scaled", last], [out], name=f"{tag}/add"))
    if not rewritten:
        return 0
    added["edged_int8_last_axis"] = np.array([-1], np.int64)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in added.items() if k not in inits)
    del graph.node[:]
    graph.node.extend(live_nodes(nodes, [o.name for o in graph.output]))  # the float32 casts drop out
    drop_unused_initializers(model)
    if not any(o.domain == _MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
    return rewritten
