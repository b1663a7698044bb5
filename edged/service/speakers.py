"""Enrolled speakers as a service for the doors (edged.v1 and HTTP): enrol from uploaded clips
with the daemon's speaker model, list, remove. The store is edged.pipelines.speaker.enrolled's,
the one `edged speakers` writes; the ASR service reads it again when it changes."""

from __future__ import annotations

import asyncio

from edged.audio.compressed import upload_container
from edged.errors import FeatureOffError, RequestError
from edged.pipelines.speaker.enrolled import Enrolled, SpeakerStore, check_name, enrolment
from edged.service.context import ServiceContext
from edged.service.uploads import upload_wav

_WRITING = asyncio.Lock()
"""One change of the store at a time in this process (each is a read, a change and a whole write)."""


def _store(ctx: ServiceContext) -> SpeakerStore:
    return SpeakerStore(ctx.settings.model_loc)


async def enrol(ctx: ServiceContext, name: str, clips: list[tuple[str, bytes]]) -> Enrolled:
    """Enrol (or re-enrol) `name` from clips (label, audio in any upload format) with the first
    deployed speaker model. RequestError for a bad name or clip, FeatureOffError without a speaker
    model, SpeakerStoreError (nothing changed) for a corrupt store."""
    name = check_name(name)
    if not clips:
        raise RequestError("Give at least one clip of the speaker's voice.")
    store = _store(ctx)
    await asyncio.to_thread(store.load)  # a corrupt store is refused before any work
    asr = ctx.asr
    if asr is None or not asr.speaker_models():
        raise FeatureOffError("Enrolling a speaker needs a speaker model; add builtin:voicefilter-dvector to "
                              "models_speaker in config.sh and run `edged init`.")
    encoder = await asr.speaker_encoder()
    wavs = [(label, await upload_wav(ctx, audio, upload_container(label, audio))) for label, audio in clips]
    embedding, seconds = await asr.run_speaker(lambda: enrolment(encoder, wavs))
    async with _WRITING:
        await asyncio.to_thread(store.enrol, name, embedding, encoder.name, seconds)
    return Enrolled(name, embedding, encoder.name, seconds)


async def enrolled(ctx: ServiceContext) -> list[Enrolled]:
    """The enrolled speakers by name; SpeakerStoreError for a corrupt store."""
    speakers = await asyncio.to_thread(_store(ctx).load)
    return sorted(speakers.values(), key=lambda s: s.name)


async def remove(ctx: ServiceContext, name: str) -> None:
    """Forget `name`; UnknownSpeakerError naming the enrolled ones if there is none by that name."""
    async with _WRITING:
        await asyncio.to_thread(_store(ctx).remove, name.strip())
