"""Offline windows: a recording's consecutive utterances joined up and decoded as one.

Whisper hears 30 s at once whatever the utterance's length, and writes better with the words
around an utterance than with the utterance cut out alone (on the evalcorpus, whisper-base's
utterances decoded one by one: 5.67 % WER; faster-whisper's 30 s windows: 5.19 %). Offline, the
utterances the endpointer finds are joined into windows of up to `limit` samples, from the
first's start to the last's end with the silences between them: a window is cut only in a
silence between two utterances. An utterance that alone reaches the limit (the endpointer cuts
longer ones, see EndpointParams.max_utterance_ms) is a window of its own. A window keeps its
utterances' spans: where Whisper ends its text early (an end of text read in a long pause), its
utterances are decoded one by one instead (see edged.pipelines.asr.model).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Stream samples [start, end) of an utterance, or of a window of utterances."""

    start: int
    end: int
    speech_start: int
    """Where its (first) speech starts, about: no word starts before it."""
    parts: tuple[tuple[int, int], ...] = ()
    """A window's: [start, end) of each utterance in it (empty: one utterance, the span itself)."""

    @property
    def utterances(self) -> tuple[tuple[int, int], ...]:
        """[start, end) of each utterance in it."""
        return self.parts or ((self.start, self.end),)


@dataclass
class WindowPacker:
    """Joins consecutive utterances into windows of at most `limit` samples."""

    limit: int
    pending: Span | None = None
    """The window being filled (None: no utterance since the last one closed)."""

    def add(self, utterance: Span) -> Span | None:
        """Take the next utterance; returns the window it closes (when it does not fit in it)."""
        pending = self.pending
        if pending is not None and utterance.end - pending.start <= self.limit:
            self.pending = Span(pending.start, utterance.end, pending.speech_start,
                                pending.utterances + utterance.utterances)
            return None
        self.pending = utterance
        return pending

    def flush(self) -> Span | None:
        """The window being filled, closed (the recording ended); None if there is none."""
        pending, self.pending = self.pending, None
        return pending
