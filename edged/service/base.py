"""What every speech service is made with: the settings and the server's shared parts."""

from __future__ import annotations

from concurrent.futures import Executor

from edged.config import Settings
from edged.pipelines.pools import Pools
from edged.service.admission import Admission
from edged.service.registry import ModelRegistry


class SpeechService:
    """A speech service's settings, inference executor, thread pools, model registry and admission control."""

    def __init__(self, settings: Settings, executor: Executor, pools: Pools, registry: ModelRegistry,
                 admission: Admission) -> None:
        self._settings = settings
        self._executor = executor
        self._pools = pools
        """Where the service's own pools (and its models' lanes) come from."""
        self._registry = registry
        self._admission = admission
