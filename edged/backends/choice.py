"""Backend choice: a pure function of the capability probe and config.sh's `backend`."""

from __future__ import annotations

from dataclasses import dataclass

from edged.backends.probe import Capabilities
from edged.errors import ConfigError


@dataclass(frozen=True)
class Choice:
    """The backend to deploy with, and why (shown by `edged init` and `edged models`)."""

    backend: str
    reason: str


def tensorrt_possible(caps: Capabilities) -> str | None:
    """None if TensorRT engines can be built and run here, else what is missing."""
    if not (caps.tensorrt or caps.tensorrt_rtx):
        return "no TensorRT Python module (tensorrt or tensorrt_rtx) is installed"
    if not caps.nvidia_gpu:
        return "no NVIDIA GPU was found"
    if not caps.cuda_python:
        return "cuda-python is not installed (pip install 'edged[gpu]')"
    return None


def select_backend(caps: Capabilities, requested: str, implemented: frozenset[str]) -> Choice:
    """Pick the backend for `backend=auto|cpu|tensorrt` among those this edged implements."""
    if requested == "cpu":
        return Choice("onnxruntime", "backend=cpu in config.sh")
    missing = tensorrt_possible(caps)
    if requested == "tensorrt":
        if missing:
            raise ConfigError(f"backend=tensorrt, but {missing}; set backend=auto or cpu.")
        if "tensorrt" not in implemented:
            raise ConfigError("backend=tensorrt is not available in this edged build; set backend=auto or cpu.")
        return Choice("tensorrt", "backend=tensorrt in config.sh")
    if requested != "auto":
        raise ConfigError(f"backend={requested!r} is not valid; expected one of: auto, cpu, tensorrt.")
    if missing is None and "tensorrt" in implemented:
        return Choice("tensorrt", "NVIDIA GPU and TensorRT found")
    why = missing or "the TensorRT backend is not part of this edged build"
    return Choice("onnxruntime", f"ONNX Runtime on the CPU: {why}")
