"""Deploy records (`deploy.yaml`), the deploy target of this machine, and staleness.

A deployment is device-specific: ONNX Runtime graphs optimised for one CPU's instruction set,
TensorRT engines for one GPU and TensorRT version. The record says what it was made for, so a
deployment carried to another device (or left behind by an upgrade) is detected and redone.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edged.backends import get_backend, implemented_backends
from edged.backends.choice import Choice, select_backend
from edged.backends.probe import Capabilities
from edged.errors import BackendError, ConfigError, EdgedError
from edged.rmir.manifest import MANIFEST_NAME, Manifest, manifest_from_yaml

_LOGGER = logging.getLogger(__name__)

DEPLOY_RECORD = "deploy.yaml"
_DEVICE_KEYS = ("arch", "cpu_isa", "jetson", "l4t", "gpu", "compute_capability")


@dataclass(frozen=True)
class DeployTarget:
    """The backend, device and library versions a deployment made now would be for."""

    backend: str
    reason: str
    device: dict[str, Any]
    versions: dict[str, str]


def current_target(caps: Capabilities, requested: str) -> DeployTarget:
    """This machine's deploy target for config.sh's `backend` setting.

    For TensorRT the device includes the GPU (name, compute capability, whether it shares the
    system memory) and the L4T release, asked of the driver here (without a CUDA context). A GPU
    the driver cannot use sends `backend=auto` to ONNX Runtime and is an error for `tensorrt`.
    """
    choice = select_backend(caps, requested, implemented_backends())
    device: dict[str, Any] = caps.device()
    if choice.backend == "tensorrt":
        from edged.backends import cuda

        try:
            gpu = cuda.gpu_identity()
        except BackendError as exc:
            if requested == "tensorrt":
                raise ConfigError(f"backend=tensorrt, but {str(exc).rstrip('.')}; set backend=auto or cpu.") from None
            _LOGGER.warning("Not using the NVIDIA GPU: %s", exc)
            choice = Choice("onnxruntime", f"ONNX Runtime on the CPU: {str(exc).rstrip('.')}")
        else:
            device.update(l4t=caps.l4t_release, gpu=gpu.name, compute_capability=gpu.compute_capability,
                          gpu_integrated=gpu.integrated)
    backend = get_backend(choice.backend)
    return DeployTarget(choice.backend, choice.reason, device, {backend.name: backend.version()})


def _onnxruntime_version() -> str | None:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None


def fallback_networks(record: dict[str, Any]) -> dict[str, str]:
    """Networks of a TensorRT deployment that run on ONNX Runtime instead, with the reason."""
    if record.get("backend") == "onnxruntime":
        return {}
    return {
        name: str(entry.get("fallback_reason", "TensorRT could not build it"))
        for name, entry in (record.get("networks") or {}).items()
        if isinstance(entry, dict) and entry.get("backend") == "onnxruntime"
    }


def backend_summary(record: dict[str, Any] | None) -> str:
    """The backend as `edged models` shows it, naming networks that fell back to ONNX Runtime."""
    if not record:
        return "?"
    backend = str(record.get("backend", "?"))
    fallbacks = fallback_networks(record)
    if not fallbacks:
        return backend
    return backend + " (" + "; ".join(f"{n} on onnxruntime: {why}" for n, why in fallbacks.items()) + ")"


def stale_reasons(record: dict[str, Any], target: DeployTarget, source_sha: str | None) -> list[str]:
    """Why a deployment no longer fits this device or its source (empty: up to date)."""
    reasons = []
    if source_sha is not None and record.get("source", {}).get("sha256") != source_sha:
        reasons.append("its RMIR changed")
    if record.get("backend") != target.backend:
        reasons.append(f"deployed for {record.get('backend')}, this device uses {target.backend}")
    versions = record.get("versions", {})
    wanted = dict(target.versions)
    if fallback_networks(record):
        wanted.setdefault("onnxruntime", _onnxruntime_version() or "none")
    for lib, version in wanted.items():
        if versions.get(lib) != version:
            reasons.append(f"{lib} {versions.get(lib)} there, {version} here")
    device = record.get("device", {})
    for key in _DEVICE_KEYS:
        if device.get(key) != target.device.get(key):
            reasons.append(f"made for another device ({key}: {device.get(key)} vs {target.device.get(key)})")
    return reasons


def read_record(model_dir: Path) -> dict[str, Any] | None:
    """The deploy record of a model folder, or None if it has none (or an unreadable one)."""
    try:
        data = yaml.safe_load((model_dir / DEPLOY_RECORD).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class DeployedModel:
    """A model folder in the repository, with what `edged models` and the daemon need."""

    name: str
    path: Path
    manifest: Manifest | None
    record: dict[str, Any] | None
    problem: str | None = None
    stale: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of the deployed files."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def list_models(models_dir: Path, target: DeployTarget | None) -> list[DeployedModel]:
    """Every model folder in `models_dir` (dot-folders are staging and never models)."""
    if not models_dir.is_dir():
        return []
    out = []
    for entry in sorted(models_dir.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        record = read_record(entry)
        try:
            manifest = manifest_from_yaml(
                (entry / MANIFEST_NAME).read_bytes(), f"{entry / MANIFEST_NAME}"
            )
        except (OSError, EdgedError) as exc:
            out.append(DeployedModel(entry.name, entry, None, record, f"unreadable manifest: {exc}"))
            continue
        if record is None:
            out.append(DeployedModel(entry.name, entry, manifest, None, "no deploy record; redeploy it"))
            continue
        stale = stale_reasons(record, target, None) if target else []
        out.append(DeployedModel(entry.name, entry, manifest, record, None, stale))
    return out
