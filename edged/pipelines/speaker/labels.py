"""Speaker labels on recognition results: each final and its words get the speaker who said them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edged.pipelines.asr.results import Result
from edged.pipelines.speaker.diarize import DiarizeOptions, diarize, speaker_at, turn_at
from edged.pipelines.speaker.encoder import SpeakerEncoder


def label_results(encoder: SpeakerEncoder, audio: np.ndarray, results: list[Result],
                  max_speakers: int = 0, known: dict[str, np.ndarray] | None = None) -> list[Result]:
    """`results` of one recording (`audio`, 16 kHz mono) with `speaker` set on finals and their
    words (1, 2, ... by first appearance), and `speaker_name` where the voice is one of the `known`
    (enrolled) speakers'; interims are left as they are."""
    spans = [(r.start_s, r.end_s) for r in results if r.is_final and r.end_s > r.start_s]
    options = DiarizeOptions(threshold=encoder.cluster_threshold, max_speakers=max_speakers,
                             known=tuple((known or {}).items()), known_threshold=encoder.known_threshold)
    turns = diarize(encoder, audio, spans, options)
    labelled = []
    for r in results:
        if r.is_final:
            words = tuple(replace(w, speaker=speaker_at(turns, w.start_ms / 1000, w.end_ms / 1000)) for w in r.words)
            turn = turn_at(turns, r.start_s, r.end_s)
            r = replace(r, speaker=turn.speaker if turn else 0, speaker_name=turn.name if turn else "", words=words)
        labelled.append(r)
    return labelled
