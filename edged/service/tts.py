"""Speech synthesis as a service: voices, the voice cache with warm-up, the run gate and pacing.

Every door (gRPC, the machine's speaker, ...) synthesises through `TtsService`:

    async with ctx.tts.session():                      # an admission slot
        synthesis = await ctx.tts.prepare(SpeechRequest(text, voice))
        async for chunk in ctx.tts.chunks(synthesis):  # 16-bit PCM AudioChunks, first one early
            ...

Up to `tts_lanes` synthesis steps run at once on the service's own executor, first audio of new
requests first (`AsyncRunGate`); each request's steps are paced by how far its audio is ahead.

Bounded for every door alike: `prepare` checks the text, SSML, breaks and the audio the answer may
carry before any work (edged.pipelines.tts.limits); a door's waits on its client go through
`client_wait` (tts_stream_idle_timeout_s); and work stops with its client: a door cancelled while
a step runs (its client cancelled, went away, or passed its deadline) waits in `chunks` for that
step to end and for the voice to drop the request, so the door's slot is freed only then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from edged.errors import IdleTimeoutError, TtsRequestError, UnknownVoiceError
from edged.pipelines.tts import AudioChunk, SynthesisRequest, TtsModel
from edged.pipelines.tts.limits import AudioLimit, SynthesisLimits
from edged.pipelines.tts.schedule import AsyncRunGate, Pace
from edged.pipelines.tts.synthesizer import Plan, parse_custom_dictionary, subvoices, voice_names
from edged.service import metrics
from edged.service.admission import Slot
from edged.service.base import SpeechService

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from edged.config import Settings
    from edged.loader import LoadedModel
    from edged.pipelines.pools import Pools
    from edged.service.admission import Admission
    from edged.service.registry import ModelRegistry

_LOGGER = logging.getLogger(__name__)

_PIPELINE = "speech_synthesis"

T = TypeVar("T")


@dataclass(frozen=True)
class SpeechRequest:
    """What a client asks of synthesis, whatever its protocol."""

    text: str
    """Plain text or SSML (starting with <speak>)."""
    voice: str = ""
    """A full voice name ("English-US.Joe"), a family, a model name or an alias; empty: by language."""
    language_code: str = ""
    sample_rate: int = 0
    """Output rate; 0: the voice's own."""
    custom_dictionary: str = ""
    """Pronunciations in Riva's format ("word  phonemes" per line or comma-separated)."""
    rate: float = 1.0
    """Speaking-rate factor (2.0 is twice as fast)."""
    max_bytes: int = 0
    """Largest answer the door can send at once (a unary Synthesize's max_message_mb); 0: streamed."""


@dataclass(frozen=True)
class VoiceInfo:
    """A deployed voice model: its language, voice family and subvoices."""

    model: str
    language_code: str
    family: str
    subvoices: dict[str, int]
    sample_rate: int

    @property
    def names(self) -> list[str]:
        """The full voice names, one per subvoice ("English-US.Joe")."""
        return [f"{self.family}.{s}" for s in self.subvoices]


@dataclass(frozen=True)
class Synthesis:
    """A checked request and the voice that speaks it."""

    model: TtsModel
    request: SynthesisRequest
    plan: Plan

    @property
    def sample_rate(self) -> int:
        """The rate of its audio."""
        return self.request.sample_rate or self.model.sample_rate


ANY_LANGUAGE = ("", "multi")
"""Language codes that let any voice speak (Riva's "multi", or none given)."""


def speaks(voice_language: str, asked: str) -> bool:
    """Whether a voice of `voice_language` ("de-DE") answers a request for `asked`: the same tag
    ("de-DE", "de_de"), its language alone ("de"), or any language (ANY_LANGUAGE)."""
    asked = asked.replace("_", "-").lower()
    tag = voice_language.replace("_", "-").lower()
    return asked in ANY_LANGUAGE or asked in (tag, tag.split("-")[0])


class TtsService(SpeechService):
    """Synthesis for every door: voice choice, voices made once, `tts_lanes` steps at a time."""

    def __init__(self, settings: Settings, executor: Executor, pools: Pools, registry: ModelRegistry,
                 admission: Admission) -> None:
        super().__init__(settings, executor, pools, registry, admission)
        self._loading = True
        """Until start-up has loaded the models: warm_up keeps looking for newly loaded voices."""
        self._voices: dict[str, tuple[LoadedModel, TtsModel]] = {}
        self._voice_lock = asyncio.Lock()
        lanes = settings.tts_lanes
        self._gate = AsyncRunGate(lanes)
        """`tts_lanes` synthesis steps at a time, first audio of new requests first: the voice
        runs as many networks at once (edged.pipelines.tts.synthesizer)."""
        self._steps = pools.get("tts", lanes)
        """Where steps run: apart from the inference executor, so that they never queue behind ASR
        and ASR never waits for them."""
        self._warming: asyncio.Task[None] | None = None

    def _names(self) -> list[str]:
        """The TTS models this server has deployed (loaded or not)."""
        return list(self._registry.manifests(_PIPELINE))

    def voices(self, model: str = "") -> list[VoiceInfo]:
        """Every deployed voice model (or the one named), loaded or not."""
        out = []
        for name, manifest in self._registry.manifests(_PIPELINE).items():
            if model and name != model:
                continue
            family, subs = subvoices(name, manifest.parameters)
            out.append(VoiceInfo(name, manifest.language_code, family, subs, manifest.sample_rate))
        return out

    def _choose(self, voice: str, language_code: str) -> str:
        """The model serving a voice name (in the language asked, if any), or else the first voice
        of the language (any, for none or "multi"); UnknownVoiceError naming what is deployed."""
        manifests = self._registry.manifests(_PIPELINE)
        if not manifests:
            raise UnknownVoiceError("No speech synthesis model is deployed on this server.")
        wanted = voice.lower()
        for name, manifest in manifests.items():
            if wanted and wanted in voice_names(name, manifest.parameters):
                if not speaks(manifest.language_code, language_code):
                    raise UnknownVoiceError(
                        f"Voice {voice!r} speaks {manifest.language_code}, not {language_code!r}; "
                        f"voices: {self._listing()}.")
                return name
            if not wanted and speaks(manifest.language_code, language_code):
                return name
        what = f"Voice {voice!r} is not available" if voice else f"No voice speaks language {language_code!r}"
        raise UnknownVoiceError(f"{what}; voices: {self._listing()}.")

    def _listing(self) -> str:
        """Every deployed voice name with its language, for error messages."""
        return ", ".join(f"{n} ({info.language_code})" for info in self.voices() for n in info.names)

    async def prepare(self, request: SpeechRequest) -> Synthesis:
        """The voice for a request, loaded, and the request checked against every limit that can
        be before any work (TtsRequestError)."""
        limit = self._settings.tts_max_text_chars
        if len(request.custom_dictionary) > limit:
            raise TtsRequestError(f"The custom_dictionary is {len(request.custom_dictionary)} characters long; "
                                  f"the limit is {limit} (tts_max_text_chars in config.sh).")
        name = self._choose(request.voice, request.language_code)
        model = await self._voice(name, await self._registry.use(name))
        rate_hz = request.sample_rate or model.sample_rate
        message = AudioLimit.of_message(request.max_bytes, rate_hz) if request.max_bytes else None
        checked = SynthesisRequest(
            text=request.text, voice_name=request.voice, sample_rate=request.sample_rate,
            custom_dictionary=parse_custom_dictionary(request.custom_dictionary), rate=request.rate,
            max_audio=message)
        return Synthesis(model, checked, model.check(checked))

    async def _voice(self, name: str, loaded: LoadedModel) -> TtsModel:
        """The TtsModel of a loaded voice, made (and warmed up) once, on the executor."""
        async with self._voice_lock:
            cached = self._voices.get(name)
            if cached is None or cached[0] is not loaded:
                model = await asyncio.get_running_loop().run_in_executor(
                    self._executor, TtsModel, loaded, self._pools, SynthesisLimits.from_settings(self._settings))
                cached = self._voices[name] = (loaded, model)
            return cached[1]

    def warm_up(self) -> None:
        """Prepare each voice as soon as the server has loaded it (while it loads the others,
        until `loaded()`), so that neither its first request nor the idle server pays for it."""
        async def prepare() -> None:
            done: set[str] = set()
            while True:
                loading = self._loading  # one more pass once everything is loaded
                for name in self._names():
                    loaded = self._registry.loaded.get(name)
                    if loaded is None or name in done:
                        continue
                    done.add(name)
                    try:
                        await self._voice(name, loaded)
                    except Exception as exc:  # noqa: BLE001 - requests report it again, precisely
                        _LOGGER.error("Voice %s cannot synthesise: %s", name, exc)
                if not loading:
                    return
                await asyncio.sleep(0.1)

        self._warming = asyncio.get_running_loop().create_task(prepare(), name="edged-tts-warm-up")

    def loaded(self) -> None:
        """Start-up has loaded every model it will: warm-up makes its last pass."""
        self._loading = False

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Slot]:
        """Hold a TTS admission slot for the body (ResourceExhaustedError when full). A door whose
        stream waits on its client for more text marks it on the slot (`Slot.waiting`), which ends
        the stream past tts_stream_idle_timeout_s."""
        async with self._admission.stream("tts", self._settings.tts_max_streams,
                                          self._settings.tts_stream_idle_timeout_s,
                                          "tts_stream_idle_timeout_s") as slot:
            yield slot

    async def chunks(self, synthesis: Synthesis) -> AsyncGenerator[AudioChunk, None]:
        """The request's audio as it is synthesised, each step on the service's executor in its
        turn; counted as one request of its voice. Cancelled, or closed early, it returns only once
        the voice has stopped working on the request (its step ended, its lanes' runs too)."""
        model = synthesis.model
        with metrics.track_request("tts", model.name):
            steps: Generator[AudioChunk, None, None] = model.synthesize(synthesis.request, synthesis.plan)
            pace = Pace()
            finished = False
            try:
                while True:
                    async with self._gate.turn(pace.key()):
                        step = asyncio.ensure_future(
                            metrics.run_inference(self._steps, model.name, next, steps, None))
                        try:
                            chunk: AudioChunk | None = await asyncio.shield(step)
                        except asyncio.CancelledError:
                            await _settled(step)  # the step's thread goes on: its turn too
                            raise
                    if chunk is None:
                        finished = True
                        return
                    pace.emitted(chunk.seconds)
                    metrics.AUDIO_SECONDS.labels("tts", model.name).inc(chunk.seconds)
                    yield chunk
            finally:
                if not finished:  # ends the voice's work on the request (lane runs cancelled or awaited)
                    await self._close_steps(steps)

    async def _close_steps(self, steps: Generator[AudioChunk, None, None]) -> None:
        """End a request's synthesis on the service's executor. Once the server's pools are shut
        down (a stream cancelled as the daemon stops) there is nothing to close it on, and no need:
        its voice's lane pools were shut down with them."""
        try:
            closing = asyncio.get_running_loop().run_in_executor(self._steps, steps.close)
        except RuntimeError:
            _LOGGER.debug("Pools already shut down; the synthesis ends with the process")
            return
        await _settled(closing)

    async def client_wait(self, awaitable: Awaitable[T], waiting_for: str) -> T:
        """`awaitable` (a write the client must read, or its next request) within
        tts_stream_idle_timeout_s; IdleTimeoutError naming the setting when the client takes longer."""
        timeout = self._settings.tts_stream_idle_timeout_s
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            raise IdleTimeoutError(f"The client did not {waiting_for} for {timeout} s "
                                   "(tts_stream_idle_timeout_s in config.sh); the synthesis is ended.") from None


async def _settled(future: Awaitable[Any]) -> None:
    """Wait until `future` is done (its outcome is its owner's to read), then raise CancelledError
    if the caller was cancelled meanwhile: work on a thread cannot be cancelled, only waited for."""
    task = asyncio.ensure_future(future)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if not task.cancelled():
        task.exception()  # read: its owner may be gone
    if cancelled:
        raise asyncio.CancelledError
