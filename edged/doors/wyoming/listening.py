"""Wyoming wake-word detection: one `detect`, then `audio-start` ... `audio-stop`, of a connection.

As wyoming-openwakeword answers: a `detection` (the model's name, the audio's time in ms) for each
wake word heard, and `not-detected` at `audio-stop` if none was. The audio goes to
`edged.service.wake` (which mixes it down and resamples it); nothing here knows the model.
"""

from __future__ import annotations

from typing import Any

from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart
from wyoming.event import Event
from wyoming.wake import Detect, Detection, NotDetected

from edged.errors import RequestError
from edged.service.wake import WakeSession


def detect_names(detect: Detect) -> list[str] | None:
    """The wake words a `detect` asks for (None: any); RequestError if `names` is no list of text."""
    names: Any = detect.names
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError("The Wyoming 'detect' event's `names` must be a list of wake-word names.")
    return names


class Listening:
    """One listening stream of a connection: its session, its format and what it has heard."""

    def __init__(self, session: WakeSession, start: AudioStart) -> None:
        self.session = session
        self.format = start
        self.converter = AudioChunkConverter(width=2) if start.width != 2 else None
        self.heard = 0

    async def chunk(self, chunk: AudioChunk) -> list[Event]:
        """One audio-chunk (in audio-start's format, checked by the door): its detections."""
        if self.converter is not None:
            chunk = self.converter.convert(chunk)
        found = await self.session.feed(chunk.audio)
        self.heard += len(found)
        return [Detection(name=d.name, timestamp=d.timestamp_ms).event() for d in found]

    def stop(self) -> list[Event]:
        """audio-stop: `not-detected` if no wake word was heard."""
        return [] if self.heard else [NotDetected().event()]
