"""Backend choice, staleness, the capability probe and the ONNX Runtime backend (fast, no GPU)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.backends import BackendOptions, get_backend, implemented_backends
from edged.backends.choice import select_backend, tensorrt_possible
from edged.backends.onnxruntime import OPTIMISER_REVISION, OnnxRuntimeBackend
from edged.backends.probe import Capabilities, probe
from edged.errors import BackendError, ConfigError
from edged.repository.records import (
    DeployRecord,
    DeployTarget,
    current_target,
    stale_reasons,
)
from edged.rmir import NetworkSpec, file_sha256
from tests.conftest import make_tiny_onnx

WITH_TRT = frozenset({"onnxruntime", "tensorrt"})
ORT_ONLY = frozenset({"onnxruntime"})


def caps(
    *,
    tensorrt: str | None = None,
    tensorrt_rtx: str | None = None,
    cuda_python: str | None = None,
    nvidia_gpu: bool = False,
) -> Capabilities:
    """Capabilities of an imaginary x86 machine, with the GPU-related parts chosen by the test."""
    return Capabilities(
        arch="x86_64",
        cpu="Test CPU",
        cpu_isa=("sse4_2", "avx", "avx2"),
        onnxruntime="1.20.0",
        tensorrt=tensorrt,
        tensorrt_rtx=tensorrt_rtx,
        cuda_python=cuda_python,
        nvidia_gpu=nvidia_gpu,
        jetson_model=None,
    )


FULL_GPU = caps(tensorrt="10.3.0", cuda_python="12.6.0", nvidia_gpu=True)
RTX_GPU = caps(tensorrt_rtx="1.0.0", cuda_python="12.6.0", nvidia_gpu=True)


# --- select_backend -----------------------------------------------------------------------


@pytest.mark.parametrize("capabilities", [caps(), FULL_GPU, RTX_GPU], ids=["bare", "trt", "trt-rtx"])
@pytest.mark.parametrize("implemented", [ORT_ONLY, WITH_TRT], ids=["ort-only", "with-trt"])
def test_cpu_always_means_onnxruntime(capabilities: Capabilities, implemented: frozenset[str]) -> None:
    """backend=cpu picks ONNX Runtime whatever the machine has."""
    choice = select_backend(capabilities, "cpu", implemented)
    assert choice.backend == "onnxruntime"
    assert "backend=cpu" in choice.reason


@pytest.mark.parametrize(
    ("capabilities", "missing"),
    [
        (caps(), "no TensorRT Python module"),
        (caps(cuda_python="12.6.0", nvidia_gpu=True), "no TensorRT Python module"),
        (caps(tensorrt="10.3.0", cuda_python="12.6.0"), "no NVIDIA GPU"),
        (caps(tensorrt_rtx="1.0.0", cuda_python="12.6.0"), "no NVIDIA GPU"),
        (caps(tensorrt="10.3.0", nvidia_gpu=True), "cuda-python is not installed"),
        (caps(tensorrt_rtx="1.0.0", nvidia_gpu=True), "cuda-python is not installed"),
    ],
    ids=["nothing", "no-trt", "trt-no-gpu", "rtx-no-gpu", "trt-no-cuda-python", "rtx-no-cuda-python"],
)
def test_auto_without_tensorrt_capability_falls_back(capabilities: Capabilities, missing: str) -> None:
    """backend=auto without a full TensorRT stack uses ONNX Runtime and says what is missing."""
    assert missing in (tensorrt_possible(capabilities) or "")
    for implemented in (ORT_ONLY, WITH_TRT):
        choice = select_backend(capabilities, "auto", implemented)
        assert choice.backend == "onnxruntime"
        assert "ONNX Runtime" in choice.reason and missing in choice.reason


@pytest.mark.parametrize("capabilities", [FULL_GPU, RTX_GPU], ids=["trt", "trt-rtx"])
def test_auto_with_capability_but_no_tensorrt_backend(capabilities: Capabilities) -> None:
    """A TensorRT-capable machine still gets ONNX Runtime while this build lacks the backend."""
    assert tensorrt_possible(capabilities) is None
    choice = select_backend(capabilities, "auto", ORT_ONLY)
    assert choice.backend == "onnxruntime"
    assert "not part of this edged build" in choice.reason


@pytest.mark.parametrize("capabilities", [FULL_GPU, RTX_GPU], ids=["trt", "trt-rtx"])
def test_auto_with_capability_and_backend_picks_tensorrt(capabilities: Capabilities) -> None:
    """Where TensorRT, a GPU and cuda-python exist and the backend is built in, auto picks it."""
    choice = select_backend(capabilities, "auto", WITH_TRT)
    assert choice.backend == "tensorrt"
    assert "GPU" in choice.reason


@pytest.mark.parametrize(
    ("capabilities", "missing"),
    [
        (caps(), "no TensorRT Python module"),
        (caps(tensorrt="10.3.0", cuda_python="12.6.0"), "no NVIDIA GPU"),
        (caps(tensorrt="10.3.0", nvidia_gpu=True), "cuda-python"),
    ],
    ids=["no-trt", "no-gpu", "no-cuda-python"],
)
def test_tensorrt_requested_without_capability(capabilities: Capabilities, missing: str) -> None:
    """backend=tensorrt on a machine that cannot run it is a config error naming what is missing."""
    for implemented in (ORT_ONLY, WITH_TRT):
        with pytest.raises(ConfigError, match="backend=tensorrt") as info:
            select_backend(capabilities, "tensorrt", implemented)
        assert missing in str(info.value)
        assert "auto or cpu" in str(info.value)


def test_tensorrt_requested_but_not_implemented() -> None:
    """backend=tensorrt on a capable machine is refused while this build has no TensorRT backend."""
    with pytest.raises(ConfigError, match="not available in this edged build"):
        select_backend(FULL_GPU, "tensorrt", ORT_ONLY)
    assert select_backend(FULL_GPU, "tensorrt", WITH_TRT).backend == "tensorrt"


@pytest.mark.parametrize("name", ["gpu", "", "CPU ", "onnxruntime"])
def test_invalid_backend_name(name: str) -> None:
    """An unknown backend name is a config error listing the accepted values."""
    with pytest.raises(ConfigError, match="auto, cpu, tensorrt"):
        select_backend(caps(), name, ORT_ONLY)


def test_current_target_rejects_invalid_name() -> None:
    """current_target passes the config error on rather than guessing."""
    with pytest.raises(ConfigError, match="not valid"):
        current_target(probe(), "gpu")


def test_get_backend_knows_only_implemented_backends() -> None:
    """ONNX Runtime and TensorRT are built in; asking for another backend is a BackendError."""
    assert implemented_backends() == WITH_TRT
    assert get_backend("onnxruntime").name == "onnxruntime"
    assert get_backend("tensorrt").name == "tensorrt"  # importing the backend imports no TensorRT
    with pytest.raises(BackendError, match="openvino"):
        get_backend("openvino")


# --- stale_reasons ------------------------------------------------------------------------

SHA = "a" * 64


def target() -> DeployTarget:
    """A deploy target for an imaginary CPU machine."""
    return DeployTarget(
        backend="onnxruntime",
        reason="test",
        device=caps().device(),
        versions={"onnxruntime": "1.20.0"},
    )


def record_for(t: DeployTarget, sha: str = SHA) -> dict[str, Any]:
    """A deploy record as deploy() writes it for target `t`."""
    return {
        "backend": t.backend,
        "device": dict(t.device),
        "versions": {"edged": "0.1.0", **t.versions},
        "source": {"rmir": "x.rmir", "sha256": sha},
    }


def test_same_target_is_not_stale() -> None:
    """A record made for this very target and source is up to date."""
    t = target()
    assert stale_reasons(DeployRecord.from_dict(record_for(t)), t, SHA) == []
    assert stale_reasons(DeployRecord.from_dict(record_for(t)), t, None) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["versions"].update(onnxruntime="1.19.2"), "onnxruntime 1.19.2 there, 1.20.0 here"),
        (lambda r: r["device"].update(cpu_isa=["asimd"]), "cpu_isa"),
        (lambda r: r["device"].update(arch="aarch64"), "arch"),
        (lambda r: r["device"].update(jetson="NVIDIA Jetson Orin Nano"), "jetson"),
        (lambda r: r.update(backend="tensorrt"), "deployed for tensorrt"),
        (lambda r: r["source"].update(sha256="b" * 64), "its RMIR changed"),
    ],
    ids=["ort-version", "cpu-isa", "arch", "jetson", "backend", "source-sha"],
)
def test_each_difference_gives_a_reason(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    """Each way a deployment can stop fitting this device gives exactly one reason."""
    t = target()
    record = record_for(t)
    change(record)
    reasons = stale_reasons(DeployRecord.from_dict(record), t, SHA)
    assert len(reasons) == 1, reasons
    assert expected in reasons[0]


def test_source_sha_none_skips_the_source_check() -> None:
    """Without a source hash (as `edged models` calls it) only the device is compared."""
    t = target()
    assert stale_reasons(DeployRecord.from_dict(record_for(t, sha="b" * 64)), t, None) == []


def test_empty_record_is_stale() -> None:
    """A record missing everything is stale for every reason, not a crash."""
    assert len(stale_reasons(DeployRecord.from_dict({}), target(), SHA)) >= 3


# --- probe --------------------------------------------------------------------------------


def test_probe_finds_this_machine() -> None:
    """probe() never raises, names the architecture and finds the installed ONNX Runtime."""
    found = probe()
    assert found.arch
    assert found.cpu
    assert found.onnxruntime == importlib.metadata.version("onnxruntime")
    device = found.device()
    assert device["arch"] == found.arch and device["cpu_isa"] == list(found.cpu_isa)
    target_here = current_target(found, "cpu")
    assert target_here.backend == "onnxruntime"
    assert target_here.versions == {"onnxruntime": f"{found.onnxruntime}+edged.{OPTIMISER_REVISION}"}


def test_probe_is_stable() -> None:
    """Two probes agree, so a deployment made here is never stale here."""
    a, b = current_target(probe(), "cpu"), current_target(probe(), "cpu")
    assert a == b
    assert stale_reasons(DeployRecord.from_dict(record_for(a)), b, SHA) == []


# --- ONNX Runtime backend ------------------------------------------------------------------


def network_spec(path: Path, name: str = "encoder") -> NetworkSpec:
    """The manifest entry of an ONNX file, as the RMIR builder would write it."""
    return NetworkSpec(name=name, file=f"{name}.onnx", sha256=file_sha256(path), size=path.stat().st_size)


def test_ort_deploy_and_load_matches_original(tmp_path: Path) -> None:
    """The optimised network loads and computes what ONNX Runtime computes on the original."""
    import onnxruntime as ort

    src = make_tiny_onnx(tmp_path / "tiny.onnx", hidden=16, seed=3)
    out_dir = tmp_path / "deployed"
    out_dir.mkdir()
    backend = OnnxRuntimeBackend()
    options = BackendOptions(intra_op_threads=1, inter_op_threads=1)
    entry = backend.deploy_network(src, out_dir, network_spec(src), options)
    deployed = out_dir / entry["file"]
    assert deployed.is_file() and deployed.name == "encoder.ort.onnx"
    assert entry["size"] == deployed.stat().st_size > 0
    assert entry["optimization"] == "all"

    session = backend.load(deployed, options)
    assert [i.name for i in session.inputs] == ["x"]
    assert [o.name for o in session.outputs] == ["y"]
    assert session.inputs[0].shape[-1] == 4

    x = np.random.default_rng(7).standard_normal((2, 5, 4)).astype(np.float32)
    got = session.run({"x": x})
    reference = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    assert set(got) == {"y"}
    assert got["y"].shape == (2, 5, 16)
    np.testing.assert_allclose(got["y"], reference, rtol=1e-5, atol=1e-6)
    assert backend.version() == f"{importlib.metadata.version('onnxruntime')}+edged.{OPTIMISER_REVISION}"


def test_ort_deploy_garbage_is_backend_error(tmp_path: Path) -> None:
    """A file that is not an ONNX graph gives a BackendError naming the network."""
    src = tmp_path / "garbage.onnx"
    src.write_bytes(b"this is not a protobuf \x00\xff" * 100)
    out_dir = tmp_path / "deployed"
    out_dir.mkdir()
    with pytest.raises(BackendError, match="'encoder'"):
        OnnxRuntimeBackend().deploy_network(src, out_dir, network_spec(src), BackendOptions())
    assert not (out_dir / "encoder.ort.onnx").exists()


def test_ort_load_garbage_is_backend_error(tmp_path: Path) -> None:
    """Loading a damaged deployed file is a BackendError naming the file, not an ORT exception."""
    bad = tmp_path / "encoder.ort.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(BackendError, match="encoder.ort.onnx"):
        OnnxRuntimeBackend().load(bad, BackendOptions())
    with pytest.raises(BackendError):
        OnnxRuntimeBackend().load(tmp_path / "missing.onnx", BackendOptions())


def test_capabilities_device_is_plain_data() -> None:
    """The device description is plain data that YAML can record."""
    import yaml

    device = dataclasses.replace(caps(), jetson_model="NVIDIA Jetson AGX Orin").device()
    assert yaml.safe_load(yaml.safe_dump(device)) == device


def _generator_like(path: Path, channels: int = 32) -> Path:
    """A tiny HiFi-GAN-like graph (the Piper decoder's pattern): a 2-D conv, a ConvTranspose,
    a residual block whose LeakyRelus read Adds, the mean of two blocks, a final conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    c = channels

    def w(name: str, *shape: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    p = {"pads": [0, 1, 0, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w_in"], ["h"], **p),
        helper.make_node("LeakyRelu", ["h"], ["h_act"], alpha=0.1),
        helper.make_node("ConvTranspose", ["h_act", "w_up"], ["u"], strides=[1, 2], pads=[0, 1, 0, 1]),
    ]
    branches = []
    for b in range(2):
        x = "u"
        for k in range(2):
            t = f"b{b}k{k}"
            nodes += [helper.make_node("LeakyRelu", [x], [f"{t}/act"], alpha=0.1),
                      helper.make_node("Conv", [f"{t}/act", f"w_{t}"], [f"{t}/conv"], dilations=[1, k + 1],
                                       pads=[0, k + 1, 0, k + 1]),
                      helper.make_node("Add", [f"{t}/conv", x], [f"{t}/sum"])]
            x = f"{t}/sum"
        branches.append(x)
    nodes += [helper.make_node("Add", branches, ["mix"]),
              helper.make_node("Div", ["mix", "two"], ["mean"]),
              helper.make_node("LeakyRelu", ["mean"], ["mean_act"], alpha=0.01),
              helper.make_node("Conv", ["mean_act", "w_out"], ["y"], **p)]
    inits = [w("w_in", c, 8, 1, 3), w("w_up", c, c, 1, 4), w("w_out", 1, c, 1, 3),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    inits += [w(f"w_b{b}k{k}", c, c, 1, 3) for b in range(2) for k in range(2)]
    graph = helper.make_graph(nodes, "generator",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1, "t"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    # IR 8 as the other generated graphs: onnx's default IR is newer than Jetson's onnxruntime (1.23) reads.
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _ort_optimised(src: Path, dst: Path) -> Path:
    """ONNX Runtime's own optimisation of `src` (ORT_ENABLE_ALL), saved at `dst`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


@pytest.mark.parametrize("channels", [32, 24])
def test_ort_deploy_keeps_elementwise_ops_blocked(tmp_path: Path, channels: int) -> None:
    """Where ONNX Runtime leaves its blocked layout around each LeakyRelu and residual Add, the
    deployed graph has fewer reorders and gives the same bits as ONNX Runtime's own graph."""
    import onnx

    from edged.backends.ort_nchwc import count_reorders

    src = _generator_like(tmp_path / "generator.onnx", channels)
    own = onnx.load(str(_ort_optimised(src, tmp_path / "own.onnx")))
    if not count_reorders(own):
        pytest.skip("ONNX Runtime uses no blocked layout on this CPU")
    out_dir = tmp_path / "deployed"
    out_dir.mkdir()
    backend = OnnxRuntimeBackend()
    options = BackendOptions(intra_op_threads=1, inter_op_threads=1)
    entry = backend.deploy_network(src, out_dir, network_spec(src, "decoder"), options)
    deployed = onnx.load(str(out_dir / entry["file"]))
    assert entry["nchwc_kept"] >= 9 and entry["reorders"] == count_reorders(deployed)
    assert count_reorders(deployed) < count_reorders(own)
    assert not any(n.op_type == "LeakyRelu" and n.output[0] in {"b0k1/act", "b1k1/act", "mean_act"}
                   for n in deployed.graph.node)  # each now reads and writes a blocked tensor

    x = {"x": np.random.default_rng(5).standard_normal((1, 8, 1, 50)).astype(np.float32)}
    got = backend.load(out_dir / entry["file"], options).run(x)["y"]
    want = backend.load(tmp_path / "own.onnx", options).run(x)["y"]
    assert got.shape == (1, 1, 1, 100) and np.array_equal(got, want)
    original = backend.load(src, options).run(x)["y"]
    np.testing.assert_allclose(got, original, rtol=1e-4, atol=1e-5)


def test_blocked_rewrite_that_changes_outputs_is_refused() -> None:
    """same_outputs compares on a probe input; a graph computing something else is refused."""
    import onnx
    from onnx import TensorProto, helper

    from edged.backends.ort_nchwc import same_outputs

    def model(op: str) -> bytes:
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "t"])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "t"])])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(m)
        return m.SerializeToString()

    assert same_outputs(model("Relu"), model("Relu"))
    assert not same_outputs(model("Relu"), model("Abs"))
