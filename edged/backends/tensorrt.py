"""TensorRT backend: engines built at deploy time from the RMIR's ONNX networks, run with cuda-python.

It works with `tensorrt` (JetPack, data centre) and with `tensorrt_rtx` (RTX workstations), which
builds engines ahead of time even on a machine without a GPU. Neither is imported before a
TensorRT deployment is made or loaded, so the CPU path never pays for them.

A deployed network is a small descriptor (`<network>.trt.json`) naming its engine files and
what they were built for (network sha256, TensorRT module and version, GPU name and compute
capability). Loading compares that with this machine and refuses a stale engine with a clear
message instead of handing it to TensorRT. A network TensorRT cannot build is deployed for
ONNX Runtime instead; its record entry says why.

Before the build, the ONNX graph is prepared (`prepare_onnx`): weights stored as int8 with a
Cast/Mul/Add dequantisation (Moonshine) are folded into float weights, which TensorRT requires,
and a top-level `If` switched by a boolean input (`use_cache_branch` of the merged Moonshine
decoder in RMIRs of importer revision 1) is split into one engine per value, chosen at run time
from that input.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.backends.base import BackendOptions, TensorInfo
from edged.errors import BackendError
from edged.onnxgraph import drop_unused_initializers
from edged.rmir.manifest import NetworkSpec, ShapeRange

_LOGGER = logging.getLogger(__name__)

DESCRIPTOR_SUFFIX = ".trt.json"
DESCRIPTOR_FORMAT = 1
PORTABLE = "portable"
"""`gpu` and `compute_capability` of a TensorRT-RTX engine built ahead of time without a GPU."""

# Layers kept in FP32 when an engine is built in FP16 (weakly typed TensorRT 10): reductions and
# normalisations overflow in FP16, exponentials and powers lose too much precision.
_FP32_LAYER_TYPES = ("REDUCE", "NORMALIZATION", "SOFTMAX")
_FP32_UNARY = ("EXP", "LOG", "SQRT", "ERF", "RECIP")
_FP32_ELEMENTWISE = ("POW", "DIV")

_FOLDABLE = ("Cast", "Mul", "Add", "Sub", "Div")


# --- which TensorRT ------------------------------------------------------------------------


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


# --- what an engine is built for, and staleness --------------------------------------------


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


def engine_cache_key(network_sha256: str, target: EngineTarget, precision: str,
                     variant: dict[str, Any] | None = None) -> str:
    """The engine cache key: network, GPU and compute capability, TensorRT version, build choices."""
    data = {"network": network_sha256, **target.as_dict(), "precision": precision,
            "variant": variant or {}, "format": DESCRIPTOR_FORMAT}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


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


# --- optimisation profiles and shapes ------------------------------------------------------


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


def check_input_shape(name: str, shape: tuple[int, ...], rng: tuple[tuple[int, ...], tuple[int, ...]] | None,
                      static: tuple[int, ...] | None = None) -> None:
    """BackendError unless `shape` lies inside the engine's profile (min, max) or equals its static shape."""
    if rng is not None:
        lo, hi = rng
        if len(shape) == len(lo) and all(a <= d <= b for d, a, b in zip(shape, lo, hi)):
            return
        raise BackendError(
            f"Input {name!r} has shape {list(shape)}, outside the engine's profile "
            f"{list(lo)} to {list(hi)}; split the request or rebuild the RMIR with wider shape ranges."
        )
    if static is not None and tuple(shape) != tuple(static):
        raise BackendError(f"Input {name!r} has shape {list(shape)}, but the engine takes {list(static)}.")


# --- ONNX preparation ----------------------------------------------------------------------


def fold_constant_weights(model: Any) -> int:
    """Fold Cast/Mul/Add/Sub/Div nodes whose inputs are all initializers into new initializers.

    Weights stored as int8 and dequantised by such a chain are not allowed in TensorRT (a
    quantised constant must feed a DequantizeLinear); folded, they are plain float weights.
    Returns how many nodes were folded. Edits `model` in place.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    consts: dict[str, np.ndarray] = {}
    tensors = {t.name: t for t in graph.initializer}
    init_names = set(tensors)
    outputs = {o.name for o in graph.output}
    keep, folded = [], 0
    ops = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}

    def value(name: str) -> np.ndarray:
        if name not in consts:
            consts[name] = numpy_helper.to_array(tensors[name])
        return consts[name]

    for node in graph.node:
        foldable = (node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx") and node.input
                    and all(i in init_names for i in node.input) and node.output[0] not in outputs)
        if not foldable:
            keep.append(node)
            continue
        args = [value(i) for i in node.input]
        if node.op_type == "Cast":
            to = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")
            result = args[0].astype(helper.tensor_dtype_to_np_dtype(to))
        else:
            if args[0].dtype.kind != "f":
                keep.append(node)  # integer arithmetic follows ONNX rules numpy does not share
                continue
            result = ops[node.op_type](args[0], args[1]).astype(args[0].dtype)
        consts[node.output[0]] = result
        graph.initializer.append(numpy_helper.from_array(np.asarray(result), node.output[0]))
        init_names.add(node.output[0])
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    drop_unused_initializers(model)
    return folded


def boolean_switches(model: Any) -> list[str]:
    """Boolean graph inputs of one element that directly switch a top-level `If`."""
    from onnx import TensorProto

    conditions = {node.input[0] for node in model.graph.node if node.op_type == "If"}
    switches = []
    for vi in model.graph.input:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if vi.name in conditions and t.elem_type == TensorProto.BOOL and all(d == 1 for d in dims):
            switches.append(vi.name)
    return switches


def specialise(model: Any, values: dict[str, bool]) -> Any:
    """A copy of `model` with boolean inputs fixed to `values` and the `If`s they switch inlined."""
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    for name, value in values.items():
        vi = next(i for i in graph.input if i.name == name)
        dims = [1] * len(vi.type.tensor_type.shape.dim)
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(np.full(dims, value, dtype=np.bool_), name))
    nodes = []
    for node in graph.node:
        if node.op_type != "If" or node.input[0] not in values:
            nodes.append(node)
            continue
        branch_name = "then_branch" if values[node.input[0]] else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == branch_name)
        rename = {bo.name: out for bo, out in zip(branch.output, node.output)}
        produced = {o for n in branch.node for o in n.output}
        for inner in branch.node:
            inner.input[:] = [rename.get(i, i) for i in inner.input]
            inner.output[:] = [rename.get(o, o) for o in inner.output]
            nodes.append(inner)
        for init in branch.initializer:
            if init.name in rename:
                init.name = rename[init.name]
                produced.add(init.name)
            graph.initializer.append(init)
        for bo, out in zip(branch.output, node.output):
            if bo.name not in produced and out not in produced:
                # The branch hands out an outer-scope value unchanged.
                nodes.append(helper.make_node("Identity", [bo.name], [out]))
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(model)
    return model


@dataclass(frozen=True)
class Variant:
    """One engine of a network: the switch values it was specialised for and its ONNX file."""

    when: dict[str, bool]
    onnx: Path


def prepare_onnx(src: Path, work: Path) -> list[Variant]:
    """Write the graph(s) TensorRT builds from `src` into `work`: folded weights, one per switch value."""
    import onnx

    model = onnx.load(str(src))
    folded = fold_constant_weights(model)
    switches = boolean_switches(model)
    combos: list[dict[str, bool]] = [{}]
    for name in switches:
        combos = [{**c, name: v} for c in combos for v in (False, True)]
    if folded or switches:
        _LOGGER.info("Prepared %s for TensorRT: %d weight nodes folded, switches %s",
                     src.name, folded, switches or "none")
    work.mkdir(parents=True, exist_ok=True)
    variants = []
    for i, when in enumerate(combos):
        path = work / f"{src.stem}.{i}.onnx"
        prepared = specialise(model, when) if when else model
        large = prepared.ByteSize() > 1_900_000_000  # protobuf's 2 GB limit
        onnx.save(prepared, str(path), save_as_external_data=large)
        variants.append(Variant(when, path))
    return variants


# --- building ------------------------------------------------------------------------------


@dataclass
class BuildResult:
    """A built engine (serialized) and how it was built."""

    plan: bytes
    precision: str
    seconds: float
    fp32_layers: int = 0


class EngineBuildError(BackendError):
    """TensorRT cannot parse or build a network; the message says why (it goes into deploy.yaml)."""


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to Python logging and keeps the errors for the message."""

    class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)  # the caller reports the failure once, with the reason
            if severity != trt.ILogger.VERBOSE:
                _LOGGER.debug("TensorRT: %s", msg)

    return _Logger()


def _make_progress(trt: Any, label: str) -> Any | None:
    """A progress monitor logging the builder's top-level phases (builds take minutes on a Jetson)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Progress(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
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


def _error_reason(logger: Any, default: str) -> str:
    text = logger.errors[-1] if logger.errors else default
    text = re.sub(r"\s+", " ", text).strip()
    return text[:400]


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
    logger = _make_logger(trt)
    t0 = time.monotonic()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        reason = _parser_reason(parser.get_error(0)) if parser.num_errors else _error_reason(logger, "unknown error")
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
        raise EngineBuildError(f"TensorRT cannot build the network: {_error_reason(logger, 'no reason given')}")
    if cache is not None and timing_cache is not None:
        _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return BuildResult(bytes(plan), precision, time.monotonic() - t0, pinned)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def cache_dir_for(folder: Path) -> Path:
    """The repository's TensorRT cache (`models/.cache/tensorrt`) for a model or staging folder."""
    return folder.parent / ".cache" / "tensorrt"


# --- the backend ---------------------------------------------------------------------------


class TensorRtBackend:
    """Deploys ONNX networks as TensorRT engines for this GPU; loads them as cuda-python sessions."""

    name = "tensorrt"

    def version(self) -> str:
        """'<module> <version>', e.g. 'tensorrt 10.3.0' (another one makes a deployment stale)."""
        info = trt_module_info()
        return f"{info.name} {info.version}" if info else "none"

    def deploy_network(
        self, src: Path, dst_dir: Path, network: NetworkSpec, options: BackendOptions
    ) -> dict[str, Any]:
        """Build (or take from the cache) the engines for one network; ONNX Runtime if TensorRT cannot."""
        try:
            return self._deploy_engines(src, dst_dir, network, options)
        except EngineBuildError as exc:
            reason = str(exc)
        except BackendError as exc:
            reason = str(exc).rstrip(".")
        _LOGGER.warning("TensorRT cannot build network %s; it runs on ONNX Runtime instead: %s",
                        network.name, reason)
        from edged.backends.onnxruntime import OnnxRuntimeBackend

        entry = OnnxRuntimeBackend().deploy_network(src, dst_dir, network, options)
        return {**entry, "backend": "onnxruntime", "fallback_reason": reason}

    def _deploy_engines(
        self, src: Path, dst_dir: Path, network: NetworkSpec, options: BackendOptions
    ) -> dict[str, Any]:
        target = current_engine_target()
        precision = "fp16" if options.trt_fp16 else "fp32"
        cache = cache_dir_for(dst_dir)
        timing = cache / f"timing-{_slug(target.gpu)}-{target.compute_capability}-{target.trt_version}.cache"
        work = dst_dir / f".trt-{network.name}"
        engines: list[dict[str, Any]] = []
        built, seconds, fp32_layers, actual_precision = 0, 0.0, 0, None
        try:
            for i, variant in enumerate(_prepare_for_build(src, work)):
                key = engine_cache_key(network.sha256, target, precision, variant.when)
                cached = cache / f"{key}.plan"
                if not cached.is_file():
                    label = f"{network.name}" + (f" {variant.when}" if variant.when else "")
                    result = build_engine(variant.onnx, network.shape_ranges, target, options, label, timing)
                    _write_atomic(cached, result.plan)
                    _write_atomic(cached.with_suffix(".json"), json.dumps(
                        {"precision": result.precision, "seconds": round(result.seconds, 1),
                         "fp32_layers": result.fp32_layers}).encode())
                    built += 1
                    seconds += result.seconds
                    _LOGGER.info("Built %s in %.1f s (%.1f MB)", label, result.seconds, len(result.plan) / 2**20)
                meta = _read_json(cached.with_suffix(".json"))
                actual_precision = meta.get("precision", precision)
                fp32_layers += int(meta.get("fp32_layers", 0))
                plan = dst_dir / f"{network.name}.{i}.plan"
                _link_or_copy(cached, plan)
                engines.append({"when": variant.when, "plan": plan.name, "size": plan.stat().st_size})
        except BaseException:
            for item in engines:  # a network is all engines or none: no stray plan stays behind
                (dst_dir / item["plan"]).unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        descriptor = {
            "format": DESCRIPTOR_FORMAT,
            "network": network.name,
            "network_sha256": network.sha256,
            "built_for": target.as_dict(),
            "precision": actual_precision,
            "inputs": [[t.name, t.dtype, list(t.shape)] for t in network.inputs],
            "outputs": [[t.name, t.dtype, list(t.shape)] for t in network.outputs],
            "engines": engines,
        }
        path = dst_dir / f"{network.name}{DESCRIPTOR_SUFFIX}"
        path.write_text(json.dumps(descriptor, indent=1), encoding="utf-8")
        entry: dict[str, Any] = {
            "file": path.name,
            "backend": "tensorrt",
            "precision": actual_precision,
            "fp32_layers": fp32_layers,
            "engines": len(engines),
            "size": sum(e["size"] for e in engines),
            "built_for": target.as_dict(),
            "build_seconds": round(seconds, 1),
            "from_cache": built == 0,
        }
        activation = _activation_bytes(path, target)
        if activation is not None:
            entry["activation_mb"] = round(activation / 2**20, 1)
        return entry

    def load(self, path: Path, options: BackendOptions) -> Any:
        """Load a deployed network: engines through TensorRT, a fallback network through ONNX Runtime."""
        if not path.name.endswith(DESCRIPTOR_SUFFIX):
            from edged.backends.onnxruntime import OnnxRuntimeBackend

            return OnnxRuntimeBackend().load(path, options)
        return TrtSession(path, options)


def _prepare_for_build(src: Path, work: Path) -> list[Variant]:
    """prepare_onnx(), with a graph it cannot rewrite reported as a build failure (disk errors pass)."""
    try:
        return prepare_onnx(src, work)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx raises many kinds; each means "cannot prepare"
        raise EngineBuildError(f"edged cannot prepare the network for TensorRT: {exc}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _activation_bytes(descriptor: Path, target: EngineTarget) -> int | None:
    """GPU memory one execution context of each engine needs, summed (None without a GPU here).

    Each engine (one per switch value) keeps its own contexts, so their activations add up.
    """
    if target.portable:
        return None
    try:
        trt = import_trt(target.trt_module)
        runtime = trt.Runtime(_make_logger(trt))
        total = 0
        for item in json.loads(descriptor.read_text())["engines"]:
            engine = runtime.deserialize_cuda_engine((descriptor.parent / item["plan"]).read_bytes())
            if engine is None:
                return None
            size = getattr(engine, "device_memory_size_v2", None) or getattr(engine, "device_memory_size", 0)
            total += int(size or 0)
        return total
    except Exception as exc:  # noqa: BLE001 - the figure is advisory; the load measurement still runs
        _LOGGER.debug("Could not read the engines' activation memory: %s", exc)
        return None


# --- the runtime ---------------------------------------------------------------------------

_ONNX_TYPE = {"float32": "float", "float64": "double"}


def _tensor_info(item: list[Any]) -> TensorInfo:
    name, dtype, shape = item
    dims = tuple(d if isinstance(d, int) else str(d) for d in shape)
    return TensorInfo(name, f"tensor({_ONNX_TYPE.get(dtype, dtype)})", dims)


@dataclass
class _Io:
    """One engine tensor: its numpy type, whether it is an input, its profile and where it lives."""

    name: str
    dtype: np.dtype[Any]
    is_input: bool
    on_host: bool
    static: tuple[int, ...] | None
    profile: tuple[tuple[int, ...], tuple[int, ...]] | None


def _make_output_allocator(trt: Any) -> Any:
    """An IOutputAllocator for outputs whose shape is known only after running (data-dependent)."""
    from edged.backends import cuda

    class _OutputAllocator(trt.IOutputAllocator):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, cuda.DeviceBuffer] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            return self.buffers.setdefault(tensor_name, cuda.DeviceBuffer()).ensure(size)

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                    stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(shape)

        def close(self) -> None:
            for buffer in self.buffers.values():
                buffer.close()

    return _OutputAllocator()


class _Slot:
    """One execution context with its own stream and reusable device and pinned host buffers."""

    def __init__(self, trt: Any, engine: Any, io: list[_Io]) -> None:
        from edged.backends import cuda

        self._cuda = cuda
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (is the GPU out of memory?).")
        self.io = io
        self.stream = cuda.Stream()
        self.device = {t.name: cuda.DeviceBuffer() for t in io}
        self.host = {t.name: cuda.PinnedBuffer() for t in io}
        self.allocator: Any = None
        if any(not t.is_input and t.static is None and -1 in tuple(engine.get_tensor_shape(t.name))
               for t in io):
            self.allocator = _make_output_allocator(trt)

    def run(self, inputs: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        cuda, ctx = self._cuda, self.context
        for t in self.io:
            if not t.is_input:
                continue
            if t.name not in inputs:
                raise BackendError(f"The network needs input {t.name!r}, which the call did not give.")
            array = np.ascontiguousarray(inputs[t.name], dtype=t.dtype)
            check_input_shape(t.name, array.shape, t.profile, t.static)
            if not ctx.set_input_shape(t.name, array.shape):
                raise BackendError(f"TensorRT refused shape {list(array.shape)} for input {t.name!r}.")
            host = self.host[t.name].view(array.shape, array.dtype)
            host[...] = array
            if t.on_host:  # shape tensors are read by TensorRT from host memory
                ctx.set_tensor_address(t.name, self.host[t.name].ptr)
            else:
                ptr = self.device[t.name].ensure(array.nbytes)
                cuda.copy_to_device_async(ptr, host, self.stream)
                ctx.set_tensor_address(t.name, ptr)
        shapes: dict[str, tuple[int, ...]] = {}
        for t in self.io:
            if t.is_input:
                continue
            shape = tuple(ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                ctx.set_output_allocator(t.name, self.allocator)
                continue
            shapes[t.name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
            ctx.set_tensor_address(t.name, self.device[t.name].ensure(nbytes))
        if not ctx.execute_async_v3(self.stream.ptr):
            self.stream.synchronize()
            raise BackendError("TensorRT failed to run the network (see the log for its message).")
        views = {}
        for name in wanted:
            t = next(x for x in self.io if x.name == name)
            if name in shapes:
                src = self.device[name].ptr
                shape = shapes[name]
            else:
                self.stream.synchronize()  # the allocator learns the shape while the engine runs
                shape = self.allocator.shapes[name]
                src = self.allocator.buffers[name].ptr
            view = self.host[name].view(shape, t.dtype)
            cuda.copy_to_host_async(view, src, self.stream)
            views[name] = view
        self.stream.synchronize()
        return {name: view.copy() for name, view in views.items()}

    def close(self) -> None:
        for device in self.device.values():
            device.close()
        for host in self.host.values():
            host.close()
        if self.allocator is not None:
            self.allocator.close()
        self.stream.close()


@dataclass
class _Engine:
    """One deserialized engine, its tensors and a pool of execution contexts."""

    when: dict[str, bool]
    engine: Any
    io: list[_Io]
    limit: int
    free: queue.LifoQueue[_Slot] = field(default_factory=queue.LifoQueue)
    made: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, trt: Any) -> _Slot:
        try:
            return self.free.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            if self.made < self.limit:
                self.made += 1
                try:
                    return _Slot(trt, self.engine, self.io)
                except BaseException:
                    self.made -= 1
                    raise
        return self.free.get()  # every context is busy: wait for one

    def release(self, slot: _Slot) -> None:
        self.free.put(slot)


class TrtSession:
    """Deployed TensorRT engines behind the backend-neutral Session interface.

    Each engine keeps up to `trt_contexts` execution contexts; concurrent calls each take one
    (the ASR batcher puts concurrent streams into one call). Inputs are copied through pinned
    buffers on the context's own stream, shapes are set per call within the profile.
    """

    def __init__(self, path: Path, options: BackendOptions) -> None:
        try:
            desc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"{path} is unreadable ({exc}); redeploy the model.") from None
        built_for = desc.get("built_for", {})
        info = trt_module_info()
        if info is None:
            raise BackendError(f"{path.name} is a TensorRT engine, but no TensorRT module is installed; "
                               f"install TensorRT or redeploy with backend=cpu.")
        here = current_engine_target(info)
        stale = engine_stale_reasons(built_for, here)
        if stale:
            raise BackendError(f"The engine {path.name} is stale ({'; '.join(stale)}); run `edged init` "
                               f"(or `edged deploy -f`) to rebuild it.")
        self._trt = trt = import_trt(info.name)
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.inputs = tuple(_tensor_info(i) for i in desc["inputs"])
        self.outputs = tuple(_tensor_info(o) for o in desc["outputs"])
        self._output_names = [o.name for o in self.outputs]
        self._engines = [self._load_engine(path.parent / e["plan"], e.get("when", {}), options)
                         for e in desc["engines"]]
        self._switches = sorted({k for e in self._engines for k in e.when})

    def _load_engine(self, plan: Path, when: dict[str, bool], options: BackendOptions) -> _Engine:
        data = plan.read_bytes()
        if hasattr(self._runtime, "get_engine_validity"):  # TensorRT-RTX checks the header first
            validity, diagnostics = self._runtime.get_engine_validity(data)
            if validity == self._trt.EngineValidity.INVALID:
                why = [n.lower().replace("_", " ") for n, v in self._trt.EngineInvalidityDiagnostics.__members__.items()
                       if int(diagnostics) & int(v)]
                raise BackendError(f"TensorRT-RTX cannot run the engine {plan.name} here"
                                   f"{' (' + ', '.join(why) + ')' if why else ' (no usable GPU?)'}; "
                                   f"run `edged init` to redeploy it.")
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"TensorRT cannot load the engine {plan.name}: "
                               f"{_error_reason(self._logger, 'no reason given')}; redeploy the model.")
        trt, io = self._trt, []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(engine.get_tensor_shape(name))
            profile = None
            if is_input and any(d < 0 for d in shape):
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                profile = (tuple(lo), tuple(hi))
            io.append(_Io(
                name=name,
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                is_input=is_input,
                on_host=engine.get_tensor_location(name) == trt.TensorLocation.HOST,
                static=shape if all(d >= 0 for d in shape) else None,
                profile=profile,
            ))
        return _Engine(when, engine, io, max(1, options.trt_contexts))

    def _pick(self, inputs: dict[str, np.ndarray]) -> _Engine:
        if not self._switches:
            return self._engines[0]
        try:
            values = {k: bool(np.asarray(inputs[k]).reshape(-1)[0]) for k in self._switches}
        except (KeyError, IndexError):
            raise BackendError(f"The network needs input(s) {', '.join(self._switches)}.") from None
        for engine in self._engines:
            if all(engine.when.get(k) == v for k, v in values.items()):
                return engine
        raise BackendError(f"No engine was built for {values}; redeploy the model.")

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the network on named inputs; returns the named `outputs` (default: every output)."""
        names = self._output_names if outputs is None else list(outputs)
        engine = self._pick(inputs)
        known = {t.name for t in engine.io if not t.is_input}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BackendError(f"The network has no output(s) {', '.join(unknown)}.")
        slot = engine.acquire(self._trt)
        try:
            return slot.run(inputs, names)
        finally:
            engine.release(slot)


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


__all__ = [
    "DESCRIPTOR_SUFFIX", "BuildResult", "EngineBuildError", "EngineTarget", "TensorRtBackend", "TrtModule",
    "TrtSession", "Variant", "boolean_switches", "build_engine", "build_network_engines", "cache_dir_for",
    "check_input_shape", "current_engine_target", "engine_cache_key", "engine_stale_reasons",
    "fold_constant_weights", "import_trt", "prepare_onnx", "profile_shapes", "specialise", "trt_module_info",
]
