"""The served models: which are wanted, the memory budget, loads, unloads and use times.

Each deployed model records the memory its load took (measured at deploy in a fresh process).
At start the registry fits models into a budget (free memory less a reserve, capped by
`memory_budget_mb`) in priority order and leaves out what does not fit, saying why; with
`lazy_loading` a model loads on its first `use()` (unloading the least recently used others if
it does not fit), with `model_idle_unload_s` it is unloaded after that long without one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import Enum

import psutil

from edged.backends import BackendOptions
from edged.backends.probe import probe
from edged.config import Settings
from edged.errors import (
    EdgedError,
    ModelDoesNotFitError,
    ModelNotFoundError,
    ModelStateError,
)
from edged.loader import LoadedModel, load_model, unloadable_reason
from edged.repository.records import DeployedModel, current_target, list_models
from edged.rmir.manifest import PIPELINE_SERVICE, Manifest
from edged.service import metrics

_LOGGER = logging.getLogger(__name__)

MIB = 2**20
_PRIORITY = {"vad": 0, "wake_word": 0, "speech_recognition": 1, "speech_synthesis": 2, "speaker": 3}


class ModelState(str, Enum):
    """Where a model stands in the server."""

    LOADING = "loading"
    LOADED = "loaded"
    UNLOADED = "unloaded"
    LEFT_OUT = "left out"
    FAILED = "failed"


@dataclass
class ModelEntry:
    """One deployed model of an enabled service and its state in this server."""

    deployed: DeployedModel
    state: ModelState = ModelState.UNLOADED
    reason: str = ""
    last_used: float = 0.0

    @property
    def name(self) -> str:
        """The model's folder name."""
        return self.deployed.name

    @property
    def pipeline(self) -> str:
        """speech_recognition, speech_synthesis, vad, or "" if its manifest is unreadable."""
        return self.deployed.manifest.pipeline if self.deployed.manifest else ""

    @property
    def service(self) -> str:
        """asr or tts."""
        return PIPELINE_SERVICE.get(self.pipeline, "")

    @property
    def memory_mb(self) -> float:
        """Memory its load took when deploy measured it."""
        return self.deployed.record.load.memory_mb if self.deployed.record else 0.0


def available_mb() -> float:
    """Memory the kernel can give without swapping (MemAvailable), in MiB."""
    return float(psutil.virtual_memory().available) / MIB


class ModelRegistry:
    """Loads, unloads and tracks the models of the enabled services within the memory budget."""

    def __init__(self, settings: Settings, executor: Executor) -> None:
        self._settings = settings
        self._executor = executor
        self.loaded: dict[str, LoadedModel] = {}
        """Name to loaded model."""
        self.entries: dict[str, ModelEntry] = {}
        self.budget_mb = 0.0
        self._options = BackendOptions.from_settings(settings)
        self._locks: dict[str, asyncio.Lock] = {}

    def scan(self) -> None:
        """Find the deployed models of the enabled services, in loading priority order."""
        enabled = self._settings.enabled_services()
        target = current_target(probe(), self._settings.backend)
        found = [ModelEntry(m) for m in list_models(self._settings.model_loc / "models", target)]
        found = [e for e in found if not e.pipeline or e.service in enabled]
        found.sort(key=lambda e: (_PRIORITY.get(e.pipeline, 9), e.name))
        self.entries = {e.name: e for e in found}
        self._locks = {name: asyncio.Lock() for name in self.entries}
        cap = self._settings.memory_budget_mb
        free = available_mb() - self._settings.memory_reserve_mb
        self.budget_mb = max(0.0, min(free, cap) if cap else free)

    def manifests(self, pipeline: str) -> dict[str, Manifest]:
        """The deployed (loaded or loadable) models of a pipeline, by name, in priority order."""
        return {e.name: e.deployed.manifest for e in self.entries.values()
                if e.pipeline == pipeline and e.deployed.manifest is not None}

    def serves(self, pipeline: str) -> bool:
        """Whether a model of `pipeline` is loaded, loading or loadable on demand."""
        usable = (ModelState.LOADED, ModelState.LOADING, ModelState.UNLOADED)
        return any(e.pipeline == pipeline and e.state in usable for e in self.entries.values())

    def used_mb(self) -> float:
        """Memory the loaded (and loading) models took at deploy."""
        return sum(e.memory_mb for e in self.entries.values()
                   if e.state in (ModelState.LOADED, ModelState.LOADING))

    def room_mb(self) -> float:
        """Memory a model may still take now: the budget left, and what is free beyond the reserve."""
        free = available_mb() - self._settings.memory_reserve_mb
        cap = self._settings.memory_budget_mb
        return min(free, cap - self.used_mb()) if cap else free

    def _entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(self.entries) or "none"
            raise ModelNotFoundError(f"No deployed model named {name!r} (deployed: {known}).")
        return entry

    async def load_initial(self) -> None:
        """Start-up: load every model that fits the budget side by side (or none, if lazy)."""
        self.scan()
        room = self.budget_mb
        plan: list[ModelEntry] = []
        for entry in self.entries.values():
            if (problem := unloadable_reason(entry.deployed)) is not None:
                entry.state, entry.reason = ModelState.FAILED, problem
                _LOGGER.error("%s", problem)
            elif self._settings.lazy_loading:
                entry.reason = "loads on its first request (lazy_loading=true)"
            elif entry.memory_mb > room:
                entry.state = ModelState.LEFT_OUT
                entry.reason = self._no_room(entry, room)
                _LOGGER.warning("Left out %s: %s", entry.name, entry.reason)
            else:
                room -= entry.memory_mb
                plan.append(entry)
        await asyncio.gather(*(self._load(e) for e in plan))

    def _no_room(self, entry: ModelEntry, room: float) -> str:
        cap = self._settings.memory_budget_mb
        reserve = self._settings.memory_reserve_mb
        limit = f"memory_budget_mb={cap}" if cap else f"free memory less memory_reserve_mb={reserve}"
        return (f"needs {entry.memory_mb:.0f} MB, only {max(room, 0):.0f} MB of the budget is left "
                f"({limit}); raise the budget or disable a service")

    async def _load(self, entry: ModelEntry) -> bool:
        """Load one model on the inference executor: whether it loaded (a failure marks it failed, never raises)."""
        entry.state, entry.reason = ModelState.LOADING, ""
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._executor, load_model, entry.deployed, self._options)
        except Exception as exc:  # noqa: BLE001 - a corrupt network makes a runtime raise anything
            what = str(exc) if isinstance(exc, EdgedError) else f"{type(exc).__name__}: {exc}"
            entry.state = ModelState.FAILED
            entry.reason = (f"{what.rstrip('.')}; redeploy it with `edged deploy -f "
                            f"$model_loc/rmir/{entry.name}.rmir $model_loc/models`")
            _LOGGER.error("Model %s failed to load: %s", entry.name, entry.reason)
            return False
        self.loaded[entry.name] = model
        entry.state, entry.last_used = ModelState.LOADED, time.monotonic()
        metrics.MODEL_MEMORY.labels(entry.name).set(entry.memory_mb * MIB)
        return True

    async def load(self, name: str, evict: bool = False) -> ModelEntry:
        """Load a model now if it fits (with `evict`, after unloading the least recently used others)."""
        entry = self._entry(name)
        async with self._locks[name]:
            if entry.state is ModelState.LOADED:
                return entry
            if (problem := unloadable_reason(entry.deployed)) is not None:
                raise ModelStateError(problem)
            room = self.room_mb()
            if evict and entry.memory_mb > room:
                for other in sorted(self.entries.values(), key=lambda e: e.last_used):
                    if other.state is ModelState.LOADED and other is not entry:
                        await self.unload(other.name, f"evicted (least recently used) for {name}")
                        room = self.room_mb()
                        if entry.memory_mb <= room:
                            break
            if entry.memory_mb > room:
                entry.state, entry.reason = ModelState.LEFT_OUT, self._no_room(entry, room)
                raise ModelDoesNotFitError(f"Model {name} does not fit: {entry.reason}.")
            if not await self._load(entry):
                raise ModelStateError(entry.reason)
            return entry

    async def unload(self, name: str, reason: str = "unloaded on request") -> ModelEntry:
        """Drop a loaded model; its sessions go once no request holds them."""
        entry = self._entry(name)
        async with self._locks[name]:
            if self.loaded.pop(name, None) is not None:
                entry.state, entry.reason = ModelState.UNLOADED, reason
                metrics.MODEL_MEMORY.remove(name)
                _LOGGER.info("Unloaded %s (%s)", name, reason)
            return entry

    async def use(self, name: str) -> LoadedModel:
        """The loaded model for a request: loads it if lazy or idle-unloaded, and marks it used."""
        model = self.loaded.get(name)
        if model is None:
            await self.load(name, evict=self._settings.lazy_loading)
            model = self.loaded[name]
        self.entries[name].last_used = time.monotonic()
        return model

    async def unload_idle(self, now: float) -> None:
        """Unload models unused for `model_idle_unload_s` (the tick calls this)."""
        idle_s = self._settings.model_idle_unload_s
        if not idle_s:
            return
        for entry in list(self.entries.values()):
            if entry.state is ModelState.LOADED and now - entry.last_used >= idle_s:
                await self.unload(entry.name, f"idle for {idle_s} s; loads again on its next request")

    def unload_all(self) -> None:
        """Shutdown: forget every loaded model."""
        for name in list(self.loaded):
            self.loaded.pop(name)
            self.entries[name].state = ModelState.UNLOADED
            metrics.MODEL_MEMORY.remove(name)
