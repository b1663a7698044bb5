"""Enrolled speakers over edged.v1 (grpc) and HTTP (requests) on one running server: enrol, list,
a diarized transcription naming the enrolled voices, remove, and the refusals; `edged speakers`
going through the running daemon."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import openai
import pytest
import requests

from edged.client.webm_clip import ogg_opus
from edged.config import load_settings
from edged.doors.grpc.status import status_for as grpc_status
from edged.doors.web.errors import status_for as http_status
from edged.errors import FeatureOffError
from edged.pipelines.pools import Pools
from edged.proto import edged_pb2, edged_pb2_grpc
from edged.service import speakers
from edged.service.context import ServiceContext
from tests import test_diarization
from tests.test_diarization import RATE, labels_by_voice, wav_of
from tests.test_speaker_encoder import espeak_voice

server = test_diarization.server
"""The one server of this module: `edged start` with the default models and the speaker encoder."""
talk = test_diarization.talk
voice = test_diarization.voice

ADA = ["Yesterday the weather was cold and windy, so we stayed inside and read books.",
       "My favourite colour is green, like the leaves of the old oak in the garden."]
"""Said by the conversation's third voice (espeak en+f3), none of its sentences."""
BOB = "Yesterday the weather was cold and windy, so we stayed inside and read some books, all day long."
"""Said by the conversation's second voice (espeak en-us)."""


def pcm_of(text: str, voice_name: str) -> bytes:
    return (np.clip(espeak_voice(text, voice_name), -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def stub(server: tuple[str, int]) -> Iterator[edged_pb2_grpc.EdgedStub]:
    with grpc.insecure_channel(server[0]) as channel:
        yield edged_pb2_grpc.EdgedStub(channel)


@pytest.fixture(scope="module")
def http(server: tuple[str, int]) -> str:
    return f"http://127.0.0.1:{server[1]}/v1/speakers"


def refusal(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=60)  # type: ignore[operator]
    assert "\n" not in (caught.value.details() or "")
    return caught.value


def test_enrol_list_recognise_and_remove(stub: edged_pb2_grpc.EdgedStub, http: str, server: tuple[str, int],
                                         talk: tuple[bytes, list[float]], default_repo: Path, tmp_path: Path) -> None:
    """ada enrolled over HTTP (two WAV clips), bob over edged.v1 (Ogg Opus): both listed (no voice
    prints), a diarized_json transcription names their voices, and both are removed."""
    files = [("file", (f"ada{i}.wav", wav_of(pcm_of(text, "en+f3")), "audio/wav")) for i, text in enumerate(ADA)]
    answer = requests.post(http, data={"name": "ada"}, files=files, timeout=120)
    assert answer.status_code == 201, answer.text
    assert answer.json()["name"] == "ada" and answer.json()["seconds"] >= 3.0
    bob = stub.EnrollSpeaker(edged_pb2.EnrollSpeakerRequest(name="bob", audio=[ogg_opus(pcm_of(BOB, "en-us"), RATE)]),
                             timeout=120)
    assert bob.name == "bob" and bob.seconds >= 3.0 and bob.model == answer.json()["model"]
    try:
        listed = stub.ListSpeakers(edged_pb2.ListSpeakersRequest(), timeout=30)
        assert [s.name for s in listed.speakers] == ["ada", "bob"]
        body = requests.get(http, timeout=30).json()
        assert [s["name"] for s in body["data"]] == ["ada", "bob"] and "embedding" not in json.dumps(body)
        cli = subprocess.run([sys.executable, "-m", "edged", "speakers", "list", "-c",
                              str(default_repo.parent / "config.sh")], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert cli.returncode == 0 and "ada" in cli.stdout and "bob" in cli.stdout, cli.stderr
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server[1]}/v1", api_key="unused", max_retries=0)
        pcm, starts = talk
        diarized = client.audio.transcriptions.create(model="gpt-4o-transcribe-diarize", file=("c.wav", wav_of(pcm)),
                                                      response_format="diarized_json")
        by_voice = labels_by_voice(diarized.segments, starts)
        assert by_voice[2] == {"ada"} and by_voice[1] == {"bob"} and not by_voice[0] & {"ada", "bob"}, by_voice
    finally:
        deleted = requests.delete(f"{http}/ada", timeout=30)
        stub.RemoveSpeaker(edged_pb2.RemoveSpeakerRequest(name="bob"), timeout=30)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True, deleted.text
    assert not stub.ListSpeakers(edged_pb2.ListSpeakersRequest(), timeout=30).speakers
    assert requests.get(http, timeout=30).json()["data"] == []


def test_bad_clips_names_and_unknown_speakers_are_refused(stub: edged_pb2_grpc.EdgedStub, http: str) -> None:
    """Too short, silent and unreadable clips and bad names: INVALID_ARGUMENT / 400; an unknown
    name: NOT_FOUND / 404; each one line (the HTTP door's error shape)."""
    short = wav_of(pcm_of("Hello there.", "en-us"))
    silent = wav_of(np.zeros(RATE * 4, "<i2").tobytes())
    for name, clips, says in (("ann", [short], "needs at least"), ("ann", [silent], "is silent"),
                              ("ann", [b"these are not the droids"], "is not audio edged can read"),
                              ("../etc", [short], "is not allowed"), ("ann", [], "at least one clip")):
        error = refusal(stub.EnrollSpeaker, edged_pb2.EnrollSpeakerRequest(name=name, audio=clips))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in (error.details() or ""), error.details()
    missing = refusal(stub.RemoveSpeaker, edged_pb2.RemoveSpeakerRequest(name="nobody"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "No speaker 'nobody'" in (missing.details() or "")
    answer = requests.post(http, data={"name": "ann"}, files=[("file", ("s.wav", silent, "audio/wav"))], timeout=60)
    assert answer.status_code == 400 and "is silent" in answer.json()["error"]["message"]
    answer = requests.post(http, data={"name": "ann"}, timeout=60)
    assert answer.status_code == 400 and "multipart" in answer.json()["error"]["message"]
    answer = requests.delete(f"{http}/nobody", timeout=30)
    error = answer.json()["error"]
    assert answer.status_code == 404 and error["type"] == "not_found_error" and "\n" not in error["message"]


def test_a_corrupt_store_is_refused_and_left_as_it_is(stub: edged_pb2_grpc.EdgedStub, http: str,
                                                     default_repo: Path) -> None:
    store = default_repo / "speakers" / "enrolled.json"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text('{"speakers": [', encoding="utf-8")
    try:
        clip = wav_of(pcm_of(BOB, "en-us"))
        for call, request in ((stub.EnrollSpeaker, edged_pb2.EnrollSpeakerRequest(name="bob", audio=[clip])),
                              (stub.ListSpeakers, edged_pb2.ListSpeakersRequest()),
                              (stub.RemoveSpeaker, edged_pb2.RemoveSpeakerRequest(name="bob"))):
            error = refusal(call, request)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "unreadable" in (error.details() or "")
        answer = requests.get(http, timeout=30)
        assert answer.status_code == 400 and "unreadable" in answer.json()["error"]["message"]
        assert store.read_text(encoding="utf-8") == '{"speakers": ['
    finally:
        store.unlink()


def test_without_a_speaker_model_enrolment_is_a_failed_precondition(tmp_path: Path) -> None:
    """A server with no speaker model deployed refuses enrolment: FAILED_PRECONDITION (HTTP 400)
    naming models_speaker, before any audio is read."""
    settings, _ = load_settings(None, overrides={"model_loc": str(tmp_path)})
    pools = Pools()
    try:
        ctx = ServiceContext.create(settings, pools)
        with pytest.raises(FeatureOffError) as caught:
            asyncio.run(speakers.enrol(ctx, "ann", [("a.wav", b"RIFF")]))
    finally:
        pools.shutdown()
    code, message = grpc_status(caught.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "models_speaker" in message
    assert http_status(caught.value)[0] == 400
    assert not (tmp_path / "speakers").exists()
