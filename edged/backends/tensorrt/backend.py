"""The TensorRT backend: deploys a network as engines (from the repository's engine cache where
it can, else built), with their descriptor; loads the descriptor as a TrtSession."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from edged.backends.base import BackendOptions
from edged.backends.tensorrt.build import EngineBuildError, build_engine, write_atomic
from edged.backends.tensorrt.graph import Variant, prepare_onnx
from edged.backends.tensorrt.library import (
    EngineTarget,
    current_engine_target,
    import_trt,
    make_logger,
    trt_module_info,
)
from edged.backends.tensorrt.runtime import TrtSession
from edged.errors import BackendError
from edged.rmir.manifest import NetworkSpec

_LOGGER = logging.getLogger(__name__)

DESCRIPTOR_SUFFIX = ".trt.json"
DESCRIPTOR_FORMAT = 1


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
                    write_atomic(cached, result.plan)
                    write_atomic(cached.with_suffix(".json"), json.dumps(
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


def engine_cache_key(network_sha256: str, target: EngineTarget, precision: str,
                     variant: dict[str, Any] | None = None) -> str:
    """The engine cache key: network, GPU and compute capability, TensorRT version, build choices."""
    data = {"network": network_sha256, **target.as_dict(), "precision": precision,
            "variant": variant or {}, "format": DESCRIPTOR_FORMAT}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_dir_for(folder: Path) -> Path:
    """The repository's TensorRT cache (`models/.cache/tensorrt`) for a model or staging folder."""
    return folder.parent / ".cache" / "tensorrt"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


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
        runtime = trt.Runtime(make_logger(trt))
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
