"""Enrolled speakers: the store (atomic writes, corrupt stores refused with nothing lost), names,
and enrolment audio that is too short, silent or unreadable."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

from edged.errors import RequestError
from edged.pipelines.speaker.encoder import SpeakerEncoder, unit
from edged.pipelines.speaker.enrolled import (
    MIN_SPEECH_S,
    SpeakerStore,
    SpeakerStoreError,
    check_name,
    enrolment,
    speech_seconds,
)
from tests.test_speaker_encoder import espeak_voice


def wav(audio: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def test_store_round_trip_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = SpeakerStore(tmp_path)
    assert store.load() == {}
    a, b = unit(np.random.default_rng(0).standard_normal((2, 8)))
    store.enrol("Ada", a, "voicefilter-dvector", 4.0)
    store.enrol("Bo", b, "other-model", 5.5)
    loaded = store.load()
    assert sorted(loaded) == ["Ada", "Bo"] and np.allclose(loaded["Ada"].embedding, a, atol=1e-5)
    assert list(store.for_model("voicefilter-dvector")) == ["Ada"]
    store.remove("Bo")
    assert sorted(store.load()) == ["Ada"]
    assert [p.name for p in store.path.parent.iterdir()] == ["enrolled.json"]


def test_unknown_names_and_bad_names_are_refused(tmp_path: Path) -> None:
    store = SpeakerStore(tmp_path)
    store.enrol("Ada", unit(np.ones(8)), "m", 4.0)
    with pytest.raises(RequestError, match="enrolled speakers: Ada"):
        store.remove("Zed")
    assert check_name("  Ada Lovelace ") == "Ada Lovelace"
    for bad in ("", " ", "../etc", "x" * 65, "-dash"):
        with pytest.raises(RequestError, match="not allowed"):
            check_name(bad)


@pytest.mark.parametrize("body", ['{"speakers": {"a": {"embedding": "oops"}}}', "{not json", "[]",
                                  '{"speakers": {"a": {"embedding": [1, 0], "model": "m", "seconds": 3},'
                                  ' "b": {"embedding": [1, 0, 0], "model": "m", "seconds": 3}}}'])
def test_a_corrupt_store_is_refused_and_left_as_it_is(tmp_path: Path, body: str) -> None:
    store = SpeakerStore(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_text(body, encoding="utf-8")
    for act in (store.load, lambda: store.enrol("Ada", unit(np.ones(8)), "m", 4.0), lambda: store.remove("a")):
        with pytest.raises(SpeakerStoreError, match="nothing was changed") as caught:
            act()
        assert "\n" not in str(caught.value)
    assert store.path.read_text(encoding="utf-8") == body


def test_speech_seconds_counts_loud_frames() -> None:
    assert speech_seconds(np.zeros(16000 * 5, np.float32)) == 0.0
    tone = 0.1 * np.sin(np.arange(16000 * 2) / 16000 * 2 * np.pi * 200).astype(np.float32)
    assert abs(speech_seconds(np.concatenate([tone, np.zeros(16000, np.float32)])) - 2.0) < 0.05


def test_enrolment_refuses_short_silent_and_unreadable_audio(speaker_encoder: SpeakerEncoder) -> None:
    short = espeak_voice("Hello there.", "en-us")
    assert speech_seconds(short) < MIN_SPEECH_S
    with pytest.raises(RequestError, match="needs at least"):
        enrolment(speaker_encoder, [("short.wav", wav(short))])
    with pytest.raises(RequestError, match="quiet.wav is silent"):
        enrolment(speaker_encoder, [("quiet.wav", wav(np.zeros(16000 * 4)))])
    with pytest.raises(RequestError, match="^notes.txt: "):
        enrolment(speaker_encoder, [("notes.txt", b"these are not the droids")])
    long = espeak_voice("The quick brown fox jumps over the lazy dog, and then it runs far away into the woods.",
                        "en-us")
    embedding, seconds = enrolment(speaker_encoder, [("a.wav", wav(long)), ("b.wav", wav(short, 22050))])
    assert seconds >= MIN_SPEECH_S and np.isclose(np.linalg.norm(embedding), 1.0, atol=1e-5)
