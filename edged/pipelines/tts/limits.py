"""What one synthesis may cost: the bounds a voice holds every request to, and the audio budget
that holds a request to the longest answer it may get while its audio is made.

Before any work a request's text length, its SSML (see ssml.py) and its breaks are checked; its
speech cannot be known before its phonemes are, so each utterance's length is taken from the
budget as soon as the voice's encoder has settled it, before the decoder (the costly part) runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edged.errors import TtsRequestError

if TYPE_CHECKING:
    from edged.config import Settings


@dataclass(frozen=True)
class SynthesisLimits:
    """The bounds of one request, from config.sh (the defaults are config.sh's)."""

    max_text_chars: int = 10000
    """Longest text, SSML markup included (tts_max_text_chars)."""
    max_breaks_s: float = 60.0
    """Most seconds of silence a request's <break>s may add up to (tts_max_breaks_s)."""
    max_audio_s: float = 900.0
    """Longest audio one request may make (tts_max_audio_s)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SynthesisLimits:
        """The limits config.sh's Settings give."""
        return cls(max_text_chars=settings.tts_max_text_chars, max_breaks_s=settings.tts_max_breaks_s,
                   max_audio_s=settings.tts_max_audio_s)


@dataclass(frozen=True)
class AudioLimit:
    """The most audio an answer may hold, and the sentence that refuses more."""

    seconds: float
    refusal: str
    """Why (which setting), and what to do instead."""

    @classmethod
    def of_duration(cls, seconds: float) -> AudioLimit:
        """tts_max_audio_s."""
        return cls(seconds, f"The speech would last more than {seconds:g} s, the longest one request may "
                            "make (tts_max_audio_s in config.sh); send the text as several requests.")

    @classmethod
    def of_message(cls, max_bytes: int, rate_hz: int) -> AudioLimit:
        """A door's largest answer (max_message_mb) of 16-bit PCM at `rate_hz`."""
        mib = max_bytes / (1 << 20)
        return cls(max_bytes / 2 / rate_hz,
                   f"The audio would be more than the {mib:g} MiB one answer may carry at {rate_hz} Hz "
                   "(max_message_mb in config.sh); stream it (SynthesizeOnline) or ask for a lower "
                   "sample rate.")

    def tighter(self, other: AudioLimit | None) -> AudioLimit:
        """Whichever of the two allows less."""
        return other if other is not None and other.seconds < self.seconds else self


class AudioBudget:
    """The audio a request has made, against its limit (none: unbounded, as for a local document)."""

    def __init__(self, limit: AudioLimit | None) -> None:
        self.limit = limit
        self.seconds = 0.0

    def take(self, seconds: float) -> None:
        """Count `seconds` more audio; TtsRequestError (the limit's refusal) past the limit."""
        self.seconds += seconds
        if self.limit is not None and self.seconds > self.limit.seconds + 1e-6:
            raise TtsRequestError(self.limit.refusal)
