"""Tests for edged.importers.ortformat: .ort flatbuffer -> ONNX protobuf conversion."""

from __future__ import annotations

import importlib.util
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.errors import ModelImportError
from edged.importers.ortformat import ort_to_onnx

_SPEC = importlib.util.find_spec("moonshine_cpp")  # locate only: importing it loads native libraries
_PACKAGE = Path(_SPEC.origin).parent if _SPEC and _SPEC.origin else None
needs_moonshine = pytest.mark.skipif(
    _PACKAGE is None, reason="moonshine_cpp (which ships the .ort models) is not installed"
)

BOS, EOS = 1, 2
SAMPLE_RATE = 16000
KV_HEADS, HEAD_DIM = 8, 52  # Moonshine base: 8 attention heads of 52 dims (416 hidden)


def _session(model: str | bytes) -> ort.InferenceSession:
    """Open a CPU session on a path or serialised model."""
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def moonshine() -> dict[str, ort.InferenceSession]:
    """Original (.ort) and converted (.onnx) encoder and decoder sessions."""
    models = _PACKAGE / "models" / "base-en"
    sessions = {}
    for part, filename in (("encoder", "encoder_model.ort"), ("decoder", "decoder_model_merged.ort")):
        converted = ort_to_onnx(models / filename)
        serialised = converted.SerializeToString()
        assert len(serialised) < 2**31
        sessions[f"{part}_ort"] = _session(str(models / filename))
        sessions[f"{part}_onnx"] = _session(serialised)
    return sessions


@pytest.fixture(scope="module")
def beckett() -> np.ndarray:
    """beckett.wav as float32 samples in [-1, 1]."""
    with wave.open(str(_PACKAGE / "test-data" / "beckett.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, SAMPLE_RATE)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def _empty_cache(decoder: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Zero-length past key/values for every past_key_values.* input."""
    return {
        i.name: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32)
        for i in decoder.get_inputs()
        if i.name.startswith("past_key_values.")
    }


def _step(
    decoder: ort.InferenceSession, token: int, hidden: np.ndarray, cache: dict[str, np.ndarray], use_cache: bool
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One decoder step: returns logits, all present.* outputs and the cache for the next step."""
    feed = {
        "input_ids": np.array([[token]], np.int64),
        "encoder_hidden_states": hidden,
        "use_cache_branch": np.array([use_cache]),
        **cache,
    }
    names = [o.name for o in decoder.get_outputs()]
    logits, *present = decoder.run(None, feed)
    present_map = dict(zip(names[1:], present))
    # The cache branch returns dummy cross-attention (encoder) KV: keep the first step's.
    next_cache = {}
    for name, value in present_map.items():
        past = "past_key_values" + name[len("present") :]
        next_cache[past] = value if (not use_cache or ".decoder." in name) else cache[past]
    return logits, present_map, next_cache


def _greedy(
    encoder: ort.InferenceSession, decoder: ort.InferenceSession, audio: np.ndarray, limit: int
) -> list[int]:
    """Greedy-decode token ids (BOS first) until EOS or `limit` new tokens."""
    hidden = encoder.run(None, {"input_values": audio[None]})[0]
    tokens, cache = [BOS], _empty_cache(decoder)
    for _ in range(limit):
        logits, _, cache = _step(decoder, tokens[-1], hidden, cache, use_cache=len(tokens) > 1)
        tokens.append(int(np.argmax(logits[0, -1])))
        if tokens[-1] == EOS:
            break
    return tokens


@needs_moonshine
def test_encoder_matches_original(moonshine: dict[str, ort.InferenceSession], beckett: np.ndarray) -> None:
    """The converted encoder reproduces the .ort encoder on 3 s of speech."""
    feed = {"input_values": beckett[None, : 3 * SAMPLE_RATE]}
    expected = moonshine["encoder_ort"].run(None, feed)[0]
    actual = moonshine["encoder_onnx"].run(None, feed)[0]
    assert actual.shape == expected.shape and expected.shape[-1] == 416
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-3)


@needs_moonshine
def test_decoder_steps_match_original(moonshine: dict[str, ort.InferenceSession], beckett: np.ndarray) -> None:
    """First (no-cache) and second (cached) decoder steps agree, logits and KV cache alike."""
    hidden = moonshine["encoder_ort"].run(None, {"input_values": beckett[None, : 3 * SAMPLE_RATE]})[0]
    results = {}
    for kind in ("ort", "onnx"):
        decoder = moonshine[f"decoder_{kind}"]
        logits1, present1, cache = _step(decoder, BOS, hidden, _empty_cache(decoder), use_cache=False)
        token = int(np.argmax(logits1[0, -1]))
        logits2, present2, _ = _step(decoder, token, hidden, cache, use_cache=True)
        results[kind] = (token, logits1, present1, logits2, present2)
    (tok_o, l1_o, p1_o, l2_o, p2_o), (tok_c, l1_c, p1_c, l2_c, p2_c) = results["ort"], results["onnx"]
    assert tok_o == tok_c
    np.testing.assert_allclose(l1_c, l1_o, rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(l2_c, l2_o, rtol=1e-3, atol=2e-3)
    assert p1_c.keys() == p1_o.keys()
    for name in p1_o:
        np.testing.assert_allclose(p1_c[name], p1_o[name], rtol=1e-3, atol=1e-3, err_msg=name)
        if ".decoder." in name:
            assert p2_o[name].shape[2] == 2
            np.testing.assert_allclose(p2_c[name], p2_o[name], rtol=1e-3, atol=1e-3, err_msg=name)


@needs_moonshine
def test_greedy_tokens_identical(moonshine: dict[str, ort.InferenceSession], beckett: np.ndarray) -> None:
    """Greedy decoding of all of beckett.wav gives the same token ids, ending in EOS."""
    expected = _greedy(moonshine["encoder_ort"], moonshine["decoder_ort"], beckett, limit=48)
    actual = _greedy(moonshine["encoder_onnx"], moonshine["decoder_onnx"], beckett, limit=48)
    assert actual == expected
    assert len(actual) > 10 and actual[-1] == EOS


@needs_moonshine
def test_converted_decoder_structure() -> None:
    """Opsets, symbolic dims and the If subgraphs of the merged decoder survive conversion."""
    model = ort_to_onnx((_PACKAGE / "models" / "base-en" / "decoder_model_merged.ort").read_bytes())
    assert {o.domain for o in model.opset_import} >= {"", "com.microsoft"}
    assert model.ir_version == 10
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch_size", "decoder_sequence_length"]
    branch = next(n for n in model.graph.node if n.op_type == "If")
    assert {a.name for a in branch.attribute} == {"then_branch", "else_branch"}
    assert all(len(a.g.node) > 100 and len(a.g.output) == 33 for a in branch.attribute)


def _tensor_info(name: str, elem: int, shape: list | None) -> onnx.ValueInfoProto:
    """Shorthand for helper.make_tensor_value_info."""
    return helper.make_tensor_value_info(name, elem, shape)


def _sample_model() -> onnx.ModelProto:
    """A small model using If/Loop with outer-scope values, strings, sparse data and custom domains."""
    f32, i64, boolean = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "c"], ["ty"])],
        "then", [], [_tensor_info("ty", f32, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["x", "c"], ["ey"])], "else", [], [_tensor_info("ey", f32, None)]
    )
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "x"], ["acc_out"]), helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body",
        [_tensor_info("i", i64, []), _tensor_info("cond", boolean, []), _tensor_info("acc", f32, None)],
        [_tensor_info("cond_out", boolean, []), _tensor_info("acc_out", f32, None)],
    )
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "sp"),
        numpy_helper.from_array(np.array([1, 3], np.int64), "sp_idx"),
        [4],
    )
    words = helper.make_tensor("words", TensorProto.STRING, [2], [b"ab", b"cd"])
    nodes = [
        helper.make_node("If", ["flag"], ["y_if"], then_branch=then_g, else_branch=else_g, name="branch"),
        helper.make_node("Loop", ["trips", "yes", "zeros"], ["y_loop"], body=body, name="loop"),
        helper.make_node("LeakyRelu", ["x"], ["y_leaky"], alpha=0.3),
        helper.make_node("Transpose", ["m"], ["y_t"], perm=[1, 0]),
        helper.make_node("Add", ["x", "sp"], ["y_sparse"]),
        helper.make_node("Constant", [], ["strs"], value=words),
        helper.make_node(
            "CategoryMapper", ["strs"], ["y_cat"], domain="ai.onnx.ml", cats_strings=[b"ab", b"cd"], cats_int64s=[4, 9]
        ),
        helper.make_node("Gelu", ["x"], ["y_gelu"], domain="com.microsoft"),
    ]
    inits = {
        "w": np.float32(3.0),
        "c": np.float32(0.5),
        "trips": np.int64(3),
        "yes": np.bool_(True),
        "zeros": np.zeros(4, np.float32),
    }
    float_outputs = ["y_if", "y_loop", "y_leaky", "y_t", "y_sparse", "y_gelu"]
    graph = helper.make_graph(
        nodes,
        "g",
        [_tensor_info("x", f32, ["N"]), _tensor_info("flag", boolean, []), _tensor_info("m", f32, [2, None])],
        [_tensor_info(n, f32, None) for n in float_outputs] + [_tensor_info("y_cat", i64, None)],
        initializer=[numpy_helper.from_array(np.array(v), k) for k, v in inits.items()],
        sparse_initializer=[sparse],
    )
    opsets = [helper.make_opsetid(d, v) for d, v in (("", 17), ("ai.onnx.ml", 3), ("com.microsoft", 1))]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    model.metadata_props.add(key="origin", value="test")
    return model


def test_round_trip_of_ort_saved_model(tmp_path: Path) -> None:
    """A model saved by ONNX Runtime as .ort converts back and computes the same outputs."""
    model = _sample_model()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "m.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    converted = ort_to_onnx(tmp_path / "m.ort")
    assert {(m.key, m.value) for m in converted.metadata_props} == {("origin", "test")}
    assert converted.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert not converted.graph.input[2].type.tensor_type.shape.dim[1].HasField("dim_value")
    reference, result = _session(model.SerializeToString()), _session(converted.SerializeToString())
    for flag in (True, False):
        feed = {
            "x": np.arange(1, 5, dtype=np.float32),
            "flag": np.array(flag),
            "m": np.arange(6, dtype=np.float32).reshape(2, 3),
        }
        for want, got in zip(reference.run(None, feed), result.run(None, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    "payload",
    [b"", b"not a model at all", b"\x08\x00\x00\x00ONNX" + bytes(64), b"\x0c\x00\x00\x00ORTM" + b"\xff" * 40],
    ids=["empty", "text", "wrong-identifier", "corrupt-body"],
)
def test_garbage_is_rejected(tmp_path: Path, payload: bytes) -> None:
    """Files that are not (valid) .ort flatbuffers raise ModelImportError, from a path or from bytes."""
    path = tmp_path / "garbage.ort"
    path.write_bytes(payload)
    with pytest.raises(ModelImportError, match="ONNX Runtime"):
        ort_to_onnx(path)
    with pytest.raises(ModelImportError, match="ONNX Runtime"):
        ort_to_onnx(payload)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    """A path that does not exist raises ModelImportError."""
    with pytest.raises(ModelImportError):
        ort_to_onnx(tmp_path / "absent.ort")
