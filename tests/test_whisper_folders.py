"""A user's Whisper in CTranslate2's form given to `edged build speech_recognition --whisper FOLDER`:
generated multilingual and English-only (`.en`) models (tests/whisper_models.py) built by the real
CLI and deployed, then recognising in this process; folders that are not such a model refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edged.backends import BackendOptions
from edged.errors import ModelImportError
from edged.importers.whisper import import_whisper_folder
from edged.loader import load_model
from edged.pipelines.asr.whisper.recogniser import Language, WhisperRecogniser
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget, list_models
from edged.rmir import RmirRef
from edged.rmir.manifest import Manifest
from edged.service.asr import choose_model, model_language
from tests.whisper_models import SPECIAL, WORDS, make_ct2_whisper, with_vocabulary_txt

_EN_VOCAB = 51864
"""OpenAI's `.en` models' vocabulary, by which an English-only model is told apart."""


def _edged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def whisper_repo(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Path:
    """Two generated Whisper folders built by the CLI and deployed: `tiny-multi` (tokenizer.json,
    three languages) and `tiny.en` (English-only by its 51864 tokens, vocabulary.txt only)."""
    tmp = tmp_path_factory.mktemp("whisper-folders")
    multi = make_ct2_whisper(tmp / "tiny-multi", layers=1)
    english = with_vocabulary_txt(make_ct2_whisper(tmp / "tiny.en", layers=1, seed=1,
                                                   timestamps=_EN_VOCAB - 256 - len(WORDS) - len(SPECIAL)),
                                  _EN_VOCAB)
    for folder, extra in ((multi, ["--license", "MIT"]), (english, ["--name", "tiny-en", "--language-code", "en-GB"])):
        rmir = tmp / f"{folder.name}.rmir"
        built = _edged("build", "speech_recognition", str(rmir), "--whisper", str(folder), *extra)
        assert built.returncode == 0, built.stderr
        deploy(RmirRef(rmir), tmp / "repo" / "models", cpu_target, BackendOptions())
    return tmp / "repo"


def test_built_deployed_and_recognising(whisper_repo: Path, cpu_target: DeployTarget) -> None:
    """The multilingual model is served as `multi` and identifies each utterance's language; the
    English-only one as its English tag, with no language tokens in its decoder, never identifying."""
    models = {m.name: m for m in list_models(whisper_repo / "models", cpu_target)}
    assert set(models) == {"tiny-multi", "tiny-en"}
    multi, english = models["tiny-multi"].manifest, models["tiny-en"].manifest
    assert (multi.language_code, multi.parameters["languages"], multi.parameters["multilingual"]) == \
        ("multi", ["en", "de", "es"], True)
    assert (english.language_code, english.parameters["languages"], english.parameters["multilingual"]) == \
        ("en-GB", [], False)
    assert multi.license == "MIT" and english.license == "unknown"
    manifests = {n: m.manifest for n, m in models.items()}
    assert choose_model(manifests, "", "en-GB") == "tiny-en" and choose_model(manifests, "", "de") == "tiny-multi"
    audio = (np.random.default_rng(4).standard_normal(16000 * 2) * 0.1).astype(np.float32)
    options = BackendOptions(intra_op_threads=1)
    rec = WhisperRecogniser(load_model(models["tiny-multi"], options))
    found = rec.decode([audio, audio[:8000]])
    assert found[0].language == rec.identify(rec.cross_kv_of(rec.encode([audio])))[0][0]
    assert all(h.language in ("en", "de", "es") for h in found)
    assert rec.decode([audio], languages=[Language("es")])[0].language == "es"
    en = WhisperRecogniser(load_model(models["tiny-en"], options))
    assert not en.multilingual and en.languages == []
    assert "language_logits" in [t.name for n in multi.networks if n.name == "decoder" for t in n.outputs]
    assert "language_logits" not in [t.name for n in english.networks if n.name == "decoder" for t in n.outputs]
    hyp = en.decode([audio], languages=[Language("de")])[0]
    assert hyp.language == "" and len(hyp.tokens) <= en.token_cap(len(audio))


def _folder(tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    folder = make_ct2_whisper(tmp_path / "w", layers=1, text_positions=8)
    for name in drop:
        (folder / name).unlink()
    return folder


def test_folders_that_are_not_whisper_are_refused(tmp_path: Path) -> None:
    """Each names what is missing or wrong; an English-only model cannot be served as another language."""
    with pytest.raises(ModelImportError, match=r"lacks model\.bin\.$"):
        import_whisper_folder(_folder(tmp_path, ("model.bin",)), tmp_path, {})
    with pytest.raises(ModelImportError, match=r"lacks tokenizer\.json or vocabulary\.txt or vocabulary\.json"):
        import_whisper_folder(_folder(tmp_path, ("tokenizer.json",)), tmp_path, {})
    with pytest.raises(ModelImportError, match="is not a folder"):
        import_whisper_folder(tmp_path / "nothing", tmp_path, {})
    optimum = tmp_path / "optimum"
    optimum.mkdir()
    for name in ("encoder_model.onnx", "decoder_model_merged.onnx", "config.json"):
        (optimum / name).write_bytes(b"{}")
    with pytest.raises(ModelImportError, match=r"is not an optimum Whisper export: it lacks tokenizer\.json\.$"):
        import_whisper_folder(optimum, tmp_path, {})
    with pytest.raises(ModelImportError, match="does not know language fr-FR; it knows en, de, es"):
        import_whisper_folder(_folder(tmp_path), tmp_path, {"language_code": "fr-FR"})
    folder = _folder(tmp_path)
    (folder / "config.json").write_text(json.dumps({"is_multilingual": False}))
    with pytest.raises(ModelImportError, match="English-only Whisper model; its language code must be English"):
        import_whisper_folder(folder, tmp_path, {"language_code": "de-DE"})
    with pytest.raises(ModelImportError, match="takes its sample_rate from its folder"):
        import_whisper_folder(folder, tmp_path, {"sample_rate": 8000})


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ("model.bin",))
    done = _edged("build", "speech_recognition", str(tmp_path / "x.rmir"), "--whisper", str(folder))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"edged: {folder} is not a CTranslate2 Whisper model: it lacks model.bin."]
    done = _edged("build", "speech_synthesis", str(tmp_path / "x.rmir"), "--whisper", str(folder))
    assert "A Whisper model is a speech_recognition model, not speech_synthesis." in done.stderr


def test_multilingual_model_served_as_one_language(tmp_path: Path) -> None:
    """`--language-code de-DE` on a multilingual model: German unless the request asks another."""
    src = import_whisper_folder(_folder(tmp_path), tmp_path, {"language_code": "de-DE", "name": "tiny-de"})
    assert (src.name, src.language_code, src.parameters["multilingual"]) == ("tiny-de", "de-DE", True)
    manifest = Manifest(src.name, src.pipeline, src.language_code, 16000, src.model_family, (),
                        parameters=src.parameters)
    assert model_language(manifest, "") == Language("de")
    assert model_language(manifest, "es-ES") == Language("es")
    assert model_language(replace(manifest, language_code="multi"), "") == Language("")
