"""Speculative finals: an utterance's final decode started where its end looks likely.

The endpointer sees a likely end (a short silence after speech) well before it confirms the
end, and knows where a forced split of an over-long utterance goes about a second before it is
made. A stream starts the utterance's final decode at those points, ahead of time; when the
end then comes at the same place, that decode is the final, and the client does not wait for
a new one. `Speculation` keeps the open utterance's speculative decodes, which end each one
stands for, and picks the one a final can take over.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.endpointing import WINDOW
from edged.pipelines.asr.jobs import DecodeJob

# A speculative decode whose audio goes this far past the final's last speech window is the final.
_COVER = int(0.1 * MODEL_RATE)


class EndCause(str, Enum):
    """What ends an utterance at a given window."""

    SPEECH = "speech"
    """The speech stopped: an endpoint, a pause in a long utterance, the end of the stream."""
    SPLIT = "split"
    """A forced split of an over-long utterance."""


@dataclass(frozen=True)
class UtteranceEnd:
    """Where and why an utterance ends (or would end)."""

    cause: EndCause
    window: int
    """VAD window after the last speech (SPEECH), or where the split is (SPLIT)."""


class Speculation:
    """The open utterance's speculative final decodes and the likely end waiting for its tail."""

    def __init__(self) -> None:
        self._decodes: list[tuple[UtteranceEnd, DecodeJob]] = []
        """The speculative decodes queued or decoded, oldest first, each with the end it is for."""
        self._likely_end: int | None = None
        """Window after the last speech of a likely end whose decode waits for its tail."""

    def expect(self, window: int) -> None:
        """A likely end after speech window `window`: its decode starts once the audio after
        it has arrived (see `due`)."""
        self._likely_end = window

    def due(self, heard: int, tail: int) -> int | None:
        """The expected likely end (its window) to decode now that `heard` stream samples are
        in, `tail` samples past it; None if there is none or its tail is still missing. Given
        once: the caller decodes it if it is still the end."""
        if self._likely_end is None or heard < self._likely_end * WINDOW + tail:
            return None
        window, self._likely_end = self._likely_end, None
        return window

    def add(self, end: UtteranceEnd, job: DecodeJob, waiting: list[DecodeJob], replaces_splits: bool) -> None:
        """Keep `job`, a speculative decode of the utterance up to `end`.

        A decode for the same cause still in `waiting` (queued for the decoder, not decoded)
        is removed from it and forgotten: the newer one covers more speech. `replaces_splits`
        (an end after speech where the utterance ends whatever follows, see
        Endpointer.ends_at_likely_end) drops a waiting forced split's decode too, which can no
        longer be the final: the split would come later.
        """
        causes = {end.cause, EndCause.SPLIT} if replaces_splits else {end.cause}
        replaced = [j for e, j in self._decodes if e.cause in causes and j.hyp is None and j in waiting]
        for old in replaced:
            waiting.remove(old)
        self._decodes = [(e, j) for e, j in self._decodes if j not in replaced]
        self._decodes.append((end, job))

    def take_final(self, end: UtteranceEnd, utterance: int) -> DecodeJob | None:
        """The speculative decode of utterance number `utterance` that can be its final ending
        at `end`, or None; the utterance ends, so all its speculation is forgotten.

        It can when it has the same end or, for an end after speech, when its audio covers the
        last speech window and `_COVER` more (what the final would add is not speech, e.g. a
        short noise that moved the end a little). The latest such decode wins.
        """
        found = None
        for spec_end, job in reversed(self._decodes):
            if job.utterance != utterance:
                continue
            if spec_end == end or (end.cause is spec_end.cause is EndCause.SPEECH
                                   and job.start + len(job.audio) >= end.window * WINDOW + _COVER):
                found = job
                break
        self.reset()
        return found

    def tried(self) -> list[tuple[str, int, float]]:
        """For logs: each decode's cause, end window and where its audio ends (seconds)."""
        return [(e.cause.value, e.window, round((j.start + len(j.audio)) / MODEL_RATE, 2)) for e, j in self._decodes]

    def reset(self) -> None:
        """Forget everything (a new utterance starts, or the open one ended)."""
        self._decodes, self._likely_end = [], None
