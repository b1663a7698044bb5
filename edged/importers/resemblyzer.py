"""Importer for Resemblyzer's GE2E speaker encoder (`Resemblyzer` 0.1.4, Apache-2.0).

Its wheel ships `resemblyzer/pretrained.pt`, a PyTorch checkpoint of the GE2E encoder: a 3-layer
LSTM of 256 over 40 mel bands, then a linear 256 -> 256 and a ReLU; the last layer's final hidden
state of a 160-frame (1.6 s) partial gives the embedding. The package depends on PyTorch, which
edged's users must not need, so the checkpoint is read without it (edged.importers.torch_checkpoint)
and the network written as ONNX here; install it with `pip install --no-deps resemblyzer==0.1.4`
or give its wheel (`pip download --no-deps resemblyzer==0.1.4`) to `edged build --from-wheel`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.errors import ModelImportError
from edged.importers.package import locate_pack
from edged.importers.torch_checkpoint import read_checkpoint
from edged.rmir.build import ModelSource

HIDDEN = 256
WINDOW_FRAMES = 160
"""Frames in one partial (1.6 s)."""
LAYERS = 3
N_MELS = 40
OPSET = 17

FRONTEND = {
    "sample_rate": 16000, "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": N_MELS,
    "window": "hann", "center": True, "log": False, "volume_dbfs": -30.0,
    "window_frames": WINDOW_FRAMES, "window_stride": 77,
}
"""Resemblyzer's preprocessing: librosa's mel power (hann, centred frames, no log) of audio raised
to -30 dBFS, in partials of 160 frames, 77 apart (its 1.3 partials a second). Its webrtcvad trim of
long pauses is left out: edged embeds what its endpointer found to be speech."""

CLUSTER_THRESHOLD = 0.72
"""Clustering threshold for diarization. Its ReLU'd embeddings are all positive, so voices are more
alike than the voicefilter encoder's. `edged bench speakers` on 12 conversations of seed 0, DER by
threshold: 0.6: 19.6 %, 0.7: 11.4 %, 0.72: 6.9 %, 0.75: 10.4 %, 0.77: 14.0 %, 0.8: 18.2 %; held out
(seed 1) at 0.72: 10.2 %."""

KNOWN_THRESHOLD = 0.653
"""Cosine similarity at which a voice is an enrolled speaker's: the equal error rate's operating point
(`edged bench speakers`, 30 evalcorpus speakers and 6 espeak-ng voices: EER 4.8 % at 0.653)."""

PYTORCH_TO_ONNX_GATES = [0, 3, 1, 2]
"""PyTorch stacks an LSTM's gate blocks as input, forget, cell, output; ONNX as input, output,
forget, cell: ONNX's block j is PyTorch's block PYTORCH_TO_ONNX_GATES[j]."""


def onnx_gates(weight: np.ndarray) -> np.ndarray:
    """A PyTorch LSTM weight or bias [4 * hidden, ...] with its gate blocks in ONNX's order."""
    blocks = np.split(weight, 4, axis=0)
    return np.concatenate([blocks[i] for i in PYTORCH_TO_ONNX_GATES], axis=0)


def encoder_graph(state: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The GE2E encoder as ONNX: mel_window [batch, 160, 40] -> embedding [batch, 256] (not
    normalised; SpeakerEncoder normalises each window's embedding)."""
    initializers, nodes = [], []
    x = "frames"
    nodes.append(helper.make_node("Transpose", ["mel_window"], [x], perm=[1, 0, 2]))  # [time, batch, mel]
    for layer in range(LAYERS):
        w, r, b = f"W{layer}", f"R{layer}", f"B{layer}"
        try:
            weights = {
                w: onnx_gates(state[f"lstm.weight_ih_l{layer}"])[None],
                r: onnx_gates(state[f"lstm.weight_hh_l{layer}"])[None],
                b: np.concatenate([onnx_gates(state[f"lstm.bias_ih_l{layer}"]),
                                   onnx_gates(state[f"lstm.bias_hh_l{layer}"])])[None],
            }
        except KeyError as exc:
            raise ModelImportError(f"The checkpoint lacks {exc}; is it Resemblyzer's pretrained.pt?") from None
        initializers += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
        last = layer == LAYERS - 1
        y = "" if last else f"y{layer}"  # the last layer's sequence is not needed, only its final state
        nodes.append(helper.make_node("LSTM", [x, w, r, b], [y, f"h{layer}"], hidden_size=HIDDEN))
        if not last:
            x = f"seq{layer}"
            nodes.append(helper.make_node("Squeeze", [y, "axis1"], [x]))  # [time, 1, batch, h] -> [time, batch, h]
    initializers += [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(state["linear.weight"].astype(np.float32), "linear_w"),
        numpy_helper.from_array(state["linear.bias"].astype(np.float32), "linear_b"),
    ]
    nodes += [
        helper.make_node("Squeeze", [f"h{LAYERS - 1}", "axis0"], ["last"]),  # [1, batch, h] -> [batch, h]
        helper.make_node("Gemm", ["last", "linear_w", "linear_b"], ["projected"], transB=1),
        helper.make_node("Relu", ["projected"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "resemblyzer_ge2e",
        [helper.make_tensor_value_info("mel_window", TensorProto.FLOAT, ["batch", WINDOW_FRAMES, N_MELS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edged")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def import_resemblyzer_ge2e(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """The encoder as a `speaker` RMIR: network `embedder`, input mel_window [batch, 160, 40],
    output embedding [batch, 256]."""
    rel = "pretrained.pt"
    pack = locate_pack("Resemblyzer", "resemblyzer", [rel], workdir, wheel)
    checkpoint = read_checkpoint(pack.files[rel])
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelImportError(f"{rel} has no model_state; is it Resemblyzer's GE2E checkpoint?")
    out = workdir / "resemblyzer-ge2e.onnx"
    onnx.save(encoder_graph(state), out)
    return ModelSource(
        name="resemblyzer-ge2e",
        pipeline="speaker",
        language_code="any",
        sample_rate=16000,
        model_family="ge2e",
        networks={"embedder": out},
        parameters={"frontend": FRONTEND, "embedding_dim": HIDDEN, "input": "mel_window", "output": "embedding",
                    "cluster_threshold": CLUSTER_THRESHOLD, "known_threshold": KNOWN_THRESHOLD},
        dim_ranges={"batch": (1, 4, 64)},
        license="Apache-2.0",
        provenance=pack.provenance,
    )
