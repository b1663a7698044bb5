"""What every front door of a running server shares: settings, models, limits, the speech services.

A door (gRPC, the machine's microphone and speaker, later HTTP or Wyoming) holds one
`ServiceContext` and calls `ctx.asr` and `ctx.tts`; it never reaches into another door.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

from edged.config import Settings
from edged.pipelines.pools import Pools
from edged.service import memory
from edged.service.admission import Admission
from edged.service.asr import AsrService
from edged.service.registry import ModelRegistry, ModelState, available_mb
from edged.service.tts import TtsService
from edged.service.wake import WakeService

SERVICE_PIPELINES = {
    "asr": "speech_recognition",
    "wake": "wake_word",
    "tts": "speech_synthesis",
    "nvidia.riva.asr.RivaSpeechRecognition": "speech_recognition",
    "nvidia.riva.tts.RivaSpeechSynthesis": "speech_synthesis",
}
"""Health names that serve only while a model of their pipeline is loaded (or loadable)."""

INFERENCE_THREADS = 2
"""Blocking model calls that run at once on the inference executor (the batcher's calls, model loads)."""


@dataclass
class ServiceContext:
    """The state of a running server that is not any protocol's: models, streams, services."""

    settings: Settings
    pools: Pools
    """Every thread pool of the server (shut down once, at its stop)."""
    executor: Executor
    """The inference executor (`pools`' "infer"): every blocking model call runs here."""
    registry: ModelRegistry
    """Model states and memory; `await registry.use(name)` loads lazily and marks use."""
    admission: Admission
    """Stream slots and memory pressure (the services hold a slot per request or stream)."""
    asr: AsrService | None = None
    """Speech recognition (None when config.sh turns it off)."""
    tts: TtsService | None = None
    """Speech synthesis (None when config.sh turns it off)."""
    wake: WakeService | None = None
    """Wake-word listening (None unless config.sh names models_wake)."""
    health_services: list[str] = field(default_factory=list)
    """Protocol service names the doors registered, each answering health too."""
    started: float = field(default_factory=time.monotonic)
    serving: bool = False
    """True from the end of start-up until shutdown begins."""

    @property
    def ready(self) -> bool:
        """Whether the server takes new streams: serving and not draining (readiness probe)."""
        return self.serving and not self.admission.draining

    @classmethod
    def create(cls, settings: Settings, pools: Pools) -> ServiceContext:
        """A context with its registry and admission, and the services config.sh enables, their
        thread pools taken from `pools`."""
        executor = pools.get("infer", INFERENCE_THREADS)
        registry = ModelRegistry(settings, executor)
        admission = Admission(settings.memory_reserve_mb, available_mb, rss_mb=memory.rss_mb,
                              release_memory=memory.release_free_memory)
        if settings.service_enabled_asr:
            admission.set_limit("asr", settings.asr_max_streams)
        if settings.service_enabled_tts:
            admission.set_limit("tts", settings.tts_max_streams)
        if settings.models_wake:
            admission.set_limit("wake", settings.wake_max_streams)
        parts = (settings, executor, pools, registry, admission)
        return cls(settings, pools, executor, registry, admission,
                   asr=AsrService(*parts) if settings.service_enabled_asr else None,
                   tts=TtsService(*parts) if settings.service_enabled_tts else None,
                   wake=WakeService(*parts) if settings.models_wake else None)

    def health_names(self) -> list[str]:
        """Every name health answers for: "" (the server), edged's services, the doors' services."""
        return ["", *self.settings.enabled_services(), *self.health_services]

    def is_serving(self, name: str = "") -> bool:
        """Whether health should say SERVING for `name`."""
        if not self.serving or self.admission.draining:
            return False
        pipeline = SERVICE_PIPELINES.get(name)
        return pipeline is None or self.registry.serves(pipeline)

    def status_line(self) -> str:
        """One line for systemd's STATUS= and the log."""
        entries = self.registry.entries.values()
        loaded = [e.name for e in entries if e.state is ModelState.LOADED]
        out = [e.name for e in entries if e.state in (ModelState.LEFT_OUT, ModelState.FAILED)]
        line = f"Serving {len(loaded)} model(s) ({', '.join(loaded) or 'none yet'}), {self.admission.total} stream(s)"
        return line + (f"; not loaded: {', '.join(out)}" if out else "")
