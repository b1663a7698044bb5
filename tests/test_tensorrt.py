"""TensorRT backend: pure logic on any machine, real engine builds where TensorRT-RTX is installed.

TensorRT-RTX builds engines ahead of time without a GPU, so these tests prove that the default
models' networks parse and build on every CI run. Running an engine needs an NVIDIA GPU; on a
machine without one the tests check that edged says so clearly instead of crashing. Nothing
here stands in for TensorRT: where it is missing, the test skips and says why.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.backends import BackendOptions, get_backend
from edged.backends.probe import probe
from edged.backends.tensorrt.backend import DESCRIPTOR_SUFFIX, engine_cache_key
from edged.backends.tensorrt.build import (
    EngineBuildError,
    build_engine,
    build_network_engines,
    profile_shapes,
)
from edged.backends.tensorrt.graph import (
    boolean_switches,
    fold_constant_weights,
    prepare_onnx,
    specialise,
)
from edged.backends.tensorrt.library import (
    EngineTarget,
    current_engine_target,
    engine_stale_reasons,
    trt_module_info,
)
from edged.backends.tensorrt.runtime import TrtSession, check_input_shape
from edged.errors import BackendError
from edged.loader import load_model
from edged.repository.deploy import deploy, with_gpu_memory
from edged.repository.records import (
    DeployRecord,
    DeployTarget,
    backend_summary,
    fallback_networks,
    list_models,
    stale_reasons,
)
from edged.rmir import RmirRef, extract_rmir
from edged.rmir.build import ModelSource, build_rmir
from edged.rmir.manifest import NetworkSpec, ShapeRange
from tests.conftest import make_tiny_onnx, tiny_source

OPTIONS = BackendOptions(intra_op_threads=1, inter_op_threads=1)
ORIN = EngineTarget("tensorrt", "10.3.0", "Orin", "8.7")


def build_target() -> EngineTarget:
    """The engine target builds here go to; skips unless this machine can build engines."""
    info = trt_module_info()
    if info is None:
        pytest.skip("no TensorRT module is installed (pip install 'edged[rtx]' builds without a GPU)")
    try:
        return current_engine_target(info)
    except BackendError as exc:
        pytest.skip(f"{info.name} needs a usable NVIDIA GPU to build engines here: {exc}")


def run_ort(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX file with ONNX Runtime on the CPU (the reference for prepared graphs)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in wanted})))


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def quantised_matmul(path: Path) -> Path:
    """y = x @ W with W stored as int8 and dequantised by Cast -> Mul -> Add (as Moonshine's)."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["Wq"], ["Wf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["Wf", "scale"], ["Ws"]),
            helper.make_node("Add", ["Ws", "offset"], ["W"]),
            helper.make_node("MatMul", ["x", "W"], ["y"]),
        ],
        "quantised",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(rng.integers(-128, 127, (4, 3)).astype(np.int8), "Wq"),
            numpy_helper.from_array(np.array(0.02, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(-0.1, dtype=np.float32), "offset"),
        ],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def switched(path: Path) -> Path:
    """A top-level If on a boolean input; one branch has its own weight, the other passes x on."""
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t_out"])], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e_out"])], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["n"])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["picked"], then_branch=then_branch, else_branch=else_branch),
         helper.make_node("Add", ["picked", "x"], ["y"])],
        "switched",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def unbuildable(path: Path) -> Path:
    """A real network ONNX Runtime runs but TensorRT has no importer for (Unique)."""
    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"], sorted=1)],
        "unique",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m"])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def tiny_spec(path: Path) -> NetworkSpec:
    """The NetworkSpec conftest's tiny network gets in an RMIR (batch 1..4, time 1..500)."""
    from edged.rmir.build import build_manifest

    return build_manifest(ModelSource(
        name="t", pipeline="vad", language_code="any", sample_rate=16000, model_family="tiny",
        networks={"net": path}, dim_ranges={"batch": (1, 1, 4), "time": (1, 50, 500)},
    )).networks[0]


# --- pure logic ----------------------------------------------------------------------------


def test_cache_key_changes_with_network_gpu_version_and_build_choices() -> None:
    """An engine is reused only for the same network, GPU, compute capability, TensorRT and precision."""
    base = engine_cache_key("a" * 64, ORIN, "fp16")
    assert base == engine_cache_key("a" * 64, ORIN, "fp16")
    others = [
        engine_cache_key("b" * 64, ORIN, "fp16"),
        engine_cache_key("a" * 64, EngineTarget("tensorrt", "10.3.0", "Orin", "8.6"), "fp16"),
        engine_cache_key("a" * 64, EngineTarget("tensorrt", "10.7.0", "Orin", "8.7"), "fp16"),
        engine_cache_key("a" * 64, EngineTarget("tensorrt", "10.3.0", "Xavier", "8.7"), "fp16"),
        engine_cache_key("a" * 64, ORIN, "fp32"),
        engine_cache_key("a" * 64, ORIN, "fp16", {"use_cache_branch": True}),
    ]
    assert len({base, *others}) == len(others) + 1


@pytest.mark.parametrize(
    ("here", "expected"),
    [
        (ORIN, []),
        (EngineTarget("tensorrt", "10.3.0", "Orin", "8.6"), ["compute capability 8.7"]),
        (EngineTarget("tensorrt", "10.3.0", "NVIDIA GeForce RTX 4090", "8.9"), ["GPU 'Orin'", "8.9"]),
        (EngineTarget("tensorrt", "10.7.0", "Orin", "8.7"), ["tensorrt 10.3.0, this machine has 10.7.0"]),
        (EngineTarget("tensorrt_rtx", "1.7.1", "Orin", "8.7"), ["built with tensorrt, this machine has tensorrt_rtx"]),
        (EngineTarget("tensorrt", "10.3.0", "portable", "portable"), ["no usable GPU"]),
    ],
    ids=["same", "other-cc", "other-gpu", "other-version", "other-module", "no-gpu"],
)
def test_engine_staleness(here: EngineTarget, expected: list[str]) -> None:
    """An engine made for another GPU or TensorRT is never loaded: each difference is named."""
    reasons = engine_stale_reasons(ORIN.as_dict(), here)
    assert len(reasons) == len(expected)
    for reason, text in zip(reasons, expected):
        assert text in reason


def test_portable_engine_only_needs_the_same_tensorrt_rtx() -> None:
    """A TensorRT-RTX engine built without a GPU runs on any supported GPU of the same version."""
    portable = EngineTarget("tensorrt_rtx", "1.7.1", "portable", "portable").as_dict()
    assert engine_stale_reasons(portable, EngineTarget("tensorrt_rtx", "1.7.1", "RTX 4090", "8.9")) == []
    assert engine_stale_reasons(portable, EngineTarget("tensorrt_rtx", "1.8.0", "RTX 4090", "8.9"))


def test_profile_from_manifest_ranges() -> None:
    """Dynamic inputs get the manifest's range, static ones none; a missing range is a clear error."""
    ranges = {"x": ShapeRange((1, 1), (1, 50), (4, 500)), "gone": ShapeRange((1,), (1,), (1,))}
    assert profile_shapes([("x", (-1, -1)), ("scales", (3,))], ranges) == {"x": ranges["x"]}
    with pytest.raises(BackendError, match="'y'.*no shape range"):
        profile_shapes([("x", (-1, -1)), ("y", (-1, 8))], ranges)
    with pytest.raises(BackendError, match="does not fit"):
        profile_shapes([("x", (-1, -1, 4))], ranges)
    with pytest.raises(BackendError, match="does not fit"):
        profile_shapes([("x", (8, -1))], ranges)  # a static 8 outside the batch range 1..4


def test_input_shape_checked_against_profile() -> None:
    """A call outside the engine's profile gets a sentence saying what to do, not a TensorRT log."""
    check_input_shape("x", (2, 100), ((1, 1), (4, 500)))
    check_input_shape("scales", (3,), None, (3,))
    with pytest.raises(BackendError, match=r"outside the engine's profile \[1, 1\] to \[4, 500\]"):
        check_input_shape("x", (2, 501), ((1, 1), (4, 500)))
    with pytest.raises(BackendError, match="takes"):
        check_input_shape("scales", (4,), None, (3,))


def test_tensorrt_deployments_go_stale_with_the_gpu_or_jetpack() -> None:
    """deploy.yaml of an engine deployment is stale on another GPU or after a JetPack upgrade."""
    device = {"arch": "aarch64", "cpu_isa": ["asimd"], "jetson": "Jetson Orin Nano", "l4t": "36.3.0",
              "gpu": "Orin", "compute_capability": "8.7"}
    record = DeployRecord.from_dict({"backend": "tensorrt", "versions": {"tensorrt": "tensorrt 10.3.0"},
                                     "device": device, "networks": {"enc": {"backend": "tensorrt"}}})
    here = DeployTarget("tensorrt", "", dict(device), {"tensorrt": "tensorrt 10.3.0"})
    assert stale_reasons(record, here, None) == []
    upgraded = DeployTarget("tensorrt", "", {**device, "l4t": "36.4.3"}, {"tensorrt": "tensorrt 10.3.0"})
    assert any("l4t" in r for r in stale_reasons(record, upgraded, None))
    other = DeployTarget("tensorrt", "", {**device, "gpu": "Xavier", "compute_capability": "7.2"},
                         {"tensorrt": "tensorrt 8.5.2"})
    assert len(stale_reasons(record, other, None)) == 3


def test_fallback_networks_need_their_onnxruntime_version() -> None:
    """A network that fell back to ONNX Runtime makes the deployment stale when ONNX Runtime changes."""
    device = {"arch": "x86_64", "gpu": "RTX", "compute_capability": "8.9"}
    record = DeployRecord.from_dict({
        "backend": "tensorrt", "device": device,
        "versions": {"tensorrt": "tensorrt 10.3.0", "onnxruntime": "0.0.1"},
        "networks": {"enc": {"backend": "tensorrt"},
                     "vad": {"backend": "onnxruntime", "fallback_reason": "unsupported op"}}})
    here = DeployTarget("tensorrt", "", device, {"tensorrt": "tensorrt 10.3.0"})
    assert fallback_networks(record) == {"vad": "unsupported op"}
    assert backend_summary(record) == "tensorrt (vad on onnxruntime: unsupported op)"
    assert any(r.startswith("onnxruntime 0.0.1 there") for r in stale_reasons(record, here, None))


def test_gpu_memory_counts_in_the_budget_on_a_jetson() -> None:
    """Engine weights and each context's activations: part of memory_mb where the GPU shares RAM."""
    networks = {"enc": {"backend": "tensorrt", "size": 100 * 2**20, "activation_mb": 20.0},
                "vad": {"backend": "onnxruntime", "size": 2**20}}
    options = BackendOptions(trt_contexts=2)
    jetson = with_gpu_memory({"memory_mb": 300.0}, networks, options, integrated=True)
    assert jetson["gpu_memory_mb"] == 140.0 and jetson["memory_mb"] == 440.0
    discrete = with_gpu_memory({"memory_mb": 300.0}, networks, options, integrated=False)
    assert discrete["gpu_memory_mb"] == 140.0 and discrete["memory_mb"] == 300.0


# --- ONNX preparation (ONNX Runtime is the reference) ---------------------------------------


def test_weight_dequantisation_is_folded(tmp_path: Path) -> None:
    """int8 weights behind Cast/Mul/Add become float weights; the network computes the same."""
    src = quantised_matmul(tmp_path / "q.onnx")
    model = onnx.load(str(src))
    assert fold_constant_weights(model) == 3
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT}
    folded = save(model, tmp_path / "folded.onnx")
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(folded, {"x": x})["y"], run_ort(src, {"x": x})["y"], rtol=1e-6)


def test_boolean_switch_specialised_per_value(tmp_path: Path) -> None:
    """An If on a boolean input becomes one graph per value, each equal to the original for it."""
    src = switched(tmp_path / "s.onnx")
    model = onnx.load(str(src))
    assert boolean_switches(model) == ["flag"]
    x = np.arange(5, dtype=np.float32)
    for value in (False, True):
        graph = specialise(model, {"flag": value})
        assert "If" not in {n.op_type for n in graph.graph.node}
        assert [i.name for i in graph.graph.input] == ["x"]
        path = save(graph, tmp_path / f"s-{value}.onnx")
        expected = run_ort(src, {"x": x, "flag": np.array([value])})["y"]
        np.testing.assert_array_equal(run_ort(path, {"x": x})["y"], expected)
    variants = prepare_onnx(src, tmp_path / "prep")
    assert [v.when for v in variants] == [{"flag": False}, {"flag": True}]


# --- building with TensorRT (TensorRT-RTX needs no GPU) -------------------------------------


def test_tiny_network_builds(tmp_path: Path) -> None:
    """A real engine is built from a real ONNX network with the manifest's optimisation profile."""
    target = build_target()
    src = make_tiny_onnx(tmp_path / "tiny.onnx")
    result = build_engine(src, tiny_spec(src).shape_ranges, target, OPTIONS, "tiny")
    assert len(result.plan) > 1000
    assert result.precision in ("fp16", "fp32")


def test_unsupported_network_says_why(tmp_path: Path) -> None:
    """A network TensorRT cannot parse raises EngineBuildError naming the operator."""
    target = build_target()
    with pytest.raises(EngineBuildError, match="Unique"):
        build_engine(unbuildable(tmp_path / "u.onnx"), {"x": ShapeRange((1,), (8,), (64,))},
                     target, OPTIONS, "unique")


@pytest.mark.slow
def test_default_models_networks_build(default_rmirs: dict[str, Path], tmp_path: Path) -> None:
    """CI's check of the build path: every default network is prepared and built, or says why not.

    Moonshine's encoder, step decoder and cross K/V engines must build. Piper's voice (NonZero needs a
    plugin TensorRT-RTX lacks) and Silero VAD (an If on its sample-rate input) may not with
    TensorRT-RTX; deploy then runs them on ONNX Runtime and records the reason printed here.
    """
    target = build_target()
    report = []
    for name, rmir in default_rmirs.items():
        unpacked = tmp_path / name
        unpacked.mkdir()
        result = extract_rmir(RmirRef(rmir), unpacked)
        for net in result.manifest.networks:
            for when, outcome in build_network_engines(unpacked / net.file, net, tmp_path / "prep", OPTIONS, target):
                ok = not isinstance(outcome, str)
                report.append((name, net.name, when, ok, outcome))
                print(f"{name}/{net.name} {when or ''}: "
                      + (f"{len(outcome.plan) / 2**20:.1f} MB {outcome.precision} in {outcome.seconds:.1f} s"
                         if not isinstance(outcome, str) else f"not built: {outcome}"))
    moonshine = [ok for name, _, _, ok, _ in report if name == "moonshine-base-en"]
    assert moonshine == [True, True, True]  # encoder, decoder (one engine: no If left), cross_kv
    assert all(ok or outcome for *_, ok, outcome in report)


# --- deploying and loading ------------------------------------------------------------------


def tensorrt_target() -> DeployTarget:
    """A TensorRT deploy target for this machine, whatever GPU it has or lacks."""
    backend = get_backend("tensorrt")
    return DeployTarget("tensorrt", "test", {**probe().device(), "gpu": "none"}, {"tensorrt": backend.version()})


def test_network_tensorrt_cannot_build_falls_back_to_onnxruntime(tmp_path: Path) -> None:
    """The whole path: deploy records the reason, `edged models` can show it, the model loads and runs."""
    src = tiny_source(tmp_path / "src", name="fallback", pipeline="vad")
    src = dataclasses.replace(src, networks={"uniq": unbuildable(tmp_path / "u.onnx")},
                              dim_ranges={"n": (1, 8, 64)})
    rmir = tmp_path / "fallback.rmir"
    build_rmir(src, RmirRef(rmir))
    models = tmp_path / "models"
    target = tensorrt_target()
    outcome = deploy(RmirRef(rmir), models, target, OPTIONS)
    entry = outcome.record.networks["uniq"]
    assert outcome.record.backend == "tensorrt"
    assert entry.backend == "onnxruntime" and entry.file.endswith(".ort.onnx")
    assert entry.fallback_reason  # no TensorRT, or TensorRT rejecting Unique: either is said
    assert "onnxruntime" in outcome.record.versions
    assert "on onnxruntime" in outcome.detail
    [model] = list_models(models, target)
    assert model.stale == []
    assert backend_summary(model.record).startswith("tensorrt (uniq on onnxruntime: ")
    loaded = load_model(model, OPTIONS)
    out = loaded.sessions["uniq"].run({"x": np.array([3, 1, 3, 2], dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], [1, 2, 3])


def test_engine_without_gpu_is_a_clear_deploy_error(tmp_path: Path, tiny_rmir: Path) -> None:
    """Engines build without a GPU (TensorRT-RTX), but loading them needs one: deploy says so.

    The engines stay in the repository's cache, so a deploy on a machine with the GPU reuses them.
    """
    target = build_target()
    if not target.portable:
        pytest.skip("this machine has a usable GPU; the no-GPU path cannot be shown here")
    models = tmp_path / "models"
    with pytest.raises(BackendError, match="do not load"):
        deploy(RmirRef(tiny_rmir), models, tensorrt_target(), OPTIONS)
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == []
    assert len(list((models / ".cache" / "tensorrt").glob("*.plan"))) == 2  # encoder, decoder


def test_stale_engine_is_refused_at_load(tmp_path: Path) -> None:
    """A descriptor built for another GPU or TensorRT is refused with what to do, never loaded."""
    if trt_module_info() is None:
        pytest.skip("no TensorRT module is installed (pip install 'edged[rtx]')")
    descriptor = tmp_path / f"enc{DESCRIPTOR_SUFFIX}"
    descriptor.write_text(
        '{"format": 1, "built_for": {"trt_module": "tensorrt", "trt_version": "8.5.2", '
        '"gpu": "Xavier", "compute_capability": "7.2"}, "inputs": [], "outputs": [], "engines": []}'
    )
    with pytest.raises(BackendError, match=r"stale .*edged init"):
        TrtSession(descriptor, OPTIONS)


def test_cpu_path_imports_neither_tensorrt_nor_cuda() -> None:
    """The CLI, backend choice and the TensorRT backend object import no TensorRT or CUDA module."""
    import subprocess
    import sys

    code = (
        "import sys, edged.cli\n"
        "from edged.backends import get_backend\n"
        "from edged.backends.probe import probe\n"
        "from edged.repository.records import current_target\n"
        "get_backend('tensorrt').version(); current_target(probe(), 'cpu')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'tensorrt_rtx', 'cuda')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
