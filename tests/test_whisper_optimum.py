"""A Whisper ONNX export in Hugging Face optimum's layout given to `edged build speech_recognition
--whisper FOLDER`: generated multilingual and English-only exports (tests/whisper_optimum_models.py)
built by the real CLI and deployed, recognising in this process with the tokens and languages a
plain greedy loop over the export's own two graphs gives; the alignment heads' cross-attention
found in the export's decoder equal to a CTranslate2 build's of the same weights, and words timed
by it (an export whose attention has no Softmax imported without, its words given their
utterance's span); exports lacking a file or with other graphs refused naming what is wrong (the
CLI's one-line error: tests/test_whisper_folders.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edged.backends import BackendOptions
from edged.errors import ModelImportError
from edged.importers import source_for_build
from edged.importers.whisper import import_ct2_whisper, import_whisper_folder
from edged.loader import load_model
from edged.pipelines.asr.jobs import DecodeJob, JobKind, StreamConfig
from edged.pipelines.asr.resultmaker import ResultMaker
from edged.pipelines.asr.whisper.recogniser import ALIGNMENT_OUTPUT, Language, Task, WhisperRecogniser
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget, list_models
from edged.rmir import RmirRef
from edged.rmir.build import build_rmir
from tests.test_whisper_word_times import PROMPT, SCRIPT
from tests.whisper_models import SPECIAL, WORDS
from tests.whisper_optimum_models import make_optimum_whisper

_EN_VOCAB = 51864


def _edged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> dict[str, Path]:
    """Two generated exports deployed to `repo`: `tiny-multi`, built by the CLI, and `tiny-en`
    (51864 tokens, `is_multilingual: false`), built in this process the way the CLI does."""
    tmp = tmp_path_factory.mktemp("whisper-optimum")
    folders = {"tiny-multi": make_optimum_whisper(tmp / "tiny-multi", seed=3),
               "tiny-en": make_optimum_whisper(tmp / "tiny.en", multilingual=False, seed=5,
                                               timestamps=_EN_VOCAB - 256 - len(WORDS) - len(SPECIAL))}
    built = _edged("build", "speech_recognition", str(tmp / "multi.rmir"), "--whisper", str(folders["tiny-multi"]),
                   "--name", "tiny-multi")
    assert built.returncode == 0, built.stderr
    work = tmp / "work"
    work.mkdir()
    build_rmir(source_for_build("speech_recognition", [], None, None, {"name": "tiny-en"}, work,
                                whisper=folders["tiny-en"]), RmirRef(tmp / "en.rmir"))
    for rmir in ("multi.rmir", "en.rmir"):
        deploy(RmirRef(tmp / rmir), tmp / "repo" / "models", cpu_target, BackendOptions())
    return {**folders, "repo": tmp / "repo"}


class Reference:
    """Greedy decoding straight on an export's encoder_model.onnx and decoder_model_merged.onnx,
    as optimum's generate runs them: the first call through the no-cache branch, then one token
    per call through the cached branch, fed the first call's cross K/V; the special tokens but the end and the generation
    config's `suppress_tokens` never chosen."""

    def __init__(self, folder: Path) -> None:
        self.encoder = ort.InferenceSession(str(folder / "encoder_model.onnx"))
        self.decoder = ort.InferenceSession(str(folder / "decoder_model_merged.onnx"))
        self.outputs = [o.name for o in self.decoder.get_outputs()]
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        self.special = {t["content"]: t["id"] for t in spec["added_tokens"]}
        self.eot = self.special["<|endoftext|>"]
        vocab = self.decoder.get_outputs()[0].shape[2]
        generation = json.loads((folder / "generation_config.json").read_text())
        self.allowed = np.ones(vocab, bool)
        self.allowed[[i for i in self.special.values() if i != self.eot]] = False
        self.allowed[len(spec["model"]["vocab"]) + len(self.special):] = False  # timestamps
        self.allowed[generation["suppress_tokens"]] = False
        self.languages = generation["lang_to_id"]
        self.past = [i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]

    def run(self, ids: list[int], hidden: np.ndarray, past: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        feed = {"input_ids": np.array([ids], np.int64), "encoder_hidden_states": hidden,
                "use_cache_branch": np.array([past is not None])}
        feed |= past or {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in self.past}
        return dict(zip(self.outputs, self.decoder.run(None, feed)))

    def decode(self, features: np.ndarray, cap: int, language: str = "", task: str = "transcribe"
               ) -> tuple[str, list[int]]:
        hidden = self.encoder.run(None, {"input_features": features})[0]
        sot = self.special["<|startoftranscript|>"]
        if self.languages and not language:
            logits = self.run([sot], hidden, None)["logits"][0, -1]
            language = max(self.languages, key=lambda tag: float(logits[self.languages[tag]]))[2:-2]
        prompt = [sot, self.special[f"<|{language}|>"], self.special[f"<|{task}|>"]] if self.languages else [sot]
        out = self.run([*prompt, self.special["<|notimestamps|>"]], hidden, None)
        cross = {i.name: out[i.name.replace("past_key_values", "present")] for i in self.past if ".encoder." in i.name}
        tokens: list[int] = []
        while True:
            logits = np.where(self.allowed, out["logits"][0, -1], -np.inf)
            token = int(logits.argmax())
            if token == self.eot or len(tokens) >= cap:
                return language, tokens
            tokens.append(token)
            past = {**cross, **{i.name: out[i.name.replace("past_key_values", "present")] for i in self.past
                                if ".decoder." in i.name}}
            out = self.run([token], hidden, past)


def _audio(seed: int, seconds: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _same(hyp_tokens: list[int], stopped: str, reference: list[int]) -> bool:
    """The recogniser's tokens are the reference's, or (cut at a repetition loop) their start."""
    if stopped in ("loop", "repeat"):
        return len(hyp_tokens) > 0 and reference[:len(hyp_tokens)] == hyp_tokens
    return hyp_tokens == reference


def test_multilingual_export_recognises_as_its_own_graphs(exports: dict[str, Path], cpu_target: DeployTarget
                                                          ) -> None:
    """Identified language, transcribed and translated tokens, and a draft-fed decode (several
    tokens per cached call) all equal the plain loop over the export's graphs."""
    (model,) = [m for m in list_models(exports["repo"] / "models", cpu_target) if m.name == "tiny-multi"]
    assert (model.manifest.language_code, model.manifest.parameters["languages"]) == ("multi", ["en", "de", "es"])
    # No alignment heads in its configs: every head of the last half of the layers, as Whisper's own.
    assert model.manifest.parameters["alignment_heads"] == [[1, 0], [1, 1]]
    rec = WhisperRecogniser(load_model(model, BackendOptions(intra_op_threads=1)))
    assert rec.alignment_heads == ((0, 0), (0, 1))
    ref = Reference(exports["tiny-multi"])
    checked, singles = set(), []
    for seed, seconds in ((1, 2.0), (2, 1.0), (7, 3.0)):
        audio = _audio(seed, seconds)
        features = rec.features.batch([audio])
        cap = rec.token_cap(len(audio))
        language, tokens = ref.decode(features, cap)
        (hyp,) = rec.decode([audio])
        assert hyp.language == language and _same(hyp.tokens, hyp.stopped, tokens), (seed, hyp, tokens)
        (drafted,) = rec.decode([audio], drafts=[tokens])
        assert drafted.tokens == hyp.tokens
        _, translated = ref.decode(features, cap, "de", "translate")
        (hyp,) = rec.decode([audio], languages=[Language("de", Task.TRANSLATE)])
        assert hyp.language == "de" and _same(hyp.tokens, hyp.stopped, translated)
        checked.add(language)
        singles.append(drafted)
    assert checked <= {"en", "de", "es"}
    # A batch: the cross K/V graph takes its batch size from the encoder states, not the decoder's.
    both = rec.decode([_audio(1, 2.0), _audio(7, 3.0)])
    assert [(h.language, h.tokens) for h in both] == [(h.language, h.tokens) for h in (singles[0], singles[2])]


def test_scores_equal_the_export_step_by_step(exports: dict[str, Path], cpu_target: DeployTarget) -> None:
    """The deployed graphs' scores, not only their argmax (the random model's greedy text is
    monotonous): a prompt's logits where Whisper may sample and its language logits against the
    merged decoder's first call, then random tokens through the KV cache, three in one call
    (as drafts go) and two alone, against one cached-branch call each."""
    (model,) = [m for m in list_models(exports["repo"] / "models", cpu_target) if m.name == "tiny-multi"]
    rec = WhisperRecogniser(load_model(model, BackendOptions(intra_op_threads=1)))
    ref = Reference(exports["tiny-multi"])
    audio = _audio(5, 2.0)
    hidden = ref.encoder.run(None, {"input_features": rec.features.batch([audio])})[0]
    prompt = [ref.special[t] for t in ("<|startoftranscript|>", "<|es|>", "<|transcribe|>", "<|notimestamps|>")]
    expected = ref.run(prompt, hidden, None)
    cross = {i.name: expected[i.name.replace("past_key_values", "present")] for i in ref.past if ".encoder." in i.name}
    empty = np.zeros((1, rec._heads, 0, rec._head_dim), np.float32)
    encoder_kv = rec.cross_kv_of(rec.encode([audio]))
    past = {f"past_key_values.{layer}.decoder.{kv}": empty for layer in range(rec.layers) for kv in ("key", "value")}
    got = rec.decoder.run({"input_ids": np.array([prompt], np.int64), **encoder_kv, **past})
    np.testing.assert_allclose(got["logits"][..., ref.allowed], expected["logits"][..., ref.allowed], atol=1e-4)
    assert (got["logits"][..., ~ref.allowed] < -1e8).all()
    ids = [ref.languages[f"<|{code}|>"] for code in ("en", "de", "es")]
    np.testing.assert_allclose(got["language_logits"], expected["logits"][..., ids], atol=1e-4)
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 256, 5)]
    for fed in (tokens[:3], tokens[3:4], tokens[4:]):
        past = {name: got[name.replace("past_key_values", "present")] for name in past}
        got = rec.decoder.run({"input_ids": np.array([fed], np.int64), **encoder_kv, **past})
        for i, token in enumerate(fed):
            cached = {**cross, **{name: expected[name.replace("past_key_values", "present")] for name in past}}
            expected = ref.run([token], hidden, cached)
            np.testing.assert_allclose(got["logits"][:, i, ref.allowed], expected["logits"][:, 0, ref.allowed],
                                       atol=1e-4)


def test_english_only_export(exports: dict[str, Path], cpu_target: DeployTarget) -> None:
    """`is_multilingual: false`: served as en-US, prompted without language or task, no language logits."""
    (model,) = [m for m in list_models(exports["repo"] / "models", cpu_target) if m.name == "tiny-en"]
    assert (model.manifest.language_code, model.manifest.parameters["multilingual"]) == ("en-US", False)
    decoder = next(n for n in model.manifest.networks if n.name == "decoder")
    assert "language_logits" not in [t.name for t in decoder.outputs]
    rec = WhisperRecogniser(load_model(model, BackendOptions(intra_op_threads=1)))
    audio = _audio(11, 2.0)
    _, tokens = Reference(exports["tiny-en"]).decode(rec.features.batch([audio]), rec.token_cap(len(audio)))
    (hyp,) = rec.decode([audio])
    assert hyp.language == "" and _same(hyp.tokens, hyp.stopped, tokens)


def _copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_graphs_in_an_onnx_folder(exports: dict[str, Path], tmp_path: Path) -> None:
    """Hugging Face's onnx-community layout: the graphs in `onnx/`, the rest beside it."""
    folder = _copy_export(exports["tiny-multi"], tmp_path / "community")
    (folder / "onnx").mkdir()
    for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
        (folder / name).rename(folder / "onnx" / name)
    src = import_whisper_folder(folder, tmp_path, {})
    assert (src.name, src.language_code, sorted(src.networks)) == ("community", "multi", ["cross_kv", "decoder", "encoder"])
    assert src.provenance == {"from": "optimum", "folder": "community"}
    (folder / "onnx" / "decoder_model_merged.onnx").unlink()
    with pytest.raises(ModelImportError, match=r"lacks onnx/decoder_model_merged\.onnx\.$"):
        import_whisper_folder(folder, tmp_path, {})


def test_batch_size_read_by_a_sliced_shape(tmp_path: Path) -> None:
    """An exporter that reads the batch size as Shape(start=0, end=1) of the decoder's input:
    the cross K/V graph reads it from the encoder states, and gives the merged decoder's K/V."""
    folder = make_optimum_whisper(tmp_path / "sliced", layers=1, sliced_batch=True)
    src = import_whisper_folder(folder, tmp_path, {})
    cross = ort.InferenceSession(str(src.networks["cross_kv"]))
    assert [i.name for i in cross.get_inputs()] == ["encoder_hidden_states"]
    ref = Reference(folder)
    hidden = np.random.default_rng(2).standard_normal((2, 1500, 32)).astype(np.float32)
    expected = ref.decoder.run(None, {"input_ids": np.full((2, 1), 1, np.int64), "encoder_hidden_states": hidden,
                                      "use_cache_branch": np.array([False]),
                                      **{i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32)
                                         for i in ref.past}})
    got = dict(zip([o.name for o in cross.get_outputs()], cross.run(None, {"encoder_hidden_states": hidden})))
    for name, value in zip(ref.outputs, expected):
        if ".encoder." in name:
            np.testing.assert_allclose(got[name], value, atol=1e-5)


def test_broken_exports_are_refused(exports: dict[str, Path], tmp_path: Path) -> None:
    """A missing file, an encoder with other inputs, a float16 decoder, another model's config:
    each refused naming it."""
    folder = _copy_export(exports["tiny-multi"], tmp_path / "export")
    (folder / "decoder_model_merged.onnx").rename(tmp_path / "decoder.onnx")
    with pytest.raises(ModelImportError, match=r"export is not an optimum Whisper export: it lacks "
                                               r"decoder_model_merged\.onnx\.$"):
        import_whisper_folder(folder, tmp_path, {})
    (tmp_path / "decoder.onnx").rename(folder / "decoder_model_merged.onnx")

    encoder = onnx.load(str(folder / "encoder_model.onnx"))
    encoder.graph.input[0].name = "mel"
    for node in encoder.graph.node:
        node.input[:] = ["mel" if i == "input_features" else i for i in node.input]
    onnx.save(encoder, str(folder / "encoder_model.onnx"))
    with pytest.raises(ModelImportError, match=r"encoder_model\.onnx is not optimum's Whisper export: it lacks "
                                               r"input_features \(it reads mel\)\.$"):
        import_whisper_folder(folder, tmp_path, {})

    folder = _copy_export(exports["tiny-multi"], tmp_path / "fp16")
    merged = onnx.load(str(folder / "decoder_model_merged.onnx"))
    merged.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT16, None))
    onnx.save(merged, str(folder / "decoder_model_merged.onnx"))
    with pytest.raises(ModelImportError, match="logits is float16; edged imports float32 exports only"):
        import_whisper_folder(folder, tmp_path, {})

    (folder / "config.json").write_text(json.dumps({"model_type": "moonshine"}))
    with pytest.raises(ModelImportError, match=r"config\.json is a moonshine model, not Whisper\.$"):
        import_whisper_folder(folder, tmp_path, {})


HEADS = [[1, 0], [0, 1]]
"""generation_config.json's alignment heads (served in layer order: (0, 1), (1, 0))."""


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of a model that writes SCRIPT whatever it hears, with HEADS, and the CTranslate2
    folder of the same weights beside it (`scripted.ct2`)."""
    return make_optimum_whisper(tmp_path_factory.mktemp("whisper-optimum-words") / "scripted", seed=9,
                                script=SCRIPT, alignment_heads=HEADS, keep_ct2=True)


def _outputs(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def test_alignment_attention_equals_the_ct2_build(scripted: Path, tmp_path: Path) -> None:
    """The export's decoder has no alignment output of its own; the imported one's is the
    CTranslate2 build's (same weights), on a first call and a cached step of two tokens."""
    assert b"alignment" not in (scripted / "decoder_model_merged.onnx").read_bytes()
    sources = {}
    for form, folder in (("optimum", scripted), ("ct2", scripted.with_name("scripted.ct2"))):
        (tmp_path / form).mkdir()
        sources[form] = (import_whisper_folder(folder, tmp_path / form, {}) if form == "optimum"
                         else import_ct2_whisper(folder, tmp_path / form, "scripted", {}))
        assert sources[form].parameters["alignment_heads"] == [[0, 1], [1, 0]]
    features = np.random.default_rng(4).standard_normal((2, 80, 3000)).astype(np.float32)
    ids = np.array([[*PROMPT, *SCRIPT[:3]], [*PROMPT, *SCRIPT[2:5]]], np.int64)
    got = {}
    for form, source in sources.items():
        nets = {name: ort.InferenceSession(str(path)) for name, path in source.networks.items()}
        (output,) = [o for o in nets["decoder"].get_outputs() if o.name == ALIGNMENT_OUTPUT]
        assert output.shape == ["batch_size", 2, "decoder_sequence_length", "encoder_sequence_length_out"]
        hidden = nets["encoder"].run(None, {"input_features": features})[0]
        cross = {k.replace("present.", "past_key_values."): v
                 for k, v in _outputs(nets["cross_kv"], {"encoder_hidden_states": hidden}).items()}
        past = {f"past_key_values.{layer}.decoder.{kv}": np.zeros((2, 2, 0, 16), np.float32)
                for layer in range(2) for kv in ("key", "value")}
        got[form] = []
        for start, end in ((0, 5), (5, 7)):
            out = _outputs(nets["decoder"], {"input_ids": ids[:, start:end], **past, **cross})
            got[form].append(out[ALIGNMENT_OUTPUT])
            past = {k.replace("present.", "past_key_values."): v for k, v in out.items() if ".decoder." in k}
    for optimum, ct2 in zip(got["optimum"], got["ct2"]):
        assert optimum.shape == ct2.shape and optimum.shape[:2] == (2, 2)
        np.testing.assert_allclose(optimum, ct2, rtol=1e-4, atol=1e-7)


def test_words_get_times_of_their_own(scripted: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """Deployed and recognising, the export's words come in order inside their utterance, at
    times of their own (not the utterance's span)."""
    (tmp_path / "work").mkdir()
    build_rmir(import_whisper_folder(scripted, tmp_path / "work", {}), RmirRef(tmp_path / "scripted.rmir"))
    deploy(RmirRef(tmp_path / "scripted.rmir"), tmp_path / "models", cpu_target, BackendOptions())
    (model,) = list_models(tmp_path / "models", cpu_target)
    rec = WhisperRecogniser(load_model(model, BackendOptions(intra_op_threads=1)))
    audio, start = _audio(3, 3.0), 16000
    (hyp,) = rec.decode([audio], languages=[Language("en")])
    assert hyp.tokens == SCRIPT and hyp.cross_attention is not None
    job = DecodeJob(None, JobKind.FINAL, 0, audio, start, start + len(audio), hyp=hyp,  # type: ignore[arg-type]
                    speech_start=start)
    config = StreamConfig(encoding="LINEAR_PCM", sample_rate=16000, word_times=True, language=Language("en"))
    words = ResultMaker(rec.tokenizer, rec.alignment_heads, "multi", rec.samples_per_frame).words(job, hyp, config)
    assert [w.word for w in words] == ["hello", "world,", "there", "Grüße", "hello"]
    previous = 1000
    for w in words:
        assert previous <= w.start_ms <= w.end_ms <= 4000
        previous = w.end_ms
    assert len({(w.start_ms, w.end_ms) for w in words}) > 2, words


def _softmax_spelt_out(graph: onnx.GraphProto) -> None:
    """Every Softmax of the graph as ReduceMax, Sub, Exp, ReduceSum and Div: the same numbers,
    no Softmax to find (as in a fused attention), in place."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "Softmax":
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        nodes += [helper.make_node("ReduceMax", [x], [f"{y}/max"], axes=[-1], keepdims=1),
                  helper.make_node("Sub", [x, f"{y}/max"], [f"{y}/shifted"]),
                  helper.make_node("Exp", [f"{y}/shifted"], [f"{y}/exp"]),
                  helper.make_node("Constant", [], [f"{y}/last"], value_ints=[-1]),
                  helper.make_node("ReduceSum", [f"{y}/exp", f"{y}/last"], [f"{y}/sum"], keepdims=1),
                  helper.make_node("Div", [f"{y}/exp", f"{y}/sum"], [y])]
    del graph.node[:]
    graph.node.extend(nodes)


def test_attention_without_a_softmax_imports_without_word_times(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    """No Softmax per layer to find: imported with a warning, without `alignment_attention` or
    alignment heads (its words get their utterance's span), its logits as the export's."""
    folder = make_optimum_whisper(tmp_path / "fused", layers=1)
    merged = onnx.load(str(folder / "decoder_model_merged.onnx"))
    for branch in merged.graph.node[0].attribute:
        _softmax_spelt_out(branch.g)
    onnx.save(merged, str(folder / "decoder_model_merged.onnx"))
    with caplog.at_level(logging.WARNING, logger="edged.importers.whisper_optimum"):
        source = import_whisper_folder(folder, tmp_path, {})
    assert "no cross-attention Softmax found in each decoder layer" in caplog.text
    assert source.parameters["alignment_heads"] == []
    decoder = ort.InferenceSession(str(source.networks["decoder"]))
    assert ALIGNMENT_OUTPUT not in [o.name for o in decoder.get_outputs()]
    ref = Reference(folder)
    hidden = np.random.default_rng(6).standard_normal((1, 1500, 32)).astype(np.float32)
    prompt = [ref.special["<|startoftranscript|>"], ref.special["<|en|>"]]
    expected = ref.run(prompt, hidden, None)
    cross = _outputs(ort.InferenceSession(str(source.networks["cross_kv"])), {"encoder_hidden_states": hidden})
    got = _outputs(decoder, {"input_ids": np.array([prompt], np.int64),
                             **{k.replace("present.", "past_key_values."): v for k, v in cross.items()},
                             **{f"past_key_values.0.decoder.{kv}": np.zeros((1, 2, 0, 16), np.float32)
                                for kv in ("key", "value")}})
    np.testing.assert_allclose(got["logits"][..., ref.allowed], expected["logits"][..., ref.allowed], atol=1e-4)
