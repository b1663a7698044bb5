"""Output encodings beyond raw PCM: Ogg Opus through libsndfile (python-soundfile), chunk by chunk."""

from __future__ import annotations

from typing import Any

import numpy as np

from edged.errors import TtsRequestError

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
"""The rates Opus encodes; Riva's clients pick one of them for OGGOPUS."""


class _AppendSink:
    """A write-only file object collecting what libsndfile writes (it only appends to Ogg)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += bytes(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return len(self.data)

    def tell(self) -> int:
        return len(self.data)

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        """What was written since the last call."""
        out, self.data = bytes(self.data), bytearray()
        return out


class OggOpusEncoder:
    """Encodes 16-bit mono PCM into an Ogg Opus stream; each call returns the pages completed."""

    def __init__(self, sample_rate: int) -> None:
        if sample_rate not in OPUS_RATES:
            raise TtsRequestError(
                f"OGGOPUS needs a sample rate of {', '.join(map(str, OPUS_RATES))} Hz, not {sample_rate}.")
        import soundfile

        self._sink = _AppendSink()
        self._file: Any = soundfile.SoundFile(self._sink, "w", sample_rate, 1, format="OGG", subtype="OPUS")

    def encode(self, pcm: bytes) -> bytes:
        """Feed a chunk; returns the Ogg pages it completed (possibly none yet)."""
        self._file.write(np.frombuffer(pcm, dtype="<i2"))
        return self._sink.take()

    def finish(self) -> bytes:
        """Close the stream; returns the last pages."""
        self._file.close()
        return self._sink.take()
