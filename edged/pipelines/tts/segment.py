"""Document → paragraph → sentence → utterance: the units the voice synthesises one at a time.

The first sentence, when long, is split at its first clause boundary so the first audio leaves
early; later sentences are synthesised whole (the voice's prosody spans a sentence). A style
change inside a sentence (SSML prosody) starts a new utterance, since a style is per network run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from edged.pipelines.tts.normalise import normalise
from edged.pipelines.tts.ssml import Boundary, Break, Item, Span, Style

FIRST_CLAUSE_MIN_WORDS = 2
"""A first clause shorter than this is not worth its own network run."""
LONG_SENTENCE_WORDS = 8
"""A first sentence of more words is split at a clause boundary."""

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


@dataclass(frozen=True)
class Utterance:
    """Spans of one style, synthesised by one run of the voice network."""

    spans: tuple[Span, ...]

    @property
    def style(self) -> Style:
        """The style every span shares."""
        return self.spans[0].style

    @property
    def text(self) -> str:
        """The utterance's text, for logs and response metadata."""
        return " ".join(s.text for s in self.spans)


Unit = Utterance | Break


def _words(spans: list[Span]) -> int:
    return sum(len(s.text.split()) for s in spans if s.kind != "ipa")


def _split_first_clause(spans: list[Span]) -> list[list[Span]]:
    """[first clause, rest] when the sentence is long and has a clause boundary early enough."""
    if _words(spans) <= LONG_SENTENCE_WORDS or spans[0].kind == "ipa":
        return [spans]
    head = spans[0]
    for m in _CLAUSE_END.finditer(head.text):
        if len(head.text[: m.start()].split()) >= FIRST_CLAUSE_MIN_WORDS:
            first = Span(head.text[: m.start()], head.style, head.kind)
            rest = Span(head.text[m.end():], head.style, head.kind)
            return [[first], [rest, *spans[1:]] if rest.text.strip() else spans[1:]]
    return [spans]


def _by_style(spans: list[Span]) -> Iterator[Utterance]:
    run: list[Span] = []
    for span in spans:
        if run and span.style != run[-1].style:
            yield Utterance(tuple(run))
            run = []
        run.append(span)
    if run:
        yield Utterance(tuple(run))


def _prepared(items: Iterable[Item]) -> Iterator[Item]:
    """Normalise text spans and cut them at sentence ends (a Boundary between sentences)."""
    for item in items:
        if not isinstance(item, Span) or item.kind != "text":
            yield item
            continue
        # Normalised first, so that "Dr." or "p.m." no longer look like sentence ends.
        for i, piece in enumerate(_SENTENCE_END.split(normalise(item.text))):
            if i:
                yield Boundary()
            if piece.strip():
                yield Span(piece, item.style, "words")


def utterances(items: Iterable[Item]) -> Iterator[Unit]:
    """Units in speaking order: utterances and breaks; lazy, so long documents stream."""
    sentence: list[Span] = []
    first = True

    def flush() -> Iterator[Unit]:
        nonlocal first, sentence
        spans = [s for s in sentence if s.text.strip()]
        sentence = []
        if not spans:
            return
        groups = _split_first_clause(spans) if first else [spans]
        first = False
        for group in groups:
            yield from _by_style(group)

    for item in _prepared(items):
        if isinstance(item, Span):
            sentence.append(item)
        elif isinstance(item, Break):
            yield from flush()
            if item.seconds > 0:
                yield item
        else:
            yield from flush()
    yield from flush()
