"""Deploy records (`deploy.yaml`), the deploy target of this machine, and staleness.

A deployment is device-specific: ONNX Runtime graphs optimised for one CPU's instruction set,
TensorRT engines for one GPU and TensorRT version. The record says what it was made for, so a
deployment carried to another device (or left behind by an upgrade) is detected and redone.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edged.backends import get_backend, implemented_backends
from edged.backends.choice import Choice, select_backend
from edged.backends.probe import Capabilities
from edged.errors import BackendError, ConfigError, EdgedError
from edged.rmir.manifest import MANIFEST_NAME, Manifest, load_yaml, manifest_from_yaml

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


def _mapping(value: Any) -> Mapping[str, Any]:
    """A mapping read from YAML, or an empty one where a damaged file has something else."""
    return value if isinstance(value, Mapping) else {}


def _optional(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


_NETWORK_FIELDS = ("file", "backend", "size", "fallback_reason", "int8_matmuls", "int8_speedup", "activation_mb")


@dataclass(frozen=True)
class NetworkRecord:
    """One deployed network: its file and what its backend recorded about it (Backend.deploy_network)."""

    file: str
    """The deployed file in the model folder, which the backend loads."""
    backend: str | None = None
    """The backend it runs on, where the entry says (TensorRT deployments: `tensorrt`, or
    `onnxruntime` for a network TensorRT could not build)."""
    size: int | None = None
    """Bytes on disk of its deployed files."""
    fallback_reason: str | None = None
    """Why TensorRT could not build it, for a network that runs on ONNX Runtime instead."""
    int8_matmuls: int | None = None
    """MatMuls that keep their int8 weights (networks marked int8_matmul; 0: kept float32)."""
    int8_speedup: float | None = None
    """ONNX Runtime's int8 kernel against float32 on this CPU, measured at deploy."""
    activation_mb: float | None = None
    """GPU memory one execution context of its engines needs (TensorRT)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """The rest of the entry, backend-specific (optimization, precision, engines, built_for...)."""
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """The entry's keys in the order the backend wrote them, kept so deploy.yaml reads the same."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkRecord:
        """Read an entry of deploy.yaml's `networks` (or as a backend returns it)."""
        return cls(
            file=str(data.get("file", "")),
            backend=_optional(data.get("backend"), str),
            size=_optional(data.get("size"), int),
            fallback_reason=_optional(data.get("fallback_reason"), str),
            int8_matmuls=_optional(data.get("int8_matmuls"), int),
            int8_speedup=_optional(data.get("int8_speedup"), float),
            activation_mb=_optional(data.get("activation_mb"), float),
            details={k: v for k, v in data.items() if k not in _NETWORK_FIELDS},
            order=tuple(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The entry as deploy.yaml holds it."""
        typed = {"file": self.file, "backend": self.backend, "size": self.size,
                 "fallback_reason": self.fallback_reason, "int8_matmuls": self.int8_matmuls,
                 "int8_speedup": self.int8_speedup, "activation_mb": self.activation_mb}
        out = {**{k: v for k, v in typed.items() if v is not None or k in self.order}, **self.details}
        rank = {k: i for i, k in enumerate(self.order)}
        return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))


@dataclass(frozen=True)
class LoadRecord:
    """What loading the deployed networks took, measured at deploy in a fresh process."""

    load_seconds: float = 0.0
    memory_mb: float = 0.0
    """Resident memory the load added; on a Jetson it includes the engines' GPU memory (the figure
    the daemon's memory budget counts)."""
    peak_mb: float | None = None
    """Peak resident memory above the process's start, where the kernel reports it."""
    networks: int = 0
    gpu_memory_mb: float | None = None
    """GPU memory of the TensorRT engines: weights and each execution context's activations."""
    gpu_memory_counted: bool | None = None
    """True where the GPU shares the system memory, so gpu_memory_mb is part of memory_mb."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadRecord:
        """Read deploy.yaml's `load` (or what measure_load and with_gpu_memory give)."""
        return cls(
            load_seconds=float(data.get("load_seconds", 0.0)),
            memory_mb=float(data.get("memory_mb", 0.0)),
            peak_mb=_optional(data.get("peak_mb"), float),
            networks=int(data.get("networks", 0)),
            gpu_memory_mb=_optional(data.get("gpu_memory_mb"), float),
            gpu_memory_counted=_optional(data.get("gpu_memory_counted"), bool),
        )

    def to_dict(self) -> dict[str, Any]:
        """`load` as deploy.yaml holds it."""
        return {k: v for k, v in (("load_seconds", self.load_seconds), ("memory_mb", self.memory_mb),
                                  ("peak_mb", self.peak_mb), ("networks", self.networks),
                                  ("gpu_memory_mb", self.gpu_memory_mb),
                                  ("gpu_memory_counted", self.gpu_memory_counted)) if v is not None}


@dataclass(frozen=True)
class DeployRecord:
    """A model folder's deploy.yaml: what the deployment was made from and for, and its networks."""

    name: str = ""
    pipeline: str = ""
    backend: str | None = None
    """`onnxruntime` or `tensorrt` (None only in a damaged record)."""
    backend_reason: str = ""
    """Why that backend was chosen (select_backend)."""
    device: Mapping[str, Any] = field(default_factory=dict)
    """The device it was made for (DeployTarget.device)."""
    versions: Mapping[str, str] = field(default_factory=dict)
    """edged's and the backends' versions it was made with."""
    source_rmir: str = ""
    """File name of the RMIR it was deployed from."""
    source_sha256: str | None = None
    """sha256 of that RMIR; another one makes the deployment stale."""
    networks: Mapping[str, NetworkRecord] = field(default_factory=dict)
    load: LoadRecord = field(default_factory=LoadRecord)
    deployed_at: str = ""
    """When, in UTC (ISO 8601, seconds)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeployRecord:
        """Read a deploy record; what an older or damaged file lacks takes its default."""
        source = _mapping(data.get("source"))
        return cls(
            name=str(data.get("name", "")),
            pipeline=str(data.get("pipeline", "")),
            backend=_optional(data.get("backend"), str),
            backend_reason=str(data.get("backend_reason", "")),
            device=dict(_mapping(data.get("device"))),
            versions={str(k): str(v) for k, v in _mapping(data.get("versions")).items()},
            source_rmir=str(source.get("rmir", "")),
            source_sha256=_optional(source.get("sha256"), str),
            networks={str(name): NetworkRecord.from_dict(entry)
                      for name, entry in _mapping(data.get("networks")).items() if isinstance(entry, Mapping)},
            load=LoadRecord.from_dict(_mapping(data.get("load"))),
            deployed_at=str(data.get("deployed_at", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for deploy.yaml, in the order of its keys there."""
        return {
            "name": self.name,
            "pipeline": self.pipeline,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "device": dict(self.device),
            "versions": dict(self.versions),
            "source": {"rmir": self.source_rmir, "sha256": self.source_sha256},
            "networks": {name: entry.to_dict() for name, entry in self.networks.items()},
            "load": self.load.to_dict(),
            "deployed_at": self.deployed_at,
        }

    def to_yaml(self) -> str:
        """deploy.yaml's text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _onnxruntime_version() -> str | None:
    from edged.backends.onnxruntime import runtime_version  # its optimiser revision included

    try:
        return runtime_version()
    except importlib.metadata.PackageNotFoundError:
        return None


def fallback_networks(record: DeployRecord) -> dict[str, str]:
    """Networks of a TensorRT deployment that run on ONNX Runtime instead, with the reason."""
    if record.backend == "onnxruntime":
        return {}
    return {
        name: entry.fallback_reason or "TensorRT could not build it"
        for name, entry in record.networks.items()
        if entry.backend == "onnxruntime"
    }


def backend_summary(record: DeployRecord | None) -> str:
    """The backend as `edged models` shows it, naming networks that fell back to ONNX Runtime."""
    if not record:
        return "?"
    backend = record.backend or "?"
    fallbacks = fallback_networks(record)
    if not fallbacks:
        return backend
    return backend + " (" + "; ".join(f"{n} on onnxruntime: {why}" for n, why in fallbacks.items()) + ")"


def stale_reasons(record: DeployRecord, target: DeployTarget, source_sha: str | None) -> list[str]:
    """Why a deployment no longer fits this device or its source (empty: up to date)."""
    reasons = []
    if source_sha is not None and record.source_sha256 != source_sha:
        reasons.append("its RMIR changed")
    if record.backend != target.backend:
        reasons.append(f"deployed for {record.backend}, this device uses {target.backend}")
    versions = record.versions
    wanted = dict(target.versions)
    if fallback_networks(record):
        wanted.setdefault("onnxruntime", _onnxruntime_version() or "none")
    for lib, version in wanted.items():
        if versions.get(lib) != version:
            reasons.append(f"{lib} {versions.get(lib)} there, {version} here")
    device = record.device
    for key in _DEVICE_KEYS:
        if device.get(key) != target.device.get(key):
            reasons.append(f"made for another device ({key}: {device.get(key)} vs {target.device.get(key)})")
    return reasons


def read_record(model_dir: Path) -> DeployRecord | None:
    """The deploy record of a model folder, or None if it has none (or an unreadable one)."""
    try:
        data = load_yaml((model_dir / DEPLOY_RECORD).read_text(encoding="utf-8"))
        return DeployRecord.from_dict(data) if isinstance(data, dict) else None
    except (OSError, yaml.YAMLError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class DeployedModel:
    """A model folder in the repository, with what `edged models` and the daemon need."""

    name: str
    path: Path
    manifest: Manifest | None
    record: DeployRecord | None
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
