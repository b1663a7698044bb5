"""NeMo greedy decoders (RNN-T, TDT, CTC): batched decoding against plain one-utterance references.

The references below are written apart from edged.pipelines.asr.nemo.decoders, as NeMo's
greedy loops read for one utterance, and run over the same logits: a decoder_joint written in
numpy (row by row, so that a row's numbers do not depend on its batch) and the real tiny ONNX
decoder_joint of tests/nemo_models.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest

from edged.backends import BackendOptions
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.pipelines.asr.nemo.decoders import Decoded, States, ctc_greedy, rnnt_greedy, tdt_greedy
from tests.nemo_models import write_onnx

VOCAB = 12
BLANK = VOCAB
DIM = 6
HIDDEN = 5
LAYERS = 2
DURATIONS = [0, 1, 2, 3, 4]


class Joint(Protocol):
    """A decoder_joint the references call one row at a time."""

    state: tuple[int, int]
    """(layers, hidden) of the LSTM states."""

    def one(self, frame: np.ndarray, token: int, h: np.ndarray, c: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits and the states after `token`, for one frame [dim] and states [layers, hidden]."""


class NumpyJoint:
    """A small prediction network and joint in numpy: h' = tanh(E[token] + h U) per layer, c' = c + h';
    logits = relu(f A + h' B) W, blank favoured (`blank_bias`) so that blanks and tokens mix."""

    def __init__(self, seed: int, extra: int = 0, blank_bias: float = 1.0, duration_bias: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.standard_normal((VOCAB + 1, HIDDEN))
        self.embed[BLANK] = 0.0
        self.u = rng.standard_normal((HIDDEN, HIDDEN)) * 0.5
        self.a = rng.standard_normal((DIM, 16))
        self.b = rng.standard_normal((HIDDEN, 16))
        self.w = rng.standard_normal((16, VOCAB + 1 + extra))
        self.bias = np.zeros(VOCAB + 1 + extra)
        self.bias[BLANK] = blank_bias
        if extra:
            self.bias[VOCAB + 1] = duration_bias  # duration 0
        self.calls = 0
        self.rows = 0
        self.state = (LAYERS, HIDDEN)

    def one(self, frame: np.ndarray, token: int, h: np.ndarray, c: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One row: frame [DIM], token, h and c [LAYERS, HIDDEN]."""
        x = self.embed[token]
        hs, cs = [], []
        for layer in range(LAYERS):
            x = np.tanh(x + h[layer] @ self.u)
            hs.append(x)
            cs.append(c[layer] + x)
        logits = np.maximum(frame @ self.a + x @ self.b, 0) @ self.w + self.bias
        return logits, np.array(hs), np.array(cs)

    def __call__(self, frames: np.ndarray, last: np.ndarray, states: States) -> tuple[np.ndarray, States]:
        """The batched step the decoders call (frames [n, DIM, 1])."""
        self.calls += 1
        self.rows += len(last)
        out = [self.one(frames[i, :, 0], int(last[i]), states[0][:, i], states[1][:, i]) for i in range(len(last))]
        return (np.array([o[0] for o in out]),
                (np.stack([o[1] for o in out], axis=1), np.stack([o[2] for o in out], axis=1)))


def _logprob(logits: np.ndarray, k: int) -> float:
    m = float(np.max(logits))
    return float(logits[k] - (m + math.log(float(np.sum(np.exp(logits - m))))))


def reference_rnnt(joint: Joint, enc: np.ndarray, length: int, max_symbols: int, blank: int = BLANK) -> Decoded:
    """NeMo's GreedyRNNTInfer loop for one utterance (enc [dim, frames])."""
    out = Decoded()
    h, c = np.zeros(joint.state), np.zeros(joint.state)
    last = blank
    for t in range(length):
        symbols = 0
        while symbols < max_symbols:
            logits, h2, c2 = joint.one(enc[:, t], last, h, c)
            k = int(np.argmax(logits[:blank + 1]))
            if k == blank:
                break
            out.add(k, _logprob(logits[:blank + 1], k), t, t + 1)
            last, h, c = k, h2, c2
            symbols += 1
    return out


def reference_tdt(joint: Joint, enc: np.ndarray, length: int, max_symbols: int, blank: int = BLANK) -> Decoded:
    """NeMo's label-looping greedy TDT for one utterance: a blank moves on at least one frame;
    after max_symbols tokens at one frame the decoder moves on one frame."""
    out = Decoded()
    h, c = np.zeros(joint.state), np.zeros(joint.state)
    last, t, at_frame = blank, 0, 0
    while t < length:
        logits, h2, c2 = joint.one(enc[:, t], last, h, c)
        k = int(np.argmax(logits[:blank + 1]))
        d = DURATIONS[int(np.argmax(logits[blank + 1:]))]
        if k == blank:
            t, at_frame = t + max(d, 1), 0
            continue
        out.add(k, _logprob(logits[:blank + 1], k), t, min(t + max(d, 1), length))
        last, h, c = k, h2, c2
        if d:
            t, at_frame = t + d, 0
        else:
            at_frame += 1
            if at_frame >= max_symbols:
                t, at_frame = t + 1, 0
    return out


def reference_ctc(logprobs: np.ndarray, length: int) -> Decoded:
    """Best path, repeats merged, blanks dropped; a token spans its run of frames."""
    out = Decoded()
    prev = BLANK
    for t in range(length):
        k = int(np.argmax(logprobs[t]))
        if k != BLANK and k != prev:
            out.add(k, _logprob(logprobs[t], k), t, t + 1)
        elif k != BLANK and k == prev:
            out.ends[-1] = t + 1
        prev = k
    return out


def _encoded(seed: int, lengths: list[int]) -> np.ndarray:
    """Encoder outputs [batch, DIM, longest], noise past each length (which must not be read)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((len(lengths), DIM, max(lengths))) * 2


def _same(got: Decoded, want: Decoded) -> None:
    assert got.tokens == want.tokens
    assert got.starts == want.starts and got.ends == want.ends
    np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=0, atol=1e-9)


def _zeros(batch: int) -> States:
    return np.zeros((LAYERS, batch, HIDDEN)), np.zeros((LAYERS, batch, HIDDEN))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rnnt_batch_equals_reference(seed: int) -> None:
    """RNN-T: a batch of different lengths decodes each row as the one-utterance reference does,
    several tokens at some frames (max_symbols cutting in), one call per frame and symbol."""
    joint = NumpyJoint(seed, blank_bias=0.5)
    lengths = [40, 17, 33, 1]
    enc = _encoded(seed, lengths)
    got = rnnt_greedy(joint, enc, lengths, BLANK, 3, _zeros(len(lengths)))
    for row, n in enumerate(lengths):
        _same(got[row], reference_rnnt(joint, enc[row], n, 3))
    assert sum(len(d.tokens) for d in got) > 20
    assert any(d.starts.count(s) == 3 for d in got for s in set(d.starts))  # the cap was reached
    assert joint.calls <= max(lengths) * 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tdt_batch_equals_reference(seed: int) -> None:
    """TDT: durations move each row on its own; duration 0 tokens up to max_symbols at a frame."""
    joint = NumpyJoint(seed, extra=len(DURATIONS), blank_bias=0.3, duration_bias=1.5)
    lengths = [50, 23, 7, 38]
    enc = _encoded(seed + 10, lengths)
    got = tdt_greedy(joint, enc, lengths, BLANK, DURATIONS, 2, _zeros(len(lengths)))
    for row, n in enumerate(lengths):
        _same(got[row], reference_tdt(joint, enc[row], n, 2))
    assert sum(len(d.tokens) for d in got) > 10
    assert any(e - s > 1 for d in got for s, e in zip(d.starts, d.ends))  # tokens with durations


def test_ctc_batch_equals_reference() -> None:
    """CTC: each row of padded log-probabilities as the frame-by-frame reference."""
    rng = np.random.default_rng(3)
    lengths = [30, 12, 1, 25]
    raw = rng.standard_normal((len(lengths), 30, VOCAB + 1)) * 2
    raw[..., BLANK] += 1.0
    # Runs of one token over several frames.
    raw[:, 3:6, 4] += 10
    logprobs = raw - np.log(np.exp(raw).sum(-1, keepdims=True))
    got = ctc_greedy(logprobs, lengths, BLANK)
    for row, n in enumerate(lengths):
        _same(got[row], reference_ctc(logprobs[row], n))
    assert got[0].tokens and any(e - s > 1 for s, e in zip(got[0].starts, got[0].ends))


class OnnxJoint:
    """The tiny ONNX decoder_joint of tests/nemo_models.py as a numpy step, and as the
    reference's one-row function."""

    def __init__(self, path: Path, state: tuple[int, int]) -> None:
        self.session = OnnxRuntimeBackend().load(path, BackendOptions(intra_op_threads=1))
        self.state = state

    def __call__(self, frames: np.ndarray, last: np.ndarray, states: States) -> tuple[np.ndarray, States]:
        n = len(last)
        out = self.session.run({"encoder_outputs": frames.astype(np.float32), "targets": last.astype(np.int32)[:, None],
                                "target_length": np.ones(n, np.int32), "input_states_1": states[0].astype(np.float32),
                                "input_states_2": states[1].astype(np.float32)})
        return out["outputs"].reshape(n, -1), (out["output_states_1"], out["output_states_2"])

    def one(self, frame: np.ndarray, token: int, h: np.ndarray, c: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, (h2, c2) = self(frame[None, :, None], np.array([token]), (h[:, None], c[:, None]))
        return logits[0], h2[:, 0], c2[:, 0]


@pytest.mark.parametrize("family", ["rnnt", "tdt"])
def test_onnx_decoder_joint_batch_equals_reference(tmp_path: Path, family: str) -> None:
    """The tiny ONNX decoder_joint (NeMo's export signature): batched = one utterance at a time."""
    vocab, dim, hidden, layers = 20, 8, 6, 2
    write_onnx(tmp_path, "rnnt", vocab=vocab, enc_dim=dim, pred_hidden=hidden, joint_hidden=8, pred_layers=layers,
               durations=DURATIONS if family == "tdt" else [], seed=4)
    joint = OnnxJoint(tmp_path / "decoder_joint-model.onnx", (layers, hidden))
    lengths = [25, 9, 18]
    enc = (np.random.default_rng(5).standard_normal((3, dim, 25)) * 2).astype(np.float32)
    zeros = (np.zeros((layers, 3, hidden), np.float32), np.zeros((layers, 3, hidden), np.float32))
    if family == "tdt":
        got = tdt_greedy(joint, enc, lengths, vocab, DURATIONS, 3, zeros)
        want = [reference_tdt(joint, enc[r], n, 3, blank=vocab) for r, n in enumerate(lengths)]
    else:
        got = rnnt_greedy(joint, enc, lengths, vocab, 3, zeros)
        want = [reference_rnnt(joint, enc[r], n, 3, blank=vocab) for r, n in enumerate(lengths)]
    for g, w in zip(got, want):
        assert g.tokens == w.tokens and g.starts == w.starts and g.ends == w.ends
        np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-5)
    assert sum(len(d.tokens) for d in got) > 0
