"""Which TensorRT this machine has (found without importing it), its logger, and staleness:
what an engine is built for against what this machine offers."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass
from typing import Any

from edged.errors import BackendError

_LOGGER = logging.getLogger(__name__)

PORTABLE = "portable"
"""`gpu` and `compute_capability` of a TensorRT-RTX engine built ahead of time without a GPU."""


@dataclass(frozen=True)
class TrtModule:
    """The TensorRT Python module edged uses here and its version (found without importing it)."""

    name: str
    version: str


@functools.lru_cache(maxsize=1)
def trt_module_info() -> TrtModule | None:
    """`tensorrt` (JetPack, data centre) if installed, else `tensorrt_rtx`, else None."""
    for module, dists in (("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-lean")),
                          ("tensorrt_rtx", ("tensorrt-rtx", "tensorrt-rtx-cu12", "tensorrt-rtx-cu13"))):
        if importlib.util.find_spec(module) is None:
            continue
        for dist in dists:
            try:
                return TrtModule(module, importlib.metadata.version(dist))
            except importlib.metadata.PackageNotFoundError:
                continue
        # A TensorRT installed without pip metadata (a Debian package): ask the module itself.
        try:
            return TrtModule(module, str(importlib.import_module(module).__version__))
        except Exception:  # noqa: BLE001 - a module that does not load is reported when it is used
            return TrtModule(module, "unknown")
    return None


def _require_module() -> TrtModule:
    info = trt_module_info()
    if info is None:
        raise BackendError(
            "No TensorRT Python module is installed; on a Jetson install JetPack's TensorRT "
            "(python3-libnvinfer), on an RTX workstation `pip install tensorrt-rtx`."
        )
    return info


def import_trt(module: str | None = None) -> Any:
    """Import the TensorRT module (`module`, or the one trt_module_info() picks)."""
    name = module or _require_module().name
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a TensorRT that does not load (wrong CUDA, missing libraries)
        raise BackendError(f"The {name} module does not load: {str(exc).rstrip('.')}.") from None


@dataclass(frozen=True)
class EngineTarget:
    """The TensorRT and GPU an engine is built for; another at load time makes it stale."""

    trt_module: str
    trt_version: str
    gpu: str
    compute_capability: str

    @property
    def portable(self) -> bool:
        """True for a TensorRT-RTX engine built ahead of time for any supported GPU."""
        return self.gpu == PORTABLE

    def as_dict(self) -> dict[str, str]:
        """Plain data for the descriptor."""
        return {"trt_module": self.trt_module, "trt_version": self.trt_version,
                "gpu": self.gpu, "compute_capability": self.compute_capability}


def current_engine_target(info: TrtModule | None = None) -> EngineTarget:
    """This machine's engine target: its GPU, or PORTABLE for TensorRT-RTX without a usable GPU."""
    info = info or _require_module()
    from edged.backends import cuda

    try:
        gpu = cuda.gpu_identity()
    except BackendError:
        if info.name == "tensorrt_rtx":
            return EngineTarget(info.name, info.version, PORTABLE, PORTABLE)
        raise
    return EngineTarget(info.name, info.version, gpu.name, gpu.compute_capability)


def engine_stale_reasons(built_for: dict[str, Any], here: EngineTarget) -> list[str]:
    """Why an engine built for `built_for` must not be loaded here (empty: it fits)."""
    reasons = []
    if built_for.get("trt_module") != here.trt_module:
        reasons.append(f"built with {built_for.get('trt_module')}, this machine has {here.trt_module}")
    elif built_for.get("trt_version") != here.trt_version:
        reasons.append(f"built with {here.trt_module} {built_for.get('trt_version')}, "
                       f"this machine has {here.trt_version}")
    if built_for.get("gpu") == PORTABLE:
        return reasons  # TensorRT-RTX compiles a portable engine for the GPU it meets at load
    if here.portable:
        reasons.append(f"built for the GPU {built_for.get('gpu')!r}, and this machine has no usable GPU")
        return reasons
    if built_for.get("gpu") != here.gpu:
        reasons.append(f"built for the GPU {built_for.get('gpu')!r}, this one is {here.gpu!r}")
    if built_for.get("compute_capability") != here.compute_capability:
        reasons.append(f"built for compute capability {built_for.get('compute_capability')}, "
                       f"this GPU has {here.compute_capability}")
    return reasons


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to Python logging and keeps the errors for the message."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)  # the caller reports the failure once, with the reason
            if severity != trt.ILogger.VERBOSE:
                _LOGGER.debug("TensorRT: %s", msg)

    return _Logger()


def error_reason(logger: Any, default: str) -> str:
    """The last error TensorRT logged (or `default`), on one line, for a message."""
    text = logger.errors[-1] if logger.errors else default
    text = re.sub(r"\s+", " ", text).strip()
    return text[:400]
