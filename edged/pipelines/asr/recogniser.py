"""Moonshine greedy decoding with the merged decoder's KV cache, several utterances at once.

Moonshine's encoder sees the whole utterance (it is not a streaming model), so every decode
re-encodes its audio; the decoder steps of a batch run together, one network call per token.
A caller may pass a token prefix it already trusts (the stable part of an earlier interim
hypothesis): the prefix is fed in the first decoder call instead of being decoded token by token.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from edged.backends import Session
from edged.errors import ModelLoadError
from edged.loader import LoadedModel
from edged.pipelines.asr.tokenizer import Tokenizer

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_MIN_TOKENS = 4
# A phrase of n tokens repeated until the cap: cut when the repeats cover at least this many
# tokens (and there are at least this many repeats), keeping the first occurrence.
_LOOP_MIN_SPAN = 12
_LOOP_MIN_REPEATS = 3
_LOOP_MIN_REPEATS_ONE_TOKEN = 8
_LOOP_MAX_UNIT = 24


@dataclass
class Hypothesis:
    """One decoded utterance: tokens (no BOS/EOS), their log-probabilities, how it ended."""

    tokens: list[int]
    logprobs: list[float]
    frames: int
    """Encoder frames of the (unpadded) audio."""
    stopped: str
    """Why decoding stopped: 'eos', 'cap' (duration cap) or 'loop' (repetition cut)."""
    cross_attention: np.ndarray | None = None
    """[layers, heads, tokens, frames] when the decoder exposes `cross_attentions.N` outputs."""

    @property
    def confidence(self) -> float:
        """Geometric mean of the token probabilities (1.0 for an empty hypothesis)."""
        return math.exp(sum(self.logprobs) / len(self.logprobs)) if self.logprobs else 1.0


def repetition_cut(tokens: list[int]) -> int | None:
    """Length to cut `tokens` to if its tail repeats one phrase over and over, else None."""
    n_tok = len(tokens)
    for unit in range(1, min(_LOOP_MAX_UNIT, n_tok // 2) + 1):
        tail = tokens[n_tok - unit:]
        repeats = 1
        pos = n_tok - 2 * unit
        while pos >= 0 and tokens[pos:pos + unit] == tail:
            repeats += 1
            pos -= unit
        needed = _LOOP_MIN_REPEATS_ONE_TOKEN if unit == 1 else _LOOP_MIN_REPEATS
        if repeats >= needed and repeats * unit >= min(_LOOP_MIN_SPAN, needed * unit):
            start = pos + unit  # first token of the first occurrence
            return start + unit
    return None


def _log_softmax_at(logits: np.ndarray, index: np.ndarray) -> np.ndarray:
    """log p(index) under softmax(logits) for each row."""
    peak = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return logits[np.arange(len(index)), index] - lse


class Recogniser:
    """Greedy Moonshine decoding (encoder + merged decoder) for batches of utterances."""

    def __init__(self, model: LoadedModel) -> None:
        params = model.manifest.parameters
        try:
            self.encoder: Session = model.sessions["encoder"]
            self.decoder: Session = model.sessions["decoder"]
            self.bos = int(params["bos_token_id"])
            self.eos = int(params["eos_token_id"])
            self.layers = int(params["decoder_layers"])
            self.tokens_per_second = float(params["max_tokens_per_second"])
            self.max_tokens = int(params["max_tokens"])
            self.max_samples = int(float(params["max_audio_seconds"]) * SAMPLE_RATE)
            tokenizer_file = model.path / str(params["tokenizer"])
        except KeyError as exc:
            raise ModelLoadError(f"Model {model.name} lacks {exc} for Moonshine decoding; rebuild its RMIR.") from None
        self.tokenizer = Tokenizer.load(tokenizer_file, {0, self.bos, self.eos})
        self.vocab = len(self.tokenizer.pieces)
        past = [i for i in self.decoder.inputs if i.name.startswith("past_key_values.")]
        self._heads = int(past[0].shape[1]) if past and isinstance(past[0].shape[1], int) else 8
        self._head_dim = int(past[0].shape[3]) if past and isinstance(past[0].shape[3], int) else 52
        self._attention_outputs = sorted(
            (o.name for o in self.decoder.outputs if o.name.startswith("cross_attentions.")),
            key=lambda name: int(name.rsplit(".", 1)[1]))

    def token_cap(self, samples: int) -> int:
        """Most tokens an utterance of `samples` may decode to (Moonshine hallucinates past it)."""
        return max(_MIN_TOKENS, min(self.max_tokens - 2, math.ceil(samples / SAMPLE_RATE * self.tokens_per_second)))

    def encode(self, audios: list[np.ndarray]) -> np.ndarray:
        """Encoder states [batch, frames, dim] of 16 kHz utterances, zero-padded to the longest."""
        longest = max(len(a) for a in audios)
        batch = np.zeros((len(audios), longest), dtype=np.float32)
        for i, audio in enumerate(audios):
            batch[i, :len(audio)] = audio
        return self.encoder.run({"input_values": batch})["last_hidden_state"]

    def frames(self, samples: int) -> int:
        """Encoder frames for `samples` (three strided convolutions: 64, 3, 2)."""
        return max(0, ((max(0, (samples - 127) // 64 + 1) - 7) // 3 + 1 - 3) // 2 + 1)

    def decode(self, audios: list[np.ndarray], prefixes: list[list[int]] | None = None) -> list[Hypothesis]:
        """Greedy-decode each utterance, starting from its trusted token prefix if given."""
        if not audios:
            return []
        batch = len(audios)
        prefixes = prefixes or [[] for _ in audios]
        caps = [self.token_cap(len(a)) for a in audios]
        prefixes = [p[:cap] for p, cap in zip(prefixes, caps)]
        hidden = self.encode(audios)
        common = min(len(p) for p in prefixes)
        ids = np.array([[self.bos, *p[:common]] for p in prefixes], dtype=np.int64)
        empty = np.zeros((batch, self._heads, 0, self._head_dim), dtype=np.float32)
        feed: dict[str, np.ndarray] = {"input_ids": ids, "encoder_hidden_states": hidden,
                                       "use_cache_branch": np.array([False])}
        for layer in range(self.layers):
            for part in ("decoder", "encoder"):
                feed[f"past_key_values.{layer}.{part}.key"] = empty
                feed[f"past_key_values.{layer}.{part}.value"] = empty
        out = self.decoder.run(feed)
        tokens: list[list[int]] = [list(p[:common]) for p in prefixes]
        logprobs: list[list[float]] = [[] for _ in audios]
        logits_all = out["logits"][:, :, :self.vocab]
        for j in range(common):
            lp = _log_softmax_at(logits_all[:, j], ids[:, j + 1])
            for b in range(batch):
                logprobs[b].append(float(lp[b]))
        attention: list[list[np.ndarray]] = [[] for _ in audios]
        self._keep_attention(out, attention)
        encoder_kv = {k.replace("present.", "past_key_values."): v for k, v in out.items()
                      if k.startswith("present.") and ".encoder." in k}
        logits = logits_all[:, -1]
        stopped = ["" for _ in audios]
        while True:
            chosen = np.argmax(logits, axis=-1)
            for b in range(batch):
                if not stopped[b] and len(tokens[b]) < len(prefixes[b]):
                    chosen[b] = prefixes[b][len(tokens[b])]
            lp = _log_softmax_at(logits, chosen)
            for b in range(batch):
                if stopped[b]:
                    continue
                token = int(chosen[b])
                if token == self.eos:
                    stopped[b] = "eos"
                    continue
                tokens[b].append(token)
                logprobs[b].append(float(lp[b]))
                cut = repetition_cut(tokens[b])
                if cut is not None:
                    _LOGGER.debug("Repetition loop cut after %d of %d tokens", cut, len(tokens[b]))
                    del tokens[b][cut:], logprobs[b][cut:]
                    stopped[b] = "loop"
                elif len(tokens[b]) >= caps[b]:
                    stopped[b] = "cap"
            if all(stopped):
                break
            feed = {"input_ids": chosen.astype(np.int64)[:, None], "encoder_hidden_states": hidden,
                    "use_cache_branch": np.array([True]), **encoder_kv}
            for layer in range(self.layers):
                for part in ("key", "value"):
                    feed[f"past_key_values.{layer}.decoder.{part}"] = out[f"present.{layer}.decoder.{part}"]
            out = self.decoder.run(feed)
            self._keep_attention(out, attention)
            logits = out["logits"][:, -1, :self.vocab]
        frames = [self.frames(len(a)) for a in audios]
        return [
            Hypothesis(tokens[b], logprobs[b], frames[b], stopped[b],
                       self._stack_attention(attention[b], len(tokens[b]), frames[b]))
            for b in range(batch)
        ]

    def _keep_attention(self, out: dict[str, np.ndarray], attention: list[list[np.ndarray]]) -> None:
        """Collect each position's cross-attention [layers, heads, frames] when the decoder gives it.

        Row i of an utterance is the position that predicts token i; the row after its last
        token is the one that predicted EOS.
        """
        if not self._attention_outputs:
            return
        layers = np.stack([out[name] for name in self._attention_outputs], axis=1)  # [B, L, H, S, F]
        for b in range(len(attention)):
            for s in range(layers.shape[3]):
                attention[b].append(layers[b, :, :, s])

    def _stack_attention(self, per_token: list[np.ndarray], n_tokens: int, frames: int) -> np.ndarray | None:
        """[layers, heads, rows, frames]: one row per kept token plus the EOS row if there was one."""
        if not self._attention_outputs or not per_token or not n_tokens:
            return None
        return np.stack(per_token[:n_tokens + 1], axis=2)[..., :frames]
