"""Load deployed models into memory: every network of a model through its recorded backend."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
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
    """Calls of its networks that may run side by side (BackendOptions.lanes, or tts_lanes)."""
    lane_sessions: dict[str, Session] = field(default_factory=dict)
    """Networks loaded a second time with a lane's share of the cores as threads, for runs that
    go side by side with others (LANE_NETWORKS)."""


def unloadable_reason(model: DeployedModel) -> str | None:
    """Why a deployed model cannot be loaded at all (broken or stale), or None if it can be tried."""
    if model.problem or model.manifest is None or model.record is None:
        return f"Model {model.name} cannot be loaded: {model.problem}; run `edged init`."
    if model.stale:
        return (f"Model {model.name} was deployed for another device or library "
                f"({'; '.join(model.stale)}); run `edged init` to redeploy it.")
    return None


LANE_PIPELINES = frozenset({"speech_recognition"})
"""Pipelines whose sessions all get a lane's share of the cores (see edged.pipelines.lanes)."""

ARENA_FREE_PIPELINES = frozenset({"speech_recognition"})
"""Pipelines whose sessions run without ONNX Runtime's CPU arena (BackendOptions.memory_arena):
the arena keeps the largest activations a session ever needed, for good, and a long recording's
batches made it grow by 250 MB (daemon, default models, a 20 MB Recognize); recognition runs as
fast without it. Speech synthesis keeps it: Piper's many small runs took 25 % more CPU without."""

LANE_NETWORKS = {"speech_synthesis": ("decoder",)}
"""Networks a pipeline also loads with a lane's share of the cores (`tts_lanes` of them): a voice
keeps its sessions on every core for a run alone (a request's first audio, the encoder, the
flow), and runs decoder chunks side by side on one-thread sessions. Measured on 2 loaded cores,
two 144-frame chunks: 117 ms side by side on one thread each, 141 ms side by side on two threads
each, 150 ms as one 272-frame run on two threads (batching them in one call: no faster)."""


def load_model(model: DeployedModel, options: BackendOptions) -> LoadedModel:
    """Load every network of a deployed model; BackendError if it is broken or stale."""
    if (reason := unloadable_reason(model)) is not None or model.record is None or model.manifest is None:
        raise BackendError(reason or f"Model {model.name} cannot be loaded.")
    pipeline = model.manifest.pipeline
    lanes = options.lanes if pipeline in LANE_PIPELINES else \
        options.tts_lanes if pipeline == "speech_synthesis" else 1
    if pipeline not in LANE_PIPELINES:
        options = replace(options, lanes=1)
    if pipeline in ARENA_FREE_PIPELINES:
        options = replace(options, memory_arena=False)
    backend = get_backend(str(model.record.backend))
    t0 = time.perf_counter()
    sessions = {
        name: backend.load(model.path / entry.file, options)
        for name, entry in model.record.networks.items()
    }
    lane_sessions: dict[str, Session] = {}
    if lanes > 1 and backend.name == "onnxruntime" and not options.intra_op_threads:
        # (TensorRT runs calls side by side on its execution contexts; threads set by hand stay.)
        narrow = replace(options, lanes=lanes)
        lane_sessions = {
            name: backend.load(model.path / entry.file, narrow)
            for name, entry in model.record.networks.items() if name in LANE_NETWORKS.get(pipeline, ())
        }
    seconds = time.perf_counter() - t0
    memory = model.record.load.memory_mb
    _LOGGER.info("Loaded %s (%s) in %.2f s (%.0f MB as measured at deploy)",
                 model.name, model.manifest.pipeline, seconds, memory)
    return LoadedModel(model.name, model.path, model.manifest, sessions, seconds, memory, lanes, lane_sessions)
