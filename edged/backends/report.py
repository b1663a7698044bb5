"""The device report for `edged devices`: the probe, then the libraries themselves, each guarded.

Unlike `probe()`, this imports CUDA, TensorRT and ONNX Runtime, each inside its own guard, so a
missing or broken library is reported, never raised.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict
from typing import Any

from edged.backends import implemented_backends
from edged.backends.choice import select_backend
from edged.backends.probe import Capabilities

# L4T release -> JetPack release, for display (JetPack 6 ships TensorRT 10.3 and CUDA 12.6;
# JetPack 7 ships TensorRT 10.13 and CUDA 13.0).
_JETPACK = {
    "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4", "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
    "38.2.0": "7.0", "38.2.1": "7.0",
}


def jetpack_release(l4t: str | None) -> str | None:
    """The JetPack release an L4T release belongs to, where edged knows it."""
    if l4t is None:
        return None
    return _JETPACK.get(l4t) or {"35": "5.x", "36": "6.x", "38": "7.x"}.get(l4t.split(".")[0])


def _guarded(what: str, fn: Any) -> dict[str, Any]:
    """Run one library probe; whatever it raises becomes {'error': ...}."""
    try:
        return dict(fn())
    except Exception as exc:  # noqa: BLE001 - a broken optional library must not break the report
        return {"error": f"{what}: {exc}"}


def _gpu_section() -> dict[str, Any]:
    from edged.backends import cuda

    gpu = asdict(cuda.gpu_identity())
    memory = cuda.memory_info()
    return {**gpu, "free_mb": memory.free_mb}


def _tensorrt_section(module: str) -> dict[str, Any]:
    trt = importlib.import_module(module)
    out: dict[str, Any] = {"module": module, "version": trt.__version__}
    if module == "tensorrt_rtx":
        out["note"] = "builds engines ahead of time even without a GPU; not available for Jetson"
    return out


def _onnxruntime_section() -> dict[str, Any]:
    import onnxruntime

    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def device_report(caps: Capabilities, requested: str = "auto") -> dict[str, Any]:
    """Everything `edged devices` shows; imports CUDA, TensorRT and ONNX Runtime, each guarded."""
    l4t = caps.l4t_release
    report: dict[str, Any] = {
        "host": {"arch": caps.arch, "cpu": caps.cpu, "cpu_isa": list(caps.cpu_isa)},
        "jetson": {"model": caps.jetson_model, "l4t": l4t, "jetpack": jetpack_release(l4t)}
        if caps.jetson_model or l4t else None,
        "cuda_python": caps.cuda_python,
    }
    if not caps.cuda_python:
        report["gpu"] = {"error": "cuda-python is not installed (pip install 'edged[gpu]')"}
    elif not caps.nvidia_gpu:
        report["gpu"] = {"error": "no NVIDIA GPU device node was found"}
    else:
        report["gpu"] = _guarded("CUDA", _gpu_section)
    module = caps.tensorrt_module()
    report["tensorrt"] = (
        _guarded(module, lambda: _tensorrt_section(module)) if module
        else {"error": "no TensorRT Python module (tensorrt or tensorrt_rtx) is installed"}
    )
    report["onnxruntime"] = _guarded("ONNX Runtime", _onnxruntime_section)
    try:
        choice = select_backend(caps, requested, implemented_backends())
        report["backend"] = {"requested": requested, "chosen": choice.backend, "reason": choice.reason}
    except Exception as exc:  # noqa: BLE001 - the report shows what failed rather than failing
        report["backend"] = {"requested": requested, "error": str(exc)}
    return report
