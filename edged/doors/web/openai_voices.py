"""OpenAI's voice names on edged's voices, and the deployed voices as `GET /v1/audio/voices` lists them.

Clients written for OpenAI send `alloy`, `echo`, ... (OPENAI_VOICE_NAMES). Each is spoken by the
voice `openai_voice_map` names for it, or else by the default table: OpenAI's names, in their
order, dealt round the deployed voices in turn (alloy the first voice, ash the second, ... back to
the first when the voices run out), within the voices of the request's `model` where it names a
deployed voice model. With one voice deployed, every name speaks with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edged.config import OPENAI_VOICE_NAMES
from edged.service.tts import TtsService


@dataclass(frozen=True)
class DeployedVoice:
    """One voice a client can name: a subvoice of a deployed voice model."""

    id: str
    """Its full voice name ("English-US.Joe"), what `voice` takes."""
    model: str
    language: str
    sample_rate: int


def deployed_voices(tts: TtsService) -> list[DeployedVoice]:
    """Every deployed voice (each speaker of a multi-speaker Piper voice), in deployment order."""
    return [DeployedVoice(name, info.model, info.language_code, info.sample_rate)
            for info in tts.voices() for name in info.names]


def is_openai_voice(voice: str) -> bool:
    """Whether `voice` is one of OpenAI's voice names (any case)."""
    return voice.lower() in OPENAI_VOICE_NAMES


def openai_voice(name: str, voices: list[DeployedVoice], configured: dict[str, str], model: str = "") -> str:
    """The voice that speaks OpenAI's voice `name`: `openai_voice_map`'s, else the default table's
    (see the module); empty where no voice is deployed (synthesis then says so)."""
    name = name.lower()
    if name in configured:
        return configured[name]
    pool = [v for v in voices if v.model == model] or voices
    return pool[OPENAI_VOICE_NAMES.index(name) % len(pool)].id if pool else ""


def voices_body(voices: list[DeployedVoice], configured: dict[str, str]) -> dict[str, Any]:
    """`GET /v1/audio/voices`: `{"voices": [{"id", "name", "language", ...}]}` as Kokoro-FastAPI
    and speaches-style servers answer (Open WebUI reads `id` and `name`), and `openai_voices`, the
    table OpenAI's names go by (for a request whose `model` names no voice model)."""
    return {"voices": [{"id": v.id, "name": v.id, "language": v.language, "model": v.model,
                        "sample_rate": v.sample_rate} for v in voices],
            "openai_voices": {n: openai_voice(n, voices, configured) for n in OPENAI_VOICE_NAMES}}
