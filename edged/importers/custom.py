"""A user's own model: ONNX networks plus artifacts, described by a small YAML file.

    name: my-asr                     # becomes the deployed model's name
    pipeline: speech_recognition     # speech_recognition | speech_synthesis | vad
    language_code: en-US
    sample_rate: 16000
    model_family: my-family          # tells a pipeline how to drive the networks
    license: Apache-2.0
    networks:                        # name: file (paths relative to this YAML file)
      encoder: encoder.onnx
      decoder: decoder.onnx
    artifacts: [vocab.txt]
    parameters: {blank_id: 0}        # free-form, copied into the manifest
    dim_ranges:                      # symbolic dimension: [min, opt, max]
      batch: [1, 1, 8]
      time: [16, 400, 3000]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edged.errors import ModelImportError
from edged.rmir.build import ModelSource

_KEYS = {
    "name", "pipeline", "language_code", "sample_rate", "model_family", "license",
    "networks", "artifacts", "parameters", "dim_ranges",
}


def import_description(
    path: Path, overrides: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
) -> ModelSource:
    """Read a model description YAML; `overrides` (command-line options) win, `defaults` fill gaps."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelImportError(f"{path} does not exist.") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ModelImportError(f"{path} is not readable YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ModelImportError(f"{path} should be a mapping with name, pipeline and networks.")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ModelImportError(
            f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}."
        )
    data.update({k: v for k, v in (defaults or {}).items() if data.get(k) is None})
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    base = path.parent
    artifacts = data.get("artifacts") or []
    if not isinstance(artifacts, list):
        raise ModelImportError(f"{path}: 'artifacts' must be a list of file names, e.g. [vocab.txt].")
    networks = data.get("networks")
    if not isinstance(networks, dict) or not networks:
        raise ModelImportError(f"{path}: 'networks' must map network names to ONNX files.")
    dim_ranges = data.get("dim_ranges") or {}
    if not isinstance(dim_ranges, dict):
        raise ModelImportError(f"{path}: 'dim_ranges' must map dimension names to [min, opt, max].")
    try:
        ranges = {str(k): _triple(v) for k, v in dim_ranges.items()}
        return ModelSource(
            name=str(data["name"]),
            pipeline=str(data["pipeline"]),
            language_code=str(data.get("language_code", "en-US")),
            sample_rate=int(data.get("sample_rate", 16000)),
            model_family=str(data.get("model_family", "custom")),
            networks={str(k): base / str(v) for k, v in networks.items()},
            artifacts=tuple(base / str(a) for a in artifacts),
            parameters=dict(data.get("parameters") or {}),
            dim_ranges=ranges,
            license=str(data.get("license", "unknown")),
            provenance={"description": path.name},
        )
    except KeyError as exc:
        raise ModelImportError(f"{path} lacks the required key {exc.args[0]!r}.") from None
    except (TypeError, ValueError) as exc:
        raise ModelImportError(f"{path} has a malformed value ({exc}).") from None


def source_from_files(files: list[Path], **fields: Any) -> ModelSource:
    """Build a source from loose files: every *.onnx is a network (named by its stem), the rest artifacts."""
    missing = [k for k in ("name", "pipeline") if not fields.get(k)]
    if missing:
        raise ModelImportError(f"Building from loose files needs --{missing[0].replace('_', '-')}.")
    networks = {p.stem: p for p in files if p.suffix == ".onnx"}
    if not networks:
        raise ModelImportError("No .onnx network among the sources; give at least one.")
    return ModelSource(
        name=fields["name"],
        pipeline=fields["pipeline"],
        language_code=fields.get("language_code") or "en-US",
        sample_rate=int(fields.get("sample_rate") or 16000),
        model_family=fields.get("model_family") or "custom",
        networks=networks,
        artifacts=tuple(p for p in files if p.suffix != ".onnx"),
        license=fields.get("license") or "unknown",
        provenance={"files": [p.name for p in files]},
    )


def _triple(v: Any) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v)
    if not a <= b <= c:
        raise ValueError(f"range {v} is not ordered min <= opt <= max")
    return a, b, c
