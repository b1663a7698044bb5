"""Moonshine greedy decoding with the decoder's KV cache, several utterances at once.

The RMIR has a `cross_kv` network (encoder states -> the cross-attention keys and values) and
a step `decoder`, whose first call gets an empty decoder cache. An RMIR built before the split
(importer revision 1) has instead one merged decoder with an `If` on `use_cache_branch`; it
still decodes, the same way as before.

Moonshine's encoder sees the whole utterance (it is not a streaming model), so every decode
re-encodes its audio; the decoder steps of a batch run together, one network call per token.
A caller may pass a draft (the tokens of an earlier hypothesis of the same utterance): the
first decoder call reads it whole and keeps the part that greedy decoding agrees with, so the
result is the greedy one but most tokens cost no decoder call of their own (exactly so on a
float32 decoder; a decoder with int8 activations, edged.backends.ort_int8, rounds a one-token
step and a several-token draft slightly differently).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from edged.backends import Session
from edged.errors import ModelLoadError
from edged.loader import LoadedModel
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.tokenizer import Tokenizer

_LOGGER = logging.getLogger(__name__)

_MIN_TOKENS = 4
# A phrase of n tokens repeated until the cap: cut when the repeats cover at least this many
# tokens (and there are at least this many repeats), keeping the first occurrence.
_LOOP_MIN_SPAN = 12
_LOOP_MIN_REPEATS = 3
_LOOP_MIN_REPEATS_ONE_TOKEN = 8
_LOOP_MAX_UNIT = 24
# A hypothesis that ran into the duration cap and holds a phrase of at least this many tokens
# twice has gone back over audio it already transcribed: it is cut after the first occurrence.
_CAP_REPEAT_MIN = 4
# Draft tokens fed to one decoder call at most (after the greedy token).
_LOOKAHEAD = 12


@dataclass
class Hypothesis:
    """One decoded utterance: tokens (no BOS/EOS), their log-probabilities, how it ended."""

    tokens: list[int]
    logprobs: list[float]
    frames: int
    """Encoder frames of the (unpadded) audio."""
    stopped: str
    """Why decoding stopped: 'eos', 'cap' (duration cap), 'loop' or 'repeat' (repetition cuts)."""
    cross_attention: np.ndarray | None = None
    """[layers, heads, tokens, frames] when the decoder exposes `cross_attentions.N` outputs."""
    alternatives: list[Hypothesis] = field(default_factory=list)
    """Further distinct hypotheses of the same audio, best first, beyond this one."""

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


def repeat_cut(tokens: list[int]) -> int | None:
    """End of the first occurrence of the longest phrase (>= _CAP_REPEAT_MIN tokens) that occurs
    twice without overlapping, else None."""
    n_tok = len(tokens)
    for unit in range(n_tok // 2, _CAP_REPEAT_MIN - 1, -1):
        seen: dict[tuple[int, ...], int] = {}
        for i in range(n_tok - unit + 1):
            key = tuple(tokens[i:i + unit])
            first = seen.setdefault(key, i)
            if i - first >= unit:
                return first + unit
    return None


def _prefix(cache: np.ndarray, length: int) -> np.ndarray:
    """The first `length` positions of a KV cache [batch, heads, positions, dim]."""
    return cache if cache.shape[2] == length else np.ascontiguousarray(cache[:, :, :length])


@dataclass
class _Row:
    """Decoding state of one utterance of a batch, and where its draft says it goes next."""

    draft: list[int]
    cap: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stopped: str = ""
    next: int | None = 0
    """Index in `draft` of the token expected next (None: lost until the tokens match again)."""
    anchor: int = 0
    """Draft index where the tokens last followed the draft."""

    def take(self, token: int, logprob: float, eos: int) -> None:
        """Append the greedy token (or stop: EOS, repetition loop, cap) and follow the draft."""
        if token == eos:
            self.stopped = "eos"
            return
        self.tokens.append(token)
        self.logprobs.append(logprob)
        cut = repetition_cut(self.tokens)
        if cut is not None:
            _LOGGER.debug("Repetition loop cut after %d of %d tokens", cut, len(self.tokens))
            del self.tokens[cut:], self.logprobs[cut:]
            self.stopped = "loop"
        elif len(self.tokens) >= self.cap:
            self.stopped = "cap"
        elif self.next is not None and self.next < len(self.draft) and self.draft[self.next] == token:
            self.next = self.anchor = self.next + 1
        else:  # find the last two tokens in the draft again, from about where it was followed
            self.next = None
            if len(self.tokens) >= 2:
                a, b = self.tokens[-2:]
                for j in range(max(1, self.anchor - 4), len(self.draft)):
                    if self.draft[j] == b and self.draft[j - 1] == a:
                        self.next = self.anchor = j + 1
                        break

    def continuation(self, count: int) -> list[int]:
        """Up to `count` draft tokens expected next."""
        return self.draft[self.next:self.next + count] if self.next is not None else []


def _encoder_past(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cross-attention keys and values among `outputs` (`present.N.encoder.*`), named as
    the decoder reads them back (`past_key_values.N.encoder.*`)."""
    return {k.replace("present.", "past_key_values."): v for k, v in outputs.items()
            if k.startswith("present.") and ".encoder." in k}


def _log_softmax_at(logits: np.ndarray, index: np.ndarray) -> np.ndarray:
    """log p(index) under softmax(logits) for each row."""
    peak = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return logits[np.arange(len(index)), index] - lse


class Recogniser:
    """Greedy Moonshine decoding (encoder, cross K/V, step decoder) for batches of utterances."""

    def __init__(self, model: LoadedModel) -> None:
        params = model.manifest.parameters
        try:
            self.encoder: Session = model.sessions["encoder"]
            self.decoder: Session = model.sessions["decoder"]
            self.cross_kv: Session | None = model.sessions.get("cross_kv")
            self.bos = int(params["bos_token_id"])
            self.eos = int(params["eos_token_id"])
            self.layers = int(params["decoder_layers"])
            self.tokens_per_second = float(params["max_tokens_per_second"])
            self.max_tokens = int(params["max_tokens"])
            self.max_samples = int(float(params["max_audio_seconds"]) * MODEL_RATE)
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
        return max(_MIN_TOKENS, min(self.max_tokens - 2, math.ceil(samples / MODEL_RATE * self.tokens_per_second)))

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

    def decode(self, audios: list[np.ndarray], drafts: list[list[int]] | None = None,
               attention: bool = True) -> list[Hypothesis]:
        """Greedy-decode each utterance; a draft (earlier tokens of the same speech) saves calls.

        Drafts are checked, never trusted: the first decoder call reads BOS and the drafts'
        common length and keeps the tokens up to the first position where the greedy choice
        differs; later calls feed the greedy token plus the draft's continuation (found again
        after a difference) and keep the part that greedy agrees with. The result is the plain
        greedy decode. `attention`: collect cross-attention for word times (when the decoder
        exposes it).
        """
        if not audios:
            return []
        batch = len(audios)
        caps = [self.token_cap(len(a)) for a in audios]
        rows = [_Row(list(d[:cap]), cap) for d, cap in zip(drafts or [[] for _ in audios], caps)]
        attention = attention and bool(self._attention_outputs)
        hidden = self.encode(audios)
        common = min(len(row.draft) for row in rows)
        ids = np.array([[self.bos, *row.draft[:common]] for row in rows], dtype=np.int64)
        empty = np.zeros((batch, self._heads, 0, self._head_dim), dtype=np.float32)
        names = self._output_names(first=False, attention=attention)
        # The first call: the step decoder with an empty decoder cache and the cross K/V, or
        # the merged decoder's first-call branch, which computes the cross K/V itself.
        feed: dict[str, np.ndarray] = {"input_ids": ids}
        parts = ("decoder",) if self.cross_kv is not None else ("decoder", "encoder")
        for layer in range(self.layers):
            for part in parts:
                feed[f"past_key_values.{layer}.{part}.key"] = empty
                feed[f"past_key_values.{layer}.{part}.value"] = empty
        step_inputs: dict[str, np.ndarray] = {}  # what a merged decoder's later calls also read
        if self.cross_kv is not None:
            encoder_kv = _encoder_past(self.cross_kv.run({"encoder_hidden_states": hidden}))
            out = self.decoder.run({**feed, **encoder_kv}, names)
        else:
            step_inputs = {"encoder_hidden_states": hidden, "use_cache_branch": np.array([True])}
            feed |= {**step_inputs, "use_cache_branch": np.array([False])}
            out = self.decoder.run(feed, self._output_names(first=True, attention=attention))
            encoder_kv = _encoder_past(out)
        attn: list[list[np.ndarray]] = [[] for _ in audios]
        position = 0  # decoder positions in the KV cache
        chosen = ids[:, 0]
        logits = out["logits"][:, :, :self.vocab]
        ahead = common
        while True:
            # `logits` [B, 1 + ahead]: the fed token `chosen` and `ahead` draft tokens after it.
            agree = np.argmax(logits[:, :ahead], axis=-1) == ids[:, 1:]
            active = [b for b in range(batch) if not rows[b].stopped]
            kept = min((int(agree[b].argmin()) if not agree[b].all() else ahead for b in active), default=0)
            for t in range(kept):
                lp = _log_softmax_at(logits[:, t], ids[:, t + 1])
                for b in active:
                    rows[b].take(int(ids[b, t + 1]), float(lp[b]), self.eos)
            position += 1 + kept
            past = {f"past_key_values.{layer}.decoder.{part}": _prefix(out[f"present.{layer}.decoder.{part}"], position)
                    for layer in range(self.layers) for part in ("key", "value")}
            if attention:
                self._keep_attention(out, attn, 1 + kept)
            chosen = np.argmax(logits[:, kept], axis=-1)
            lp = _log_softmax_at(logits[:, kept], chosen)
            for b in range(batch):
                if not rows[b].stopped:
                    rows[b].take(int(chosen[b]), float(lp[b]), self.eos)
            active = [b for b in range(batch) if not rows[b].stopped]
            if not active:
                break
            ahead = min(len(rows[b].continuation(_LOOKAHEAD)) for b in active)
            ids = np.array([[int(chosen[b]), *(rows[b].continuation(ahead) + [int(chosen[b])] * ahead)[:ahead]]
                            for b in range(batch)], dtype=np.int64)
            feed = {"input_ids": ids, **step_inputs, **encoder_kv, **past}
            out = self.decoder.run(feed, names)
            logits = out["logits"][:, :, :self.vocab]
        for row in rows:
            if row.stopped == "cap" and (cut := repeat_cut(row.tokens)) is not None:
                _LOGGER.debug("Repeated phrase cut after %d of %d tokens", cut, len(row.tokens))
                del row.tokens[cut:], row.logprobs[cut:]
                row.stopped = "repeat"
        frames = [self.frames(len(a)) for a in audios]
        return [
            Hypothesis(row.tokens, row.logprobs, frames[b], row.stopped,
                       self._stack_attention(attn[b], len(row.tokens), frames[b]))
            for b, row in enumerate(rows)
        ]

    def _output_names(self, first: bool, attention: bool) -> list[str]:
        """Decoder outputs to fetch: logits, the KV cache (encoder part: a merged decoder's first call)."""
        parts = ("decoder", "encoder") if first else ("decoder",)
        names = ["logits"] + [f"present.{layer}.{part}.{kv}" for layer in range(self.layers)
                              for part in parts for kv in ("key", "value")]
        return names + self._attention_outputs if attention else names

    def _keep_attention(self, out: dict[str, np.ndarray], attention: list[list[np.ndarray]], rows: int) -> None:
        """Collect the first `rows` positions' cross-attention [layers, heads, frames].

        Row i of an utterance is the position that predicts token i; the row after its last
        token is the one that predicted EOS.
        """
        layers = np.stack([out[name] for name in self._attention_outputs], axis=1)  # [B, L, H, S, F]
        for b in range(len(attention)):
            for s in range(min(rows, layers.shape[3])):
                attention[b].append(layers[b, :, :, s])

    def _stack_attention(self, per_token: list[np.ndarray], n_tokens: int, frames: int) -> np.ndarray | None:
        """[layers, heads, rows, frames]: one row per kept token plus the EOS row if there was one."""
        if not self._attention_outputs or not per_token or not n_tokens:
            return None
        return np.stack(per_token[:n_tokens + 1], axis=2)[..., :frames]
