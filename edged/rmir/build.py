"""`edged build`: pack ONNX networks and their artifacts into an RMIR with a full manifest."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged import __version__
from edged.errors import RmirError
from edged.rmir.archive import Progress, RmirRef, file_sha256, write_rmir
from edged.rmir.manifest import (
    FORMAT_VERSION,
    PIPELINES,
    ArtifactSpec,
    Manifest,
    NetworkSpec,
    ShapeRange,
    TensorSpec,
    manifest_from_dict,
)

_LOGGER = logging.getLogger(__name__)

# Bytes per element of ONNX TensorProto data types, for the memory estimate.
_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}
# uint8, int8: ONNX Runtime folds DequantizeLinear into float32 at load, and MatMul prepacks a
# second float32 copy; measured on Moonshine base: ~8 bytes of load memory per int8 weight.
_QUANTISED = {2, 3}


@dataclass(frozen=True)
class ModelSource:
    """Everything needed to build one RMIR: networks, artifacts and what the manifest says."""

    name: str
    pipeline: str
    language_code: str
    sample_rate: int
    model_family: str
    networks: dict[str, Path]
    """Network name -> ONNX file."""
    artifacts: tuple[Path, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    dim_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Symbolic dimension name -> (min, opt, max), turned into per-input shape ranges."""
    input_ranges: dict[str, dict[str, ShapeRange]] = field(default_factory=dict)
    """Network -> input -> explicit range, for inputs whose dimensions have no names."""
    license: str = "unknown"
    provenance: dict[str, Any] = field(default_factory=dict)
    int8_matmul: tuple[str, ...] = ()
    """Networks whose MatMuls may run on int8 activations (NetworkSpec.int8_matmul)."""


def _describe_network(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], int]:
    """Inputs, outputs and the bytes the weights take once loaded (for the memory estimate)."""
    import onnx  # heavy; only `edged build` needs it

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
        raise RmirError(f"{path} is not a readable ONNX model ({exc}).") from None
    if model.graph.ByteSize() == 0:
        raise RmirError(f"{path} is not a readable ONNX model (empty graph).")

    def spec(vi: Any) -> TensorSpec:
        t = vi.type.tensor_type
        dims: list[int | str] = []
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or f"{vi.name}_dim{i}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "unknown"
        return TensorSpec(vi.name, dtype, tuple(dims))

    init_names = {i.name for i in model.graph.initializer}
    inputs = tuple(spec(v) for v in model.graph.input if v.name not in init_names)
    outputs = tuple(spec(v) for v in model.graph.output)
    weight_bytes = 0
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        per = 8 if init.data_type in _QUANTISED else _ELEM_BYTES.get(init.data_type, 4)
        weight_bytes += count * per
    return inputs, outputs, weight_bytes


def _ranges_for(
    inputs: tuple[TensorSpec, ...],
    dim_ranges: dict[str, tuple[int, int, int]],
    explicit: dict[str, ShapeRange],
) -> dict[str, ShapeRange]:
    ranges: dict[str, ShapeRange] = {}
    for t in inputs:
        if t.name in explicit:
            ranges[t.name] = explicit[t.name]
            continue
        if all(isinstance(d, int) for d in t.shape):
            continue  # static input: TensorRT needs no profile entry
        triples = [(d, d, d) if isinstance(d, int) else dim_ranges.get(d) for d in t.shape]
        if all(triples):  # an input with an unnamed or unknown dimension gets no profile
            lo, opt, hi = zip(*triples)
            ranges[t.name] = ShapeRange(tuple(lo), tuple(opt), tuple(hi))
    return ranges


def build_manifest(src: ModelSource) -> Manifest:
    """Describe a model source as a validated manifest (hashes, tensors, ranges, memory)."""
    if src.pipeline not in PIPELINES:
        raise RmirError(f"Pipeline {src.pipeline!r} is not one of {', '.join(PIPELINES)}.")
    networks = []
    weight_total = 0
    files_seen: set[str] = set()
    for net_name, path in src.networks.items():
        if not path.is_file():
            raise RmirError(f"Network file {path} does not exist.")
        inputs, outputs, weight_bytes = _describe_network(path)
        weight_total += weight_bytes
        file = f"{net_name}.onnx"
        files_seen.add(file)
        networks.append(
            NetworkSpec(
                name=net_name,
                file=file,
                sha256=file_sha256(path),
                size=path.stat().st_size,
                inputs=inputs,
                outputs=outputs,
                shape_ranges=_ranges_for(inputs, src.dim_ranges, src.input_ranges.get(net_name, {})),
                int8_matmul=net_name in src.int8_matmul,
            )
        )
    artifacts = []
    for path in src.artifacts:
        if not path.is_file():
            raise RmirError(f"Artifact file {path} does not exist.")
        if path.name in files_seen:
            raise RmirError(f"Two members would be named {path.name}; rename one of them.")
        files_seen.add(path.name)
        artifacts.append(ArtifactSpec(path.name, file_sha256(path), path.stat().st_size))
    provenance = {
        **src.provenance,
        "built_by": f"edged {__version__}",
        "python": platform.python_version(),
    }
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=src.name,
        pipeline=src.pipeline,
        language_code=src.language_code,
        sample_rate=src.sample_rate,
        model_family=src.model_family,
        networks=tuple(networks),
        artifacts=tuple(artifacts),
        parameters=src.parameters,
        # loaded weights plus ONNX Runtime's arenas and a session's overhead; deploy measures it
        memory_estimate_mb=int(weight_total * 1.3 / 2**20) + 32,
        provenance=provenance,
        license=src.license,
    )
    # Round-trip through the reader's validation so a builder can never write what deploy refuses.
    return manifest_from_dict(manifest.to_dict(), f"manifest of {src.name}")


def build_rmir(src: ModelSource, out: RmirRef, progress: Progress | None = None) -> Manifest:
    """Build the manifest and write the archive; returns the manifest written."""
    manifest = build_manifest(src)
    files = {f"{name}.onnx": path for name, path in src.networks.items()}
    files.update({p.name: p for p in src.artifacts})
    write_rmir(out, manifest, files, progress)
    _LOGGER.info("Built %s (%s) into %s", manifest.name, manifest.pipeline, out.path)
    return manifest
