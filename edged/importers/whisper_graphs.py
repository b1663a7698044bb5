"""Whisper's networks as ONNX graphs, built from a CTranslate2 WhisperSpec's weights.

Three graphs, the layout edged's Moonshine recogniser runs (edged.pipelines.asr.recogniser):
- `encoder`: log-mel `input_features` [batch, 80, frames] -> `last_hidden_state`
  [batch, frames / 2, width] (two convolutions with GELU, sinusoidal positions, pre-norm layers);
- `cross_kv`: `encoder_hidden_states` -> every decoder layer's cross-attention keys and values,
  `present.N.encoder.key/value` [batch, heads, frames / 2, head width];
- `decoder`: `input_ids` [batch, tokens], the decoder cache `past_key_values.N.decoder.*` and
  the cross K/V -> `logits` [batch, tokens, vocab] (with the tokens Whisper never samples
  pushed to -1e9), `language_logits` (the raw logits of the language tokens, for language
  identification; not in an English-only model's graph) and `present.N.decoder.*` (the cache
  with the new tokens), and `alignment_attention` [batch, alignment heads, tokens, frames / 2]:
  the cross-attention probabilities of the alignment heads (`alignment_heads`, in layer then
  head order), for word times. The positions of the new tokens follow the cache's length, and
  each attends to itself and what is before it.

Weights are stored as float32. Attention queries are scaled by 1/sqrt(head width) in their
weights. The token embedding is stored once, transposed, and serves both the input embedding
(gathered along its columns) and the output projection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.errors import ModelImportError
from edged.importers.ctranslate2 import Ct2Model
from edged.pipelines.asr.whisper.recogniser import ALIGNMENT_OUTPUT

OPSET = 17
_EPS = 1e-5
_MASKED = -1e9


@dataclass
class _Graph:
    """Nodes and initializers of one graph being built, with unique names."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str = "", **attrs: Any) -> str:
        self.count += 1
        out = output or f"/{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"/{op_type}_{self.count}", **attrs))
        return out

    def split(self, x: str, sizes: list[int]) -> list[str]:
        """`x` cut along its last axis into parts of `sizes`."""
        self.count += 1
        outs = [f"/split_{self.count}_{i}" for i in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, self.ints(f"/split_sizes_{self.count}", sizes)], outs,
                                           name=f"/Split_{self.count}", axis=-1))
        return outs

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def linear(self, x: str, model: Ct2Model, scope: str, scale: float = 1.0) -> str:
        """x @ W^T + b of a CTranslate2 `scope/weight` [out, in] and its bias if any."""
        weight = model.weight(f"{scope}/weight") * scale
        y = self.op("MatMul", [x, self.const(f"{scope}/weight_t", np.ascontiguousarray(weight.T))])
        if f"{scope}/bias" in model.variables:
            y = self.op("Add", [y, self.const(f"{scope}/bias", model.weight(f"{scope}/bias") * scale)])
        return y

    def layer_norm(self, x: str, model: Ct2Model, scope: str) -> str:
        return self.op("LayerNormalization", [x, self.const(f"{scope}/gamma", model.weight(f"{scope}/gamma")),
                                              self.const(f"{scope}/beta", model.weight(f"{scope}/beta"))],
                       axis=-1, epsilon=_EPS)

    def gelu(self, x: str) -> str:
        """Exact GELU, x * (1 + erf(x / sqrt 2)) / 2 (ONNX Runtime fuses it into one kernel)."""
        half = self.op("Mul", [x, self.const(f"/gelu_half_{self.count}", np.array(0.5, np.float32))])
        erf = self.op("Erf", [self.op("Mul", [x, self.const(f"/gelu_scale_{self.count}",
                                                            np.array(1 / np.sqrt(2), np.float32))])])
        return self.op("Mul", [half, self.op("Add", [erf, self.const(f"/gelu_one_{self.count}",
                                                                     np.array(1.0, np.float32))])])

    def split_heads(self, x: str, heads: int, head_dim: int, perm: list[int]) -> str:
        """[batch, time, width] -> [batch, heads, time, head_dim] (or another order by `perm`)."""
        shaped = self.op("Reshape", [x, self.ints(f"/heads_shape_{self.count}", [0, 0, heads, head_dim])])
        return self.op("Transpose", [shaped], perm=perm)

    def merge_heads(self, x: str, width: int) -> str:
        """[batch, heads, time, head_dim] -> [batch, time, width]."""
        moved = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [moved, self.ints(f"/merge_shape_{self.count}", [0, 0, width])])

    def attend(self, q: str, k_t: str, v: str, mask: str | None = None) -> str:
        """softmax(q k^T [+ mask]) v, with q already scaled and k given transposed."""
        return self.op("MatMul", [self.weights(q, k_t, mask), v])

    def weights(self, q: str, k_t: str, mask: str | None = None) -> str:
        """The attention probabilities softmax(q k^T [+ mask]) [batch, heads, queries, keys]."""
        scores = self.op("MatMul", [q, k_t])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        return self.op("Softmax", [scores], axis=-1)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
              ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edged")
        model.ir_version = 8
        return model


@dataclass(frozen=True)
class WhisperShape:
    """The dimensions of a Whisper model, read from its weights."""

    width: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    vocab: int
    mels: int
    audio_positions: int
    text_positions: int

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def whisper_shape(model: Ct2Model) -> WhisperShape:
    """The dimensions of a CTranslate2 WhisperSpec; ModelImportError for another spec."""
    if model.spec != "WhisperSpec":
        raise ModelImportError(f"The CTranslate2 model is a {model.spec}, not a Whisper model (WhisperSpec).")

    def layers(part: str) -> int:
        count = 0
        while f"{part}/layer_{count}/ffn/linear_0/weight" in model.variables:
            count += 1
        return count

    vocab, width = model.variables["decoder/embeddings/weight"].shape
    shape = WhisperShape(
        width=int(width), heads=model.scalar("encoder/num_heads"), encoder_layers=layers("encoder"),
        decoder_layers=layers("decoder"), vocab=int(vocab),
        mels=int(model.variables["encoder/conv1/weight"].shape[1]),
        audio_positions=int(model.variables["encoder/position_encodings/encodings"].shape[0]),
        text_positions=int(model.variables["decoder/position_encodings/encodings"].shape[0]))
    if model.scalar("decoder/num_heads") != shape.heads or width % shape.heads:
        raise ModelImportError(f"Whisper model with {width} wide layers and heads encoder "
                               f"{shape.heads} / decoder {model.scalar('decoder/num_heads')}: unsupported.")
    return shape


def _tensor(name: str, dtype: int, dims: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def build_encoder(model: Ct2Model, shape: WhisperShape) -> onnx.ModelProto:
    """The audio encoder: `input_features` [batch, mels, frames] -> `last_hidden_state`."""
    g = _Graph()
    x = g.op("Conv", ["input_features", g.const("encoder/conv1/weight", model.weight("encoder/conv1/weight")),
                      g.const("encoder/conv1/bias", model.weight("encoder/conv1/bias"))], pads=[1, 1])
    x = g.gelu(x)
    x = g.op("Conv", [x, g.const("encoder/conv2/weight", model.weight("encoder/conv2/weight")),
                      g.const("encoder/conv2/bias", model.weight("encoder/conv2/bias"))], pads=[1, 1], strides=[2])
    x = g.op("Transpose", [g.gelu(x)], perm=[0, 2, 1])
    frames = g.op("Shape", [x], start=1, end=2)
    positions = g.op("Slice", [g.const("encoder/positions", model.weight("encoder/position_encodings/encodings")),
                               g.ints("/zero", [0]), frames, g.ints("/axis0", [0])])
    x = g.op("Add", [x, positions])
    for layer in range(shape.encoder_layers):
        scope = f"encoder/layer_{layer}"
        h = g.layer_norm(x, model, f"{scope}/self_attention/layer_norm")
        q, k, v = _split_qkv(g, h, model, f"{scope}/self_attention/linear_0", shape)
        ctx = g.attend(g.split_heads(q, shape.heads, shape.head_dim, [0, 2, 1, 3]),
                       g.split_heads(k, shape.heads, shape.head_dim, [0, 2, 3, 1]),
                       g.split_heads(v, shape.heads, shape.head_dim, [0, 2, 1, 3]))
        x = g.op("Add", [x, g.linear(g.merge_heads(ctx, shape.width), model, f"{scope}/self_attention/linear_1")])
        x = g.op("Add", [x, _ffn(g, x, model, f"{scope}/ffn")])
    g.layer_norm(x, model, "encoder/layer_norm")
    g.nodes[-1].output[0] = "last_hidden_state"
    return g.model("whisper_encoder",
                   [_tensor("input_features", TensorProto.FLOAT, ["batch_size", shape.mels, "num_frames"])],
                   [_tensor("last_hidden_state", TensorProto.FLOAT,
                            ["batch_size", "encoder_sequence_length", shape.width])])


def build_cross_kv(model: Ct2Model, shape: WhisperShape) -> onnx.ModelProto:
    """`encoder_hidden_states` -> `present.N.encoder.key/value` of every decoder layer."""
    g = _Graph()
    outputs = []
    dims: list[str | int] = ["batch_size", shape.heads, "encoder_sequence_length_out", shape.head_dim]
    for layer in range(shape.decoder_layers):
        kv = g.linear("encoder_hidden_states", model, f"decoder/layer_{layer}/attention/linear_1")
        k, v = g.split(kv, [shape.width, shape.width])
        for name, part in ((f"present.{layer}.encoder.key", k), (f"present.{layer}.encoder.value", v)):
            g.split_heads(part, shape.heads, shape.head_dim, [0, 2, 1, 3])
            g.nodes[-1].output[0] = name
            outputs.append(_tensor(name, TensorProto.FLOAT, dims))
    return g.model("whisper_cross_kv",
                   [_tensor("encoder_hidden_states", TensorProto.FLOAT,
                            ["batch_size", "encoder_sequence_length_out", shape.width])], outputs)


def alignment_heads(stated: Any, shape: WhisperShape) -> list[tuple[int, int]]:
    """The (decoder layer, head) pairs whose cross-attention follows the speech, in layer order:
    config.json's `alignment_heads` where given, else every head of the last half of the layers
    (Whisper's own default); ModelImportError for pairs the model does not have."""
    if stated is None:
        return [(layer, head) for layer in range(shape.decoder_layers // 2, shape.decoder_layers)
                for head in range(shape.heads)]
    try:
        heads = sorted({(int(layer), int(head)) for layer, head in stated})
    except (TypeError, ValueError):
        raise ModelImportError(f"config.json's alignment_heads must be [layer, head] pairs, not {stated!r}.") from None
    wrong = [pair for pair in heads if not (0 <= pair[0] < shape.decoder_layers and 0 <= pair[1] < shape.heads)]
    if wrong or not heads:
        raise ModelImportError(f"config.json's alignment_heads {wrong or 'list'} is not of this model's "
                               f"{shape.decoder_layers} decoder layers of {shape.heads} heads.")
    return heads


def build_decoder(model: Ct2Model, shape: WhisperShape, suppressed: list[int], language_ids: list[int],
                  alignment_heads: list[tuple[int, int]]) -> onnx.ModelProto:
    """The decoder step with its self-attention cache (see the module docstring)."""
    g = _Graph()
    alignment: list[str] = []
    past = "past_key_values.0.decoder.key"
    cached = g.op("Shape", [past], start=2, end=3)
    new = g.op("Shape", ["input_ids"], start=1, end=2)
    total = g.op("Add", [cached, new])
    table = g.const("decoder/positions", model.weight("decoder/position_encodings/encodings"))
    positions = g.op("Slice", [table, cached, total, g.ints("/axis0", [0])])
    embed_t = g.const("decoder/embeddings_t", np.ascontiguousarray(model.weight("decoder/embeddings/weight").T))
    tokens = g.op("Transpose", [g.op("Gather", [embed_t, "input_ids"], axis=1)], perm=[1, 2, 0])
    x = g.op("Add", [tokens, positions])
    # Causal mask [new, cached + new]: key j is hidden from the token at position cached + i when j > cached + i.
    scalar = g.ints("/scalar", [])
    first, end = g.op("Reshape", [cached, scalar]), g.op("Reshape", [total, scalar])
    one = g.const("/one", np.array(1, np.int64))
    keys = g.op("Range", [g.const("/zero_scalar", np.array(0, np.int64)), end, one])
    queries = g.op("Unsqueeze", [g.op("Range", [first, end, one]), g.ints("/axis1", [1])])
    mask = g.op("Where", [g.op("Greater", [keys, queries]), g.const("/masked", np.array(_MASKED, np.float32)),
                          g.const("/open", np.array(0.0, np.float32))])
    scale = float(1 / np.sqrt(shape.head_dim))
    outputs = []
    cache_dims: list[str | int] = ["batch_size", shape.heads, "past_decoder_sequence_length + 1", shape.head_dim]
    inputs = [_tensor("input_ids", TensorProto.INT64, ["batch_size", "decoder_sequence_length"])]
    for layer in range(shape.decoder_layers):
        scope = f"decoder/layer_{layer}"
        h = g.layer_norm(x, model, f"{scope}/self_attention/layer_norm")
        q, k, v = _split_qkv(g, h, model, f"{scope}/self_attention/linear_0", shape)
        names = {}
        for part, new_part in (("key", k), ("value", v)):
            past_name = f"past_key_values.{layer}.decoder.{part}"
            inputs.append(_tensor(past_name, TensorProto.FLOAT,
                                  ["batch_size", shape.heads, "past_decoder_sequence_length", shape.head_dim]))
            heads = g.split_heads(new_part, shape.heads, shape.head_dim, [0, 2, 1, 3])
            names[part] = g.op("Concat", [past_name, heads], f"present.{layer}.decoder.{part}", axis=2)
            outputs.append(_tensor(names[part], TensorProto.FLOAT, cache_dims))
        ctx = g.attend(g.split_heads(q, shape.heads, shape.head_dim, [0, 2, 1, 3]),
                       g.op("Transpose", [names["key"]], perm=[0, 1, 3, 2]), names["value"], mask)
        x = g.op("Add", [x, g.linear(g.merge_heads(ctx, shape.width), model, f"{scope}/self_attention/linear_1")])
        h = g.layer_norm(x, model, f"{scope}/attention/layer_norm")
        q = g.linear(h, model, f"{scope}/attention/linear_0", scale)
        enc = {part: f"past_key_values.{layer}.encoder.{part}" for part in ("key", "value")}
        for name in enc.values():
            inputs.append(_tensor(name, TensorProto.FLOAT,
                                  ["batch_size", shape.heads, "encoder_sequence_length_out", shape.head_dim]))
        probs = g.weights(g.split_heads(q, shape.heads, shape.head_dim, [0, 2, 1, 3]),
                          g.op("Transpose", [enc["key"]], perm=[0, 1, 3, 2]))
        picked = [head for at, head in alignment_heads if at == layer]
        if picked:
            alignment.append(g.op("Gather", [probs, g.ints(f"/alignment_heads_{layer}", picked)], axis=1))
        ctx = g.op("MatMul", [probs, enc["value"]])
        x = g.op("Add", [x, g.linear(g.merge_heads(ctx, shape.width), model, f"{scope}/attention/linear_2")])
        x = g.op("Add", [x, _ffn(g, x, model, f"{scope}/ffn")])
    x = g.layer_norm(x, model, "decoder/layer_norm")
    raw = g.op("MatMul", [x, embed_t])
    bias = np.zeros(shape.vocab, np.float32)
    bias[suppressed] = _MASKED
    g.op("Add", [raw, g.const("/suppressed", bias)], "logits")
    logits_dims: list[str | int] = ["batch_size", "decoder_sequence_length"]
    scores = [_tensor("logits", TensorProto.FLOAT, [*logits_dims, shape.vocab])]
    if language_ids:  # an English-only model has none to identify
        g.op("Gather", [raw, g.ints("/language_ids", language_ids)], "language_logits", axis=2)
        scores.append(_tensor("language_logits", TensorProto.FLOAT, [*logits_dims, len(language_ids)]))
    outputs = [*scores, *outputs]
    if alignment:
        g.op("Concat", alignment, ALIGNMENT_OUTPUT, axis=1)
        outputs.append(_tensor(ALIGNMENT_OUTPUT, TensorProto.FLOAT, [
            "batch_size", len(alignment_heads), "decoder_sequence_length", "encoder_sequence_length_out"]))
    return g.model("whisper_decoder", inputs, outputs)


def _split_qkv(g: _Graph, h: str, model: Ct2Model, scope: str, shape: WhisperShape) -> tuple[str, str, str]:
    """The query (scaled), key and value of a fused self-attention projection [3 x width, width]."""
    weight, bias = model.weight(f"{scope}/weight"), model.weight(f"{scope}/bias")
    scale = np.ones(3 * shape.width, np.float32)
    scale[:shape.width] = 1 / np.sqrt(shape.head_dim)
    w = g.const(f"{scope}/weight_t", np.ascontiguousarray((weight * scale[:, None]).T))
    qkv = g.op("Add", [g.op("MatMul", [h, w]), g.const(f"{scope}/bias", bias * scale)])
    q, k, v = g.split(qkv, [shape.width] * 3)
    return q, k, v


def _ffn(g: _Graph, x: str, model: Ct2Model, scope: str) -> str:
    """The feed-forward block of a pre-norm layer (its residual added by the caller)."""
    h = g.layer_norm(x, model, f"{scope}/layer_norm")
    return g.linear(g.gelu(g.linear(h, model, f"{scope}/linear_0")), model, f"{scope}/linear_1")
