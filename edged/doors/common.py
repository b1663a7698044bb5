"""What every door shares: the services a request needs (or why they are off), Riva's endpointing
names, force_eou and custom_configuration (Whisper's task), the text of a recording's finals, and
how a refused request is logged and counted (`log_refusal`, with client text escaped by `printable`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from edged.errors import FeatureOffError
from edged.pipelines.asr.results import Result
from edged.pipelines.speaker.online import SpeakerLabel
from edged.service import metrics
from edged.service.asr import ENDPOINT_FIELDS, AsrService, Transcript
from edged.service.context import ServiceContext
from edged.service.tts import TtsService
from edged.service.wake import WakeService

RIVA_ENDPOINTING = dict(zip(("start_history", "start_threshold", "stop_history", "stop_threshold",
                             "stop_history_eou", "stop_threshold_eou"), ENDPOINT_FIELDS, strict=True))
"""Riva's EndpointingConfig field: its name in RecognitionRequest.endpointing."""

_TRUE = ("true", "1", "yes")


def asr_service(ctx: ServiceContext) -> AsrService:
    """The ASR service, or FeatureOffError naming the setting that turned it off."""
    if ctx.asr is None:
        raise FeatureOffError("Speech recognition is off on this server (service_enabled_asr=false in config.sh).")
    return ctx.asr


def tts_service(ctx: ServiceContext) -> TtsService:
    """The TTS service, or FeatureOffError naming the setting that turned it off."""
    if ctx.tts is None:
        raise FeatureOffError("Speech synthesis is off on this server (service_enabled_tts=false in config.sh).")
    return ctx.tts


def wake_service(ctx: ServiceContext) -> WakeService:
    """The wake-word service, or FeatureOffError naming the setting that turns it on."""
    if ctx.wake is None:
        raise FeatureOffError("Wake words are off on this server (models_wake is empty in config.sh).")
    return ctx.wake


def endpointing(fields: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    """The endpointing overrides of a Riva EndpointingConfig's fields, by Riva's names (others
    ignored; 0 or less keeps the model's). ValueError or TypeError for a value that is no number."""
    given = ((ours, float(fields[theirs])) for theirs, ours in RIVA_ENDPOINTING.items() if theirs in fields)
    return tuple((name, value) for name, value in given if value > 0)


def force_eou(runtime_config: Mapping[str, Any] | None) -> bool:
    """Whether Riva's runtime_config asks to end the utterance now (`force_eou`: true, 1 or yes)."""
    return str((runtime_config or {}).get("force_eou", "")).strip().lower() in _TRUE


def custom_configuration(value: Mapping[str, Any] | str | None) -> dict[str, str]:
    """Riva's `custom_configuration`: the gRPC RecognitionConfig's map, or the realtime session's
    `recognition_config.custom_configuration` string `key:value,key:value` (as nvidia-riva-client's
    --custom-configuration sends it); ValueError for a string piece that is not `key:value`."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return {str(k).strip(): str(v).strip() for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError("custom_configuration must be a string of key:value pairs or an object")
    pairs = {}
    for piece in filter(None, (p.strip() for p in value.split(","))):
        key, colon, val = piece.partition(":")
        if not colon or not key.strip():
            raise ValueError(f"custom_configuration piece {piece!r} is not key:value")
        pairs[key.strip()] = val.strip()
    return pairs


def translates(custom: Mapping[str, str]) -> bool:
    """Whether Riva's custom_configuration asks for Whisper's translate task (`task:translate`;
    `task:transcribe` or none: transcription); ValueError for another task."""
    task = custom.get("task", "transcribe").lower()
    if task not in ("transcribe", "translate"):
        raise ValueError(f"custom_configuration task {task!r} is not known; use task:transcribe or task:translate")
    return task == "translate"


def finals_text(transcripts: Iterable[Transcript]) -> str:
    """The first channel's final texts, joined by spaces (a recording's whole transcript)."""
    return " ".join(text for t in transcripts
                    if t.result.is_final and t.channel == 0 and (text := t.result.transcript.strip()))


def printable(text: str) -> str:
    """`text` with line breaks and other control characters escaped as Python's repr does, for a
    log line that holds what a client sent (a `%0a` in a URL path must not start a new line)."""
    return repr(text)[1:-1]


def log_refusal(logger: logging.Logger, door: str, kind: str, what: str, status: str, message: str) -> None:
    """One INFO line for a request a door refused (client text escaped), counted in
    `edged_client_errors_total{door,kind}`; every door logs its refusals through this."""
    metrics.CLIENT_ERRORS.labels(door=door, kind=kind).inc()
    logger.info("%s refused (%s): %s", printable(what), status, printable(message))


def speaker_of(result: Result) -> str:
    """A final's speaker as every door names them (OpenAI's labels): an enrolled name, else A, B,
    ... by first appearance; empty where the final carries no speaker."""
    return SpeakerLabel(result.speaker, result.speaker_name).text() if result.speaker else ""
