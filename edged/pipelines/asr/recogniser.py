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
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged.backends import Session
from edged.errors import ModelLoadError
from edged.loader import LoadedModel
from edged.pipelines.asr.alignment import SAMPLES_PER_FRAME
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.boost import PhraseBias, keep_bonus
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
# Widest beam (Recogniser.beam): each beam is a row of every decoder call.
MAX_BEAM = 4
# Decodes again of an utterance that left a boosted phrase unfinished (Recogniser._check_phrases).
_PHRASE_RETRIES = 3
# Phrase biases kept per recogniser (one per distinct boost list of the streams).
_BIAS_CACHE = 64


def beam_width(max_alternatives: int) -> int:
    """The beam width for a request of `max_alternatives` (two at least: one is greedy)."""
    return min(MAX_BEAM, max(2, max_alternatives))


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
    """Further distinct hypotheses of the same audio, best first (a beam search's; see Recogniser.beam)."""
    token_times: list[tuple[float, float]] | None = None
    """Start and end seconds of each token from the audio's start, where the decoder knows them
    (NeMo transducers and CTC: the frames where tokens were emitted); None for Moonshine."""
    language: str = ""
    """The language a multilingual model wrote (e.g. `de`, identified or asked); empty: the model's own."""

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
    bans: set[int] = field(default_factory=set)
    """Token indices decoded without the phrase bias (where a boosted phrase was left unfinished)."""
    flips: list[int] = field(default_factory=list)
    """Token indices chosen because of a phrase bonus (the model's own choice was another)."""
    verdicts: dict[int, dict[int, bool]] = field(default_factory=dict)
    """Per token index, the phrase starts checked there: whether the phrase fits its budget."""

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


def _position_bias(bias: PhraseBias, row: _Row, history: list[int], logprobs: list[float],
                   logits: np.ndarray) -> tuple[dict[int, float], set[int]]:
    """The bonuses at one position of a boosted row (`history` its tokens before it), and the
    phrase starts among them not yet checked (see Recogniser._phrase_start)."""
    found = bias.continuations(history, logprobs)
    verdicts = row.verdicts.get(len(history), {})
    unchecked = set()
    for token, budget in bias.starts(history, int(np.argmax(logits))).items():
        if budget > 0:
            verdict = verdicts.get(token)
            if verdict is False:
                continue
            if verdict is None:
                unchecked.add(token)
        keep_bonus(found, token, budget)
    return found, unchecked


def _add(logits: np.ndarray, bonuses: dict[int, float]) -> None:
    """Add bonuses to one position's logits [vocab], in place."""
    for token, bonus in bonuses.items():
        logits[token] += bonus


def _biased(logits: np.ndarray, boosted: list[tuple[int, PhraseBias]], rows: list[_Row],
            ids: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """`logits` [B, positions, vocab] with each boosted row's phrase bonuses added, and per
    row the first position where an unchecked phrase start would win (the positions after
    it are left unbiased: they are not kept). The history at position t is the row's tokens,
    then the fed tokens 1..t (fed token 0 is the row's last token, or BOS)."""
    scored = logits.copy()
    pending: dict[int, int] = {}
    for b, bias in boosted:
        row = rows[b]
        if row.stopped:
            continue
        fed = ids[b, 1:].tolist()
        fed_lp = _log_softmax_at(logits[b, :len(fed)], ids[b, 1:]).tolist()
        for t in range(logits.shape[1]):
            if len(row.tokens) + t in row.bans:
                continue
            found, unchecked = _position_bias(bias, row, row.tokens + fed[:t], row.logprobs + fed_lp[:t], logits[b, t])
            _add(scored[b, t], found)
            if unchecked and int(np.argmax(scored[b, t])) in unchecked:
                pending[b] = t
                break
    return scored, pending


def _note_flip(row: _Row, logits: np.ndarray, scored: np.ndarray, token: int) -> None:
    """Remember the next token if a phrase bonus, not the model, chose it (one position's logits)."""
    if not row.stopped and scored[token] > logits[token] and int(np.argmax(logits)) != token:
        row.flips.append(len(row.tokens))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis."""
    peak = logits.max(axis=-1, keepdims=True)
    return logits - (np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True)) + peak)


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
        self.tokenizer = self._load_tokenizer(tokenizer_file, model)
        self.vocab = len(self.tokenizer.pieces)
        past = [i for i in self.decoder.inputs if i.name.startswith("past_key_values.")]
        self._heads = int(past[0].shape[1]) if past and isinstance(past[0].shape[1], int) else 8
        self._head_dim = int(past[0].shape[3]) if past and isinstance(past[0].shape[3], int) else 52
        self._attention_outputs = sorted(
            (o.name for o in self.decoder.outputs if o.name.startswith("cross_attentions.")),
            key=lambda name: int(name.rsplit(".", 1)[1]))
        """The decoder outputs of cross-attention [batch, heads, tokens, frames], one per layer."""
        self.alignment_heads = tuple((int(h[0]), int(h[1])) for h in params.get("alignment_heads", []))
        """(layer, head) pairs of the collected cross-attention to align words with (alignment.py)."""
        self.samples_per_frame = SAMPLES_PER_FRAME
        """Samples of audio per encoder frame."""
        self._biases: dict[tuple[tuple[str, float], ...], PhraseBias] = {}
        self._biases_lock = threading.Lock()

    def _load_tokenizer(self, path: Path, model: LoadedModel) -> Tokenizer:
        """Moonshine's tokenizer.bin (a subclass reads its model's own)."""
        return Tokenizer.load(path, {0, self.bos, self.eos})

    def phrase_bias(self, boosts: tuple[tuple[str, float], ...]) -> PhraseBias | None:
        """The phrase bias of a stream's boosts (built once per distinct list), None for none."""
        if not boosts:
            return None
        with self._biases_lock:  # lanes decode on several threads
            bias = self._biases.get(boosts)
            if bias is None:
                if len(self._biases) >= _BIAS_CACHE:
                    del self._biases[next(iter(self._biases))]
                bias = self._biases[boosts] = PhraseBias(self.tokenizer, boosts, self.eos)
        return bias or None

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
               attention: bool = True, biases: Sequence[PhraseBias | None] | None = None) -> list[Hypothesis]:
        """Greedy-decode each utterance; a draft (earlier tokens of the same speech) saves calls.

        Drafts are checked, never trusted: the first decoder call reads BOS and the drafts'
        common length and keeps the tokens up to the first position where the greedy choice
        differs; later calls feed the greedy token plus the draft's continuation (found again
        after a difference) and keep the part that greedy agrees with. The result is the plain
        greedy decode. `attention`: collect cross-attention for word times (when the decoder
        exposes it). `biases`: per utterance, boosted phrases (see edged.pipelines.asr.boost)
        or None; an utterance without one decodes exactly as without the argument.

        With a bias, the greedy choice is the argmax of the biased logits, whose bias at each
        fed position depends on the tokens up to it. Those are known (the row's tokens, then
        the draft tokens fed before the position), so the draft is still checked position by
        position against the biased argmax and the result is the biased greedy decode: a
        boosted stream keeps the drafts' savings, which an ahead of 0 would have lost for
        every stream in its batch. Where a bonus would start a phrase, the draft is followed
        no further: the phrase is read whole first (`_phrase_start`), one decoder call. The
        log-probabilities kept are the model's own (unbiased), so that confidences say what
        the model heard.
        """
        if not audios:
            return []
        hidden = self.encode(audios)
        samples = [len(a) for a in audios]
        hyps, rows = self._greedy(hidden, samples, drafts, attention, biases)
        if biases and any(biases):
            self._check_phrases(hidden, samples, hyps, rows, biases, attention)
        return hyps

    def _check_phrases(self, hidden: np.ndarray, samples: list[int], hyps: list[Hypothesis], rows: list[_Row],
                       biases: Sequence[PhraseBias | None], attention: bool) -> None:
        """Decode again (in place) the boosted utterances that left a phrase unfinished.

        A safety net behind `_phrase_start`'s check (which reads a phrase in one call, and an
        int8 decoder rounds that a little differently from steps of one token): each token a
        bonus chose must lie in a whole phrase of the result, or greedy decoding, which cannot
        take a token back, would leave a fragment of the phrase. At the first that does not,
        the utterance is decoded again from its encoder states without the bias at that token
        (its tokens as the draft, so that costs a call or two), up to _PHRASE_RETRIES times,
        then without the bias at all.
        """
        todo = [b for b, bias in enumerate(biases) if bias]
        for attempt in range(_PHRASE_RETRIES + 1):
            failed = []
            for b in todo:
                covered = biases[b].covered(hyps[b].tokens)  # type: ignore[union-attr]  # todo: rows with a bias
                bad = next((i for i in rows[b].flips if i < len(hyps[b].tokens) and i not in covered), None)
                if bad is not None:
                    rows[b].bans.add(bad)
                    failed.append(b)
            if not failed:
                return
            _LOGGER.debug("Boosted phrase left unfinished in %d utterance(s): decoding again", len(failed))
            last = attempt == _PHRASE_RETRIES
            redo, redo_rows = self._greedy(
                hidden[failed], [samples[b] for b in failed], [hyps[b].tokens for b in failed], attention,
                None if last else [biases[b] for b in failed], [rows[b].bans for b in failed])
            for b, hyp, row in zip(failed, redo, redo_rows):
                hyps[b], rows[b] = hyp, row
            todo = failed

    def _greedy(self, hidden: np.ndarray, samples: list[int], drafts: list[list[int]] | None, attention: bool,
                biases: Sequence[PhraseBias | None] | None, bans: list[set[int]] | None = None,
                prompts: list[list[int]] | None = None, encoder_kv: dict[str, np.ndarray] | None = None
                ) -> tuple[list[Hypothesis], list[_Row]]:
        """The greedy (biased) decode of encoder states `hidden` (see `decode`), and its rows.

        `prompts`: per row, the tokens decoding starts from (all of one length; default BOS
        alone); `encoder_kv`: the cross K/V of `hidden` where the caller has it already."""
        batch = len(samples)
        caps = [self.token_cap(n) for n in samples]
        rows = [_Row(list(d[:cap]), cap) for d, cap in zip(drafts or [[] for _ in samples], caps)]
        for row, banned in zip(rows, bans or []):
            row.bans = set(banned)
        attention = attention and bool(self._attention_outputs)
        common = min(len(row.draft) for row in rows)
        prompts = prompts or [[self.bos]] * batch
        start = len(prompts[0]) - 1  # prompt tokens before the last, read by the first call only
        ids = np.array([[*prompt, *row.draft[:common]] for prompt, row in zip(prompts, rows)], dtype=np.int64)
        names = self._output_names(first=False, attention=attention)
        out, encoder_kv, step_inputs = self._first_call(hidden, ids, attention, encoder_kv)
        ids = ids[:, start:]
        attn: list[list[np.ndarray]] = [[] for _ in samples]
        skip = start  # the first call's positions of the prompt before its last token predict no token
        position = start  # decoder positions in the KV cache
        chosen = ids[:, 0]
        logits = out["logits"][:, start:, :self.vocab]
        ahead = common
        boosted = [(b, bias) for b, bias in enumerate(biases or []) if bias]
        boosted_rows = {b for b, _ in boosted}
        while True:
            # `logits` [B, 1 + ahead]: the fed token `chosen` and `ahead` draft tokens after it.
            scored, pending = _biased(logits, boosted, rows, ids) if boosted else (logits, {})
            agree = np.argmax(scored[:, :ahead], axis=-1) == ids[:, 1:]
            for b, t in pending.items():  # a phrase start is checked before it is kept
                agree[b, t:] = False
            active = [b for b in range(batch) if not rows[b].stopped]
            kept = min((int(agree[b].argmin()) if not agree[b].all() else ahead for b in active), default=0)
            for t in range(kept):
                lp = _log_softmax_at(logits[:, t], ids[:, t + 1])
                for b in active:
                    if rows[b].stopped:  # at an earlier token of this call (cap, loop cut), as greedy would
                        continue
                    if b in boosted_rows:
                        _note_flip(rows[b], logits[b, t], scored[b, t], int(ids[b, t + 1]))
                    rows[b].take(int(ids[b, t + 1]), float(lp[b]), self.eos)
            position += 1 + kept
            past = {f"past_key_values.{layer}.decoder.{part}": _prefix(out[f"present.{layer}.decoder.{part}"], position)
                    for layer in range(self.layers) for part in ("key", "value")}
            if attention:
                self._keep_attention(out, attn, 1 + kept, skip)
                skip = 0
            chosen = np.argmax(scored[:, kept], axis=-1)
            for b, t in pending.items():
                if t == kept and not rows[b].stopped:
                    chosen[b] = self._phrase_start(b, rows[b], dict(boosted)[b], logits[b, kept], scored[b, kept],
                                                   {**encoder_kv, **past}, step_inputs)
            lp = _log_softmax_at(logits[:, kept], chosen)
            for b in range(batch):
                if not rows[b].stopped:
                    if b in boosted_rows:
                        _note_flip(rows[b], logits[b, kept], scored[b, kept], int(chosen[b]))
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
        frames = [self.frames(n) for n in samples]
        return [
            Hypothesis(row.tokens, row.logprobs, frames[b], row.stopped,
                       self._stack_attention(attn[b], len(row.tokens), frames[b]))
            for b, row in enumerate(rows)
        ], rows

    def beam(self, audio: np.ndarray, width: int, bias: PhraseBias | None = None,
             attention: bool = True) -> Hypothesis:
        """Beam-search one utterance: the best hypothesis, with up to `width` - 1 further ones
        of distinct text in `.alternatives`, best first.

        The audio is encoded and its cross K/V computed once, then replicated for the beams
        (the batch dimension of every decoder call); each step keeps the `width` best
        continuations and reorders the decoder cache by their beams. A beam ends at EOS, at
        the token cap or at a repetition loop (the greedy rules); the search stops when
        `width` have ended. Hypotheses rank by their total log-probability over their length
        counting EOS, as Whisper's beam search does (without it the shortest ending would
        win); with a bias, plus the bonus of the boosted phrases they hold (a phrase begun
        and left earns nothing: see PhraseBias.credit), and each beam's candidates are its
        best tokens by the model and its best boosted ones. Cross-attention (for word times) comes from one more
        decoder call that reads the best hypothesis whole.
        """
        cap = self.token_cap(len(audio))
        hidden = self.encode([audio])
        ids = np.array([[self.bos]], dtype=np.int64)
        out, encoder_kv, step_inputs = self._first_call(hidden, ids, attention=False)
        names = self._output_names(first=False, attention=False)
        # Each beam: tokens, the model's log-probabilities, their sum plus the phrase credit.
        beams: list[tuple[list[int], list[float], float]] = [([], [], 0.0)]
        ended: list[tuple[list[int], list[float], float, str]] = []
        replicated: dict[int, dict[str, np.ndarray]] = {}
        position = 1
        while True:
            logits = out["logits"][:, -1, :self.vocab]
            own = _log_softmax(logits)
            candidates = []
            for i, (tokens, logprobs, _) in enumerate(beams):
                if bias:  # the candidates by biased score, ranked with the credit they earn
                    scored = own[i].copy()
                    bias.add(scored, tokens, logprobs)
                    boosted = np.flatnonzero(scored != own[i])  # the model's best tokens, and these
                    tops = np.concatenate(
                        [np.argsort(-own[i])[:width + 1], boosted[np.argsort(-scored[boosted])][:width + 1]]
                    )
                    for token in map(int, dict.fromkeys(tops.tolist())):
                        lp = float(own[i, token])
                        if token == self.eos:
                            score = sum(logprobs) + lp + bias.credit(tokens, logprobs, partial=False)
                        else:
                            score = sum(logprobs) + lp + bias.credit([*tokens, token], [*logprobs, lp])
                        candidates.append((score, i, token))
                else:
                    total = beams[i][2]
                    for token in map(int, np.argsort(-own[i])[:width + 1]):
                        candidates.append((total + float(own[i, token]), i, token))
            candidates.sort(key=lambda c: -c[0])
            kept: list[tuple[list[int], list[float], float]] = []
            parents: list[int] = []
            for total, i, token in candidates:
                tokens, logprobs, _ = beams[i]
                if token == self.eos:
                    ended.append((tokens, logprobs, total, "eos"))
                    continue
                tokens, logprobs = [*tokens, token], [*logprobs, float(own[i, token])]
                cut = repetition_cut(tokens)
                if cut is not None:
                    ended.append((tokens[:cut], logprobs[:cut], total, "loop"))
                elif len(tokens) >= cap:
                    ended.append((tokens, logprobs, total, "cap"))
                else:
                    kept.append((tokens, logprobs, total))
                    parents.append(i)
                if len(kept) == width:
                    break
            if len(ended) >= width or not kept:
                break
            beams = kept
            index = np.array(parents)
            past = {f"past_key_values.{layer}.decoder.{part}":
                    _prefix(out[f"present.{layer}.decoder.{part}"], position)[index]
                    for layer in range(self.layers) for part in ("key", "value")}
            position += 1
            if len(beams) not in replicated:
                replicated[len(beams)] = {k: np.repeat(v, len(beams), axis=0)
                                          for k, v in {**encoder_kv, **step_inputs}.items() if v.ndim > 1}
            step = {**step_inputs, **replicated[len(beams)]}
            ids = np.array([[tokens[-1]] for tokens, _, _ in beams], dtype=np.int64)
            out = self.decoder.run({"input_ids": ids, **step, **past}, names)
        if not ended:  # cannot happen with a cap of at least one token, kept for safety
            ended = [(tokens, logprobs, total, "cap") for tokens, logprobs, total in beams]
        ended.sort(key=lambda e: -e[2] / (len(e[0]) + (e[3] == "eos")))
        frames = self.frames(len(audio))
        hyps: list[Hypothesis] = []
        texts: set[str] = set()
        for tokens, logprobs, _, stopped in ended:
            if stopped == "cap" and (cut := repeat_cut(tokens)) is not None:
                tokens, logprobs, stopped = tokens[:cut], logprobs[:cut], "repeat"
            text = self.tokenizer.decode(tokens)
            if text not in texts and len(hyps) < width and (text or not hyps):  # no empty alternative
                texts.add(text)
                hyps.append(Hypothesis(tokens, logprobs, frames, stopped))
        best = hyps[0]
        best.alternatives = hyps[1:]
        if attention and self._attention_outputs and best.tokens:
            # BOS and the tokens read at once: one attention row per token, and the EOS row.
            forced = np.array([[self.bos, *best.tokens]], dtype=np.int64)
            attn: list[list[np.ndarray]] = [[]]
            self._keep_attention(self._first_call(hidden, forced, attention=True)[0], attn, len(best.tokens) + 1)
            best.cross_attention = self._stack_attention(attn[0], len(best.tokens), frames)
        return best

    def _phrase_start(self, b: int, row: _Row, bias: PhraseBias, logits: np.ndarray, scored: np.ndarray,
                      cache: dict[str, np.ndarray], step_inputs: dict[str, np.ndarray]) -> int:
        """The biased greedy token of row `b` where a bonus would start a phrase: each phrase
        start that would win is checked first (`_fits`), and keeps its bonus only if the whole
        phrase fits its budget. Updates `scored` (the position's biased logits) in place."""
        history = row.tokens
        while True:
            found, unchecked = _position_bias(bias, row, history, row.logprobs, logits)
            scored[:] = logits
            _add(scored, found)
            token = int(np.argmax(scored))
            if token not in unchecked:
                return token
            first = float(_log_softmax_at(logits[None], np.array([token]))[0])
            fits = self._fits(b, bias, bias.completions(token, not history), first, cache, step_inputs)
            row.verdicts.setdefault(len(history), {})[token] = fits
            _LOGGER.debug("Boosted phrase start %d at token %d: %s", token, len(history), "kept" if fits else "refused")

    def _fits(self, b: int, bias: PhraseBias, phrases: list[tuple[tuple[int, ...], float]], first: float,
              cache: dict[str, np.ndarray], step_inputs: dict[str, np.ndarray]) -> bool:
        """Whether one of `phrases` (token sequences with their budgets, all starting with one
        token of log-probability `first`) would be, whole, within its budget as row `b`'s next
        tokens, and not go on into a longer word: one decoder call reads them all."""
        if not phrases:
            return False
        longest = max(len(seq) for seq, _ in phrases)
        ids = np.array([[*seq, *[seq[-1]] * (longest - len(seq))] for seq, _ in phrases], dtype=np.int64)
        rows = np.full(len(phrases), b)
        feed = {"input_ids": ids, **{k: v[rows] for k, v in cache.items()},
                **{k: v[rows] if v.ndim > 1 else v for k, v in step_inputs.items()}}
        logits = self.decoder.run(feed, self._output_names(first=False, attention=False))["logits"][:, :, :self.vocab]
        own = _log_softmax(logits)
        for i, (seq, budget) in enumerate(phrases):
            total = first + sum(float(own[i, j - 1, seq[j]]) for j in range(1, len(seq)))
            if total >= -budget and not bias.joins(int(np.argmax(logits[i, len(seq) - 1]))):
                return True
        return False

    def _first_call(self, hidden: np.ndarray, ids: np.ndarray, attention: bool,
                    encoder_kv: dict[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The first decoder call on `ids` (BOS and the tokens after it): its outputs, the cross
        K/V (computed unless given) and what a merged decoder's later calls also read.

        The step decoder gets an empty decoder cache and the cross K/V; a merged decoder's
        first-call branch computes the cross K/V itself.
        """
        empty = np.zeros((len(ids), self._heads, 0, self._head_dim), dtype=np.float32)
        feed: dict[str, np.ndarray] = {"input_ids": ids}
        parts = ("decoder",) if self.cross_kv is not None else ("decoder", "encoder")
        for layer in range(self.layers):
            for part in parts:
                feed[f"past_key_values.{layer}.{part}.key"] = empty
                feed[f"past_key_values.{layer}.{part}.value"] = empty
        step_inputs: dict[str, np.ndarray] = {}
        if self.cross_kv is not None:
            if encoder_kv is None:
                encoder_kv = self.cross_kv_of(hidden)
            out = self.decoder.run({**feed, **encoder_kv}, self._output_names(first=False, attention=attention))
        else:
            step_inputs = {"encoder_hidden_states": hidden, "use_cache_branch": np.array([True])}
            feed |= {**step_inputs, "use_cache_branch": np.array([False])}
            out = self.decoder.run(feed, self._output_names(first=True, attention=attention))
            encoder_kv = _encoder_past(out)
        return out, encoder_kv, step_inputs

    def cross_kv_of(self, hidden: np.ndarray) -> dict[str, np.ndarray]:
        """The cross-attention K/V of encoder states, named as the step decoder reads them."""
        if self.cross_kv is None:
            raise ModelLoadError("This model's decoder computes its cross K/V itself; rebuild its RMIR.")
        return _encoder_past(self.cross_kv.run({"encoder_hidden_states": hidden}))

    def _output_names(self, first: bool, attention: bool) -> list[str]:
        """Decoder outputs to fetch: logits, the KV cache (encoder part: a merged decoder's first call)."""
        parts = ("decoder", "encoder") if first else ("decoder",)
        names = ["logits"] + [f"present.{layer}.{part}.{kv}" for layer in range(self.layers)
                              for part in parts for kv in ("key", "value")]
        return names + self._attention_outputs if attention else names

    def _keep_attention(self, out: dict[str, np.ndarray], attention: list[list[np.ndarray]], rows: int,
                        skip: int = 0) -> None:
        """Collect `rows` positions' cross-attention [layers, heads, frames], after the first `skip`.

        Row i of an utterance is the position that predicts token i; the row after its last
        token is the one that predicted EOS.
        """
        layers = np.stack([out[name] for name in self._attention_outputs], axis=1)  # [B, L, H, S, F]
        for b in range(len(attention)):
            for s in range(skip, min(skip + rows, layers.shape[3])):
                attention[b].append(layers[b, :, :, s])

    def _stack_attention(self, per_token: list[np.ndarray], n_tokens: int, frames: int) -> np.ndarray | None:
        """[layers, heads, rows, frames]: one row per kept token plus the EOS row if there was one."""
        if not self._attention_outputs or not per_token or not n_tokens:
            return None
        return np.stack(per_token[:n_tokens + 1], axis=2)[..., :frames]
