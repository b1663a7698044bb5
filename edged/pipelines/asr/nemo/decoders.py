"""Batched greedy decoding of NeMo's transducers (RNN-T, TDT) and CTC models.

The transducers' decoder and joint networks are one exported network (`decoder_joint`), called
on one encoder frame per row with the row's last token and LSTM states: every call takes all
the rows of a batch that still have something to decode at that point (the others are left
out of the call, which is how they are masked). The rules are NeMo's greedy ones:

- RNN-T: at each frame, emit the argmax token while it is not blank, at most
  `max_symbols_per_step` tokens per frame; the prediction network's state and last token move
  on only with an emitted token (the first call of a row feeds blank, NeMo's start symbol, and
  zero states).
- TDT: the argmax token and, separately, the argmax duration; the row moves on by the
  duration, a blank by at least one frame; a token of duration 0 keeps the row at its frame,
  at most `max_symbols_per_step` tokens there, after which it moves on one frame (NeMo's
  label-looping greedy_batch decoder, its default).
- CTC: the argmax per frame, repeats collapsed, blanks dropped.

Each token keeps the encoder frame where it was emitted, the frame after its span (for word
times) and its log-probability under the token distribution (log-softmax of the token logits,
blank included), from which confidences are computed as for Moonshine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

States = tuple[np.ndarray, np.ndarray]
"""LSTM h and c of the prediction network, [layers, batch, hidden] each."""
JointStep = Callable[[np.ndarray, np.ndarray, States], tuple[np.ndarray, States]]
"""decoder_joint as a function: (encoder frames [n, dim, 1], last tokens [n], states of the n
rows) -> (logits [n, outputs], the states after reading the last tokens)."""


@dataclass
class Decoded:
    """One utterance's greedy tokens, where they were emitted and their log-probabilities."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    """Encoder frame where each token was emitted."""
    ends: list[int] = field(default_factory=list)
    """Encoder frame after each token's span (TDT: its frame plus its duration, at least one)."""

    def add(self, token: int, logprob: float, start: int, end: int) -> None:
        """Append one emitted token."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.starts.append(start)
        self.ends.append(end)


def log_softmax_at(logits: np.ndarray, index: np.ndarray) -> np.ndarray:
    """log p(index) under softmax(logits) for each row of logits [n, classes]."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return logits[np.arange(len(index)), index] - lse


def _take(states: States, rows: np.ndarray) -> States:
    return states[0][:, rows], states[1][:, rows]


def _put(states: States, rows: np.ndarray, new: States, picked: np.ndarray) -> None:
    states[0][:, rows] = new[0][:, picked]
    states[1][:, rows] = new[1][:, picked]


def rnnt_greedy(step: JointStep, encoded: np.ndarray, lengths: Sequence[int] | np.ndarray, blank: int,
                max_symbols: int, states: States) -> list[Decoded]:
    """Greedy RNN-T decoding of encoder outputs [batch, dim, frames] (valid `lengths` each),
    from initial `states` [layers, batch, hidden] (zeros for an utterance's start)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    batch = len(lengths)
    results = [Decoded() for _ in range(batch)]
    last = np.full(batch, blank, dtype=np.int64)
    states = (states[0].copy(), states[1].copy())
    classes = blank + 1  # the token logits, blank last (NeMo: blank_id == vocabulary size)
    for t in range(int(lengths.max(initial=0))):
        rows = np.flatnonzero(lengths > t)
        for _ in range(max(1, max_symbols)):
            if not len(rows):
                break
            logits, new = step(encoded[rows, :, t:t + 1], last[rows], _take(states, rows))
            logits = logits[:, :classes]
            tokens = logits.argmax(axis=-1)
            emit = np.flatnonzero(tokens != blank)
            if len(emit):
                logprobs = log_softmax_at(logits[emit], tokens[emit])
                for i, lp in zip(emit.tolist(), logprobs.tolist()):
                    results[int(rows[i])].add(int(tokens[i]), lp, t, t + 1)
                last[rows[emit]] = tokens[emit]
                _put(states, rows[emit], new, emit)
            rows = rows[emit]
    return results


def tdt_greedy(step: JointStep, encoded: np.ndarray, lengths: Sequence[int] | np.ndarray, blank: int,
               durations: Sequence[int], max_symbols: int, states: States) -> list[Decoded]:
    """Greedy TDT decoding (token and duration heads after the joint) of encoder outputs
    [batch, dim, frames], from initial `states`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    batch = len(lengths)
    results = [Decoded() for _ in range(batch)]
    last = np.full(batch, blank, dtype=np.int64)
    states = (states[0].copy(), states[1].copy())
    steps = np.asarray(durations, dtype=np.int64)
    classes = blank + 1
    time = np.zeros(batch, dtype=np.int64)
    here = np.zeros(batch, dtype=np.int64)  # tokens emitted at the row's current frame
    limit = max(1, max_symbols)
    while True:
        rows = np.flatnonzero(time < lengths)
        if not len(rows):
            break
        frames = encoded[rows, :, time[rows]][:, :, None]
        logits, new = step(np.ascontiguousarray(frames), last[rows], _take(states, rows))
        tokens = logits[:, :classes].argmax(axis=-1)
        moves = steps[logits[:, classes:classes + len(steps)].argmax(axis=-1)]
        emit = np.flatnonzero(tokens != blank)
        if len(emit):
            logprobs = log_softmax_at(logits[emit, :classes], tokens[emit])
            for i, lp in zip(emit.tolist(), logprobs.tolist()):
                row = int(rows[i])
                start = int(time[row])
                results[row].add(int(tokens[i]), lp, start, min(start + max(1, int(moves[i])), int(lengths[row])))
            last[rows[emit]] = tokens[emit]
            _put(states, rows[emit], new, emit)
        emitted = tokens != blank
        stay = emitted & (moves == 0)
        here[rows] = np.where(stay, here[rows] + 1, 0)
        forced = stay & (here[rows] >= limit)  # enough tokens at this frame: on to the next
        here[rows[forced]] = 0
        # A blank moves on at least one frame (NeMo forces duration 0 of a blank to 1).
        time[rows] += np.where(emitted, moves, np.maximum(moves, 1)) + forced
    return results


def ctc_greedy(logprobs: np.ndarray, lengths: Sequence[int], blank: int) -> list[Decoded]:
    """Greedy CTC decoding of per-frame scores [batch, frames, vocabulary + 1]: a token where
    the argmax changes to a non-blank; its span runs while the argmax stays the same."""
    results = []
    for row, n in enumerate(int(x) for x in lengths):
        scores = logprobs[row, :n]
        best = scores.argmax(axis=-1)
        decoded = Decoded()
        if n:
            new = np.flatnonzero((best != blank) & np.concatenate([[True], best[1:] != best[:-1]]))
            run_ends = np.flatnonzero(np.concatenate([best[1:] != best[:-1], [True]]))  # last frame of each run
            ends = run_ends[np.searchsorted(run_ends, new)] + 1
            logps = log_softmax_at(scores[new], best[new])
            for t, end, lp in zip(new.tolist(), ends.tolist(), logps.tolist()):
                decoded.add(int(best[t]), lp, t, end)
        results.append(decoded)
    return results
