"""Load deployed models into memory: every network of a model through its recorded backend."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edged.backends import BackendOptions, Session, get_backend
from edged.errors import BackendError
from edged.repository.records import DeployedModel
from edged.rmir.manifest import Manifest

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A deployed model in memory: manifest, its networks' sessions and its folder."""

    name: str
    path: Path
    manifest: Manifest
    sessions: dict[str, Session]
    load_seconds: float
    memory_mb: float
    """What loading took when deploy measured it alone in a fresh process."""
    lanes: int = 1
    """Calls of its networks that may run side by side (BackendOptions.lanes)."""


def unloadable_reason(model: DeployedModel) -> str | None:
    """Why a deployed model cannot be loaded at all (broken or stale), or None if it can be tried."""
    if model.problem or model.manifest is None or model.record is None:
        return f"Model {model.name} cannot be loaded: {model.problem}; run `edged init`."
    if model.stale:
        return (f"Model {model.name} was deployed for another device or library "
                f"({'; '.join(model.stale)}); run `edged init` to redeploy it.")
    return None


LANE_PIPELINES = frozenset({"speech_recognition"})
"""Pipelines that run calls side by side on lanes (see edged.pipelines.lanes). Speech synthesis
does not: splitting a voice's chunks across one-thread lanes measured no faster than one call
on every core (its decoder scales 1.35x with 2 threads, and split ranges decode context twice)."""


def load_model(model: DeployedModel, options: BackendOptions) -> LoadedModel:
    """Load every network of a deployed model; BackendError if it is broken or stale."""
    if (reason := unloadable_reason(model)) is not None or model.record is None or model.manifest is None:
        raise BackendError(reason or f"Model {model.name} cannot be loaded.")
    if model.manifest.pipeline not in LANE_PIPELINES:
        options = replace(options, lanes=1)
    backend = get_backend(str(model.record.backend))
    t0 = time.perf_counter()
    sessions = {
        name: backend.load(model.path / entry.file, options)
        for name, entry in model.record.networks.items()
    }
    seconds = time.perf_counter() - t0
    memory = model.record.load.memory_mb
    _LOGGER.info("Loaded %s (%s) in %.2f s (%.0f MB as measured at deploy)",
                 model.name, model.manifest.pipeline, seconds, memory)
    return LoadedModel(model.name, model.path, model.manifest, sessions, seconds, memory, options.lanes)
