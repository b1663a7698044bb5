"""Word time offsets from the decoder's cross-attention, aligned by dynamic time warping.

The method is Whisper's (`whisper/timing.py`): take the cross-attention probabilities of a few
"alignment heads" (decoder layer, head) that follow the speech, normalise each head's matrix
(z-score along the token axis, then a median filter of width 7 along the frames), average the
heads, and find the monotonic path through the (tokens x encoder frames) matrix that collects
the most attention (DTW on its negative). The frame where the path enters a word's first token
is the word's start; the frame where it enters the next word (or the end-of-text row) its end.

Row convention of `cross_attn`: row i is the attention of the decoder position that *predicts*
token i (its input is token i-1, or BOS for i = 0). An extra last row, predicting EOS, is
welcome: it gives the last word a learnt end instead of the end of the audio. In a KV-cache
greedy loop that is the attention of every position of every decoder call, the first call's
included (its position fed BOS, Whisper's fed the prompt's last token, predicts token 0); the
attention of the position fed token i belongs to row i + 1. Shifting rows by one costs ~100 ms
of bias and doubles the error.

DTW gives every frame to some token, so a pause ends up inside a word (usually the next one).
Given the utterance's audio, word edges near a silent stretch move to its edges (see
`snap_to_pauses`): on the long evalcorpus clips this takes the median sentence-boundary error
from ~80 ms to ~40 ms.

The encoder's frame grid is the caller's: `samples_per_frame` apart (Moonshine's encoder
frames come 384 samples apart at 16 kHz, Whisper's 320), `frames` of them holding the
utterance (Whisper's encoder hears 30 s whatever the utterance's length: its frames past the
audio are padding, and its recogniser gives the attention of the real ones only).

Pure numpy; no model, no gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE

SAMPLES_PER_FRAME = 384
"""Moonshine's encoder: strided convolutions of 64, 3 and 2 samples."""
MEDFILT_WIDTH = 7
# Pause snapping (optional, needs the audio): 10 ms frames quieter than the utterance's loud
# speech (99th percentile of the frame levels, so that one click does not set it) by this much
# are silent; silent runs this long are pauses; a word boundary this close to a
# pause moves to its edges. DTW puts the frames of a pause in one of the words beside it
# (usually the next: the attention for a word's first token looks ahead across the pause).
SILENCE_DB = 40.0
MIN_PAUSE_MS = 100
SNAP_MS = 200
_HOP_MS = 10
_WORD_START = ("\u2581", " ")


@dataclass(frozen=True)
class WordTime:
    """One word of a result: its text and where it lies in the audio (milliseconds)."""

    text: str
    start_ms: int
    end_ms: int
    confidence: float | None = None
    """Geometric mean of the word's token probabilities, when they were given."""


def encoder_frames(num_samples: int) -> int:
    """Moonshine encoder frames for `num_samples` of 16 kHz audio.

    The encoder's output shape symbol: floor(floor(floor(num_samples/64 - 127/64)/3)/2) - 1.
    """
    n = (num_samples - 127) // 64
    return max(0, (n // 3) // 2 - 1)


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of `width` (odd) along the last axis, reflect-padded."""
    if width <= 1 or x.shape[-1] < width // 2 + 1:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path from (0, 0) to (N-1, M-1) through `cost` [N, M].

    Steps: diagonal, down (next token, same frame) or right (same token, next frame), as in
    Whisper's `dtw_cpu`. Returns (row indices, column indices) along the path. Each row is
    computed at once: D[i, j] = S[j] + min over k <= j of (A[k] - S[k]) where S is the row's
    cumulative cost and A[k] the cost of entering row i at column k from the row above.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    acc = np.empty((n, m))
    entry = np.empty((n, m), dtype=np.int64)  # column where the path entered row i to reach j
    diag = np.zeros((n, m), dtype=bool)  # the entry into row i at column k came diagonally
    prev = np.full(m + 1, np.inf)
    prev[0] = 0.0  # virtual start above-left of (0, 0)
    for i in range(n):
        from_diag = prev[:-1]  # D[i-1, k-1]
        from_up = prev[1:]  # D[i-1, k]
        diag[i] = from_diag < from_up
        enter = np.minimum(from_diag, from_up) + cost[i]
        csum = np.cumsum(cost[i])
        key = enter - csum
        # Running argmin of key (ties keep the later column: fewer horizontal steps, like
        # Whisper preferring the step from the row above on equal cost).
        best = np.minimum.accumulate(key)
        is_new = key <= best
        idx = np.where(is_new, np.arange(m), 0)
        entry[i] = np.maximum.accumulate(idx)
        acc[i] = best + csum
        prev = np.concatenate(([np.inf], acc[i]))
    rows: list[int] = []
    cols: list[int] = []
    i, j = n - 1, m - 1
    while i >= 0:
        k = entry[i, j]
        rows.extend([i] * (j - k + 1))
        cols.extend(range(j, k - 1, -1))
        if i == 0:
            break
        j = k - 1 if diag[i, k] else k
        i -= 1
        j = max(j, 0)  # below 0 only through an infinite cost; keep the path well formed
    return np.array(rows[::-1], dtype=np.int64), np.array(cols[::-1], dtype=np.int64)


def attention_matrix(cross_attn: np.ndarray, heads: Sequence[Sequence[int]],
                     medfilt_width: int = MEDFILT_WIDTH) -> np.ndarray:
    """Whisper's alignment matrix [tokens, frames] from [layers, heads, tokens, frames]."""
    weights = np.stack([cross_attn[layer, head] for layer, head in heads]).astype(np.float64)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - mean) / np.maximum(std, 1e-10)
    weights = median_filter(weights, medfilt_width)
    return weights.mean(axis=0)


def _stack(cross_attn: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """[layers, heads, rows, frames] from an array of that shape or a list of [layers, heads, frames]."""
    if isinstance(cross_attn, np.ndarray):
        if cross_attn.ndim != 4:
            raise ValueError(f"cross_attn must be [layers, heads, tokens, frames], got {cross_attn.shape}")
        return cross_attn
    return np.stack(list(cross_attn), axis=2)


def _piece_text(piece: bytes | str) -> bytes:
    if isinstance(piece, str):
        piece = piece.encode("utf-8")
    return piece.replace("\u2581".encode(), b" ")


def group_words(pieces: Sequence[bytes | str]) -> list[tuple[str, list[int]]]:
    """Split tokens into words: a piece starting with '▁' (or a space) starts a new word.

    Pieces without a leading space (punctuation, the rest of a word, byte-fallback bytes)
    join the word before. Returns (word text, token indices) per word; tokens that decode to
    nothing (special tokens) join no word.
    """
    words: list[tuple[bytearray, list[int]]] = []
    for index, piece in enumerate(pieces):
        data = _piece_text(piece)
        if not data:
            continue
        if data.startswith(b" ") or not words:
            words.append((bytearray(data.lstrip(b" ")), [index]))
        else:
            words[-1][0].extend(data)
            words[-1][1].append(index)
    result = []
    for text, indices in words:
        word = bytes(text).decode("utf-8", "replace").strip()
        if word:
            result.append((word, indices))
        elif result:  # a lone space: its token belongs with the word before
            result[-1][1].extend(indices)
    return result


def pauses(audio: np.ndarray, sample_rate: int = MODEL_RATE, silence_db: float = SILENCE_DB,
           min_pause_ms: int = MIN_PAUSE_MS) -> list[tuple[float, float]]:
    """Silent stretches (start_ms, end_ms) of at least `min_pause_ms` in `audio`."""
    hop = sample_rate * _HOP_MS // 1000
    n = len(audio) // hop
    if n == 0:
        return []
    frames = np.asarray(audio[: n * hop], dtype=np.float64).reshape(n, hop)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    silent = level < np.percentile(level, 99) - silence_db
    edges = np.flatnonzero(np.diff(np.concatenate(([0], silent.astype(np.int8), [0]))))
    duration_ms = 1000 * len(audio) / sample_rate
    runs = []
    for start, end in zip(edges[::2], edges[1::2]):
        if (end - start) * _HOP_MS >= min_pause_ms:
            runs.append((float(start * _HOP_MS), float(min(end * _HOP_MS, duration_ms))))
    return runs


def snap_to_pauses(times: list[list[float]], runs: list[tuple[float, float]], snap_ms: float = SNAP_MS) -> None:
    """Move word edges (in place, [start, end] in ms) out of pauses.

    A boundary between two words within `snap_ms` of a pause becomes the pause's edges (the
    word before ends where it starts, the word after starts where it ends); then every word
    loses the silent stretch at its start or end.
    """
    if not runs:
        return

    def distance(run: tuple[float, float], t: float) -> float:
        return max(run[0] - t, t - run[1], 0.0)

    for k in range(len(times) - 1):
        boundary = (times[k][1] + times[k + 1][0]) / 2
        best = min(runs, key=lambda run: distance(run, boundary))
        if distance(best, boundary) > snap_ms:
            continue
        if best[0] > times[k][0] and best[1] < times[k + 1][1]:
            times[k][1] = best[0]
            times[k + 1][0] = best[1]
    for word in times:
        for run_start, run_end in runs:
            if run_start <= word[0] < run_end < word[1]:
                word[0] = run_end
            if run_start < word[1] <= run_end and run_start > word[0]:
                word[1] = run_start


def align_words(
    token_ids: Sequence[int],
    pieces: Sequence[bytes | str],
    cross_attn: np.ndarray | Sequence[np.ndarray],
    num_samples: int,
    heads: Sequence[Sequence[int]],
    *,
    offset_ms: float = 0.0,
    audio: np.ndarray | None = None,
    token_logprobs: Sequence[float] | None = None,
    medfilt_width: int = MEDFILT_WIDTH,
    sample_rate: int = MODEL_RATE,
    samples_per_frame: int = SAMPLES_PER_FRAME,
    frames: int | None = None,
) -> list[WordTime]:
    """Word start/end times (ms, plus `offset_ms`) of a decoded utterance.

    token_ids: the text tokens (no BOS, no EOS); pieces: each token's text (SentencePiece
    piece with '▁' or a leading space where a word starts, or its bytes); cross_attn: per
    token, the decoder's cross-attention [layers, heads, frames] (a list, or stacked as
    [layers, heads, tokens, frames]), one row per token and optionally one more, predicting
    EOS; num_samples: the utterance's length in samples (frames beyond it are padding);
    heads: the (layer, head) pairs to align with (the manifest's `alignment_heads`);
    offset_ms: where the utterance starts in the stream; audio: the utterance's samples, to
    move word edges out of pauses (see `snap_to_pauses`); samples_per_frame: the encoder's
    frame stride; frames: the encoder frames that hold the utterance (default: Moonshine's,
    `encoder_frames(num_samples)`).
    """
    n_tok = len(token_ids)
    if len(pieces) != n_tok:
        raise ValueError(f"{n_tok} tokens but {len(pieces)} pieces")
    words = group_words(pieces)
    if not words:
        return []
    attn = _stack(cross_attn)
    if attn.shape[2] not in (n_tok, n_tok + 1):
        raise ValueError(f"cross_attn has {attn.shape[2]} token rows for {n_tok} tokens")
    frames = min(attn.shape[3], max(1, encoder_frames(num_samples) if frames is None else frames))
    ms_per_frame = 1000.0 * samples_per_frame / sample_rate
    duration_ms = 1000.0 * num_samples / sample_rate
    matrix = attention_matrix(attn[..., :frames], heads, medfilt_width)
    rows, cols = dtw(-matrix)
    # First frame of each row on the path (the path visits every row at least once).
    first = np.full(matrix.shape[0], frames, dtype=np.int64)
    np.minimum.at(first, rows, cols)
    starts = first * ms_per_frame
    # A token ends where the next row starts: the last one where the EOS row does, if given.
    # Tokens the audio does not support (a hallucinated tail) are squeezed to zero length.
    ends_at = np.append(starts[1:], duration_ms)[:n_tok]
    times = []
    for _, indices in words:
        start = float(starts[indices[0]])
        end = min(max(float(ends_at[indices[-1]]), start), duration_ms)
        times.append([min(start, end), end])
    if audio is not None:
        snap_to_pauses(times, pauses(audio[:num_samples], sample_rate))
    result = []
    for (text, indices), (start, end) in zip(words, times):
        confidence = None
        if token_logprobs is not None:
            confidence = float(np.exp(np.mean([token_logprobs[i] for i in indices])))
        result.append(WordTime(text, round(start + offset_ms), round(end + offset_ms), confidence))
    return result
