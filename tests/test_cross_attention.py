"""Cross-attention probabilities found by a decoder graph's structure (edged.importers.cross_attention)
in a small graph laid out as older exporters write attention: heads folded into the batch
([batch x heads, tokens, frames]), the encoder keys' Shape feeding the output's Reshape, and a
Softmax after the attention that the keys' shape (but not their values) reaches. The output of
picked heads equals numpy's softmax(q k^T); a Softmax over another axis is not taken."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edged.importers.cross_attention import add_alignment_output, cross_attention_probabilities

B, T, H, D, F = 2, 3, 2, 4, 6
"""Batch, tokens, heads, head width, encoder frames."""
KEY, VALUE = "past_key_values.0.encoder.key", "past_key_values.0.encoder.value"


def _folded_attention(softmax_axis: int = -1) -> onnx.ModelProto:
    """`query` [B, T, H x D] attending to the encoder K/V [B, H, F, D] with the heads folded into
    the batch, then a Softmax of the attention's output (`y`)."""
    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    nodes = [
        helper.make_node("Reshape", ["query", "q4"], ["q_split"]),
        helper.make_node("Transpose", ["q_split"], ["q_heads"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["q_heads", "q3"], ["q_folded"]),
        helper.make_node("Reshape", [KEY, "kv3"], ["k_folded"]),
        helper.make_node("Transpose", ["k_folded"], ["k_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q_folded", "k_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=softmax_axis),
        helper.make_node("Reshape", [VALUE, "kv3"], ["v_folded"]),
        helper.make_node("MatMul", ["probs", "v_folded"], ["ctx"]),
        helper.make_node("Reshape", ["ctx", "ctx4"], ["ctx_heads"]),
        helper.make_node("Transpose", ["ctx_heads"], ["ctx_tokens"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", [KEY], ["k_shape"]),
        helper.make_node("Slice", ["k_shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "rest"], ["out_shape"], axis=0),
        helper.make_node("Reshape", ["ctx_tokens", "out_shape"], ["out"]),
        helper.make_node("Softmax", ["out"], ["y"], axis=-1),
    ]
    inits = [ints("q4", [B, T, H, D]), ints("q3", [B * H, T, D]), ints("kv3", [B * H, F, D]),
             ints("ctx4", [B, H, T, D]), ints("zero", [0]), ints("one", [1]), ints("rest", [T, H * D])]
    graph = helper.make_graph(nodes, "folded", [
        helper.make_tensor_value_info("query", TensorProto.FLOAT, [B, T, H * D]),
        helper.make_tensor_value_info(KEY, TensorProto.FLOAT, [B, H, F, D]),
        helper.make_tensor_value_info(VALUE, TensorProto.FLOAT, [B, H, F, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, T, H * D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_folded_heads_found_and_picked() -> None:
    model = _folded_attention()
    probabilities = cross_attention_probabilities(model, 1)
    assert probabilities == ["probs"]
    add_alignment_output(model, probabilities, [(0, 1)], H, "alignment_attention",
                         ["batch_size", 1, "decoder_sequence_length", "encoder_sequence_length_out"])
    onnx.checker.check_model(model)
    rng = np.random.default_rng(0)
    feed = {"query": rng.standard_normal((B, T, H * D)).astype(np.float32),
            KEY: rng.standard_normal((B, H, F, D)).astype(np.float32),
            VALUE: rng.standard_normal((B, H, F, D)).astype(np.float32)}
    (got,) = ort.InferenceSession(model.SerializeToString()).run(["alignment_attention"], feed)
    q = feed["query"].reshape(B, T, H, D).transpose(0, 2, 1, 3)
    scores = q @ feed[KEY].transpose(0, 1, 3, 2)
    want = np.exp(scores - scores.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert got.shape == (B, 1, T, F)
    np.testing.assert_allclose(got, want[:, 1:2], rtol=1e-5, atol=1e-7)


def test_softmax_over_another_axis_is_not_taken() -> None:
    assert cross_attention_probabilities(_folded_attention(softmax_axis=1), 1) is None
