"""Uploaded recordings (any format of edged.audio.compressed) made readable by the pipelines."""

from __future__ import annotations

import asyncio

from edged.audio.compressed import Container, decode_to_wav
from edged.service.context import ServiceContext


async def upload_wav(ctx: ServiceContext, audio: bytes, container: Container | None) -> bytes:
    """A compressed upload decoded to WAV on the one upload-decoding thread (at most
    asr_max_audio_seconds of it); WAV or FLAC as it is."""
    if container is None:
        return audio
    limit = float(ctx.settings.asr_max_audio_seconds)
    pool = ctx.pools.get("upload-decode", 1)
    return await asyncio.get_running_loop().run_in_executor(pool, decode_to_wav, audio, container, limit)
