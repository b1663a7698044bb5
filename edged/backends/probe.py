"""Capability probe: what this machine can run, found without importing optional libraries.

`import tensorrt` takes seconds and may fail in odd ways; finding the module spec does not.
`probe()` reads files and package metadata only; `edged.backends.report` is what asks the
libraries themselves.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "asimddp", "sve"
)


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


def parse_l4t_release(text: str | None) -> str | None:
    """'36.4.3' from /etc/nv_tegra_release's first line ('# R36 (release), REVISION: 4.3, ...')."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text or "")
    if match is None:
        return None
    return f"{match[1]}.{match[2]}.{match[3] or 0}"


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
