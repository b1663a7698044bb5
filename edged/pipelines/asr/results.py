"""What recognition gives back: results with transcript, stability, confidence and words."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.tokenizer import Tokenizer

# Punctuation that Moonshine writes; apostrophes inside words ("don't") stay.
_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


@dataclass(frozen=True)
class Word:
    """One word of a final result: text, start and end in ms from the stream's start, confidence."""

    word: str
    start_ms: int
    end_ms: int
    confidence: float
    speaker: int = 0
    """Who said it (1, 2, ... by first appearance) where diarization was asked for; else 0."""


@dataclass(frozen=True)
class Alternative:
    """Another reading of a final result's utterance (after the result's own transcript)."""

    transcript: str
    confidence: float


@dataclass(frozen=True)
class Result:
    """An interim or final recognition result for one utterance."""

    is_final: bool
    transcript: str
    confidence: float
    stability: float
    """1.0 on finals; on interims the share of the text that is not expected to change."""
    audio_processed: float
    """Seconds of stream audio processed when this result was made (for finals: the endpoint)."""
    start_s: float = 0.0
    end_s: float = 0.0
    words: tuple[Word, ...] = field(default_factory=tuple)
    alternatives: tuple[Alternative, ...] = ()
    """Finals only: further distinct transcripts, best first (at most max_alternatives - 1)."""
    language_code: str = ""
    """The model's language (BCP-47, e.g. en-US)."""
    speaker: int = 0
    """Finals, where diarization was asked for: who said most of the utterance; else 0."""
    speaker_name: str = ""
    """With `speaker`: the enrolled speaker's name, where the voice is one (edged speakers enroll)."""


def strip_punctuation(text: str) -> str:
    """Text without punctuation, lower case (as Riva writes it when punctuation is off)."""
    return " ".join(_PUNCT.sub(" ", text).lower().split())


def split_words(tokenizer: Tokenizer, hyp: Hypothesis) -> list[tuple[str, int, int, float]]:
    """(word, first token, end token, confidence) for each word; a word starts at a leading space."""
    words: list[tuple[str, int, int, float]] = []
    first, pieces = 0, b""
    for i, token in enumerate([*hyp.tokens, -1]):
        piece = tokenizer.piece_bytes(token) if token >= 0 else b" "
        if piece.startswith(b" ") and pieces.strip():
            probs = hyp.logprobs[first:i]
            confidence = float(sum(probs) / len(probs)) if probs else 0.0
            words.append((pieces.decode("utf-8", "replace").strip(), first, i, math.exp(confidence)))
            first, pieces = i, b""
        pieces += piece
    return words
