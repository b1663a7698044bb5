"""ONNX Runtime backend (CPU): graphs optimised once at deploy time, loaded as-is at start."""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edged.backends.base import BackendOptions, TensorInfo, cpu_cores
from edged.errors import BackendError
from edged.rmir.manifest import NetworkSpec

_LOGGER = logging.getLogger(__name__)

OPTIMISER_REVISION = 2
"""Revision of what deploy does to a graph beyond ONNX Runtime's own optimisation (2: element-wise
operations kept in the blocked layout, edged.backends.ort_nchwc); part of `version()`, so a
deployment made by another revision is stale and `edged init` redoes it."""


def _out_of_space(folder: Path, src: Path) -> bool:
    """True if `folder`'s file system has less room left than the network being optimised."""
    try:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize < src.stat().st_size
    except OSError:
        return False


def runtime_version() -> str:
    """'<ONNX Runtime version>+edged.<optimiser revision>', as deploy.yaml records it."""
    return f"{importlib.metadata.version('onnxruntime')}+edged.{OPTIMISER_REVISION}"


def _keep_blocked(path: Path, name: str) -> dict[str, Any]:
    """Rewrite the optimised graph at `path` with edged.backends.ort_nchwc where that removes
    layout reorders and gives the same outputs; what was done, for deploy.yaml (`nchwc_kept`)."""
    import onnx

    from edged.backends.ort_nchwc import count_reorders, keep_blocked, same_outputs

    model = onnx.load(str(path))
    before = count_reorders(model)
    if not before:
        return {}
    original = model.SerializeToString()
    moved = keep_blocked(model)
    after = count_reorders(model)
    if not moved or after >= before:
        return {}
    rewritten = model.SerializeToString()
    if not same_outputs(original, rewritten):
        _LOGGER.info("Network %s keeps ONNX Runtime's layout: the blocked rewrite changes its outputs", name)
        return {}
    path.write_bytes(rewritten)
    _LOGGER.info("Network %s: %d element-wise nodes kept in the blocked layout (reorders %d -> %d)",
                 name, moved, before, after)
    return {"nchwc_kept": moved, "reorders": after}


class OrtSession:
    """A loaded ONNX Runtime session behind the backend-neutral Session interface."""

    def __init__(self, session: Any, onnx_path: Path | None = None) -> None:
        self._session = session
        self.onnx_path = onnx_path
        """The ONNX file the session was loaded from (for readers of its weights)."""
        self.inputs = tuple(TensorInfo(i.name, i.type, tuple(i.shape)) for i in session.get_inputs())
        self.outputs = tuple(TensorInfo(o.name, o.type, tuple(o.shape)) for o in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the network; returns `outputs` (default: all). ONNX Runtime releases the GIL.

        Outputs not asked for are not copied out to numpy.
        """
        names = self._output_names if outputs is None else list(outputs)
        values = self._session.run(names, inputs)
        return dict(zip(names, values))


class OnnxRuntimeBackend:
    """Deploys ONNX networks as ONNX Runtime graphs optimised for this CPU."""

    name = "onnxruntime"

    def version(self) -> str:
        """ONNX Runtime's version and edged's optimiser revision (another makes a deployment stale)."""
        return runtime_version()

    def _options(self, options: BackendOptions, level: str) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads or (
            max(1, cpu_cores() // options.lanes) if options.lanes > 1 else 0)
        so.inter_op_num_threads = options.inter_op_threads
        so.log_severity_level = 3  # ORT's own warnings would flood the journal
        so.enable_cpu_mem_arena = options.memory_arena
        # Idle intra-op threads sleep instead of spinning: the cores are shared (ASR, TTS, VAD
        # sessions, other processes), and a spinning or preempted thread stalls every parallel
        # operator. Measured on 2 loaded cores, Piper decoder: 2.2x faster, as fast as 1 thread.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[level]
        return so

    def deploy_network(
        self, src: Path, dst_dir: Path, network: NetworkSpec, options: BackendOptions
    ) -> dict[str, Any]:
        """Optimise the graph for this CPU (constant folding, fusions, layouts) and save it."""
        import onnxruntime as ort

        dst = dst_dir / f"{network.name}.ort.onnx"
        so = self._options(options, "all")
        so.optimized_model_filepath = str(dst)
        int8_path, int8 = self._int8_source(src, dst_dir, network, so.intra_op_num_threads)
        try:
            ort.InferenceSession(str(int8_path or src), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            if isinstance(exc, OSError):
                raise
            if _out_of_space(dst_dir, src):
                # ORT reports a failed write only as "Protobuf serialization failed"; say what it is.
                raise OSError(errno.ENOSPC, "No space left on device", str(dst)) from None
            raise BackendError(f"ONNX Runtime cannot load network {network.name!r}: {exc}") from None
        finally:
            if int8_path is not None:
                int8_path.unlink(missing_ok=True)
        if not dst.is_file():
            raise BackendError(f"ONNX Runtime did not write the optimised network {network.name!r}.")
        blocked = _keep_blocked(dst, network.name)
        return {"file": dst.name, "optimization": "all", "size": dst.stat().st_size, **int8, **blocked}

    @staticmethod
    def _int8_source(src: Path, dst_dir: Path, network: NetworkSpec,
                     threads: int) -> tuple[Path | None, dict[str, Any]]:
        """For a network marked int8_matmul: its int8 rewrite (edged.backends.ort_int8), written
        into `dst_dir` if the int8 kernel is fast on this CPU, and what was decided, for
        deploy.yaml (`int8_matmuls`, `int8_speedup`)."""
        if not network.int8_matmul:
            return None, {}
        import onnx

        from edged.backends.ort_int8 import MIN_SPEEDUP, int8_speedup, keep_int8

        speedup = round(int8_speedup(threads), 2)
        if speedup < MIN_SPEEDUP:
            _LOGGER.info("Network %s keeps float32 weights: ONNX Runtime's int8 matrix kernel is "
                         "%.2fx float32's on this CPU", network.name, speedup)
            return None, {"int8_matmuls": 0, "int8_speedup": speedup}
        model = onnx.load(str(src))
        rewritten = keep_int8(model)
        if not rewritten:
            return None, {"int8_matmuls": 0, "int8_speedup": speedup}
        path = dst_dir / f".{network.name}.int8.onnx"
        onnx.save(model, str(path))
        _LOGGER.info("Network %s: %d MatMuls keep their int8 weights (kernel %.2fx float32 here)",
                     network.name, rewritten, speedup)
        return path, {"int8_matmuls": rewritten, "int8_speedup": speedup}

    def load(self, path: Path, options: BackendOptions) -> OrtSession:
        """Load a deployed network; it was optimised at deploy time, so no graph work is redone."""
        return self._session(path, options, "none")

    def load_graph(self, path: Path, options: BackendOptions) -> OrtSession:
        """Load an ONNX graph that was not deployed, optimising it at load (benchmark references)."""
        return self._session(path, options, "all")

    def _session(self, path: Path, options: BackendOptions, optimisation: str) -> OrtSession:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(
                str(path), self._options(options, optimisation), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for a graph it cannot load
            raise BackendError(f"ONNX Runtime cannot load {path}: {exc}") from None
        return OrtSession(session, path)
