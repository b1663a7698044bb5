"""The engine build: an ONNX graph parsed, its optimisation profile from the manifest's shape
ranges, FP16 with sensitive layers kept in FP32, and a timing cache shared between builds."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.backends.base import BackendOptions
from edged.backends.tensorrt.graph import prepare_onnx
from edged.backends.tensorrt.library import (
    EngineTarget,
    current_engine_target,
    error_reason,
    import_trt,
    make_logger,
)
from edged.errors import BackendError
from edged.rmir.manifest import NetworkSpec, ShapeRange

_LOGGER = logging.getLogger(__name__)

# Layers kept in FP32 when an engine is built in FP16 (weakly typed TensorRT 10): reductions and
# normalisations overflow in FP16, exponentials and powers lose too much precision.
_FP32_LAYER_TYPES = ("REDUCE", "NORMALIZATION", "SOFTMAX")
_FP32_UNARY = ("EXP", "LOG", "SQRT", "ERF", "RECIP")
_FP32_ELEMENTWISE = ("POW", "DIV")


@dataclass
class BuildResult:
    """A built engine (serialized) and how it was built."""

    plan: bytes
    precision: str
    seconds: float
    fp32_layers: int = 0


class EngineBuildError(BackendError):
    """TensorRT cannot parse or build a network; the message says why (it goes into deploy.yaml)."""


def profile_shapes(network_inputs: list[tuple[str, tuple[int, ...]]],
                   ranges: dict[str, ShapeRange]) -> dict[str, ShapeRange]:
    """The optimisation profile for a parsed network's inputs (-1 marks a dynamic dimension).

    Every input with a dynamic dimension needs a shape range from the manifest; static inputs
    need none. Ranges for inputs the network does not have are ignored.
    """
    profile: dict[str, ShapeRange] = {}
    missing = []
    for name, shape in network_inputs:
        rng = ranges.get(name)
        if rng is None:
            if any(d < 0 for d in shape):
                missing.append(name)
            continue
        if len(rng.min) != len(shape) or any(
            d >= 0 and not lo <= d <= hi for d, lo, hi in zip(shape, rng.min, rng.max)
        ):
            raise BackendError(
                f"The manifest's shape range for input {name!r} ({list(rng.min)} to {list(rng.max)}) "
                f"does not fit the network's shape {list(shape)}; rebuild the RMIR."
            )
        if not all(lo <= opt <= hi for lo, opt, hi in zip(rng.min, rng.opt, rng.max)):
            raise BackendError(f"The manifest's shape range for input {name!r} is not ordered min <= opt <= max.")
        profile[name] = rng
    if missing:
        raise BackendError(
            f"Input(s) {', '.join(map(repr, missing))} have dynamic dimensions but the manifest gives "
            f"no shape range for them; rebuild the RMIR with dim_ranges for these dimensions."
        )
    return profile


def _make_progress(trt: Any, label: str) -> Any | None:
    """A progress monitor logging the builder's top-level phases (builds take minutes on a Jetson)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.start = time.monotonic()
            self.last = self.start

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                _LOGGER.info("Building %s: %s (%d steps), %.0f s so far", label, phase_name, num_steps,
                             time.monotonic() - self.start)

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.last >= 30:
                self.last = now
                _LOGGER.info("Building %s: %s, step %d, %.0f s so far", label, phase_name, step + 1,
                             now - self.start)
            return True

        def phase_finish(self, phase_name: str) -> None:
            pass

    return _Progress()


def _parser_reason(error: Any) -> str:
    """'node NAME (OP): DESCRIPTION' from a TensorRT ParserError (its str() is a multi-line dump)."""
    try:
        op, name, desc = error.node_operator(), error.node_name(), error.desc()
    except AttributeError:  # an older TensorRT
        return re.sub(r"\s+", " ", str(error)).strip()[:400]
    node = f"node {name!r} ({op})" if name else f"a {op} node"
    if str(desc).strip() in ("", "false"):
        desc = "this TensorRT does not support the operator"
    return re.sub(r"\s+", " ", f"{node}: {desc}").strip()[:400]


def _pin_fp32_layers(trt: Any, network: Any) -> int:
    """Keep numerically sensitive float layers in FP32 when building in FP16; returns how many."""
    pinned = 0
    floats = (trt.float32, trt.float16)
    types = {getattr(trt.LayerType, n) for n in _FP32_LAYER_TYPES if hasattr(trt.LayerType, n)}
    unary = {getattr(trt.UnaryOperation, n) for n in _FP32_UNARY if hasattr(trt.UnaryOperation, n)}
    elementwise = {getattr(trt.ElementWiseOperation, n) for n in _FP32_ELEMENTWISE
                   if hasattr(trt.ElementWiseOperation, n)}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type
        sensitive = kind in types
        if kind == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            sensitive = layer.op in unary
        elif kind == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            sensitive = layer.op in elementwise
        if not sensitive or not all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs)):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(
    onnx_path: Path,
    ranges: dict[str, ShapeRange],
    target: EngineTarget,
    options: BackendOptions,
    label: str,
    timing_cache: Path | None = None,
) -> BuildResult:
    """Parse an ONNX graph and build a serialized engine; EngineBuildError says why it could not."""
    trt = import_trt(target.trt_module)
    logger = make_logger(trt)
    t0 = time.monotonic()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        reason = _parser_reason(parser.get_error(0)) if parser.num_errors else error_reason(logger, "unknown error")
        raise EngineBuildError(f"the ONNX parser rejects the network: {reason}")
    inputs = [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]
    profile_ranges = profile_shapes(inputs, ranges)
    config = builder.create_builder_config()
    if profile_ranges:
        profile = builder.create_optimization_profile()
        for name, rng in profile_ranges.items():
            profile.set_shape(name, rng.min, rng.opt, rng.max)
        config.add_optimization_profile(profile)
    if options.trt_workspace_mb > 0:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.trt_workspace_mb * 2**20)
    precision, pinned = "fp32", 0
    weakly_typed = hasattr(trt.BuilderFlag, "FP16")  # TensorRT 10; TensorRT 11 and RTX are strongly typed
    if options.trt_fp16 and weakly_typed and getattr(builder, "platform_has_fast_fp16", True):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(getattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS", trt.BuilderFlag.FP16))
        pinned = _pin_fp32_layers(trt, network)
        precision = "fp16"
    if target.trt_module == "tensorrt_rtx" and not target.portable:
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
    cache = None
    if timing_cache is not None and target.trt_module == "tensorrt":
        # TensorRT-RTX ignores timing caches, and one would make its ahead-of-time build need a GPU.
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _make_progress(trt, label)
    if monitor is not None:
        config.progress_monitor = monitor
    _LOGGER.info("Building TensorRT engine %s (%s, %s; minutes on a Jetson)", label, target.trt_module, precision)
    try:
        plan = builder.build_serialized_network(network, config)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises for some internal failures
        raise EngineBuildError(f"TensorRT cannot build the network: {exc}") from None
    if plan is None:
        raise EngineBuildError(f"TensorRT cannot build the network: {error_reason(logger, 'no reason given')}")
    if cache is not None and timing_cache is not None:
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return BuildResult(bytes(plan), precision, time.monotonic() - t0, pinned)


def build_network_engines(
    src: Path, network: NetworkSpec, work: Path, options: BackendOptions, target: EngineTarget | None = None
) -> list[tuple[dict[str, bool], BuildResult | str]]:
    """Build every engine of one network into memory: (switch values, result or why it failed).

    For checks ahead of deployment, e.g. CI building the default models' networks with
    TensorRT-RTX on a machine without a GPU.
    """
    target = target or current_engine_target()
    out: list[tuple[dict[str, bool], BuildResult | str]] = []
    for variant in prepare_onnx(src, work):
        try:
            out.append((variant.when, build_engine(variant.onnx, network.shape_ranges, target, options,
                                                   network.name)))
        except BackendError as exc:
            out.append((variant.when, str(exc)))
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Write a cache file so that a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
