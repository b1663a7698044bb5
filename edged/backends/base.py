"""What every inference backend provides: deploy a network for this device, load it, run it.

Backends know nothing about speech: they see ONNX networks, shapes and numpy arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edged.rmir.manifest import NetworkSpec


@dataclass(frozen=True)
class TensorInfo:
    """Name, element type and shape (None or a name for dynamic dims) of a session's tensor."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BackendOptions:
    """Backend settings from config.sh, passed down explicitly."""

    intra_op_threads: int = 0
    """Threads inside one operator (0 = the cores shared among the lanes, or the runtime decides)."""
    inter_op_threads: int = 1
    """Threads across independent operators."""
    trt_workspace_mb: int = 0
    """Most scratch memory (MiB) TensorRT's builder may use per layer; 0 lets TensorRT decide."""
    trt_fp16: bool = True
    """Build TensorRT engines in FP16 where the GPU supports it (numerically sensitive layers stay FP32)."""
    trt_contexts: int = 2
    """TensorRT execution contexts per engine: how many calls to one network run at once."""
    lanes: int = 1
    """Calls of one model that run side by side (see edged.pipelines.lanes)."""
    tts_lanes: int = 1
    """Runs of a voice's networks in flight at once (edged.loader.LANE_NETWORKS)."""
    memory_arena: bool = True
    """ONNX Runtime on the CPU keeps freed activations in its arena for the next run (quicker
    small allocations, but the arena never shrinks from its largest run); False frees them."""

    @classmethod
    def from_settings(cls, settings: Any) -> BackendOptions:
        """The backend options config.sh's Settings give."""
        return cls(
            intra_op_threads=settings.ort_intra_op_threads,
            inter_op_threads=settings.ort_inter_op_threads,
            trt_workspace_mb=settings.trt_workspace_mb,
            trt_fp16=settings.trt_fp16,
            trt_contexts=settings.trt_execution_contexts,
            lanes=settings.inference_lanes,
            tts_lanes=settings.tts_lanes,
        )


class Session(Protocol):
    """A loaded network, ready to run."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the network on named inputs; returns the named `outputs` (default: every output)."""
        ...


class Backend(Protocol):
    """An inference backend (ONNX Runtime, TensorRT)."""

    name: str

    def version(self) -> str:
        """Version of the runtime library, recorded in deploy.yaml for staleness checks."""
        ...

    def deploy_network(
        self, src: Path, dst_dir: Path, network: NetworkSpec, options: BackendOptions
    ) -> dict[str, Any]:
        """Turn the RMIR's ONNX file `src` into this backend's deployed form inside `dst_dir`.

        Returns the deploy record entry for this network; its 'file' names the deployed file.
        """
        ...

    def load(self, path: Path, options: BackendOptions) -> Session:
        """Load a deployed network file (the record entry's 'file')."""
        ...
