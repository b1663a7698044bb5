"""The RMIR manifest: what a model archive holds and what a service needs to run it.

The manifest is the archive's first member (`manifest.yaml`). It is written by `edged build`,
checked member by member at deploy time and copied into the deployed model's folder.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from edged.errors import RmirError

FORMAT_VERSION = 1
"""The manifest format this edged writes and the newest it reads."""

PIPELINES = ("speech_recognition", "speech_synthesis", "vad", "speaker", "wake_word")

PIPELINE_SERVICE = {"vad": "asr", "speaker": "asr", "speech_recognition": "asr", "speech_synthesis": "tts",
                    "wake_word": "wake"}
"""Which edged service (config.sh's service_enabled_*, or models_wake for wake) each pipeline belongs to."""

ARTIFACT_ONLY_PIPELINES = frozenset({"wake_word"})
"""Pipelines whose model runs from an artifact on its own runtime, not from ONNX networks: a
microWakeWord model is a streaming TFLite Micro graph run by pymicro-wakeword's TFLite library
(edged.pipelines.wake)."""

MULTILINGUAL = "multi"
"""A multilingual model's manifest language (its `languages` list them), and a request's way to ask
for one that identifies the language."""
MANIFEST_NAME = "manifest.yaml"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a network: name, element type and shape (str = dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ShapeRange:
    """Minimum, optimum and maximum shape of one input (a TensorRT optimisation profile)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class NetworkSpec:
    """An ONNX network inside the archive."""

    name: str
    file: str
    sha256: str
    size: int
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    shape_ranges: dict[str, ShapeRange] = field(default_factory=dict)
    int8_matmul: bool = False
    """The importer measured that this network's MatMuls on int8 weights may also round their
    activations to int8 (a decoder run a token at a time): a backend may keep the weights int8."""


@dataclass(frozen=True)
class ArtifactSpec:
    """A non-network file a pipeline needs (tokenizer, voice config, phoneme map...)."""

    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.yaml` says about one model archive."""

    name: str
    pipeline: str
    language_code: str
    sample_rate: int
    model_family: str
    networks: tuple[NetworkSpec, ...]
    artifacts: tuple[ArtifactSpec, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    memory_estimate_mb: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    format_version: int = FORMAT_VERSION

    def members(self) -> dict[str, tuple[str, int]]:
        """Archive member name -> (sha256, size) for every network and artifact."""
        out = {n.file: (n.sha256, n.size) for n in self.networks}
        out.update({a.file: (a.sha256, a.size) for a in self.artifacts})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML, in a stable, readable key order."""
        return {
            "format_version": self.format_version,
            "name": self.name,
            "pipeline": self.pipeline,
            "language_code": self.language_code,
            "sample_rate": self.sample_rate,
            "model_family": self.model_family,
            "license": self.license,
            "memory_estimate_mb": self.memory_estimate_mb,
            "networks": [_network_to_dict(n) for n in self.networks],
            "artifacts": [dataclasses.asdict(a) for a in self.artifacts],
            "parameters": self.parameters,
            "provenance": self.provenance,
        }

    def to_yaml(self) -> str:
        """The manifest as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _network_to_dict(net: NetworkSpec) -> dict[str, Any]:
    extra = {"int8_matmul": True} if net.int8_matmul else {}
    return {
        "name": net.name,
        "file": net.file,
        "sha256": net.sha256,
        "size": net.size,
        "inputs": [_tensor_to_dict(t) for t in net.inputs],
        "outputs": [_tensor_to_dict(t) for t in net.outputs],
        "shape_ranges": {
            k: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)}
            for k, r in net.shape_ranges.items()
        },
        **extra,
    }


def _tensor_to_dict(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML was built with it (the wheels are): the same safe types, over ten
times faster. The server reads every manifest before it loads a model, and Moonshine's (19 KB)
took a tenth of a second of start-up in pure Python."""


def load_yaml(text: str | bytes) -> Any:
    """`yaml.safe_load`, through libyaml where PyYAML has it."""
    return yaml.load(text, Loader=_SAFE_LOADER)


def manifest_from_yaml(text: str | bytes, where: str = "manifest.yaml") -> Manifest:
    """Parse and validate manifest YAML; RmirError names the first problem found."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise RmirError(f"{where} is not valid YAML ({exc}); the archive is corrupt.") from exc
    if not isinstance(data, dict):
        raise RmirError(f"{where} is not a mapping; the archive is corrupt.")
    return manifest_from_dict(data, where)


def manifest_from_dict(data: dict[str, Any], where: str = "manifest.yaml") -> Manifest:
    """Build a Manifest from plain data, checking every field edged relies on."""
    p = _Checker(where)
    version = p.get(data, "format_version", int)
    if version > FORMAT_VERSION or version < 1:
        raise RmirError(
            f"{where} has format version {version}, but this edged reads versions 1 to "
            f"{FORMAT_VERSION}; upgrade edged or rebuild the RMIR with this version."
        )
    name = p.get(data, "name", str)
    if not _NAME_RE.match(name):
        raise RmirError(f"{where}: name {name!r} may only hold letters, digits, '.', '_' and '-'.")
    pipeline = p.get(data, "pipeline", str)
    if pipeline not in PIPELINES:
        raise RmirError(f"{where}: pipeline {pipeline!r} is not one of {', '.join(PIPELINES)}.")
    networks = tuple(_network_from_dict(p, n) for n in p.get(data, "networks", list))
    if not networks and pipeline not in ARTIFACT_ONLY_PIPELINES:
        raise RmirError(f"{where}: the archive has no networks.")
    artifacts = tuple(
        ArtifactSpec(
            file=p.file(a), sha256=p.sha(a), size=p.get(a, "size", int)
        )
        for a in p.get(data, "artifacts", list, [])
    )
    seen: set[str] = set()
    for file in [n.file for n in networks] + [a.file for a in artifacts]:
        if file in seen or file == MANIFEST_NAME:
            raise RmirError(f"{where}: member {file!r} is listed twice.")
        seen.add(file)
    return Manifest(
        format_version=version,
        name=name,
        pipeline=pipeline,
        language_code=p.get(data, "language_code", str),
        sample_rate=p.get(data, "sample_rate", int),
        model_family=p.get(data, "model_family", str),
        networks=networks,
        artifacts=artifacts,
        parameters=p.get(data, "parameters", dict, {}),
        memory_estimate_mb=p.get(data, "memory_estimate_mb", int, 0),
        provenance=p.get(data, "provenance", dict, {}),
        license=p.get(data, "license", str, "unknown"),
    )


def _network_from_dict(p: _Checker, d: Any) -> NetworkSpec:
    if not isinstance(d, dict):
        raise RmirError(f"{p.where}: a network entry is not a mapping.")
    ranges = {}
    for key, r in p.get(d, "shape_ranges", dict, {}).items():
        try:
            ranges[str(key)] = ShapeRange(
                min=tuple(int(x) for x in r["min"]),
                opt=tuple(int(x) for x in r["opt"]),
                max=tuple(int(x) for x in r["max"]),
            )
        except (KeyError, TypeError, ValueError):
            raise RmirError(
                f"{p.where}: the shape range of {key!r} should map min, opt and max to lists "
                "of integers; the archive is corrupt."
            ) from None
    return NetworkSpec(
        name=p.get(d, "name", str),
        file=p.file(d),
        sha256=p.sha(d),
        size=p.get(d, "size", int),
        inputs=tuple(_tensor_from_dict(p, t) for t in p.get(d, "inputs", list, [])),
        outputs=tuple(_tensor_from_dict(p, t) for t in p.get(d, "outputs", list, [])),
        shape_ranges=ranges,
        int8_matmul=p.get(d, "int8_matmul", bool, False),
    )


def _tensor_from_dict(p: _Checker, d: Any) -> TensorSpec:
    if not isinstance(d, dict):
        raise RmirError(f"{p.where}: a tensor entry is not a mapping.")
    shape = tuple(x if isinstance(x, (int, str)) else str(x) for x in p.get(d, "shape", list))
    return TensorSpec(name=p.get(d, "name", str), dtype=p.get(d, "dtype", str), shape=shape)


class _Checker:
    """Reads typed fields from manifest data, raising RmirError that names the field."""

    _MISSING = object()

    def __init__(self, where: str) -> None:
        self.where = where

    def get(self, d: dict[str, Any], key: str, typ: type, default: Any = _MISSING) -> Any:
        if key not in d or d[key] is None:
            if default is self._MISSING:
                raise RmirError(f"{self.where} lacks the field {key!r}; the archive is corrupt.")
            return default
        value = d[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise RmirError(
                f"{self.where}: field {key!r} should be {typ.__name__}, not {type(value).__name__}."
            )
        return value

    def file(self, d: dict[str, Any]) -> str:
        name = self.get(d, "file", str)
        # Members are flat names: no folders, no '..', nothing that could escape on extraction.
        if not _FILE_RE.match(name) or name == MANIFEST_NAME:
            raise RmirError(f"{self.where}: member name {name!r} is not allowed.")
        return name

    def sha(self, d: dict[str, Any]) -> str:
        value = self.get(d, "sha256", str)
        if not _SHA_RE.match(value):
            raise RmirError(f"{self.where}: {value!r} is not a sha256 hex digest.")
        return value


def primary_language(language_code: str) -> str:
    """A language tag's language alone, lower case: `de-DE`, `de_DE` and `de` give `de`."""
    return language_code.replace("_", "-").split("-")[0].lower()
