"""Speaker labels as a stream goes: each utterance is labelled the moment it ends, never revised.

Each utterance's embedding joins the speaker whose centroid (the duration-weighted sum of their
utterances, normalised) is most alike, if that is at least `threshold`; otherwise it starts a new
speaker, unless `max_speakers` are there already (then it joins the nearest). An utterance shorter
than `min_new_s` never starts a speaker while there is one: a short "yes" gives a poor embedding.
Enrolled speakers (edged.pipelines.speaker.enrolled) start the stream as speakers with their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edged.pipelines.speaker.encoder import unit


@dataclass(frozen=True)
class SpeakerLabel:
    """Who said an utterance: a number (1, 2, ... by first appearance) and an enrolled name, if known."""

    number: int
    name: str = ""

    def text(self) -> str:
        """The name, else a letter by number (A, B, ..., Z, then S27, ...), as OpenAI labels speakers."""
        if self.name:
            return self.name
        return chr(ord("A") + self.number - 1) if 1 <= self.number <= 26 else f"S{self.number}"


@dataclass
class _Speaker:
    name: str
    total: np.ndarray
    """Sum of the speaker's embeddings, each weighted by its utterance's seconds."""
    number: int = 0
    """0 until the speaker is first heard."""


@dataclass
class OnlineSpeakers:
    """The speakers of one stream so far."""

    threshold: float
    max_speakers: int = 0
    """At most this many speakers heard (0: no limit)."""
    min_new_s: float = 1.0
    known_threshold: float = 1.0
    """Similarity to an enrolled speaker's embedding at which an utterance is theirs."""
    _speakers: list[_Speaker] = field(default_factory=list)

    def enrol(self, name: str, embedding: np.ndarray) -> None:
        """A known speaker, named in labels once heard."""
        self._speakers.append(_Speaker(name, unit(np.asarray(embedding)).astype(np.float64)))

    def assign(self, embedding: np.ndarray, seconds: float) -> SpeakerLabel:
        """The label of an utterance of `seconds` with this `embedding` (a unit vector)."""
        vector = np.asarray(embedding, np.float64)
        heard = [i for i, s in enumerate(self._speakers) if s.number]
        full = 0 < self.max_speakers <= len(heard)
        best, similarity = self._nearest(vector)
        if best is not None and similarity >= self._needed(best) and (self._speakers[best].number or not full):
            chosen: int | None = best
        elif heard and (full or seconds < self.min_new_s):
            chosen = self._nearest(vector, heard)[0]
        else:
            chosen = None
        if chosen is None:
            self._speakers.append(_Speaker("", np.zeros_like(vector)))
            chosen = len(self._speakers) - 1
        speaker = self._speakers[chosen]
        if not speaker.number:
            speaker.number = len(heard) + 1
            if speaker.name:  # the enrolment counts as much as a few seconds of speech
                speaker.total = speaker.total * 3.0
        speaker.total = speaker.total + vector * max(seconds, 0.1)
        return SpeakerLabel(speaker.number, speaker.name)

    def _needed(self, index: int) -> float:
        """The similarity at which an utterance joins speaker `index`: an enrolled speaker not yet
        heard needs `known_threshold`, the others `threshold`."""
        speaker = self._speakers[index]
        return self.known_threshold if speaker.name and not speaker.number else self.threshold

    def _nearest(self, vector: np.ndarray, among: list[int] | None = None) -> tuple[int | None, float]:
        """The speaker (index) whose centroid is most like `vector`, and how alike."""
        indices = range(len(self._speakers)) if among is None else among
        scored = [(float(unit(self._speakers[i].total) @ vector), i) for i in indices]
        if not scored:
            return None, -1.0
        similarity, index = max(scored)
        return index, similarity
