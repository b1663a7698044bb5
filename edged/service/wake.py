"""Wake-word detection as a service: which wake words are served, and listening sessions.

Every door listens through `WakeService`:

    async with ctx.wake.session(["okay nabu"], rate=16000, channels=1) as session:  # a slot
        for detection in await session.feed(pcm16):                                  # any rate
            ...

A session holds one of `wake_max_streams` admission slots ("wake"); its audio (16-bit PCM at
any rate, any channel count) is mixed down, resampled to 16 kHz and run on the service's own
one-thread executor, apart from recognition's. A model is made ready once (its first session)
and shared; each session has its own interpreters, whose streaming state is its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING

import numpy as np

from edged.audio.resample import StreamResampler, float_to_pcm16, pcm16_to_float
from edged.errors import AudioFormatError, DrainingError, IdleTimeoutError, UnknownWakeWordError
from edged.pipelines.wake.detector import SAMPLE_RATE, Detection, WakeListener, WakeWordModel
from edged.service import metrics
from edged.service.admission import Slot, Waiting
from edged.service.base import SpeechService

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from edged.config import Settings
    from edged.pipelines.pools import Pools
    from edged.rmir.manifest import Manifest
    from edged.service.admission import Admission
    from edged.service.registry import ModelRegistry

_LOGGER = logging.getLogger(__name__)

PIPELINE = "wake_word"


def _key(text: str) -> str:
    """A wake word's name or phrase as compared: "Okay Nabu", "okay_nabu", "wake-okay-nabu" alike."""
    return re.sub(r"[^a-z0-9]+", "", text.lower().removeprefix("wake-").removeprefix("wake_"))


class WakeSession:
    """One stream listening for wake words; `feed` gives the detections each chunk completes."""

    def __init__(self, service: WakeService, listener: WakeListener, rate: int, channels: int,
                 slot: Slot | None) -> None:
        self._service = service
        self._listener = listener
        self._channels = channels
        self._resampler = StreamResampler(rate, SAMPLE_RATE) if rate != SAMPLE_RATE else None
        self._slot = slot
        self._partial = b""
        """The end of a chunk that did not fill a whole frame (all channels' samples)."""
        self._step: Future[list[Detection]] | None = None
        """The listening step last handed to the executor (it runs on even if its feed is cancelled)."""
        self.detections: list[Detection] = []
        if slot is not None:
            slot.start_waiting(Waiting.SEND)

    async def feed(self, pcm: bytes) -> list[Detection]:
        """The next 16-bit PCM of the session's rate and channels; the wake words it completes."""
        frame = 2 * self._channels
        data = self._partial + pcm
        whole = len(data) - len(data) % frame
        self._partial = data[whole:]
        if not whole:
            return []
        with self._slot.busy(Waiting.SEND) if self._slot is not None else nullcontext():
            self._step = self._service.submit(self._accept, data[:whole])
            found = await asyncio.wrap_future(self._step)
        self.detections += found
        return found

    def _accept(self, pcm: bytes) -> list[Detection]:
        if self._channels == 1 and self._resampler is None:
            return self._listener.accept(pcm)
        audio = pcm16_to_float(pcm).reshape(-1, self._channels).mean(axis=1)
        if self._resampler is not None:
            audio = self._resampler.process(audio)
        return self._listener.accept(float_to_pcm16(np.asarray(audio, dtype=np.float32)))

    def on_idle(self, tell: Callable[[IdleTimeoutError], None]) -> None:
        """Call `tell` when the client has sent nothing for wake_stream_idle_timeout_s (its slot then
        ends the stream)."""
        if self._slot is not None:
            self._slot.on_idle = tell

    def close(self) -> None:
        """Free the session's interpreters, once a step still running on them (its feed cancelled)
        has ended."""
        if self._step is not None and not self._step.done():
            self._step.add_done_callback(lambda _: self._listener.close())
        else:
            self._listener.close()

    @property
    def audio_ms(self) -> int:
        """16 kHz audio listened to so far, in ms."""
        return self._listener.audio_ms


class WakeService(SpeechService):
    """Wake-word listening for every door: model choice, models made ready once, sessions in slots."""

    def __init__(self, settings: Settings, executor: Executor, pools: Pools, registry: ModelRegistry,
                 admission: Admission) -> None:
        super().__init__(settings, executor, pools, registry, admission)
        self._models: dict[str, WakeWordModel] = {}
        self._lock = asyncio.Lock()
        self._runs = self._pools.get("wake", 1)
        """Where listening runs: one thread, apart from recognition's inference executor."""

    def models(self) -> dict[str, Manifest]:
        """The deployed wake-word models, by name."""
        return self._registry.manifests(PIPELINE)

    def select(self, names: list[str] | None) -> list[str]:
        """The models that `names` (model names or phrases; none or empty: every one) ask for;
        UnknownWakeWordError naming the served ones."""
        served = self.models()
        if not served:
            raise UnknownWakeWordError("No wake-word model is deployed; add one to models_wake in "
                                       "config.sh (builtin:wake-okay-nabu ...) and run `edged init`.")
        if not names:
            return list(served)
        by_key: dict[str, str] = {}
        for name, manifest in served.items():
            by_key[_key(name)] = name
            by_key.setdefault(_key(str(manifest.parameters.get("wake_word", ""))), name)
        chosen: list[str] = []
        for asked in names:
            found = by_key.get(_key(str(asked)))
            if found is None:
                known = ", ".join(f"{n} ({m.parameters.get('wake_word', '')})" for n, m in served.items())
                raise UnknownWakeWordError(f"No wake word {str(asked)!r} is served; this server has: {known}.")
            if found not in chosen:
                chosen.append(found)
        return chosen

    def submit(self, step: Callable[[bytes], list[Detection]], pcm: bytes) -> Future[list[Detection]]:
        """Start a session's listening step on the service's executor; DrainingError once the
        server has shut its pools (a stream still sending as the daemon stops)."""
        try:
            return self._runs.submit(step, pcm)
        except RuntimeError:
            raise DrainingError("The server is stopping; connect again once it is back.") from None

    async def _model(self, name: str) -> WakeWordModel:
        loaded = await self._registry.use(name)
        async with self._lock:
            model = self._models.get(name)
            if model is None or model.config_path.parent != loaded.path:
                loop = asyncio.get_running_loop()
                model = await loop.run_in_executor(self._runs, WakeWordModel.from_deployed, name,
                                                   loaded.path, loaded.manifest)
                self._models[name] = model
            return model

    @asynccontextmanager
    async def session(self, names: list[str] | None, rate: int = SAMPLE_RATE, channels: int = 1,
                      local: bool = False) -> AsyncIterator[WakeSession]:
        """A listening session for the body's duration, in an admission slot (none for the
        daemon's own microphone, `local`); raises before the body on any problem."""
        if not local:
            self._admission.refuse_if_draining("wake")
        if rate < 8000 or rate > 192000 or channels < 1 or channels > 8:
            raise AudioFormatError(f"Wake words listen to 8 to 192 kHz audio of 1 to 8 channels, "
                                   f"not {rate} Hz with {channels} channel(s).")
        chosen = self.select(names)
        with metrics.track_request("wake", ",".join(chosen)):
            async with AsyncExitStack() as stack:
                slot = None
                if not local:
                    slot = await stack.enter_async_context(self._admission.stream(
                        "wake", self._settings.wake_max_streams, self._settings.wake_stream_idle_timeout_s,
                        "wake_stream_idle_timeout_s"))
                session = await self._open(chosen, rate, channels, slot)
                try:
                    yield session
                finally:
                    session.close()

    async def _open(self, names: list[str], rate: int, channels: int, slot: Slot | None) -> WakeSession:
        models = [await self._model(n) for n in names]
        loop = asyncio.get_running_loop()
        listener = await loop.run_in_executor(self._runs, WakeListener, models)
        _LOGGER.debug("Wake session on %s", ", ".join(names))
        return WakeSession(self, listener, rate, channels, slot)
