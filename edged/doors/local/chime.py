"""The chime the speaker plays when the microphone hears a wake word (`local_wake_chime`).

Generated, not shipped: two short rising sine notes with soft edges, about a fifth of a second.
"""

from __future__ import annotations

import numpy as np

CHIME_RATE = 16000
NOTES_HZ = (880.0, 1320.0)
"""A rising fifth: heard as "go ahead"."""
NOTE_S = 0.09
FADE_S = 0.01
LEVEL = 0.3
"""Peak amplitude, of full scale."""


def chime(rate: int = CHIME_RATE) -> np.ndarray:
    """The chime as int16 mono PCM at `rate`."""
    n = int(NOTE_S * rate)
    t = np.arange(n) / rate
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (FADE_S * rate))
    notes = [np.sin(2 * np.pi * hz * t) * fade for hz in NOTES_HZ]
    return np.rint(np.concatenate(notes) * LEVEL * 32767).astype(np.int16)
