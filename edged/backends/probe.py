"""Capability probe: what this machine can run, found without importing optional libraries.

`import tensorrt` takes seconds and may fail in odd ways; finding the module spec does not.
`probe()` reads files and package metadata only. `device_report()` (for `edged devices`) goes
further and asks the libraries themselves (CUDA, TensorRT, ONNX Runtime), each inside its own
guard, so a missing or broken library is reported, never raised.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "asimddp", "sve")


@dataclass(frozen=True)
class Capabilities:
    """What the probe found; backend choice is a pure function of this and the config."""

    arch: str
    cpu: str
    cpu_isa: tuple[str, ...]
    onnxruntime: str | None
    tensorrt: str | None
    tensorrt_rtx: str | None
    cuda_python: str | None
    nvidia_gpu: bool
    jetson_model: str | None
    l4t_release: str | None = None
    """L4T release of a Jetson (from /etc/nv_tegra_release), e.g. '36.4.3' (JetPack 6.2)."""
    extra: dict[str, str] = field(default_factory=dict)

    def device(self) -> dict[str, object]:
        """The device description recorded with a CPU deployment."""
        return {"arch": self.arch, "cpu": self.cpu, "cpu_isa": list(self.cpu_isa), "jetson": self.jetson_model}

    def tensorrt_module(self) -> str | None:
        """The TensorRT Python module edged uses: `tensorrt` (JetPack, data centre) before `tensorrt_rtx`."""
        return "tensorrt" if self.tensorrt else "tensorrt_rtx" if self.tensorrt_rtx else None


def _dist_version(module: str, *dists: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def _cpu_info() -> tuple[str, tuple[str, ...]]:
    text = _read("/proc/cpuinfo") or ""
    name, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and value.strip():
            name = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return name, tuple(f for f in _ISA_FLAGS if f in flags)


# L4T release -> JetPack release, for display (JetPack 6 ships TensorRT 10.3 and CUDA 12.6;
# JetPack 7 ships TensorRT 10.13 and CUDA 13.0).
_JETPACK = {
    "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4", "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
    "38.2.0": "7.0", "38.2.1": "7.0",
}


def parse_l4t_release(text: str | None) -> str | None:
    """'36.4.3' from /etc/nv_tegra_release's first line ('# R36 (release), REVISION: 4.3, ...')."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text or "")
    if match is None:
        return None
    return f"{match[1]}.{match[2]}.{match[3] or 0}"


def jetpack_release(l4t: str | None) -> str | None:
    """The JetPack release an L4T release belongs to, where edged knows it."""
    if l4t is None:
        return None
    return _JETPACK.get(l4t) or {"35": "5.x", "36": "6.x", "38": "7.x"}.get(l4t.split(".")[0])


def probe() -> Capabilities:
    """Probe this machine; never raises, never imports an optional native library."""
    cpu, isa = _cpu_info()
    return Capabilities(
        arch=platform.machine(),
        cpu=cpu,
        cpu_isa=isa,
        onnxruntime=_dist_version("onnxruntime", "onnxruntime", "onnxruntime-gpu"),
        tensorrt=_dist_version("tensorrt", "tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
        tensorrt_rtx=_dist_version("tensorrt_rtx", "tensorrt-rtx", "tensorrt-rtx-cu12"),
        cuda_python=_dist_version("cuda", "cuda-python", "cuda-bindings"),
        nvidia_gpu=any(Path(p).exists() for p in _GPU_NODES) or Path("/proc/driver/nvidia/gpus").is_dir(),
        jetson_model=_read("/proc/device-tree/model") if Path("/etc/nv_tegra_release").exists() else None,
        l4t_release=parse_l4t_release(_read("/etc/nv_tegra_release")),
    )


# Discrete GPUs and Jetson Thor (OpenRM): /dev/nvidia0; Jetson Orin and Xavier (nvgpu): the others.
_GPU_NODES = ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl")


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
    from edged.backends import implemented_backends
    from edged.backends.choice import select_backend

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
    except Exception as exc:  # noqa: BLE001
        report["backend"] = {"requested": requested, "error": str(exc)}
    return report
