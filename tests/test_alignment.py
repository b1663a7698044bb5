"""Word time offsets: DTW over the decoder's cross-attention (synthetic and with real Moonshine).

The real-model tests deploy Moonshine, decode with a small greedy loop of their own (asking
the decoder for its `cross_attentions.N` outputs) and check the word times of beckett.wav and,
when ../shared/evalcorpus is there, the sentence boundaries of its two long clips.
"""

from __future__ import annotations

import difflib
import json
import re
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edged.backends import BackendOptions
from edged.backends.onnxruntime import OrtSession
from edged.loader import LoadedModel
from edged.pipelines.asr.alignment import (
    WordTime,
    align_words,
    dtw,
    encoder_frames,
    group_words,
    median_filter,
    pauses,
    snap_to_pauses,
)
from edged.repository.records import DeployTarget
from tests.conftest import require_default_packs

BECKETT_IDS = [1, 18274, 1898, 3926, 5229, 29892, 694, 4383, 1018, 1449, 4418, 1449, 4418, 2253, 29889, 2]
LAYERS = 8


# --- synthetic --------------------------------------------------------------------------------


def dtw_reference(cost: np.ndarray) -> tuple[list[int], list[int]]:
    """Whisper's dtw_cpu, cell by cell."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1))
    acc[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            acc[i, j] = cost[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    rows, cols = [], []
    while i > 0 and j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    return rows[::-1], cols[::-1]


def path_cost(cost: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    return float(cost[rows, cols].sum())


@pytest.mark.parametrize("seed", range(6))
def test_dtw_finds_the_cheapest_monotonic_path(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cost = rng.random((rng.integers(1, 12), rng.integers(12, 40)))
    rows, cols = dtw(cost)
    ref_rows, ref_cols = dtw_reference(cost)
    assert rows[0] == 0 and cols[0] == 0 and rows[-1] == cost.shape[0] - 1 and cols[-1] == cost.shape[1] - 1
    steps = np.stack([np.diff(rows), np.diff(cols)], axis=1)
    assert {tuple(s) for s in steps} <= {(0, 1), (1, 0), (1, 1)}
    assert path_cost(cost, rows, cols) == pytest.approx(path_cost(cost, np.array(ref_rows), np.array(ref_cols)))


def test_dtw_follows_a_diagonal_band() -> None:
    cost = np.ones((4, 20))
    for i, (a, b) in enumerate([(0, 5), (5, 9), (9, 15), (15, 20)]):
        cost[i, a:b] = 0.0
    rows, cols = dtw(cost)
    firsts = [int(cols[rows == i].min()) for i in range(4)]
    assert firsts == [0, 5, 9, 15]
    assert dtw(np.zeros((0, 5)))[0].size == 0


def test_median_filter_matches_a_plain_median() -> None:
    x = np.random.default_rng(1).random((2, 30))
    y = median_filter(x, 7)
    padded = np.pad(x, ((0, 0), (3, 3)), mode="reflect")
    expected = np.array([[np.median(padded[r, j:j + 7]) for j in range(30)] for r in range(2)])
    np.testing.assert_allclose(y, expected)
    assert median_filter(x[:, :2], 7).shape == (2, 2)  # too short to filter: unchanged


def test_encoder_frames_formula() -> None:
    # floor(floor(floor(num_samples/64 - 127/64)/3)/2) - 1, the encoder's output shape symbol.
    for n in (1600, 16000, 159414, 480000):
        assert encoder_frames(n) == int(np.floor(np.floor(np.floor(n / 64 - 127 / 64) / 3) / 2)) - 1
    assert encoder_frames(159414) == 413


def test_group_words_follows_sentencepiece_word_starts() -> None:
    pieces = ["▁Ever", "▁tri", "ed", ",", "▁no", b"\xe2\x96\x81caf", b"\xc3", b"\xa9", "."]
    assert group_words(pieces) == [("Ever", [0]), ("tried,", [1, 2, 3]), ("no", [4]), ("café.", [5, 6, 7, 8])]
    assert group_words([" hello", "", " world"]) == [("hello", [0]), ("world", [2])]
    assert group_words([]) == []


def synthetic_attention(spans: list[tuple[int, int]], frames: int, eos_at: int | None) -> np.ndarray:
    """[layers, heads, rows, frames]: row i attends to frames spans[i] (plus an EOS row)."""
    rows = len(spans) + (eos_at is not None)
    attn = np.full((2, 2, rows, frames), 0.01)
    for i, (a, b) in enumerate(spans):
        attn[:, :, i, a:b] = 1.0
    if eos_at is not None:
        attn[:, :, -1, eos_at:] = 1.0
    return attn / attn.sum(-1, keepdims=True)


def test_align_words_on_a_synthetic_matrix() -> None:
    samples = 16000 * 2  # 2 s: 81 frames of 24 ms
    frames = encoder_frames(samples)
    spans = [(5, 20), (20, 30), (30, 32), (40, 70)]  # "Hello", "wor", "ld", "again."
    attn = synthetic_attention(spans, frames, eos_at=70)
    words = align_words([10, 11, 12, 13], ["▁Hello", "▁wor", "ld", "▁again."], attn, samples,
                        heads=[(0, 0), (1, 1)], offset_ms=1000, token_logprobs=[0.0, -1.0, -1.0, 0.0])
    assert [w.text for w in words] == ["Hello", "world", "again."]
    ms = 24
    assert words[0].start_ms == 1000  # the DTW path starts at frame 0 (leading silence: see audio=)
    for word, (start, end) in zip(words, [(0, 20), (20, 40), (40, 70)]):
        assert abs(word.start_ms - (1000 + start * ms)) <= 3 * ms, word
        assert abs(word.end_ms - (1000 + end * ms)) <= 3 * ms, word
    assert words[1].confidence == pytest.approx(np.exp(-1.0))
    # The per-token list form and no EOS row give the same starts; the last word ends by the audio's end.
    listed = [attn[:, :, i] for i in range(4)]
    same = align_words([10, 11, 12, 13], ["▁Hello", "▁wor", "ld", "▁again."], listed, samples, [(0, 0)])
    assert [w.start_ms for w in same] == [w.start_ms - 1000 for w in words]
    assert same[-1].end_ms <= 2000
    with pytest.raises(ValueError):
        align_words([1, 2], ["▁a"], attn, samples, [(0, 0)])
    assert align_words([], [], attn[:, :, :0], samples, [(0, 0)]) == []


def test_pauses_and_snapping() -> None:
    rng = np.random.default_rng(0)
    audio = np.concatenate([0.3 * rng.standard_normal(8000), np.zeros(4800), 0.3 * rng.standard_normal(8000)])
    runs = pauses(audio)
    assert len(runs) == 1 and runs[0][0] == pytest.approx(500, abs=10) and runs[0][1] == pytest.approx(800, abs=10)
    # DTW gave the pause to the second word: its start moves to the end of the pause.
    times = [[0.0, 400.0], [400.0, 1300.0]]
    snap_to_pauses(times, runs)
    assert times == [[0.0, runs[0][0]], [runs[0][1], 1300.0]]
    far = [[0.0, 100.0], [100.0, 250.0]]  # no pause near this boundary
    snap_to_pauses(far, runs)
    assert far == [[0.0, 100.0], [100.0, 250.0]]
    assert pauses(np.zeros(10)) == []


# --- the real model ---------------------------------------------------------------------------


@dataclass
class Decoded:
    """Greedy tokens (no BOS/EOS) and per-row cross-attention [layers, heads, rows, frames]."""

    tokens: list[int]
    attention: np.ndarray
    logits: list[np.ndarray]


class Moonshine:
    """The deployed encoder, cross K/V and decoder networks, and the tokenizer's pieces."""

    def __init__(self, model_dir: Path, sessions: dict, params: dict) -> None:
        from edged.pipelines.asr.tokenizer import Tokenizer

        self.encoder = sessions["encoder"]
        self.decoder = sessions["decoder"]
        self.cross_kv = sessions["cross_kv"]
        self.params = params
        self.tokenizer = Tokenizer.load(model_dir / params["tokenizer"], {0, 1, 2})
        self.outputs = [o.name for o in self.decoder.outputs]

    def encoder_kv(self, hidden: np.ndarray) -> dict[str, np.ndarray]:
        """`past_key_values.N.encoder.*` for the decoder, from the `cross_kv` network."""
        out = self.cross_kv.run({"encoder_hidden_states": hidden})
        return {k.replace("present.", "past_key_values."): v for k, v in out.items()}

    def decode(self, audio: np.ndarray, attention: bool = True) -> Decoded:
        hidden = self.encoder.run({"input_values": audio[None].astype(np.float32)})["last_hidden_state"]
        wanted = [n for n in self.outputs if attention or not n.startswith("cross_attentions.")]
        empty = np.zeros((1, 8, 0, 52), np.float32)
        encoder_kv = self.encoder_kv(hidden)
        past = {f"past_key_values.{layer}.decoder.{kv}": empty for layer in range(LAYERS) for kv in ("key", "value")}
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        logits: list[np.ndarray] = []
        token = 1
        cap = int(len(audio) / 16000 * self.params["max_tokens_per_second"]) + 4
        for _ in range(cap):
            out = self.decoder.run({"input_ids": np.array([[token]], np.int64), **encoder_kv, **past}, wanted)
            logits.append(out["logits"][0, -1])
            if attention:  # this position predicts the next token (row convention of align_words)
                rows.append(np.stack([out[f"cross_attentions.{layer}"][0, :, -1] for layer in range(LAYERS)]))
            token = int(np.argmax(out["logits"][0, -1]))
            if token == 2:
                break
            tokens.append(token)
            past = {f"past_key_values.{layer}.decoder.{kv}": out[f"present.{layer}.decoder.{kv}"]
                    for layer in range(LAYERS) for kv in ("key", "value")}
        attn = np.stack(rows, axis=2) if rows else np.zeros((LAYERS, 8, 0, hidden.shape[1]))
        return Decoded(tokens, attn, logits)

    def words(self, audio: np.ndarray, offset_ms: float = 0.0) -> list[WordTime]:
        dec = self.decode(audio)
        pieces = [self.tokenizer.piece_bytes(t) for t in dec.tokens]
        return align_words(dec.tokens, pieces, dec.attention, len(audio),
                           [tuple(h) for h in self.params["alignment_heads"]], offset_ms=offset_ms, audio=audio)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


def beckett_path() -> Path:
    import moonshine_cpp

    return Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"


@pytest.fixture(scope="module")
def loaded_moonshine(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path],
                     cpu_target: DeployTarget) -> Iterator[LoadedModel]:
    """Moonshine deployed (ORT graph optimisations applied) and loaded with 2 threads."""
    require_default_packs()
    from edged.loader import load_model
    from edged.repository.deploy import deploy
    from edged.repository.records import list_models
    from edged.rmir import RmirRef

    models = tmp_path_factory.mktemp("align") / "models"
    deploy(RmirRef(default_rmirs["moonshine-base-en"]), models, cpu_target, BackendOptions())
    (model,) = [m for m in list_models(models, cpu_target) if m.name == "moonshine-base-en"]
    yield load_model(model, BackendOptions(intra_op_threads=2))


@pytest.fixture(scope="module")
def moonshine(loaded_moonshine: LoadedModel) -> Moonshine:
    """The deployed networks as the tests here drive them."""
    return Moonshine(loaded_moonshine.path, loaded_moonshine.sessions, loaded_moonshine.manifest.parameters)


def test_importer_exposes_cross_attention(default_rmirs: dict[str, Path]) -> None:
    from edged.rmir import RmirRef
    from edged.rmir.archive import read_manifest

    manifest = read_manifest(RmirRef(default_rmirs["moonshine-base-en"]))
    (decoder,) = [n for n in manifest.networks if n.name == "decoder"]
    outputs = {o.name: o for o in decoder.outputs}
    for layer in range(LAYERS):
        spec = outputs[f"cross_attentions.{layer}"]
        assert spec.dtype == "float32" or "float" in spec.dtype
        assert len(spec.shape) == 4 and spec.shape[1] == 8
    heads = manifest.parameters["alignment_heads"]
    assert heads and all(0 <= layer < LAYERS and 0 <= head < 8 for layer, head in heads)


def test_deployed_decoder_keeps_its_outputs_and_tokens(moonshine: Moonshine) -> None:
    assert {f"cross_attentions.{layer}" for layer in range(LAYERS)} <= set(moonshine.outputs)
    audio = read_wav(beckett_path())
    with_attn = moonshine.decode(audio, attention=True)
    without = moonshine.decode(audio, attention=False)
    assert [1, *with_attn.tokens, 2] == BECKETT_IDS
    assert with_attn.tokens == without.tokens
    for a, b in zip(with_attn.logits, without.logits):
        np.testing.assert_array_equal(a, b)
    frames = encoder_frames(len(audio))
    assert with_attn.attention.shape == (LAYERS, 8, len(with_attn.tokens) + 1, frames)
    np.testing.assert_allclose(with_attn.attention.sum(-1), 1.0, atol=1e-4)


def _merged_decoder() -> tuple:
    """The shipped merged decoder as converted the old way (one `If` on `use_cache_branch`),
    with the `cross_attentions.N` outputs, as an ONNX Runtime session; and the model."""
    import onnxruntime as ort

    from edged.importers.moonshine import add_cross_attention_outputs
    from edged.importers.ortformat import ort_to_onnx

    merged = add_cross_attention_outputs(ort_to_onnx(
        Path(__import__("moonshine_cpp").__file__).parent / "models/base-en/decoder_model_merged.ort"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(merged.SerializeToString(), so, providers=["CPUExecutionProvider"]), merged


def test_split_decoder_gives_the_merged_decoders_outputs(moonshine: Moonshine, float_decoder: OrtSession) -> None:
    """cross_kv (deployed) + the importer's step decoder give the logits and cross-attention of
    the shipped merged decoder, on the first call (BOS + a draft, an empty decoder cache, two
    utterances) and on later steps (one token, then two).

    The reference is the pack's own merged decoder converted the old way, not a transcript: it
    checks every logit, and it needs no RMIR of the old importer."""
    session, _ = _merged_decoder()
    audio = read_wav(beckett_path())
    hidden = moonshine.encoder.run({"input_values": np.stack([audio, audio[::-1].copy()])})["last_hidden_state"]
    batch = len(hidden)
    attention = [f"cross_attentions.{layer}" for layer in range(LAYERS)]
    dec_kv = [f"present.{layer}.decoder.{kv}" for layer in range(LAYERS) for kv in ("key", "value")]
    empty = np.zeros((batch, 8, 0, 52), np.float32)
    ids = np.array([[1, 18274, 1898], [1, 18274, 1898]], np.int64)
    feed = {"input_ids": ids, "encoder_hidden_states": hidden, "use_cache_branch": np.array([False])}
    feed |= {f"past_key_values.{layer}.{part}.{kv}": empty
             for layer in range(LAYERS) for part in ("decoder", "encoder") for kv in ("key", "value")}
    names = ["logits", *dec_kv, *attention, *[n.replace("decoder", "encoder") for n in dec_kv]]
    want = dict(zip(names, session.run(names, feed)))
    encoder_kv = moonshine.encoder_kv(hidden)
    for name, value in encoder_kv.items():
        np.testing.assert_allclose(value, want[name.replace("past_key_values.", "present.")], rtol=0, atol=1e-4)
    want_kv = {k.replace("present.", "past_key_values."): v for k, v in want.items() if ".encoder." in k}
    got = float_decoder.run({"input_ids": ids, **encoder_kv,
                             **{f"past_key_values.{layer}.decoder.{kv}": empty
                                for layer in range(LAYERS) for kv in ("key", "value")}},
                            ["logits", *dec_kv, *attention])
    assert "use_cache_branch" not in {i.name for i in float_decoder.inputs}
    assert "encoder_hidden_states" not in {i.name for i in float_decoder.inputs}
    for step in range(3):
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=1e-4)
        for name in attention:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)
        assert got["cross_attentions.0"].shape == (batch, 8, ids.shape[1], hidden.shape[1])
        token = np.argmax(want["logits"][:, -1], axis=-1)[:, None]
        assert (token == np.argmax(got["logits"][:, -1], axis=-1)[:, None]).all()
        ids = np.concatenate([token] * (1 + step % 2), axis=1).astype(np.int64)
        past = {f"past_key_values.{layer}.decoder.{kv}": want[f"present.{layer}.decoder.{kv}"]
                for layer in range(LAYERS) for kv in ("key", "value")}
        want = dict(zip(names[:-16], session.run(names[:-16], {
            "input_ids": ids, "encoder_hidden_states": hidden, "use_cache_branch": np.array([True]),
            **want_kv, **past})))
        got = float_decoder.run({"input_ids": ids, **encoder_kv, **past}, ["logits", *dec_kv, *attention])


def test_recogniser_still_decodes_with_a_merged_decoder(loaded_moonshine: LoadedModel,
                                                        float_decoder: OrtSession) -> None:
    """A deployment made before the split (one merged decoder, no cross_kv) decodes as before:
    the same tokens, log-probabilities and cross-attention as cross_kv + the step decoder
    (float32, as the merged one: the deployed decoder rounds activations to int8)."""
    import dataclasses

    from edged.pipelines.asr.recogniser import Recogniser

    session, _ = _merged_decoder()
    sessions = {"encoder": loaded_moonshine.sessions["encoder"], "decoder": OrtSession(session)}
    old = Recogniser(dataclasses.replace(loaded_moonshine, sessions=sessions))
    new = Recogniser(dataclasses.replace(loaded_moonshine,
                                         sessions={**loaded_moonshine.sessions, "decoder": float_decoder}))
    assert old.cross_kv is None and new.cross_kv is not None
    audio = read_wav(beckett_path())
    audios = [audio[:4 * 16000], audio[3 * 16000:9 * 16000]]
    plain = new.decode(audios)
    for drafts in (None, [h.tokens[:len(h.tokens) // 2] for h in plain]):
        for got, want in zip(old.decode(audios, drafts), plain):
            assert got.tokens == want.tokens and got.stopped == want.stopped
            np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=0, atol=1e-4)
            assert got.cross_attention is not None and want.cross_attention is not None
            np.testing.assert_allclose(got.cross_attention, want.cross_attention, rtol=0, atol=1e-4)


def test_beckett_word_times_are_plausible(moonshine: Moonshine) -> None:
    audio = read_wav(beckett_path())
    words = moonshine.words(audio, offset_ms=500)
    assert " ".join(w.text for w in words) == "Ever tried ever failed, no matter try again fail again fail better."
    duration_ms = 1000 * len(audio) / 16000
    previous_end = 500
    for w in words:
        assert 500 <= w.start_ms < w.end_ms <= 500 + duration_ms + 1, w
        assert w.start_ms >= previous_end - 1, words
        assert 60 <= w.end_ms - w.start_ms <= 1500, w  # a spoken word, neither a blip nor a pause
        previous_end = w.end_ms
    # The clip is ~10 s of slow speech: the words spread over it, not bunched at one end.
    assert words[0].start_ms - 500 < 1500 and words[-1].end_ms - 500 > duration_ms - 2500


def utterances(audio: np.ndarray, max_s: float = 20.0, min_s: float = 10.0) -> list[tuple[int, int]]:
    """Cut long audio as the endpointer's forced split does: at the quietest 200 ms past min_s."""
    cuts, start, window = [], 0, 3200
    while len(audio) - start > max_s * 16000:
        lo, hi = start + int(min_s * 16000), start + int(max_s * 16000)
        energy = np.convolve(audio[lo:hi] ** 2, np.ones(window), "valid")
        cut = lo + int(np.argmin(energy)) + window // 2
        cuts.append((start, cut))
        start = cut
    return [*cuts, (start, len(audio))]


def normal(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def boundary_errors(words: list[WordTime], segments: list[dict]) -> list[float]:
    """|predicted - reference| (s) at each sentence's start and end, matching words by text."""
    ref, sentence = [], []
    for index, seg in enumerate(segments):
        for w in seg["text"].split():
            if normal(w):
                ref.append(normal(w))
                sentence.append(index)
    hyp = [normal(w.text) for w in words]
    ref_to_hyp = {}
    for a, b, size in difflib.SequenceMatcher(None, ref, hyp, autojunk=False).get_matching_blocks():
        ref_to_hyp.update({a + k: b + k for k in range(size)})
    errors = []
    for index, seg in enumerate(segments):
        members = [i for i, s in enumerate(sentence) if s == index]
        if members[0] in ref_to_hyp:
            errors.append(abs(words[ref_to_hyp[members[0]]].start_ms / 1000 - seg["start_s"]))
        if members[-1] in ref_to_hyp:
            errors.append(abs(words[ref_to_hyp[members[-1]]].end_ms / 1000 - seg["end_s"]))
    return errors


def test_long_clip_sentence_boundaries(moonshine: Moonshine, evalcorpus: Path) -> None:
    """Median |error| at the long-lj clips' sentence boundaries ≤ 120 ms (issue 3's target)."""
    manifest = evalcorpus / "manifest.jsonl"
    clips = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    clips = [c for c in clips if c["id"].startswith("long-lj-") and c.get("segments")]
    if not clips:
        pytest.skip("no long-lj clips with segments in the evalcorpus")
    errors: list[float] = []
    for clip in clips:
        audio = read_wav(evalcorpus / clip["audio"])
        words = [w for a, b in utterances(audio) for w in moonshine.words(audio[a:b], offset_ms=a / 16)]
        errors += boundary_errors(words, clip["segments"])
    expected = sum(2 * len(c["segments"]) for c in clips)
    assert len(errors) >= 0.8 * expected, "too few sentence boundaries matched the transcript"
    median, p90 = np.median(errors) * 1000, np.percentile(errors, 90) * 1000
    print(f"sentence boundaries: n={len(errors)} median {median:.0f} ms, p90 {p90:.0f} ms")
    assert median <= 120, f"median {median:.0f} ms, p90 {p90:.0f} ms"


def test_drafts_give_the_greedy_decode_in_fewer_calls(loaded_moonshine: LoadedModel,
                                                      float_decoder: OrtSession) -> None:
    """Recogniser.decode with a draft (exact, cut short, with a wrong token, shifted) returns
    the plain greedy tokens, log-probabilities and cross-attention, in fewer decoder calls.

    On the float32 decoder: the deployed one rounds activations to int8, and ONNX Runtime's int8
    kernels round a step of one token and a draft of several a little differently."""
    import dataclasses

    from edged.pipelines.asr.recogniser import Recogniser

    recogniser = Recogniser(dataclasses.replace(
        loaded_moonshine, sessions={**loaded_moonshine.sessions, "decoder": float_decoder}))
    calls = [0]
    decoder = recogniser.decoder

    class Counting:
        inputs, outputs = decoder.inputs, decoder.outputs

        def run(self, feed: dict, names: list[str] | None = None) -> dict:
            calls[0] += 1
            return decoder.run(feed, names)

    recogniser.decoder = Counting()  # type: ignore[assignment]
    audio = read_wav(beckett_path())
    audios = [audio[:4 * 16000], audio[3 * 16000:9 * 16000]]
    plain = recogniser.decode(audios)
    plain_calls, calls[0] = calls[0], 0
    assert all(len(h.tokens) >= 5 for h in plain)
    for make in (lambda t: t, lambda t: t[:len(t) // 2], lambda t: [*t[:2], t[2] + 1, *t[3:]],
                 lambda t: t[2:]):
        hyps = recogniser.decode(audios, [make(h.tokens) for h in plain])
        for got, want in zip(hyps, plain):
            assert got.tokens == want.tokens and got.stopped == want.stopped
            assert np.allclose(got.logprobs, want.logprobs, atol=1e-3)
            assert got.cross_attention is not None and want.cross_attention is not None
            assert np.allclose(got.cross_attention, want.cross_attention, atol=1e-4)
    assert calls[0] < 4 * plain_calls * 0.6, (calls[0], plain_calls)
    calls[0] = 0
    recogniser.decode(audios, [h.tokens for h in plain])
    assert calls[0] <= 2  # the first call confirms the whole draft; the next one predicts EOS
