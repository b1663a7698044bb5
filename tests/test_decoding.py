"""Word boosting (edged.pipelines.asr.boost) and beam search with alternatives (Recogniser.beam).

The trie and bonus rules are tested on a small made-up tokenizer; the decoding on real speech:
edged's own voice saying a sentence with an invented name that Moonshine misrecognises, and
moonshine-cpp's beckett.wav.
"""

from __future__ import annotations

import io
import itertools
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edged.backends import BackendOptions
from edged.pipelines.asr.boost import (
    FIRST_SHARE,
    MAX_BUDGET,
    PhraseBias,
    budget_of,
    encode,
    spellings,
    variants,
)
from edged.pipelines.asr.tokenizer import Tokenizer
from edged.pipelines.pools import Pools
from edged.repository.records import DeployTarget
from tests.conftest import require_default_packs

SPACE = "\u2581"
# A SentencePiece BPE vocabulary laid out as Moonshine's: specials, 256 bytes, then merged
# pieces (the lower the id, the earlier the merge), then single characters.
MERGES = ["ub", "ri", "rix", f"{SPACE}K", f"{SPACE}Kub", f"{SPACE}k", f"{SPACE}t", "he", f"{SPACE}the", "ox"]
CHARS = [SPACE, "K", "u", "b", "r", "i", "x", "k", "t", "h", "e", ".", "o", "O", "B", "R", "I", "X", "U"]


def tiny_tokenizer() -> Tokenizer:
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    pieces += [p.encode() for p in MERGES + CHARS]
    return Tokenizer(pieces, {0, 1, 2})


def ids(tokenizer: Tokenizer, *pieces: str) -> list[int]:
    return [tokenizer.pieces.index(p.encode()) for p in pieces]


def test_encode_merges_the_best_pair_first_and_falls_back_to_bytes() -> None:
    tok = tiny_tokenizer()
    assert encode(tok, " Kubrix") == ids(tok, " Kub", "rix")
    assert encode(tok, " the Kubrix.") == ids(tok, " the", " Kub", "rix", ".")
    assert encode(tok, "Kubrix") == ids(tok, "K", "ub", "rix")
    assert encode(tok, " Kü") == [*ids(tok, " K"), 3 + 0xC3, 3 + 0xBC]  # not in the vocabulary: bytes
    assert tok.decode(encode(tok, " the Kubrix.")) == "the Kubrix."


def test_variants_with_and_without_the_leading_space_and_capitals() -> None:
    tok = tiny_tokenizer()
    assert spellings("kubrix box") == ["kubrix box", "Kubrix box", "Kubrix Box"]
    got = variants(tok, "Kubrix")
    assert tuple(ids(tok, " Kub", "rix")) in got and tuple(ids(tok, " k", "ub", "rix")) in got
    assert any(v[0] == -1 and list(v[1:]) == ids(tok, "K", "ub", "rix") for v in got)  # an utterance's start


def test_phrase_bias_starts_continuations_and_budget() -> None:
    tok = tiny_tokenizer()
    bias = PhraseBias(tok, [("Kubrix", 20.0)], eos=2)
    kub, rix, the, dot = ids(tok, " Kub", "rix", " the", ".")
    # A phrase starts only where the model's best token starts a word (or the utterance starts).
    assert bias.starts([the], best=the)[kub] == FIRST_SHARE * 20.0
    assert bias.starts([the], best=dot) == {}
    assert bias.starts([], best=2) == {}  # not after EOS
    assert ids(tok, "K")[0] in bias.starts([], best=the)  # the first word, without its space
    # It goes on with what is left of its budget after the model's surprisal.
    assert bias.continuations([the, kub], [-0.1, -3.0]) == {rix: pytest.approx(17.0)}
    assert bias.continuations([the, kub], [-0.1, -25.0]) == {}
    assert bias.continuations([the, dot], [-0.1, -0.1]) == {}
    assert bias.completions(kub, at_start=False) == [((kub, rix), 20.0)]
    logits = np.zeros(len(tok.pieces), dtype=np.float32)
    logits[the] = 1.0
    bias.add(logits, [the], [-0.1])
    assert logits[kub] == FIRST_SHARE * 20.0 and logits[dot] == 0.0


def test_whole_phrases_credit_and_word_ends() -> None:
    tok = tiny_tokenizer()
    bias = PhraseBias(tok, [("Kubrix", 20.0), ("the", -3.0)], eos=2)
    kub, rix, the, dot, x = ids(tok, " Kub", "rix", " the", ".", "x")
    assert bias.occurrences([the, kub, rix, dot]) == [(0, 1, -3.0), (1, 3, 20.0)]
    assert bias.occurrences([kub, rix, x]) == []  # "Kubrixx" is another word
    assert bias.covered([dot, kub, rix]) == {1, 2}
    # Credit: a whole phrase's surprisal up to its budget; a phrase begun at the end up to the
    # first token's share; a phrase begun and left, nothing; a negative boost, its penalty.
    assert bias.credit([kub, rix], [-8.0, -9.0]) == pytest.approx(17.0)
    assert bias.credit([kub, rix], [-15.0, -15.0]) == pytest.approx(20.0)
    assert bias.credit([dot, kub], [-0.1, -4.0]) == pytest.approx(4.0)
    assert bias.credit([dot, kub], [-0.1, -14.0]) == pytest.approx(FIRST_SHARE * 20.0)
    assert bias.credit([kub, dot], [-4.0, -0.1]) == 0.0
    assert bias.credit([the], [-0.5]) == -3.0
    assert budget_of(100.0) == MAX_BUDGET and budget_of(-5.0) == -5.0
    assert not PhraseBias(tok, [("Kubrix", 0.0)])


# --- real speech ------------------------------------------------------------------------------

NAME = "Kubrix"
SENTENCE = f"Please send the new report to {NAME} before the meeting on Friday."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path], cpu_target: DeployTarget) -> dict:
    """Moonshine, Silero and the Piper voice deployed and loaded (2 threads)."""
    require_default_packs()
    from edged.loader import load_model
    from edged.repository.deploy import deploy
    from edged.repository.records import list_models
    from edged.rmir import RmirRef

    repo = tmp_path_factory.mktemp("decoding") / "models"
    for name in ("moonshine-base-en", "silero-vad", "piper-joe-medium"):
        deploy(RmirRef(default_rmirs[name]), repo, cpu_target, BackendOptions())
    return {m.name: load_model(m, BackendOptions(intra_op_threads=2)) for m in list_models(repo, cpu_target)}


@pytest.fixture(scope="module")
def asr(models: dict, pools: Pools):  # type: ignore[no-untyped-def]
    from edged.pipelines.asr.model import AsrModel

    return AsrModel(models["moonshine-base-en"], models["silero-vad"], pools)


@pytest.fixture(scope="module")
def speech(models: dict, pools: Pools) -> np.ndarray:
    """edged's voice saying SENTENCE at 16 kHz, without the VITS noise (the same audio every run)."""
    from edged.pipelines.tts import SynthesisRequest, TtsModel
    from edged.pipelines.tts.limits import SynthesisLimits

    tts = TtsModel(models["piper-joe-medium"], pools, SynthesisLimits(max_text_chars=600))
    tts.network.config = replace(tts.network.config, noise_scale=0.0, noise_w=0.0)
    pcm = b"".join(c.pcm for c in tts.synthesize(SynthesisRequest(SENTENCE, sample_rate=16000)))
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def beckett() -> np.ndarray:
    import moonshine_cpp

    with wave.open(str(Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


def test_boost_writes_a_rare_name_and_nothing_else(asr, speech: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    rec = asr.recogniser
    plain = rec.decode([speech])[0]
    text = rec.tokenizer.decode(plain.tokens)
    assert NAME.lower() not in text.lower() and "meeting on Friday" in text, text
    boosted = rec.decode([speech], biases=[rec.phrase_bias(((NAME, 20.0),))])[0]
    assert rec.tokenizer.decode(boosted.tokens) == text.replace(text.split()[6], NAME), rec.tokenizer.decode(boosted.tokens)
    assert boosted.logprobs[6] < -1.0  # the model's own log-probabilities, not the biased ones
    # Drafts are checked against the biased choice: the same tokens with the unboosted draft.
    drafted = rec.decode([speech], [plain.tokens], biases=[rec.phrase_bias(((NAME, 20.0),))])[0]
    assert drafted.tokens == boosted.tokens
    for other in ((("Zorblat", 20.0),), (("Quorvath", 20.0), ("Vexlora", 20.0)), (("report", 20.0),)):
        assert rec.decode([speech], biases=[rec.phrase_bias(other)])[0].tokens == plain.tokens, other


def test_rows_without_a_boost_decode_exactly_as_before(asr, speech: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    rec = asr.recogniser
    audios = [speech, beckett()[:len(speech)]]
    plain = rec.decode(audios)
    mixed = rec.decode(audios, biases=[rec.phrase_bias(((NAME, 20.0),)), None])
    assert mixed[1].tokens == plain[1].tokens and mixed[1].logprobs == plain[1].logprobs
    assert plain[1].cross_attention is not None and mixed[1].cross_attention is not None
    assert np.array_equal(mixed[1].cross_attention, plain[1].cross_attention)
    assert NAME in rec.tokenizer.decode(mixed[0].tokens)
    assert rec.phrase_bias(()) is None and rec.phrase_bias(((NAME, 20.0),)) is rec.phrase_bias(((NAME, 20.0),))


def _scores(rec, audio: np.ndarray, hyps: list) -> list[float]:  # type: ignore[no-untyped-def]
    """Each hypothesis' log-probability with its EOS over its length, read in one decoder call."""
    from edged.pipelines.asr.recogniser import _log_softmax

    hidden = rec.encode([audio])
    scores = []
    for hyp in hyps:
        seq = [rec.bos, *hyp.tokens, rec.eos]
        out = rec._first_call(hidden, np.array([seq[:-1]], dtype=np.int64), False)[0]
        lp = _log_softmax(out["logits"][0, :, :rec.vocab])
        scores.append(sum(float(lp[i, seq[i + 1]]) for i in range(len(seq) - 1)) / (len(seq) - 1))
    return scores


def test_beam_gives_the_greedy_text_and_distinct_alternatives(asr) -> None:  # type: ignore[no-untyped-def]
    from edged.pipelines.asr.results import strip_punctuation

    rec = asr.recogniser
    audio = beckett()
    greedy = rec.decode([audio])[0]
    best = rec.beam(audio, 3)
    text = rec.tokenizer.decode(best.tokens)
    assert strip_punctuation(text) == strip_punctuation(rec.tokenizer.decode(greedy.tokens)), text
    texts = [text] + [rec.tokenizer.decode(h.tokens) for h in best.alternatives]
    assert 2 <= len(texts) <= 3 and len(set(texts)) == len(texts) and all(texts), texts
    scores = _scores(rec, audio, [best, *best.alternatives])
    assert all(a >= b - 0.02 for a, b in itertools.pairwise(scores)), scores  # best first
    assert best.cross_attention is not None
    assert best.cross_attention.shape[2:] == (len(best.tokens) + 1, rec.frames(len(audio)))
    assert all(h.cross_attention is None and not h.alternatives for h in best.alternatives)


def test_beam_width_for_max_alternatives() -> None:
    from edged.pipelines.asr.recogniser import MAX_BEAM, beam_width

    assert [beam_width(n) for n in (1, 2, 3, 9)] == [2, 2, 3, MAX_BEAM]


def test_boosted_beam_writes_the_name(asr, speech: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    rec = asr.recogniser
    best = rec.beam(speech, 3, rec.phrase_bias(((NAME, 20.0),)))
    assert NAME in rec.tokenizer.decode(best.tokens)
    assert NAME not in rec.tokenizer.decode(rec.beam(speech, 3).tokens)


def _wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_streams_ask_for_boosts_and_alternatives(asr, speech: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """AsrModel.decode_jobs decodes a stream's finals with its boosts, and with a beam when it
    asks for alternatives; other jobs and streams as before."""
    from edged.pipelines.asr.jobs import StreamConfig, offline_config

    audio = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)])
    finals = {}
    for name, config in {"plain": StreamConfig(), "boost": StreamConfig(boost=((NAME, 20.0),)),
                         "alternatives": StreamConfig(max_alternatives=3)}.items():
        stream = asr.start_stream(offline_config(config))
        stream.feed(_wav(audio), now=0.0)
        stream.feed_end()
        jobs = list(stream.jobs)
        asr.decode_jobs(stream.jobs)
        (job,) = [j for j in jobs if j.kind == "final"]
        finals[name] = job.hyp
        assert stream.take_results()
    text = {name: asr.recogniser.tokenizer.decode(h.tokens) for name, h in finals.items()}
    assert NAME in text["boost"] and NAME not in text["plain"], text
    assert finals["plain"].alternatives == [] and len(finals["alternatives"].alternatives) in (1, 2)
