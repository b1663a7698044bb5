"""Whisper without downloads: CTranslate2's model.bin read back, ONNX graphs built from a generated
small Whisper (tests/whisper_models.py) and checked for their KV cache, the log-mel front end
against librosa's filters (and faster-whisper's features where it is installed), the byte-level
tokenizer, and model choice by language."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edged.errors import ModelImportError, RequestError
from edged.importers.ctranslate2 import read_ct2_model
from edged.importers.whisper import import_ct2_whisper
from edged.pipelines.asr.whisper.features import CHUNK_FRAMES, LogMel, mel_filters
from edged.pipelines.asr.whisper.recogniser import Language, Task
from edged.pipelines.asr.whisper.tokenizer import WhisperTokenizer
from edged.rmir.manifest import Manifest
from edged.service.asr import choose_model, serves, whisper_language
from tests.whisper_models import SPECIAL, WORDS, make_ct2_whisper, write_model_bin


def test_model_bin_reads_back_what_was_written(tmp_path: Path) -> None:
    """Every dtype, scalars and an alias come back as written; int8 weights are scaled back."""
    rng = np.random.default_rng(1)
    variables = {"a/weight": rng.standard_normal((3, 4)).astype(np.float16), "a/num_heads": np.array(8, np.int16),
                 "b/weight": np.array([[10, -20], [30, 40]], np.int8),
                 "b/weight_scale": np.array([10.0, 20.0], np.float32), "c": np.arange(5, dtype=np.int32)}
    write_model_bin(tmp_path / "model.bin", "TestSpec", variables, {"a/alias": "a/weight"})
    model = read_ct2_model(tmp_path / "model.bin")
    assert model.spec == "TestSpec" and model.revision == 3
    np.testing.assert_array_equal(model.variables["a/alias"], variables["a/weight"])
    assert model.scalar("a/num_heads") == 8
    np.testing.assert_allclose(model.weight("b/weight"), [[1.0, -2.0], [1.5, 2.0]])
    np.testing.assert_array_equal(model.variables["c"], variables["c"])
    with pytest.raises(ModelImportError, match="no variable 'missing'"):
        model.weight("missing")
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-7])
    with pytest.raises(ModelImportError, match="ends early"):
        read_ct2_model(tmp_path / "short.bin")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ort.InferenceSession]:
    """The generated Whisper imported: its three networks in ONNX Runtime, and its manifest parameters."""
    tmp = tmp_path_factory.mktemp("tiny-whisper")
    source = import_ct2_whisper(make_ct2_whisper(tmp / "ct2"), tmp, "tiny-whisper", {})
    assert source.language_code == "multi" and source.parameters["languages"] == ["en", "de", "es"]
    return {net: ort.InferenceSession(str(path)) for net, path in source.networks.items()}


def _decoder_run(dec: ort.InferenceSession, ids: np.ndarray, past: dict[str, np.ndarray],
                 cross: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in dec.get_outputs()]
    return dict(zip(names, dec.run(None, {"input_ids": ids, **past, **cross})))


def test_decoder_steps_with_the_cache_match_one_call(tiny: dict[str, ort.InferenceSession]) -> None:
    """Tokens fed one call at a time with the decoder cache give the logits of one call on them all
    (positions follow the cache; each token sees only what is before it), for a batch of two."""
    features = np.random.default_rng(2).standard_normal((2, 80, CHUNK_FRAMES)).astype(np.float32)
    hidden = tiny["encoder"].run(None, {"input_features": features})[0]
    assert hidden.shape == (2, 1500, 32)
    names = [o.name for o in tiny["cross_kv"].get_outputs()]
    cross = {n.replace("present.", "past_key_values."): v
             for n, v in zip(names, tiny["cross_kv"].run(None, {"encoder_hidden_states": hidden}))}
    empty = {f"past_key_values.{layer}.decoder.{part}": np.zeros((2, 2, 0, 16), np.float32)
             for layer in range(2) for part in ("key", "value")}
    ids = np.array([[260, 261, 263, 266, 256, 257, 258], [260, 262, 264, 266, 259, 256, 256]], np.int64)
    whole = _decoder_run(tiny["decoder"], ids, empty, cross)
    past, logits = empty, []
    for start, end in ((0, 4), (4, 5), (5, 7)):
        out = _decoder_run(tiny["decoder"], ids[:, start:end], past, cross)
        logits.append(out["logits"])
        past = {n.replace("present.", "past_key_values."): v for n, v in out.items() if n.startswith("present.")}
    np.testing.assert_allclose(np.concatenate(logits, axis=1), whole["logits"], atol=2e-4)
    assert past["past_key_values.1.decoder.key"].shape == (2, 2, 7, 16)
    # Special tokens are never chosen (the end of text excepted); languages are read apart.
    vocab = whole["logits"].shape[-1]
    specials = 256 + len(WORDS) + np.arange(1, len(SPECIAL) + 4)
    assert (whole["logits"][..., specials] < -1e8).all() and (whole["logits"][..., 256 + len(WORDS)] > -1e8).all()
    assert (whole["logits"][..., ord("#")] < -1e8).all() and vocab == 256 + len(WORDS) + len(SPECIAL) + 4
    assert whole["language_logits"].shape == (2, 7, 3) and (np.abs(whole["language_logits"]) < 1e8).all()


def test_log_mel_matches_the_reference() -> None:
    """The filterbank is librosa's Slaney mel; the features are faster-whisper's (its frames of the
    audio, then zeros to 30 s)."""
    librosa = pytest.importorskip("librosa")
    np.testing.assert_allclose(mel_filters(80), librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), atol=1e-7)
    audio = (np.random.default_rng(3).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    features = LogMel()(audio)
    assert features.shape == (80, CHUNK_FRAMES)
    if importlib.util.find_spec("faster_whisper") is None:
        pytest.skip("faster-whisper is not installed: the filterbank was checked, the features were not")
    from faster_whisper.feature_extractor import FeatureExtractor

    reference = FeatureExtractor(feature_size=80)(audio, padding=160)
    assert reference.shape == (80, 301)
    np.testing.assert_allclose(features[:, :301], reference, atol=1e-5)
    assert not features[:, 301:].any()


def test_tokenizer_decodes_bytes_and_knows_its_special_tokens(tmp_path: Path) -> None:
    folder = make_ct2_whisper(tmp_path / "ct2", layers=1)
    tok = WhisperTokenizer.load(folder / "tokenizer.json", 0)
    hello, world, greet, there = range(256, 260)
    assert tok.decode([hello, world, there]) == "hello world there"
    assert tok.decode([greet]) == "Grüße"
    assert tok.decode(list(" Grüße".encode())) == "Grüße"  # byte tokens, a letter split in two
    eot = tok.eot
    assert tok.decode([eot, eot + 1, hello, len(tok.pieces) - 1]) == "hello"  # specials, a timestamp
    assert list(tok.languages) == ["en", "de", "es"]
    assert tok.token("<|translate|>") == eot + 5


def _manifest(name: str, language: str, languages: list[str] | None = None) -> Manifest:
    params = {"languages": languages} if languages else {}
    return Manifest(name, "speech_recognition", language, 16000, "whisper" if languages else "moonshine", (),
                    parameters=params)


def test_model_choice_by_language() -> None:
    """A model of the language asked first, then a multilingual one; "multi" the multilingual one
    first; an unknown language or a model that does not speak it is an error naming what is deployed."""
    models = {"moonshine-base-en": _manifest("moonshine-base-en", "en-US"),
              "whisper-base": _manifest("whisper-base", "multi", ["en", "de", "es"])}
    assert choose_model(models, "", "en-US") == "moonshine-base-en"
    assert choose_model(models, "", "en") == "moonshine-base-en"
    assert choose_model(models, "", "") == "moonshine-base-en"
    assert choose_model(models, "", "de-DE") == "whisper-base"
    assert choose_model(models, "", "de_DE") == "whisper-base"
    assert choose_model(models, "", "multi") == "whisper-base"
    assert choose_model(models, "whisper-base", "es") == "whisper-base"
    with pytest.raises(RequestError, match=r"No deployed ASR model serves language 'fr-FR'; deployed ASR models: "
                                           r"moonshine-base-en \(en-US\), whisper-base \(multi: en, de, es \(3 "):
        choose_model(models, "", "fr-FR")
    with pytest.raises(RequestError, match="Model 'moonshine-base-en' does not recognise language 'de'"):
        choose_model(models, "moonshine-base-en", "de")
    assert serves(models["whisper-base"], "ES-es") and not serves(models["moonshine-base-en"], "en-GB")
    assert whisper_language("de-AT") == Language("de", Task.TRANSCRIBE)
    assert whisper_language("multi", translate=True) == Language("", Task.TRANSLATE)
