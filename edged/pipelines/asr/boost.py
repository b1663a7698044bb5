"""Word boosting by shallow fusion: a bonus on the logits of tokens that go on with a boosted phrase.

Riva's SpeechContext gives phrases with a boost score (its examples use 10 to 100; its docs
suggest up to about 20 for a good effect, and negative scores to discourage a phrase). Here each
phrase becomes the token sequences Moonshine would write for it (with the leading space of a word
mid-sentence, as given, lower case and capitalised; and without the space, as the first word of
an utterance), stored in a prefix trie. At each decoding step the tokens that start a phrase or
go on with one begun at the end of the hypothesis get a bonus on their logits, so that greedy
decoding and the beam prefer the phrase.

A positive boost is a budget, in nats (`NATS_PER_BOOST` each, at most `MAX_BUDGET`): a phrase
is written where the model gives it, whole, a log-probability above -budget, and puts its first
token less than `FIRST_SHARE` x budget behind the model's own choice. The first token's bonus is
that share, each next one's what is left of the budget after the model's surprisal (-log p) at
the phrase's tokens before it.
Greedy decoding cannot take a token back, so before a bonus starts a phrase the recogniser reads
the whole phrase in one decoder call and starts it only if it fits (Recogniser.decode); a beam
ranks by log-probability plus `credit`.

Why these numbers (edged's voice saying "Please send the new report to NAME before the meeting
on Friday." with eight invented names): written where said, the names cost the model 3 to 18
nats (Kubrix 18: its first piece alone 8.6, behind "Cover"), so Riva's suggested 20 writes them
all. A flat bonus per token large enough for Kubrix (10 nats) wrote names that were not said
over the first words of 2 of 24 other sentences ("Quorvath:" for a whole sentence, where the
model is least sure), at a whole-phrase cost of 30 to 40 nats: the budget refuses those. A
budget alone, its first token getting all of it, wrote names at a sentence's start where the
model only hears them later ("Okonkwo ok", a first piece of 12 nats): the first token's share
refuses that. A negative boost takes its value off every token of the phrase.

Two more rules keep a bonus from writing what was not said: a phrase starts only where the
model itself starts a word (its best token has a leading space; not after its EOS, not in the
middle of a word), and a phrase whose last word the model goes on with ("Cover" in "Covereth")
is not one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edged.pipelines.asr.tokenizer import _BYTE_IDS, _FIRST_BYTE_ID, Tokenizer

NATS_PER_BOOST = 1.0
MAX_BUDGET = 40.0
# The share of its budget a phrase's first token may get as its bonus: the phrase must start
# about where the model hears it (see the module's docstring).
FIRST_SHARE = 0.5
# Marks a token sequence that only starts an utterance (a first word without its leading space).
_START = -1


def keep_bonus(found: dict[int, float], token: int, bonus: float) -> None:
    """Record a token's bonus unless one of bigger size is there (phrases that share tokens)."""
    if bonus and abs(bonus) > abs(found.get(token, 0.0)):
        found[token] = bonus


def budget_of(boost: float) -> float:
    """A Riva boost score in nats: a positive one the budget of its phrase, a negative one
    the penalty on each of its tokens."""
    return float(np.clip(NATS_PER_BOOST * boost, -MAX_BUDGET, MAX_BUDGET))


def encode(tokenizer: Tokenizer, text: str, index: dict[bytes, int] | None = None) -> list[int]:
    """Token ids of `text` as SentencePiece BPE writes them (Moonshine's Llama vocabulary,
    whose piece scores fall with the id): characters (bytes for those not in the vocabulary),
    then merge the adjacent pair that makes the best-scored (lowest id) piece until none does."""
    index = piece_index(tokenizer) if index is None else index
    symbols: list[bytes] = []
    for char in text:
        raw = char.encode()
        symbols += [raw] if raw in index else [bytes([b]) for b in raw]
    while len(symbols) > 1:
        best, at = None, -1
        for i in range(len(symbols) - 1):
            token = index.get(symbols[i] + symbols[i + 1])
            if token is not None and (best is None or token < best):
                best, at = token, i
        if best is None:
            break
        symbols[at:at + 2] = [symbols[at] + symbols[at + 1]]
    return [index[s] if s in index else _FIRST_BYTE_ID + s[0] for s in symbols]


def piece_index(tokenizer: Tokenizer) -> dict[bytes, int]:
    """Text pieces (not special, not byte fallback) by their bytes, for `encode`."""
    index: dict[bytes, int] = {}
    for token, piece in enumerate(tokenizer.pieces):
        if token not in tokenizer.special and not _FIRST_BYTE_ID <= token < _FIRST_BYTE_ID + _BYTE_IDS:
            index.setdefault(piece, token)
    return index


def spellings(phrase: str) -> list[str]:
    """The ways Moonshine may write a phrase: as given, lower case, first letter capitalised,
    every word capitalised."""
    words = phrase.split()
    forms = [" ".join(words), " ".join(words).lower(), " ".join(words)[:1].upper() + " ".join(words)[1:],
             " ".join(w[:1].upper() + w[1:] for w in words)]
    return list(dict.fromkeys(f for f in forms if f))


def variants(tokenizer: Tokenizer, phrase: str, index: dict[bytes, int] | None = None) -> list[tuple[int, ...]]:
    """Token sequences of a phrase: each spelling with its leading space, and without it
    after the `_START` marker (the first word of an utterance)."""
    index = piece_index(tokenizer) if index is None else index
    out: list[tuple[int, ...]] = []
    for text in spellings(phrase):
        out.append(tuple(encode(tokenizer, " " + text, index)))
        out.append((_START, *encode(tokenizer, text, index)))
    return list(dict.fromkeys(out))


class PhraseBias:
    """A prefix trie of boosted phrases' token sequences; `add` biases one position's logits."""

    def __init__(self, tokenizer: Tokenizer, boosts: Sequence[tuple[str, float]], eos: int = 2) -> None:
        self.boosts = tuple(boosts)
        self._eos = eos
        self._word_start = np.array([piece.startswith(b" ") and token not in tokenizer.special
                                     for token, piece in enumerate(tokenizer.pieces)])
        self._joins = np.array([tokenizer.piece_bytes(token)[:1].isalnum() for token in range(len(tokenizer.pieces))])
        """Per token: whether it goes on with the word before it (starts with a letter or digit)."""
        self._children: list[dict[int, int]] = [{}]
        self._budget: list[float] = [0.0]
        """Per node: the budget (or penalty) of the phrases through it (the biggest)."""
        self._end: list[bool] = [False]
        """Per node: whether a phrase ends there."""
        self.depth = 0
        index = piece_index(tokenizer)
        for phrase, boost in self.boosts:
            budget = budget_of(boost)
            if not budget:
                continue
            for seq in variants(tokenizer, phrase, index):
                node = 0
                for token in seq:
                    child = self._children[node].get(token)
                    if child is None:
                        child = len(self._children)
                        self._children.append({})
                        self._budget.append(budget)
                        self._end.append(False)
                        self._children[node][token] = child
                    elif abs(budget) > abs(self._budget[child]):  # a prefix shared by two phrases
                        self._budget[child] = budget
                    node = child
                self._end[node] = True
                self.depth = max(self.depth, len(seq))

    def __bool__(self) -> bool:
        return bool(self._children[0])

    def _walk(self, tokens: Sequence[int]) -> int | None:
        node = 0
        for token in tokens:
            child = self._children[node].get(token)
            if child is None:
                return None
            node = child
        return node

    def continuations(self, history: Sequence[int], logprobs: Sequence[float]) -> dict[int, float]:
        """Bonus per next token that goes on with a phrase begun at the end of `history` (the
        hypothesis' tokens so far, no BOS, with the model's log-probabilities of them): the
        phrase's budget less the surprisal spent on it so far (a negative boost: its penalty)."""
        found: dict[int, float] = {}
        n = len(history)
        matches = [(self._walk(history[n - k:]), n - k) for k in range(min(n, self.depth - 1), 0, -1)]
        if 0 < n < self.depth:  # a phrase begun at the utterance's start, without its space
            matches.append((self._walk([_START, *history]), 0))
        for node, start in matches:
            if node is not None:
                spent = -sum(logprobs[start:])
                for token, child in self._children[node].items():
                    budget = self._budget[child]
                    keep_bonus(found, token, max(0.0, budget - spent) if budget > 0 else budget)
        return found

    def starts(self, history: Sequence[int], best: int) -> dict[int, float]:
        """Bonus per token that starts a phrase after `history` (`FIRST_SHARE` of its budget; a
        negative boost: its penalty), where the model's own best next token is `best`. Only where
        the model itself starts a word (its best token has a leading space, or the utterance
        starts and it is not EOS): the bonus replaces a word, it does not break one in two, nor go
        on after the model's EOS (which would repeat the phrase at the end of every utterance)."""
        at_start = not history
        if not (best < len(self._word_start) and self._word_start[best]) and not (at_start and best != self._eos):
            return {}
        found: dict[int, float] = {}
        roots = [0] + ([self._children[0][_START]] if at_start and _START in self._children[0] else [])
        for root in roots:
            for token, child in self._children[root].items():
                if token != _START:
                    budget = self._budget[child]
                    keep_bonus(found, token, FIRST_SHARE * budget if budget > 0 else budget)
        return found

    def completions(self, first: int, at_start: bool) -> list[tuple[tuple[int, ...], float]]:
        """The whole phrases (token sequences) that start with token `first`, with their budgets."""
        out: list[tuple[tuple[int, ...], float]] = []
        roots = [0] + ([self._children[0][_START]] if at_start and _START in self._children[0] else [])
        for root in roots:
            child = self._children[root].get(first)
            todo: list[tuple[int, tuple[int, ...]]] = [(child, (first,))] if child is not None else []
            while todo:
                node, seq = todo.pop()
                if self._end[node]:
                    out.append((seq, self._budget[node]))
                todo += [(c, (*seq, t)) for t, c in self._children[node].items()]
        return out

    def add(self, logits: np.ndarray, history: Sequence[int], logprobs: Sequence[float]) -> None:
        """Add every bonus after `history` (continuations and starts) to one position's
        logits [vocab], in place (the beam's candidates; greedy decoding checks a start
        first: Recogniser.decode)."""
        found = self.continuations(history, logprobs)
        for token, bonus in self.starts(history, int(np.argmax(logits))).items():
            keep_bonus(found, token, bonus)
        for token, bonus in found.items():
            if token < len(logits):
                logits[token] += bonus

    def joins(self, token: int) -> bool:
        """Whether `token` goes on with the word before it (starts with a letter or digit)."""
        return token < len(self._joins) and bool(self._joins[token])

    def occurrences(self, tokens: Sequence[int]) -> list[tuple[int, int, float]]:
        """Whole phrases in `tokens`: (start, end, budget), the longest from each start, left to
        right without overlaps. A phrase followed by a token that goes on with its last word
        ("Cover" in "Covereth") is not one."""
        found = []
        start = 0
        while start < len(tokens):
            best: tuple[int, float] | None = None
            for node, end in self._paths(tokens, start):
                if self._end[node] and not (end < len(tokens) and self.joins(tokens[end])):
                    best = (end, self._budget[node])
            if best is not None:
                found.append((start, best[0], best[1]))
                start = best[0]
            else:
                start += 1
        return found

    def _paths(self, tokens: Sequence[int], start: int) -> list[tuple[int, int]]:
        """(node, end) along the trie for tokens from `start` (after `_START` too, at the
        first token)."""
        paths = []
        roots = [0] + ([self._children[0][_START]] if start == 0 and _START in self._children[0] else [])
        for node in roots:
            for end in range(start, min(len(tokens), start + self.depth)):
                child = self._children[node].get(tokens[end])
                if child is None:
                    break
                node = child
                paths.append((node, end + 1))
        return paths

    def covered(self, tokens: Sequence[int]) -> set[int]:
        """Indices of the tokens that are part of a whole phrase."""
        return {i for start, end, _ in self.occurrences(tokens) for i in range(start, end)}

    def credit(self, tokens: Sequence[int], logprobs: Sequence[float], partial: bool = True) -> float:
        """What the bonus adds to a hypothesis' log-probability (a beam's ranking): each whole
        phrase's surprisal up to its budget (a penalty per token for a negative boost), and
        with `partial` the phrase begun at the end, up to `FIRST_SHARE` of its budget (as
        much as greedy decoding would give its first token). A phrase begun and left earns
        nothing: the bonus it had is taken back, as in a context graph."""
        def earned(start: int, end: int, budget: float, share: float) -> float:
            return min(share * budget, -sum(logprobs[start:end])) if budget > 0 else budget * (end - start)

        found = self.occurrences(tokens)
        total = sum(earned(start, end, budget, 1.0) for start, end, budget in found)
        last = max((end for _, end, _ in found), default=0)
        if partial:
            for start in range(max(last, len(tokens) - self.depth), len(tokens)):
                ends = [node for node, end in self._paths(tokens, start) if end == len(tokens)]
                if ends:
                    return total + earned(start, len(tokens), self._budget[ends[-1]], FIRST_SHARE)
        return total
