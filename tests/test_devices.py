"""`edged devices` and the capability probe: every probe answers, none crashes on a machine lacking a library."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edged.backends import cuda
from edged.backends.probe import Capabilities, parse_l4t_release, probe
from edged.backends.report import device_report, jetpack_release
from edged.errors import BackendError


def importlib_missing(module: str) -> bool:
    """True if `module` cannot be imported here."""
    return importlib.util.find_spec(module) is None


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process (as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "edged", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("text", "l4t", "jetpack"),
    [
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8",
         "36.4.3", "6.2"),
        ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64", "36.3.0", "6.0"),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64", "35.4.1", "5.1.2"),
        ("# R36 (release), REVISION: 9.9, GCID: 1", "36.9.9", "6.x"),
        ("not a release file", None, None),
        (None, None, None),
    ],
)
def test_l4t_release_and_jetpack(text: str | None, l4t: str | None, jetpack: str | None) -> None:
    """/etc/nv_tegra_release gives the L4T release; edged names the JetPack it belongs to."""
    assert parse_l4t_release(text) == l4t
    assert jetpack_release(l4t) == jetpack


def test_tensorrt_module_preference() -> None:
    """JetPack's or the data-centre `tensorrt` is used before `tensorrt_rtx` when both are there."""
    base = probe()
    both = Capabilities(**{**base.__dict__, "tensorrt": "10.3.0", "tensorrt_rtx": "1.7.1"})
    rtx = Capabilities(**{**base.__dict__, "tensorrt": None, "tensorrt_rtx": "1.7.1"})
    none = Capabilities(**{**base.__dict__, "tensorrt": None, "tensorrt_rtx": None})
    assert (both.tensorrt_module(), rtx.tensorrt_module(), none.tensorrt_module()) == ("tensorrt", "tensorrt_rtx", None)


def test_report_on_this_machine_never_raises() -> None:
    """Every section is there; what this machine lacks is an error entry, not an exception."""
    caps = probe()
    report = device_report(caps)
    assert set(report) == {"host", "jetson", "cuda_python", "gpu", "tensorrt", "onnxruntime", "backend"}
    assert report["host"]["arch"] == caps.arch
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["backend"]["chosen"] in ("onnxruntime", "tensorrt")
    if not caps.nvidia_gpu:
        assert "error" in report["gpu"]
        assert report["backend"]["chosen"] == "onnxruntime"
    if not (caps.tensorrt or caps.tensorrt_rtx):
        assert "no TensorRT" in report["tensorrt"]["error"]
    else:
        assert report["tensorrt"].get("version") or report["tensorrt"].get("error")


def test_report_for_a_missing_library_is_an_error_entry() -> None:
    """A probe claiming a library that is not really there reports it, it does not crash."""
    base = probe()
    claimed = Capabilities(**{**base.__dict__, "tensorrt": "10.3.0", "cuda_python": "12.6", "nvidia_gpu": True})
    report = device_report(claimed, "cpu")
    if importlib_missing("tensorrt"):
        assert "error" in report["tensorrt"]
    assert "error" in report["gpu"] or report["gpu"].get("name")
    assert report["backend"] == {"requested": "cpu", "chosen": "onnxruntime", "reason": "backend=cpu in config.sh"}


def test_cuda_layer_without_a_gpu_raises_backend_errors() -> None:
    """cuda-python on a machine without a driver or GPU: one clear BackendError per call."""
    if importlib_missing("cuda"):
        with pytest.raises(BackendError, match="cuda-python is not installed"):
            cuda.gpu_identity.__wrapped__()
        return
    caps = probe()
    if caps.nvidia_gpu:
        pytest.skip("this machine has an NVIDIA GPU; the no-GPU errors cannot be shown here")
    for call in (cuda.gpu_identity.__wrapped__, cuda.memory_info, cuda.Stream, lambda: cuda.DeviceBuffer().ensure(8)):
        with pytest.raises(BackendError, match=r"(CUDA call|NVIDIA driver)"):
            call()


def test_devices_command(tmp_path: Path) -> None:
    """`edged devices` prints one line per subject and exits 0; `--json` is the same report."""
    proc = run_cli("devices", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    labels = [line.split()[0] for line in proc.stdout.splitlines()]
    assert labels == ["CPU", "Jetson", "GPU", "cuda-python", "TensorRT", "ONNX", "backend"]
    assert "backend=auto: " in proc.stdout
    proc = run_cli("devices", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["host"]["arch"] == probe().arch
    assert report["backend"]["requested"] == "auto"
