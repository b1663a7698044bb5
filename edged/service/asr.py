"""Speech recognition as a service: model choice, the pipeline cache, the one batcher, sessions.

Every door (gRPC, the machine's microphone, ...) recognises through `AsrService`:

    async with ctx.asr.session(RecognitionRequest(...)) as session:
        session.feed_from(door_feeding())           # a task: await session.feed(audio) ... finish()
        async for transcript in session.results():  # each interim or final the moment it is decoded
            send(transcript)

`feed` hands in a chunk (and waits while the batcher is busy with it: back-pressure); results
leave through `results()` as soon as they are decoded, whether the client's next chunk has come
or not, and `results()` ends after the results of `finish()`.

A session holds an admission slot, counts the request in the metrics and owns one pipeline
stream per recognised channel; every stream of every door goes through the one `AsrBatcher`.
Errors are `edged.errors` exceptions (each door maps them to its own statuses).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from edged.errors import AudioFormatError, IdleTimeoutError, RequestError
from edged.pipelines.asr.audio import (
    ENCODINGS,
    MAX_CHANNELS,
    MODEL_RATE,
    decode_all,
    header_channels,
)
from edged.pipelines.asr.batcher import AsrBatcher
from edged.pipelines.asr.jobs import StreamConfig, offline_config
from edged.pipelines.asr.model import AsrModel
from edged.pipelines.asr.nemo import NEMO_FAMILIES
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.stream import AsrStream
from edged.pipelines.asr.whisper.recogniser import WHISPER_FAMILY, Language, Task
from edged.pipelines.speaker.encoder import SpeakerEncoder
from edged.pipelines.speaker.enrolled import Enrolled, SpeakerStore, SpeakerStoreError
from edged.pipelines.speaker.labels import label_results
from edged.pipelines.speaker.online import OnlineSpeakers
from edged.pipelines.speaker.streaming import StreamSpeakers
from edged.rmir.manifest import MULTILINGUAL, Manifest, primary_language
from edged.service import memory, metrics
from edged.service.admission import Slot, Waiting
from edged.service.base import SpeechService

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from edged.config import Settings
    from edged.loader import LoadedModel
    from edged.pipelines.pools import Pools
    from edged.service.admission import Admission
    from edged.service.registry import ModelRegistry

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

ASR_FAMILIES = frozenset({"moonshine", WHISPER_FAMILY, *NEMO_FAMILIES})
"""Model families of speech_recognition models that edged recognises with."""

MAX_ALTERNATIVES = 4
"""Most alternatives a final carries (a beam of this width decodes it)."""

MAX_BOOST_PHRASES = 100
"""Most boosted phrases a request may give (each costs work at every decoding step)."""
MAX_BOOST_PHRASE_CHARS = 100
"""Longest boosted phrase, in characters."""

ENDPOINT_FIELDS = ("start_history_ms", "start_threshold", "stop_history_ms", "stop_threshold",
                   "stop_history_eou_ms", "stop_threshold_eou")
"""Endpointing settings a request may override (Riva's EndpointingConfig; 0 keeps the model's)."""


@dataclass(frozen=True)
class RecognitionRequest:
    """What a client asks of recognition, whatever its protocol."""

    model: str = ""
    """A deployed ASR model's name; empty: the first for `language_code`."""
    language_code: str = ""
    encoding: str = ""
    """LINEAR_PCM, MULAW, ALAW, FLAC, or '' to read a WAV or FLAC header."""
    sample_rate: int = 0
    channels: int = 1
    separate_channels: bool = False
    """Recognise every channel on its own (else only the first, as Riva does)."""
    interim_results: bool = False
    punctuation: bool = True
    word_times: bool = False
    profanity_filter: bool = False
    max_alternatives: int = 1
    boost: tuple[tuple[str, float], ...] = ()
    """Phrases to favour (or, with a negative score, avoid) and their scores."""
    endpointing: tuple[tuple[str, float], ...] = ()
    """Overrides of ENDPOINT_FIELDS, by name."""
    diarization: bool = False
    """Label finals and their words with who said them (offline recognition; needs a speaker model)."""
    max_speakers: int = 0
    """With diarization: at most this many speakers (0: as many as the voices found)."""
    translate: bool = False
    """Write English text of speech in any language (a Whisper model's translate task)."""


@dataclass(frozen=True)
class StreamDiarization:
    """What a streaming session labels its finals' speakers with."""

    encoder: SpeakerEncoder
    pool: Executor
    """Where the embeddings run, beside the decodes."""
    speakers: Callable[[], OnlineSpeakers]
    """A channel's speakers at its start (the enrolled ones, if any)."""


@dataclass(frozen=True)
class Transcript:
    """A result of one channel of a session."""

    result: Result
    channel: int
    """The recognised channel (0 for the first)."""


def serves(manifest: Manifest, language_code: str) -> bool:
    """Whether a model recognises `language_code` (empty and "multi": any language): a model of
    one language its tag or its language alone; a multilingual model any it lists."""
    if language_code.lower() in ("", MULTILINGUAL):
        return True
    own = manifest.language_code.replace("_", "-").lower()
    if own == MULTILINGUAL:
        return primary_language(language_code) in [str(c).lower() for c in manifest.parameters.get("languages", [])]
    return language_code.replace("_", "-").lower() in (own, own.split("-")[0])


def _deployed(models: dict[str, Manifest]) -> str:
    """Every deployed ASR model with its language (a multilingual one's languages), for error messages."""
    def languages(m: Manifest) -> str:
        if m.language_code.lower() != MULTILINGUAL:
            return m.language_code
        listed = [str(c) for c in m.parameters.get("languages", [])]
        return f"multi: {', '.join(listed[:12])}{', ...' if len(listed) > 12 else ''} ({len(listed)} languages)"
    return ", ".join(f"{n} ({languages(m)})" for n, m in models.items()) or "none"


def asr_languages(manifest: Manifest) -> list[str]:
    """The languages a model recognises: a multilingual model's list, else its own tag."""
    if manifest.language_code.lower() == MULTILINGUAL:
        return [str(c) for c in manifest.parameters.get("languages", [])]
    return [manifest.language_code]


def translating_model(models: dict[str, Manifest]) -> str | None:
    """The deployed ASR model that translates speech to English text (the first multilingual one: a
    Whisper model), or None: the one place a translating model is picked."""
    return next((name for name, m in models.items() if m.language_code.lower() == MULTILINGUAL), None)


def _translator(models: dict[str, Manifest], model: str) -> str:
    """The model a translation runs on: the one named, if it translates, else the translating
    model; RequestError where none translates."""
    translator = translating_model(models)
    if translator is None:
        deployed = ", ".join(f"{n} ({m.language_code})" for n, m in models.items()) or "none"
        raise RequestError(f"No deployed model can translate speech to English (deployed ASR models, which "
                           f"transcribe only: {deployed}).")
    if model in models and models[model].language_code.lower() != MULTILINGUAL:
        raise RequestError(f"Model {model!r} transcribes only; {translator} translates.")
    return model or translator


def choose_model(models: dict[str, Manifest], model: str = "", language_code: str = "",
                 translate: bool = False) -> str:
    """The model a request names (which must serve its language, if it gives one), or else the
    first for its language: a model of that very language before a multilingual one, and for
    "multi" a multilingual one first; RequestError listing what is deployed. `translate`: the
    translating model (or the one named, which must translate)."""
    if translate:
        model = _translator(models, model)
    if model:
        if model not in models:
            raise RequestError(f"Model {model!r} is not deployed; deployed ASR models: {_deployed(models)}.")
        if not serves(models[model], language_code):
            raise RequestError(f"Model {model!r} does not recognise language {language_code!r}; "
                               f"deployed ASR models: {_deployed(models)}.")
        return model
    wanted = language_code.replace("_", "-").lower()
    own = [n for n, m in models.items() if m.language_code.lower() != MULTILINGUAL and serves(m, wanted)]
    multi = [n for n, m in models.items() if m.language_code.lower() == MULTILINGUAL and serves(m, wanted)]
    chosen = (multi + own) if wanted == MULTILINGUAL else (own + multi)
    if chosen:
        return chosen[0]
    raise RequestError(f"No deployed ASR model serves language {language_code!r}; "
                       f"deployed ASR models: {_deployed(models)}.")


def whisper_language(language_code: str, translate: bool = False) -> Language:
    """What a multilingual model writes for a request of `language_code` (none: identified)."""
    code = "" if language_code.lower() in ("", MULTILINGUAL) else primary_language(language_code)
    return Language(code, Task.TRANSLATE if translate else Task.TRANSCRIBE)


def model_language(manifest: Manifest, language_code: str, translate: bool = False) -> Language:
    """What a multilingual Whisper model writes for a request: the language asked, else the one it
    is served as (a model built with `--language-code de-DE`), else the one it identifies."""
    own = "" if manifest.language_code.lower() == MULTILINGUAL else manifest.language_code
    return whisper_language(language_code or own, translate)


def _check_boost(boost: tuple[tuple[str, float], ...]) -> None:
    """RequestError unless the boosted phrases are within MAX_BOOST_PHRASES and
    MAX_BOOST_PHRASE_CHARS, with finite scores."""
    if len(boost) > MAX_BOOST_PHRASES:
        raise RequestError(f"{len(boost)} boosted phrases are too many; at most {MAX_BOOST_PHRASES}.")
    for phrase, score in boost:
        if len(phrase) > MAX_BOOST_PHRASE_CHARS:
            raise RequestError(f"The boosted phrase {phrase[:40]!r}... is {len(phrase)} characters long; "
                               f"at most {MAX_BOOST_PHRASE_CHARS}.")
        if not math.isfinite(score):
            raise RequestError(f"The boost of {phrase!r} is {score}; a boost must be a finite number.")


def _check_endpointing(endpointing: tuple[tuple[str, float], ...]) -> None:
    """RequestError unless every endpointing override is finite and not negative, and a
    threshold at most 1."""
    for name, value in endpointing:
        if not math.isfinite(value) or value < 0 or ("threshold" in name and value > 1):
            bound = "from 0 to 1" if "threshold" in name else "a finite number of milliseconds, not negative"
            raise RequestError(f"Endpointing {name} is {value}; it must be {bound} (0 keeps the model's).")


class AsrSession:
    """One client's recognition: a pipeline stream per recognised channel, fed the same audio."""

    def __init__(self, service: AsrService, name: str, model: AsrModel, config: StreamConfig,
                 separate_channels: bool, diarization: StreamDiarization | None = None) -> None:
        self.model_name = name
        self._service = service
        self._model = model
        self._config = config
        self._separate = separate_channels
        self._streams: list[AsrStream] = []
        self._counted = 0.0
        self._outbox: asyncio.Queue[Transcript | BaseException | None] = asyncio.Queue()
        """Results in the order they were decoded; None after the last; an error ends them."""
        self._feeding: asyncio.Task[None] | None = None
        self._slot: Slot | None = None
        """The admission slot that watches the client (none for the daemon's own microphone)."""
        self._diarization = diarization
        self._speakers: dict[int, StreamSpeakers] = {}
        """Streaming, with diarization: each recognised channel's speakers."""

    def _start(self, audio: bytes = b"", push: bool = True) -> list[AsrStream]:
        """The pipeline streams, made with the first audio: one, or one per channel (whose
        count a WAV or FLAC header in that audio gives when the request's encoding is unset);
        `push`: their results go to `results()` (else, offline, with the answer)."""
        if not self._streams:
            channels = self._config.channels
            if self._separate and not self._config.encoding:
                channels = header_channels(audio) or channels
            recognised = range(channels) if self._separate else range(1)
            self._streams = [self._model.start_stream(replace(self._config, channel=c)) for c in recognised]
            for stream in self._streams if push else ():
                stream.listener = functools.partial(self._push, stream.config.channel)
                if self._diarization is not None:
                    d = self._diarization
                    speakers = self._speakers[stream.config.channel] = StreamSpeakers(d.encoder, d.pool, d.speakers())
                    stream.on_utterance_audio = speakers.heard
        return self._streams

    def watch(self, slot: Slot) -> None:
        """Hold `slot` to its idle timeout: waiting for the client's audio from now until `finish`,
        and for the door to come back for the next result; an idle client ends `results()`."""
        self._slot = slot
        slot.on_idle = self._expire
        slot.start_waiting(Waiting.SEND)

    def _expire(self, error: IdleTimeoutError) -> None:
        if self._feeding is not None:
            self._feeding.cancel()
        self.fail(error)

    def _push(self, channel: int, results: list[Result]) -> None:
        self._count(self.seconds)
        for result in results:
            self._outbox.put_nowait(Transcript(result, channel))

    @property
    def streams(self) -> list[AsrStream]:
        """The pipeline streams (one per recognised channel)."""
        return self._start()

    @property
    def samples(self) -> int:
        """Samples of audio received, at the model's rate."""
        return self.streams[0].samples

    @property
    def seconds(self) -> float:
        """Seconds of audio received."""
        return self.samples / MODEL_RATE

    @property
    def in_speech(self) -> bool:
        """Whether someone is speaking in the first channel now."""
        return self.streams[0].in_speech

    def set_interim_results(self, on: bool) -> None:
        """Turn interim results on or off for what comes next."""
        for stream in self.streams:
            if stream.config.interim_results != on:
                stream.config = replace(stream.config, interim_results=on)

    async def feed(self, audio: bytes, end_utterance: bool = False) -> None:
        """The next chunk of client audio (in the request's encoding); returns once it is handled,
        its results on their way to `results()`. `end_utterance`: the open utterance ends after
        this chunk (Riva's force_eou)."""
        batcher = self._service.batcher
        with self._client_sent():
            await asyncio.gather(*(batcher.feed(s, audio, end_utterance) for s in self._start(audio)))

    async def feed_samples(self, samples: np.ndarray) -> None:
        """The next mono float32 samples at MODEL_RATE (the daemon's own microphone)."""
        with self._client_sent():
            await self._service.batcher.feed(self.streams[0], samples)

    async def finish(self) -> None:
        """End of audio: the last results go to `results()`, which then ends."""
        batcher = self._service.batcher
        if self._slot is not None:
            self._slot.stop_waiting(Waiting.SEND)
        await asyncio.gather(*(batcher.finish(s) for s in self.streams))
        self._outbox.put_nowait(None)

    def _client_sent(self) -> AbstractContextManager[None]:
        """The body handles what the client sent: the server's time, not the client's."""
        return self._slot.busy(Waiting.SEND) if self._slot is not None else nullcontext()

    def fail(self, error: BaseException) -> None:
        """End `results()` with `error` (a door's feeding failed: bad audio, a limit, a timeout)."""
        self._outbox.put_nowait(error)

    def feed_from(self, feeding: Awaitable[None]) -> asyncio.Task[None]:
        """Run a door's feeding (its `feed` calls, then `finish`) as a task beside `results()`;
        an error in it ends `results()` with that error. Cancelled when the session closes."""

        async def run() -> None:
            try:
                await feeding
            except Exception as exc:  # noqa: BLE001 - handed to the reader of results(), which maps it
                self.fail(exc)

        self._feeding = asyncio.get_running_loop().create_task(run(), name="edged-asr-feeding")
        return self._feeding

    async def results(self) -> AsyncIterator[Transcript]:
        """Each interim and final as soon as it is decoded, in order, until the last (after
        `finish`); raises what ended the feeding, if it failed."""
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            speakers = self._speakers.get(item.channel) if item.result.is_final else None
            if speakers is not None:
                with metrics.SPEAKER_WAIT_SECONDS.time():
                    item = Transcript(await speakers.label(item.result), item.channel)
            if self._slot is None:
                yield item
                continue
            with self._slot.waiting(Waiting.READ):  # the door sends it to its client
                yield item

    def close(self) -> None:
        """The session ends (however: a client may vanish): no more feeding or interims."""
        if self._feeding is not None:
            self._feeding.cancel()
        for stream in self._streams:
            self._service.batcher.close(stream)
        for speakers in self._speakers.values():
            speakers.close()

    async def recognize(self, audio: bytes) -> list[Transcript]:
        """A whole recording at once (offline: no interims, segments decoded in batches)."""
        batcher = self._service.batcher
        streams = self._start(audio, push=False)
        return self._tagged(await asyncio.gather(*(batcher.recognize(s, audio) for s in streams)))

    async def diarized(self, audio: bytes, transcripts: list[Transcript], encoder: SpeakerEncoder,
                       max_speakers: int, known: dict[str, np.ndarray] | None = None) -> list[Transcript]:
        """`transcripts` of `audio` (from `recognize`) with speakers on finals and words, channel by
        channel; enrolled speakers and those `known` to the request (whose names win) named."""
        known = {**self._service.enrolled(encoder.name), **(known or {})}

        def label() -> list[Transcript]:
            out = []
            for stream in self._streams:
                c = stream.config
                samples = decode_all(audio, c.encoding, c.sample_rate, c.channels, c.channel)
                mine = [t.result for t in transcripts if t.channel == c.channel]
                out += [Transcript(r, c.channel) for r in label_results(encoder, samples, mine, max_speakers, known)]
            return out

        return await self._service.run_speaker(label)

    def _tagged(self, outcomes: list[list[Result]]) -> list[Transcript]:
        self._count(self.seconds)
        return [Transcript(r, stream.config.channel)
                for stream, results in zip(self._streams, outcomes) for r in results]

    def _count(self, seconds: float) -> None:
        if seconds > self._counted:
            metrics.AUDIO_SECONDS.labels("asr", self.model_name).inc(seconds - self._counted)
            self._counted = seconds


class AsrService(SpeechService):
    """Recognition for every door: chooses models, caches their pipelines, batches all streams."""

    def __init__(self, settings: Settings, executor: Executor, pools: Pools, registry: ModelRegistry,
                 admission: Admission) -> None:
        super().__init__(settings, executor, pools, registry, admission)
        self._interim_pool = pools.get("asr-interims", 1)
        self.batcher = AsrBatcher(self._run_inference, self._run_interims, lanes=settings.inference_lanes,
                                  release_memory=memory.release_free_memory)
        """The one batcher every stream of this server goes through."""
        self._pipelines: dict[str, tuple[LoadedModel, LoadedModel, AsrModel]] = {}
        self._pipelines_lock = asyncio.Lock()
        """One pipeline made at a time (its making runs off the event loop)."""
        self._speakers: tuple[LoadedModel, SpeakerEncoder] | None = None
        self._store = SpeakerStore(settings.model_loc)
        self._enrolled: tuple[int, dict[str, Enrolled]] = (0, {})
        """The enrolled speakers and the store's modification time they were read at."""

    async def _run_inference(self, fn: Callable[..., T], *args: object) -> T:
        return await metrics.run_inference(self._executor, "asr", fn, *args)

    async def _run_interims(self, fn: Callable[..., T], *args: object) -> T:
        """Interims run on a thread of their own, beside the finals (see AsrBatcher)."""
        return await metrics.run_inference(self._interim_pool, "asr", fn, *args)

    def models(self) -> dict[str, Manifest]:
        """The deployed ASR models edged has a pipeline for (Moonshine, NeMo RNN-T/TDT/CTC), by name."""
        return {n: m for n, m in self._registry.manifests("speech_recognition").items()
                if m.model_family in ASR_FAMILIES}

    def select(self, model: str = "", language_code: str = "", translate: bool = False) -> str:
        """The deployed model for a request (see choose_model); RequestError listing them."""
        return choose_model(self.models(), model, language_code, translate)

    async def _pipeline(self, name: str) -> AsrModel:
        """The pipeline of a model with the VAD (both loaded on demand)."""
        vads = list(self._registry.manifests("vad"))
        if not vads:
            raise RequestError("No VAD model is deployed; ASR needs one for endpointing "
                               "(add builtin:silero-vad to models_vad and run `edged init`).")
        registry = self._registry
        asr, vad = await registry.use(name), await registry.use(vads[0])
        async with self._pipelines_lock:
            cached = self._pipelines.get(name)
            if cached is None or cached[0] is not asr or cached[1] is not vad:
                # Off the event loop: it reads the VAD's graph and checks it on a second of audio,
                # seconds on a busy machine, in which the loop would answer nobody.
                cached = (asr, vad, await asyncio.to_thread(AsrModel, asr, vad, self._pools))
                self._pipelines[name] = cached
        return cached[2]

    def speaker_models(self) -> list[str]:
        """The deployed speaker models' names."""
        return list(self._registry.manifests("speaker"))

    async def speaker_encoder(self) -> SpeakerEncoder:
        """The first deployed speaker model's encoder (loaded on demand); RequestError if there is none."""
        names = self.speaker_models()
        if not names:
            raise RequestError("Speaker diarization needs a speaker model; add builtin:voicefilter-dvector to "
                               "models_speaker in config.sh and run `edged init`.")
        loaded = await self._registry.use(names[0])
        if self._speakers is None or self._speakers[0] is not loaded:
            self._speakers = (loaded, SpeakerEncoder(loaded))
        return self._speakers[1]

    def enrolled(self, model: str) -> dict[str, np.ndarray]:
        """The embeddings of the speakers enrolled with speaker model `model`, by name (the store is
        read again when it changes; a corrupt one is logged and left out)."""
        try:
            stamp = self._store.path.stat().st_mtime_ns
        except OSError:
            return {}
        if stamp != self._enrolled[0]:
            try:
                self._enrolled = (stamp, self._store.load())
            except SpeakerStoreError as exc:
                _LOGGER.warning("%s Speakers are numbered, not named, until it is.", exc)
                self._enrolled = (stamp, {})
        return {name: s.embedding for name, s in self._enrolled[1].items() if s.model == model}

    async def stream_diarization(self, request: RecognitionRequest) -> StreamDiarization:
        """How a streaming session with diarization labels speakers; RequestError without a speaker model."""
        encoder = await self.speaker_encoder()
        known = self.enrolled(encoder.name)

        def speakers() -> OnlineSpeakers:
            online = OnlineSpeakers(encoder.cluster_threshold, request.max_speakers,
                                    known_threshold=encoder.known_threshold)
            for name, embedding in known.items():
                online.enrol(name, embedding)
            return online

        return StreamDiarization(encoder, self._pools.get("speaker", 1), speakers)

    async def run_speaker(self, fn: Callable[[], T]) -> T:
        """Run speaker work (embeddings, clustering) on the inference executor."""
        return await self._run_inference(fn)

    def _stream_config(self, request: RecognitionRequest, model: AsrModel, offline: bool) -> StreamConfig:
        """The pipeline configuration of a request's streams; AudioFormatError or RequestError."""
        if request.encoding not in ("", *ENCODINGS):
            raise AudioFormatError(f"Audio encoding {request.encoding} is not supported; use LINEAR_PCM, "
                                   "FLAC, MULAW or ALAW (or send a WAV file with the encoding unset).")
        if request.sample_rate < 0 or request.channels < 0:
            raise AudioFormatError("sample_rate_hertz and audio_channel_count cannot be negative.")
        if request.channels > MAX_CHANNELS:
            raise AudioFormatError(f"{request.channels} channels are too many; at most {MAX_CHANNELS}.")
        if request.max_alternatives < 0:
            raise RequestError("max_alternatives cannot be negative.")
        if request.max_speakers < 0:
            raise RequestError("max_speaker_count cannot be negative.")
        _check_boost(request.boost)
        _check_endpointing(request.endpointing)
        endpoint = model.endpoint.override(**dict(request.endpointing)) if request.endpointing else model.endpoint
        config = StreamConfig(
            encoding=request.encoding, sample_rate=request.sample_rate, channels=request.channels or 1,
            interim_results=request.interim_results, punctuation=request.punctuation,
            word_times=request.word_times or request.diarization, endpoint=endpoint,
            interim_interval_ms=self._settings.asr_interim_interval_ms,
            max_audio_s=float(self._settings.asr_max_audio_seconds),
            max_held_bytes=self._settings.max_message_mb * 2**20,
            profanity_filter=request.profanity_filter,
            max_alternatives=min(MAX_ALTERNATIVES, max(1, request.max_alternatives)), boost=request.boost)
        # Diarization labels each final with one speaker: a window of utterances could hold several.
        return offline_config(config, 0 if request.diarization else model.window_samples) if offline else config

    @asynccontextmanager
    async def session(self, request: RecognitionRequest, offline: bool = False,
                      local: bool = False) -> AsyncIterator[AsrSession]:
        """A recognition session for the body's duration, in an admission slot; raises before
        the body on any problem. `local`: the daemon's own microphone, which listens for as long
        as the daemon runs: no client's slot, no audio limit."""
        if not local:
            self._admission.refuse_if_draining("asr")
        name = self.select(request.model, request.language_code, request.translate)
        with metrics.track_request("asr", name):
            async with AsyncExitStack() as stack:
                slot = None
                if not local:
                    slot = await stack.enter_async_context(self._admission.stream(
                        "asr", self._settings.asr_max_streams, self._settings.asr_stream_idle_timeout_s,
                        "asr_stream_idle_timeout_s"))
                session = await self._open(name, request, offline, local)
                if slot is not None and not offline:
                    session.watch(slot)
                try:
                    yield session
                finally:
                    session.close()

    async def _open(self, name: str, request: RecognitionRequest, offline: bool, local: bool) -> AsrSession:
        model = await self._pipeline(name)
        config = self._stream_config(request, model, offline)
        manifest = self.models()[name]
        if manifest.model_family == WHISPER_FAMILY and manifest.parameters.get("multilingual", True):
            config = replace(config, language=model_language(manifest, request.language_code, request.translate))
        elif request.translate:
            raise RequestError(f"Model {name} does not translate; translation needs a multilingual Whisper model "
                               f"(deployed ASR models: {_deployed(self.models())}).")
        if local:
            config = replace(config, max_audio_s=0.0)
        diarization = await self.stream_diarization(request) if request.diarization and not offline else None
        _LOGGER.debug("ASR session on %s", name)
        return AsrSession(self, name, model, config, request.separate_channels, diarization)

    async def recognize(self, request: RecognitionRequest, audio: bytes) -> list[Transcript]:
        """Offline recognition of a whole recording."""
        try:
            encoder = await self.speaker_encoder() if request.diarization else None
            async with self.session(request, offline=True) as session:
                transcripts = await session.recognize(audio)
                if encoder is not None:
                    transcripts = await session.diarized(audio, transcripts, encoder, request.max_speakers)
                return transcripts
        finally:
            if len(audio) >= memory.LARGE_REQUEST_BYTES:
                await asyncio.get_running_loop().run_in_executor(self._executor, memory.release_free_memory)
