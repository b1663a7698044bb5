"""Document → paragraph → sentence → utterance: the units the voice synthesises one at a time.

The first sentence, when long, is split early so the first audio leaves early (the voice's encoder
runs on a whole utterance before any audio): at its first clause punctuation if that comes within
a few words, else before a word that starts a phrase ("when", "from", "and"...), the two parts
then joined without the pause the voice puts around an utterance. Later sentences are synthesised
whole (the voice's prosody spans a sentence). A style change inside a sentence (SSML prosody)
starts a new utterance, since a style is per network run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from edged.pipelines.tts.normalise import normalise
from edged.pipelines.tts.ssml import Boundary, Break, Item, Span, Style

LONG_SENTENCE_WORDS = 8
"""A first sentence of more words is split at a clause punctuation..."""
FIRST_PART_WORDS = (1, 10)
"""...with this many words before it, fewest and most."""
LONGER_SENTENCE_WORDS = 12
"""A first sentence of more words that punctuation does not split is split at a phrase start..."""
PHRASE_PART_WORDS = (3, 8)
"""...with this many words before it (and at least the fewest after)."""

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_ENDS_SENTENCE = re.compile(r"[.!?][\"')\]]*\s*$")
"""Text that ends with a sentence's punctuation (after normalisation, an abbreviation's is gone)."""
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")
_PHRASE_STARTS = frozenset({
    "when", "while", "where", "whereas", "because", "since", "until", "unless", "although",
    "though", "if", "and", "but", "or", "so", "then", "which", "who", "whose", "whom", "with",
    "without", "from", "into", "onto", "in", "on", "at", "by", "after", "before", "over", "under",
    "between", "through", "during", "about", "against", "across", "along", "around", "behind",
    "beyond", "near", "toward", "towards", "upon", "within",
})


@dataclass(frozen=True)
class Utterance:
    """Spans of one style, synthesised by one run of the voice network."""

    spans: tuple[Span, ...]
    tight_start: bool = False
    """Continues the previous utterance mid-sentence: its leading silence is cut."""
    tight_end: bool = False
    """The next utterance continues its sentence: its trailing silence is cut."""

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


def _split_first_clause(spans: list[Span]) -> tuple[list[list[Span]], bool]:
    """([first part, rest] or [spans], whether the cut is mid-phrase) for the first sentence."""
    if _words(spans) <= LONG_SENTENCE_WORDS or spans[0].kind == "ipa":
        return [spans], False
    head = spans[0]

    def cut(start: int, end: int) -> list[list[Span]]:
        first = Span(head.text[:start], head.style, head.kind)
        rest = Span(head.text[end:], head.style, head.kind)
        return [[first], [rest, *spans[1:]] if rest.text.strip() else spans[1:]]

    lo, hi = FIRST_PART_WORDS
    for m in _CLAUSE_END.finditer(head.text):
        if lo <= len(head.text[:m.start()].split()) <= hi:
            return cut(m.start(), m.end()), False
    words = list(re.finditer(r"\S+", head.text))
    if len(words) <= LONGER_SENTENCE_WORDS:
        return [spans], False
    lo, hi = PHRASE_PART_WORDS
    for i in range(lo, min(hi, len(words) - lo) + 1):
        if words[i][0].lower() in _PHRASE_STARTS and not re.search(r"[,;:.!?]$", words[i - 1][0]):
            return cut(words[i - 1].end(), words[i].start()), True
    return [spans], False


def _by_style(spans: list[Span]) -> list[Utterance]:
    runs: list[list[Span]] = []
    for span in spans:
        if not runs or span.style != runs[-1][-1].style:
            runs.append([])
        runs[-1].append(span)
    return [Utterance(tuple(run)) for run in runs]


def complete_sentences(text: str) -> tuple[list[str], str]:
    """The complete sentences at the start of streamed `text` and the rest, not complete yet.

    A sentence ends where `utterances` ends one (sentence punctuation then space, or a blank
    line), except where the punctuation belongs to what normalisation reads out ("Dr.", "p.m."),
    so text synthesised as it streams in is cut as the whole text would be.
    """
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        after_punctuation = match.start() > 0 and text[match.start() - 1] in ".!?"
        if after_punctuation and not _ENDS_SENTENCE.search(normalise(text[start:match.start()])):
            continue  # an abbreviation's period, read out as a word
        if text[start:match.end()].strip():
            sentences.append(text[start:match.end()].strip())
        start = match.end()
    return sentences, text[start:]


def _prepared(items: Iterable[Item], english: bool) -> Iterator[Item]:
    """Normalise text spans (English only: other languages' numbers and abbreviations are
    espeak-ng's to read) and cut them at sentence ends (a Boundary between sentences)."""
    for item in items:
        if not isinstance(item, Span) or item.kind != "text":
            yield item
            continue
        # Normalised first, so that "Dr." or "p.m." no longer look like sentence ends.
        text = normalise(item.text) if english else re.sub(r"[ \t]+", " ", item.text).strip()
        for i, piece in enumerate(_SENTENCE_END.split(text)):
            if i:
                yield Boundary()
            if piece.strip():
                yield Span(piece, item.style, "words")


def utterances(items: Iterable[Item], english: bool = True) -> Iterator[Unit]:
    """Units in speaking order: utterances and breaks; lazy, so long documents stream. Text is
    normalised for an `english` voice only."""
    sentence: list[Span] = []
    first = True

    def flush() -> Iterator[Unit]:
        nonlocal first, sentence
        spans = [s for s in sentence if s.text.strip()]
        sentence = []
        if not spans:
            return
        groups, tight = _split_first_clause(spans) if first else ([spans], False)
        first = False
        units = [_by_style(group) for group in groups]
        if tight and len(units) == 2:
            units[0][-1] = replace(units[0][-1], tight_end=True)
            units[1][0] = replace(units[1][0], tight_start=True)
        for group_units in units:
            yield from group_units

    for item in _prepared(items, english):
        if isinstance(item, Span):
            sentence.append(item)
        elif isinstance(item, Break):
            yield from flush()
            if item.seconds > 0:
                yield item
        else:
            yield from flush()
    yield from flush()
