"""Int8 weights kept int8 for ONNX Runtime (edged.backends.ort_int8) on a small generated decoder."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edged.backends import BackendOptions
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.ort_int8 import MIN_SPEEDUP, int8_speedup, keep_int8
from edged.rmir import NetworkSpec, file_sha256
from edged.rmir.build import build_manifest
from edged.rmir.manifest import manifest_from_yaml
from tests.conftest import tiny_source

VOCAB, WIDTH, HIDDEN = 300, 48, 80  # 48: K not a multiple of the 32-wide blocks


def _dequantised(nodes: list, inits: list, name: str, q: np.ndarray, scale: float, offset: float) -> str:
    """Moonshine's weight form: Cast(q) * scale + offset, from int8 constants."""
    inits += [numpy_helper.from_array(q, f"{name}_q"),
              numpy_helper.from_array(np.array([scale], np.float32), f"{name}_s"),
              numpy_helper.from_array(np.array([offset], np.float32), f"{name}_z")]
    nodes += [helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT),
              helper.make_node("Mul", [f"{name}_f", f"{name}_s"], [f"{name}_m"]),
              helper.make_node("Add", [f"{name}_m", f"{name}_z"], [name])]
    return name


def decoder_like(path: Path) -> Path:
    """ids -> embedding (Gather) -> two MatMuls of it, added -> Relu -> MatMul -> logits through
    the embedding transposed (tied weights), every weight int8 with a per-tensor scale and offset."""
    rng = np.random.default_rng(5)
    nodes: list = []
    inits: list = []
    table = _dequantised(nodes, inits, "table", rng.integers(-127, 128, (VOCAB, WIDTH), dtype=np.int8), 0.02, 0.1)
    up = _dequantised(nodes, inits, "up", rng.integers(-127, 128, (WIDTH, HIDDEN), dtype=np.int8), 0.01, -0.05)
    gate = _dequantised(nodes, inits, "gate", rng.integers(-127, 128, (WIDTH, HIDDEN), dtype=np.int8), 0.01, 0.02)
    down = _dequantised(nodes, inits, "down", rng.integers(-127, 128, (HIDDEN, WIDTH), dtype=np.int8), 0.01, 0.0)
    nodes += [helper.make_node("Gather", [table, "ids"], ["x"], axis=0),
              helper.make_node("MatMul", ["x", up], ["h1"]),
              helper.make_node("MatMul", ["x", gate], ["h2"]),
              helper.make_node("Add", ["h1", "h2"], ["h"]),
              helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("MatMul", ["r", down], ["d"]),
              helper.make_node("Transpose", [table], ["table_t"], perm=[1, 0]),
              helper.make_node("MatMul", ["d", "table_t"], ["logits"])]
    graph = helper.make_graph(
        nodes, "decoder-like",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens", VOCAB]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", WIDTH])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(model: bytes | str, ids: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(["logits", "x"], {"ids": ids})


def test_keep_int8_rewrites_matmuls_and_keeps_the_embedding_exact(tmp_path: Path) -> None:
    """Every MatMul on an int8 weight (the tied, transposed one too) becomes MatMulNBits, with
    one row sum per activation for the offsets, the embedding gathers int8 rows and dequantises
    them exactly, no float32 weight is left, and the logits stay within int8 activation
    rounding of the float32 graph's."""
    src = decoder_like(tmp_path / "dec.onnx")
    model = onnx.load(str(src))
    assert keep_int8(model) == 4
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == 4 and ops["MatMul"] == 0 and ops["Gather"] == 1
    assert ops["ReduceSum"] == 2  # one per activation that meets an offset (x twice, d once)
    assert {i.data_type for i in model.graph.initializer if i.dims and np.prod(i.dims) > 1000} \
        <= {TensorProto.INT8, TensorProto.UINT8}
    ids = np.array([[1, 7, 299, 42], [0, 5, 5, 123]], np.int64)
    (want_logits, want_x), (got_logits, got_x) = _run(str(src), ids), _run(model.SerializeToString(), ids)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-6, atol=1e-7)
    error = np.linalg.norm(got_logits - want_logits) / np.linalg.norm(want_logits)
    assert 0 < error < 0.02, error  # activations rounded to int8: close, not equal
    assert (got_logits.argmax(-1) == want_logits.argmax(-1)).mean() >= 0.75


def test_keep_int8_leaves_float_weights_alone(tmp_path: Path) -> None:
    """A network without int8 weights is not touched."""
    from tests.conftest import make_tiny_onnx

    model = onnx.load(str(make_tiny_onnx(tmp_path / "tiny.onnx")))
    before = model.SerializeToString()
    assert keep_int8(model) == 0
    assert model.SerializeToString() == before


def test_ort_deploy_keeps_int8_only_where_the_manifest_asks(tmp_path: Path) -> None:
    """Deploying a network marked int8_matmul records the decision in its deploy entry (the
    rewrite where this CPU's int8 kernel is fast) and runs; unmarked, the graph stays float."""
    src = decoder_like(tmp_path / "dec.onnx")
    spec = NetworkSpec(name="decoder", file="decoder.onnx", sha256=file_sha256(src), size=src.stat().st_size)
    backend, options = OnnxRuntimeBackend(), BackendOptions(intra_op_threads=1)
    ids = np.array([[3, 4, 5]], np.int64)
    want = _run(str(src), ids)[0]
    for marked in (False, True):
        out = tmp_path / f"deployed-{marked}"
        out.mkdir()
        entry = backend.deploy_network(src, out, dataclasses.replace(spec, int8_matmul=marked), options)
        assert sorted(p.name for p in out.iterdir()) == ["decoder.ort.onnx"]  # no leftovers
        got = backend.load(out / entry["file"], options).run({"ids": ids})["logits"]
        ops = Counter(n.op_type for n in onnx.load(str(out / entry["file"])).graph.node)
        if not marked:
            assert "int8_matmuls" not in entry and ops["MatMulNBits"] == 0
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        elif entry["int8_speedup"] >= MIN_SPEEDUP:
            assert entry["int8_matmuls"] == 4 and ops["MatMulNBits"] == 4
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02
        else:
            assert entry["int8_matmuls"] == 0 and ops["MatMulNBits"] == 0


def test_int8_speedup_is_measured() -> None:
    """The kernel check gives a positive ratio and is measured once per thread count."""
    first = int8_speedup(1)
    assert first > 0
    assert int8_speedup(1) == first


def test_manifest_carries_int8_matmul(tmp_path: Path) -> None:
    """An importer's int8_matmul reaches the manifest and survives its YAML; unmarked networks
    write nothing new, so older manifests read the same."""
    src = dataclasses.replace(tiny_source(tmp_path / "src"), int8_matmul=("decoder",))
    manifest = build_manifest(src)
    marked = {n.name: n.int8_matmul for n in manifest.networks}
    assert marked == {name: name == "decoder" for name in src.networks}
    text = manifest.to_yaml()
    assert text.count("int8_matmul: true") == 1
    assert manifest_from_yaml(text) == manifest
