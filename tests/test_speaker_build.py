"""A user's own speaker encoder: `edged build speaker OUT.rmir my.onnx --name NAME`, deployed and
used by SpeakerEncoder with the default front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.backends import BackendOptions
from edged.loader import load_model
from edged.pipelines.speaker.encoder import SpeakerEncoder, unit
from edged.pipelines.speaker.features import FrontEndSettings, SpeakerFeatures
from edged.repository.records import DeployTarget, list_models
from tests.test_build_cli import edged, ok
from tests.test_nemo_features import speech


def tiny_encoder(path: Path, dim: int = 8) -> np.ndarray:
    """An encoder whose embedding is the mean log-mel frame times W [40, dim]; returns W."""
    w = np.random.default_rng(0).standard_normal((40, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["frames", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "W"], ["vector"])],
        "tiny-speaker",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", 80, 40])],
        [helper.make_tensor_value_info("vector", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def test_a_users_own_speaker_onnx_builds_deploys_and_embeds(tmp_path: Path, cpu_target: DeployTarget) -> None:
    w = tiny_encoder(tmp_path / "mine.onnx")
    ok(edged(tmp_path, "build", "speaker", "mine.rmir", "mine.onnx", "--name", "my-speaker"))
    ok(edged(tmp_path, "deploy", "mine.rmir", "repo/models"))
    (model,) = list_models(tmp_path / "repo" / "models", cpu_target)
    assert model.manifest is not None and model.manifest.pipeline == "speaker"
    encoder = SpeakerEncoder(load_model(model, BackendOptions()))
    audio = speech(2.0)
    windows = SpeakerFeatures(FrontEndSettings()).windows(audio)
    expected = unit(unit(windows.mean(axis=1) @ w).mean(axis=0, keepdims=True))[0]
    assert encoder.dim == 8
    assert np.allclose(encoder.embed(audio), expected, atol=1e-4)
