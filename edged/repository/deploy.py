"""`edged deploy`: an RMIR becomes a deployed model in `models/<name>`, atomically.

Everything is written into a staging folder (`models/.staging-<name>-<pid>`) and renamed into
place only when complete, so a deploy that is killed, runs out of disk or meets a corrupt
archive never leaves a half model where the daemon would load it. Dot-folders are never
models; the next deploy removes stale ones.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edged import __version__
from edged.backends import BackendOptions, get_backend
from edged.errors import BackendError, DeployError
from edged.repository.records import (
    DEPLOY_RECORD,
    DeployRecord,
    DeployTarget,
    LoadRecord,
    NetworkRecord,
    fallback_networks,
    read_record,
    stale_reasons,
)
from edged.rmir import RmirRef, extract_rmir, file_sha256, read_manifest
from edged.rmir.archive import Progress
from edged.rmir.manifest import MANIFEST_NAME

_LOGGER = logging.getLogger(__name__)
_LOCK = ".deploy.lock"


@dataclass(frozen=True)
class DeployOutcome:
    """What `deploy` did with one RMIR."""

    name: str
    status: str
    """'deployed' or 'skipped' (already up to date)."""
    detail: str
    record: DeployRecord


@contextmanager
def repository_lock(models_dir: Path) -> Iterator[None]:
    """Hold the repository's deploy lock; a second deploy into the same folder waits."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / _LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _LOGGER.info("Another deploy is running in %s; waiting for it", models_dir)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def clean_leftovers(models_dir: Path) -> list[str]:
    """Tidy up after an interrupted deploy (caller holds the lock): staging folders go."""
    removed = []
    for entry in sorted(models_dir.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith(".old-"):
            # Killed between the two renames of a swap: the previous deployment is complete,
            # so put it back rather than lose it.
            name = entry.name[len(".old-"):].rsplit("-", 1)[0]
            if name and not (models_dir / name).exists() and (entry / DEPLOY_RECORD).is_file():
                os.rename(entry, models_dir / name)
                _LOGGER.warning("Restored %s, left aside by an interrupted deploy", name)
                continue
        if entry.name.startswith((".staging-", ".old-")):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        _LOGGER.warning("Removed leftovers of an interrupted deploy: %s", ", ".join(removed))
    return removed


def deploy(
    ref: RmirRef,
    models_dir: Path,
    target: DeployTarget,
    options: BackendOptions,
    force: bool = False,
    progress: Progress | None = None,
) -> DeployOutcome:
    """Deploy one RMIR into `models_dir` unless an up-to-date deployment is there already."""
    manifest = read_manifest(ref)  # cheap: first member only; fails fast on a wrong key
    with repository_lock(models_dir):
        clean_leftovers(models_dir)
        final = models_dir / manifest.name
        source_sha = file_sha256(ref.path)
        existing = read_record(final)
        if existing and not force:
            reasons = stale_reasons(existing, target, source_sha)
            if not reasons:
                return DeployOutcome(manifest.name, "skipped", "up to date", existing)
            _LOGGER.info("Redeploying %s: %s", manifest.name, "; ".join(reasons))
        staging = models_dir / f".staging-{manifest.name}-{os.getpid()}"
        try:
            record = _deploy_into(ref, staging, target, options, source_sha, progress)
            _swap_into_place(staging, final)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DeployError(
                    f"The disk holding {models_dir} is full (deploying {manifest.name} needs about "
                    f"{_needed_mb(ref)} MB); free some space and run the deploy again."
                ) from None
            raise DeployError(f"Deploying {manifest.name} failed: {exc}.") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    detail = f"{record.backend}, load {record.load.load_seconds} s, {record.load.memory_mb} MB"
    fallbacks = fallback_networks(record)
    if fallbacks:
        detail += "; on onnxruntime: " + "; ".join(f"{n} ({why})" for n, why in fallbacks.items())
    return DeployOutcome(manifest.name, "deployed", detail, record)


def _needed_mb(ref: RmirRef) -> int:
    try:
        return int(ref.path.stat().st_size * 3 / 2**20) + 1
    except OSError:
        return 0


def _deploy_into(
    ref: RmirRef,
    staging: Path,
    target: DeployTarget,
    options: BackendOptions,
    source_sha: str,
    progress: Progress | None,
) -> DeployRecord:
    src_dir = staging / ".src"
    src_dir.mkdir(parents=True)
    result = extract_rmir(ref, src_dir, progress)
    if result.sha256 != source_sha:
        raise DeployError(f"{ref.path} changed while it was being deployed; run the deploy again.")
    manifest = result.manifest
    (staging / MANIFEST_NAME).write_text(manifest.to_yaml(), encoding="utf-8")
    backend = get_backend(target.backend)
    networks: dict[str, Any] = {}
    for net in manifest.networks:
        _LOGGER.info("Optimising %s/%s for %s", manifest.name, net.name, target.backend)
        networks[net.name] = backend.deploy_network(src_dir / net.file, staging, net, options)
    for art in manifest.artifacts:
        os.replace(src_dir / art.file, staging / art.file)
    shutil.rmtree(src_dir)
    if networks:
        load = measure_load(target.backend, [staging / n["file"] for n in networks.values()], options)
    else:  # an artifact-only model (wake_word) loads on its own runtime: the manifest's estimate
        load = {"load_seconds": 0.0, "memory_mb": float(manifest.memory_estimate_mb)}
    if target.backend == "tensorrt":
        load = with_gpu_memory(load, networks, options, bool(target.device.get("gpu_integrated")))
    record = DeployRecord(
        name=manifest.name,
        pipeline=manifest.pipeline,
        backend=target.backend,
        backend_reason=target.reason,
        device=target.device,
        versions={"edged": __version__, **target.versions},
        source_rmir=ref.path.name,
        source_sha256=source_sha,
        networks={name: NetworkRecord.from_dict(entry) for name, entry in networks.items()},
        load=LoadRecord.from_dict(load),
        deployed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if fallback_networks(record):
        record = replace(record, versions={**record.versions, "onnxruntime": get_backend("onnxruntime").version()})
    _write_synced(staging / DEPLOY_RECORD, record.to_yaml())
    return record


def with_gpu_memory(load: dict[str, Any], networks: dict[str, Any], options: BackendOptions,
                    integrated: bool) -> dict[str, Any]:
    """`load` plus the GPU memory the engines take: weights and each execution context's activations.

    A Jetson's GPU shares the system memory, so there it is added to `memory_mb`, the figure the
    daemon's memory budget counts; a discrete GPU's memory is only reported (`gpu_memory_mb`).
    """
    total = 0.0
    for entry in networks.values():
        if entry.get("backend") == "tensorrt":
            total += entry.get("size", 0) / 2**20 + entry.get("activation_mb", 0.0) * max(1, options.trt_contexts)
    out = {**load, "gpu_memory_mb": round(total, 1), "gpu_memory_counted": integrated}
    if integrated:
        out["memory_mb"] = round(float(load.get("memory_mb", 0.0)) + total, 1)
    return out


def measure_load(backend: str, files: list[Path], options: BackendOptions) -> dict[str, Any]:
    """Load the deployed networks in a fresh process; returns seconds and memory it took."""
    cmd = [
        sys.executable, "-m", "edged.backends.measure", backend,
        str(options.intra_op_threads), str(options.inter_op_threads), *map(str, files),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"The deployed networks do not load: {last}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(staging: Path, final: Path) -> None:
    """Replace `final` by `staging`; at no moment does a partial model sit at `final`."""
    _fsync_dir(staging)
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_model(models_dir: Path, name: str) -> bool:
    """Remove a deployed model (atomically hidden first); False if it was not there."""
    final = models_dir / name
    if not final.is_dir():
        return False
    with repository_lock(models_dir):
        old = models_dir / f".old-{name}-{os.getpid()}"
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    return True


__all__ = ["DeployOutcome", "clean_leftovers", "deploy", "measure_load", "remove_model", "with_gpu_memory"]
