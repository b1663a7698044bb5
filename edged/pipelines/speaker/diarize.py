"""Diarization of a recording: which speaker said each utterance the endpointer found.

An utterance longer than `max_piece_s` is cut into pieces of about `piece_s`, each embedded on its
own, so that a speaker change inside a long utterance (two people with no pause between them) can
still be seen. The pieces are clustered together (edged.pipelines.speaker.clustering); a word takes
the speaker of the piece it overlaps most.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edged.pipelines.speaker.clustering import cluster_speakers
from edged.pipelines.speaker.encoder import DEFAULT_THRESHOLD, SpeakerEncoder, unit


@dataclass(frozen=True)
class SpeakerTurn:
    """A stretch of audio and its speaker (1, 2, ... numbered by first appearance)."""

    start_s: float
    end_s: float
    speaker: int
    name: str = ""
    """The enrolled speaker's name, where the voice is one."""


@dataclass(frozen=True)
class DiarizeOptions:
    """How a recording is cut and grouped."""

    threshold: float = DEFAULT_THRESHOLD
    piece_s: float = 3.0
    """Length of the pieces a long utterance is cut into."""
    max_piece_s: float = 4.5
    """Utterances up to this long are embedded whole."""
    max_speakers: int = 0
    """At most this many speakers (0: no limit)."""
    known: tuple[tuple[str, np.ndarray], ...] = ()
    """Enrolled speakers (name, embedding): a group of utterances like one of them takes its name."""
    known_threshold: float = 1.0
    """Similarity at which a group is an enrolled speaker's."""


def pieces(spans: list[tuple[float, float]], options: DiarizeOptions) -> list[tuple[float, float]]:
    """The spans to embed: each utterance whole, or cut into equal pieces of about `piece_s`."""
    out: list[tuple[float, float]] = []
    for start, end in spans:
        length = end - start
        if length <= options.max_piece_s:
            out.append((start, end))
            continue
        count = max(2, round(length / options.piece_s))
        edges = np.linspace(start, end, count + 1)
        out += [(float(a), float(b)) for a, b in itertools.pairwise(edges)]
    return out


def diarize(encoder: SpeakerEncoder, audio: np.ndarray, spans: list[tuple[float, float]],
            options: DiarizeOptions) -> list[SpeakerTurn]:
    """Speaker turns of `audio` (at the encoder's rate) over the utterance `spans` (seconds)."""
    cut = [(a, b) for a, b in pieces(spans, options) if b > a]
    if not cut:
        return []
    rate = encoder.sample_rate
    clips = [audio[int(a * rate):max(int(b * rate), int(a * rate) + 1)] for a, b in cut]
    embeddings = encoder.embed_many(clips)
    weights = np.array([b - a for a, b in cut])
    labels = cluster_speakers(embeddings, weights, options.threshold, options.max_speakers)
    names = name_groups(embeddings, weights, labels, options)
    return [SpeakerTurn(a, b, int(label) + 1, names.get(int(label), "")) for (a, b), label in zip(cut, labels)]


def name_groups(embeddings: np.ndarray, weights: np.ndarray, labels: np.ndarray,
                options: DiarizeOptions) -> dict[int, str]:
    """Enrolled names of the groups (by label) whose centroid is like an enrolled speaker's: the most
    alike pairs first, each name and group used once."""
    if not options.known or not len(labels):
        return {}
    groups = sorted(set(labels.tolist()))
    centroids = unit(np.stack([(embeddings[labels == g] * weights[labels == g, None]).sum(axis=0) for g in groups]))
    pairs = sorted(((float(c @ known), g, name) for c, g in zip(centroids, groups)
                    for name, known in options.known), reverse=True)
    named: dict[int, str] = {}
    for similarity, group, name in pairs:
        if similarity >= options.known_threshold and group not in named and name not in named.values():
            named[group] = name
    return named


def speaker_at(turns: list[SpeakerTurn], start_s: float, end_s: float) -> int:
    """The speaker of the turn that overlaps [start_s, end_s] most (the nearest turn if none does;
    0 if there are no turns)."""
    turn = turn_at(turns, start_s, end_s)
    return turn.speaker if turn is not None else 0


def turn_at(turns: list[SpeakerTurn], start_s: float, end_s: float) -> SpeakerTurn | None:
    """The turn that overlaps [start_s, end_s] most (the nearest if none does; None if there are none)."""
    if not turns:
        return None

    def overlap(t: SpeakerTurn) -> tuple[float, float]:
        shared = min(end_s, t.end_s) - max(start_s, t.start_s)
        gap = max(t.start_s - end_s, start_s - t.end_s, 0.0)
        return shared, -gap

    return max(turns, key=overlap)
