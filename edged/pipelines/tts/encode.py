"""Output encodings beyond raw PCM, chunk by chunk, through libsndfile (python-soundfile): Ogg Opus
and MP3 (libsndfile's LAME encoder)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edged.errors import TtsRequestError

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
"""The rates Opus encodes; Riva's clients pick one of them for OGGOPUS."""
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
"""The rates of MPEG-1, 2 and 2.5 Layer III."""
MP3_KBPS = 64
"""Bitrate of edged's MP3 (mono speech)."""


class _AppendSink:
    """A write-only file object collecting what libsndfile writes, as a stream: it cannot seek back
    (a seek answers the end), so libsndfile writes nothing out of order."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._written = 0

    def write(self, data: bytes) -> int:
        self.data += bytes(data)
        self._written += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._written

    def tell(self) -> int:
        return self._written

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        """What was written since the last call."""
        out, self.data = bytes(self.data), bytearray()
        return out


class StreamEncoder:
    """Encodes 16-bit mono PCM with libsndfile; each call returns the bytes completed."""

    def __init__(self, sample_rate: int, fmt: str, subtype: str, **options: Any) -> None:
        import soundfile

        self._sink = _AppendSink()
        self._file: Any = soundfile.SoundFile(self._sink, "w", sample_rate, 1, format=fmt, subtype=subtype, **options)

    def encode(self, pcm: bytes) -> bytes:
        """Feed a chunk; returns what it completed (possibly nothing yet)."""
        self._file.write(np.frombuffer(pcm, dtype="<i2"))
        return self._out(self._sink.take())

    def finish(self) -> bytes:
        """Close the stream; returns the rest."""
        self._file.close()
        return self._out(self._sink.take())

    def _out(self, data: bytes) -> bytes:
        return data


class OggOpusEncoder(StreamEncoder):
    """16-bit mono PCM to an Ogg Opus stream, page by page."""

    def __init__(self, sample_rate: int) -> None:
        if sample_rate not in OPUS_RATES:
            raise TtsRequestError(
                f"OGGOPUS needs a sample rate of {', '.join(map(str, OPUS_RATES))} Hz, not {sample_rate}.")
        super().__init__(sample_rate, "OGG", "OPUS")


class Mp3Encoder(StreamEncoder):
    """16-bit mono PCM to a constant-bitrate MP3 stream, frame by frame.

    Constant bitrate, because a stream has no Xing/Info frame to tell a variable one's length:
    LAME starts a file with an empty one that libsndfile fills in by seeking back at the end,
    which a stream cannot do; decoders that estimate the length from the first frame's bitrate
    (libsndfile itself) would then cut a variable-bitrate stream short. The empty frame (a frame
    of silence to a decoder) is left out."""

    def __init__(self, sample_rate: int, kbps: int = MP3_KBPS) -> None:
        if sample_rate not in MP3_RATES:
            raise TtsRequestError(f"MP3 needs a sample rate of {', '.join(map(str, MP3_RATES))} Hz, not {sample_rate}.")
        # libsndfile's compression level maps linearly onto the bitrates of the rate's MPEG version
        top, bottom = (320, 32) if sample_rate >= 32000 else (160, 8) if sample_rate >= 16000 else (64, 8)
        level = (top - kbps + 0.5) / (top - bottom)
        super().__init__(sample_rate, "MP3", "MPEG_LAYER_III", bitrate_mode="CONSTANT",
                         compression_level=min(1.0, max(0.0, level)))
        self._head: bytes | None = b""
        """The stream's start while its first frame is incomplete; None once it has been sent."""

    def _out(self, data: bytes) -> bytes:
        if self._head is None:
            return data
        self._head += data
        size = mp3_frame_size(self._head)
        if size is None or len(self._head) < size:
            return b""
        first, rest, self._head = self._head[:size], self._head[size:], None
        return rest if is_header_frame(first) else first + rest

    def finish(self) -> bytes:
        out = super().finish()
        if self._head:  # too short for a frame: libsndfile wrote nothing LAME would call a frame
            out, self._head = self._head + out, None
        return out


_MP3_BITRATES = {1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
                 2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_MP3_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(version bits, kbps, rate, padding, channel mode) of the Layer III frame at the start of `data`."""
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0 or (data[1] >> 1) & 3 != 1:
        return None
    version, index, rate_index = (data[1] >> 3) & 3, data[2] >> 4, (data[2] >> 2) & 3
    if version == 1 or index in (0, 15) or rate_index == 3:
        return None
    kbps = _MP3_BITRATES[1 if version == 3 else 2][index]
    return version, kbps, _MP3_SAMPLE_RATES[version][rate_index], (data[2] >> 1) & 1, data[3] >> 6


def mp3_frame_size(data: bytes) -> int | None:
    """Bytes of the MPEG Layer III frame at the start of `data` (None: no frame header there)."""
    header = _header(data)
    if header is None:
        return None
    version, kbps, rate, padding, _ = header
    return (144 if version == 3 else 72) * kbps * 1000 // rate + padding


def is_header_frame(frame: bytes) -> bool:
    """Whether a Layer III frame is LAME's header frame instead of audio: a Xing or Info tag, or the
    zeros LAME writes in its place until the end of the file."""
    header = _header(frame)
    if header is None:
        return False
    version, _, _, _, mode = header
    mono = mode == 3
    side_info = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    return frame[4 + side_info:8 + side_info] in (b"Xing", b"Info") or not any(frame[4:])
