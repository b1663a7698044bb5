"""The service's status and local-audio dataclasses carry edged.v1's field names, so the gRPC door
converts them by name and the web console's JSON has edged.v1's keys."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from edged.doors.grpc.control import message
from edged.proto import edged_pb2
from edged.service.local_audio import (
    Heard,
    HeardWord,
    MicrophoneStatus,
    SpeakerStatus,
    SpeakOutcome,
    SpeakRequest,
)
from edged.service.status import ModelStatus, ServerStatus, ServiceHealth, StreamCount

PAIRS = [
    (ServerStatus, edged_pb2.StatusResponse), (ModelStatus, edged_pb2.ModelStatus),
    (ServiceHealth, edged_pb2.ServiceHealth), (StreamCount, edged_pb2.StreamCount),
    (MicrophoneStatus, edged_pb2.MicrophoneStatus), (SpeakerStatus, edged_pb2.SpeakerStatus),
    (Heard, edged_pb2.Transcript), (HeardWord, edged_pb2.Word),
    (SpeakRequest, edged_pb2.SpeakRequest), (SpeakOutcome, edged_pb2.SpeakResponse),
]


@pytest.mark.parametrize(("cls", "kind"), PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_each_dataclass_has_its_messages_fields(cls: Any, kind: Any) -> None:
    """No field is lost or added between a dataclass and its edged.v1 message."""
    assert {f.name for f in dataclasses.fields(cls)} == {f.name for f in kind.DESCRIPTOR.fields}


def test_nested_values_convert() -> None:
    """A status with models, streams, microphone and speaker, and a transcript with words, become
    messages whose every value is the dataclass's."""
    status = ServerStatus(
        version="1", pid=42, uptime_s=3.5, health="SERVING",
        services=[ServiceHealth("asr", "SERVING")],
        models=[ModelStatus("m", "speech_recognition", "asr", "loaded", 600.0, "", 1.5)],
        streams=[StreamCount("asr", 2, 8)], memory_budget_mb=1000.0, memory_available_mb=2000.0,
        rss_mb=700.0, memory_high_water_mb=1500.0, listen="127.0.0.1:50051",
        microphone=MicrophoneStatus(True, "listening", "mic", 48000, False, 1, 2.5, 3),
        speaker=SpeakerStatus(True, "idle", "spk", 1, 4))
    converted = message(edged_pb2.StatusResponse, status)
    assert converted.pid == 42 and converted.models[0].idle_s == 1.5 and converted.streams[0].limit == 8
    assert converted.memory_high_water_mb == 1500.0
    assert converted.microphone.device_rate == 48000 and converted.speaker.played == 4
    assert converted.services[0].status == "SERVING"
    heard = Heard("hello there", True, 0.5, 1.0, 10.0, 11.0, 120.0,
                  [HeardWord("hello", 10.0, 10.5, 0.5), HeardWord("there", 10.5, 11.0, 0.25)])
    transcript = message(edged_pb2.Transcript, heard)
    assert [w.word for w in transcript.words] == ["hello", "there"] and transcript.words[1].confidence == 0.25
    assert transcript.latency_ms == 120.0 and transcript.is_final
