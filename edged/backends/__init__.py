"""Inference backends: ONNX Runtime (CPU) and TensorRT (NVIDIA GPUs), behind one Backend protocol."""

from __future__ import annotations

from edged.backends.base import Backend, BackendOptions, Session, TensorInfo
from edged.errors import BackendError


def implemented_backends() -> frozenset[str]:
    """Names of the backends this edged can deploy to and load."""
    return frozenset({"onnxruntime", "tensorrt"})


def get_backend(name: str) -> Backend:
    """The backend object for a name recorded in deploy.yaml or chosen by select_backend."""
    if name == "onnxruntime":
        from edged.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "tensorrt":
        from edged.backends.tensorrt import TensorRtBackend

        return TensorRtBackend()
    raise BackendError(f"The backend {name!r} is not available in this edged build.")


__all__ = ["Backend", "BackendOptions", "Session", "TensorInfo", "get_backend", "implemented_backends"]
