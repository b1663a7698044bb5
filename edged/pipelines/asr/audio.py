"""Client audio to 16 kHz mono float32: raw PCM, WAV (header sniffed), G.711 mu-law/A-law, FLAC.

Of audio with several channels one is recognised, the first unless the request names another:
Riva does the same, and recognises each channel apart when asked to (one stream per channel).

Riva's `transcribe_file.py` sends a WAV file as it is, header in the first chunk, with encoding
and sample rate unset; `talk.py` sends headerless 16-bit PCM at the rate it names. Both work.
FLAC (a container with its own framing) is decoded once the whole stream has arrived.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import numpy as np

from edged.audio.resample import StreamResampler
from edged.errors import AudioFormatError, RequestError

_LOGGER = logging.getLogger(__name__)

MODEL_RATE = 16000
"""Samples per second of the audio every ASR network and the VAD read (client audio is
resampled to it)."""
MIN_RATE = 8000
MAX_RATE = 192000
MAX_CHANNELS = 8
_MAX_HEADER_BYTES = 1 << 16
ENCODINGS = ("LINEAR_PCM", "MULAW", "ALAW", "FLAC")


def _mulaw_table() -> np.ndarray:
    """G.711 mu-law byte to float32 sample."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 7)
    value = np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84)
    return (value / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """G.711 A-law byte to float32 sample."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 7, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    value = np.where(a & 0x80, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


_G711 = {"MULAW": _mulaw_table(), "ALAW": _alaw_table()}


@dataclass(frozen=True)
class SampleFormat:
    """How raw sample bytes read: encoding, sample width in bytes, rate and channel count."""

    encoding: str
    """LINEAR_PCM (integer), FLOAT, MULAW or ALAW."""
    width: int
    rate: int
    channels: int

    def check(self) -> None:
        """AudioFormatError unless rate and channels are ones edged can take."""
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise AudioFormatError(
                f"Sample rate {self.rate} Hz is not supported; send {MIN_RATE} to {MAX_RATE} Hz "
                "(set sample_rate_hertz, or send a WAV header).")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise AudioFormatError(f"{self.channels} audio channels is not supported; send 1 to {MAX_CHANNELS}.")

    def to_float(self, data: bytes) -> np.ndarray:
        """Whole frames of raw bytes to float32 [frames, channels]."""
        if self.encoding in _G711:
            samples = _G711[self.encoding][np.frombuffer(data, dtype=np.uint8)]
        elif self.encoding == "FLOAT":
            samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        elif self.width == 1:  # 8-bit WAV is unsigned
            samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.width == 2:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        elif self.width == 3:
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            samples = (np.where(value & 0x800000, value - (1 << 24), value) / 8388608.0).astype(np.float32)
        else:
            samples = (np.frombuffer(data, dtype="<i4") / 2147483648.0).astype(np.float32)
        return samples.reshape(-1, self.channels)


_WAV_FORMATS = {1: "LINEAR_PCM", 3: "FLOAT", 6: "ALAW", 7: "MULAW"}


def parse_wav_header(data: bytes) -> tuple[SampleFormat, int, int | None] | None:
    """(format, offset of the samples, their byte count or None if unknown) of a RIFF/WAVE header.

    None if more bytes are needed. A streaming writer leaves the data size 0 or 0xFFFFFFFF.
    """
    if len(data) < 12:
        return None
    if data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise AudioFormatError("The audio starts like a WAV file but its RIFF header is broken.")
    pos, fmt = 12, None
    while True:
        if pos + 8 > len(data):
            return None
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk == b"data":
            if fmt is None:
                raise AudioFormatError("The WAV header has no 'fmt ' chunk before its data.")
            return fmt, pos + 8, (size if 0 < size < 0xFFFFFFFF else None)
        if chunk == b"fmt ":
            if pos + 8 + 16 > len(data):
                return None
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8:pos + 24])
            if tag == 0xFFFE and size >= 40 and pos + 8 + 26 <= len(data):
                tag = struct.unpack("<H", data[pos + 32:pos + 34])[0]  # WAVE_FORMAT_EXTENSIBLE
            encoding = _WAV_FORMATS.get(tag)
            width = bits // 8
            if encoding is None or bits % 8 or not 1 <= width <= 4 or (encoding == "FLOAT" and width != 4):
                raise AudioFormatError(
                    f"WAV format tag {tag} with {bits}-bit samples is not supported; send 8/16/24/32-bit "
                    "PCM, 32-bit float, mu-law or A-law.")
            fmt = SampleFormat(encoding, width, rate, channels)
            fmt.check()
        pos += 8 + size + (size & 1)
        if pos > _MAX_HEADER_BYTES:
            raise AudioFormatError("No WAV data chunk within the first 64 KiB of the audio.")


def header_channels(data: bytes) -> int | None:
    """The channel count a WAV or FLAC header at the start of `data` gives (None: no such
    header, or not all of it yet); AudioFormatError for a broken WAV header."""
    if data[:4] in (b"RIFF", b"RF64"):
        parsed = parse_wav_header(data[:_MAX_HEADER_BYTES + 16])
        return parsed[0].channels if parsed is not None else None
    if data[:4] == b"fLaC" and len(data) >= 8 + 34:  # STREAMINFO, the first metadata block
        return ((data[8 + 4 + 12] >> 1) & 0x7) + 1
    return None


class AudioDecoder:
    """Bytes as a client sends them, chunk by chunk, to 16 kHz mono float32 (one channel of them)."""

    def __init__(self, encoding: str, sample_rate: int, channels: int = 1, channel: int = 0,
                 max_held_bytes: int = 0) -> None:
        """`encoding` is one of ENCODINGS or '' (unset: a WAV or FLAC header must say); `channel`
        is the one channel (from 0) of the audio to decode; `max_held_bytes` bounds a FLAC
        stream, which is held until its end (0: no bound)."""
        if encoding and encoding not in ENCODINGS:
            raise AudioFormatError(f"Audio encoding {encoding} is not supported; use one of {', '.join(ENCODINGS)}.")
        if channel < 0:
            raise AudioFormatError(f"Audio channel {channel} does not exist; channels are numbered from 0.")
        self._encoding = encoding
        self._rate = sample_rate
        self._channels = channels or 1
        self._channel = channel
        self._format: SampleFormat | None = None
        self._data_left: int | None = None
        self._pending = b""
        self._flac: bytearray | None = None
        self._max_held_bytes = max_held_bytes
        self._resampler: StreamResampler | None = None
        self.input_seconds = 0.0
        """Seconds of audio decoded so far (at the client's rate)."""

    def _start(self, head: bytes) -> int | None:
        """Settle the sample format from the first bytes; returns where samples start, or None."""
        if head[:4] in (b"RIFF", b"RF64") and self._encoding in ("", "LINEAR_PCM"):
            parsed = parse_wav_header(head)
            if parsed is None:
                if len(head) > _MAX_HEADER_BYTES:
                    raise AudioFormatError("The WAV header is longer than 64 KiB.")
                return None
            self._format, offset, self._data_left = parsed
            self._check_channel(self._format.channels)
            return offset
        if (head[:4] == b"fLaC" and self._encoding in ("", "FLAC")) or self._encoding == "FLAC":
            self._flac = bytearray()
            return 0
        if not self._encoding:
            raise AudioFormatError(
                "The audio encoding is not set and the audio has no WAV or FLAC header; set encoding "
                "(LINEAR_PCM, MULAW, ALAW or FLAC) and sample_rate_hertz.")
        if not self._rate:
            raise AudioFormatError(f"sample_rate_hertz is not set for {self._encoding} audio without a header.")
        width = 2 if self._encoding == "LINEAR_PCM" else 1
        self._format = SampleFormat(self._encoding, width, self._rate, self._channels)
        self._format.check()
        self._check_channel(self._channels)
        return 0

    def _check_channel(self, channels: int) -> None:
        """AudioFormatError unless the audio has the channel asked for."""
        if self._channel >= channels:
            raise AudioFormatError(f"Audio channel {self._channel} was asked for but the audio has {channels} "
                                   f"channel{'s' if channels > 1 else ''}, numbered from 0.")

    def feed(self, data: bytes) -> np.ndarray:
        """Decode the next chunk; returns the 16 kHz samples it completes (maybe none)."""
        if self._flac is not None:
            return self._hold_flac(data)
        if self._format is None:
            self._pending += data
            if not self._pending:
                return np.zeros(0, np.float32)
            offset = self._start(bytes(self._pending[:_MAX_HEADER_BYTES + 16]))
            if offset is None:
                return np.zeros(0, np.float32)
            data, self._pending = self._pending[offset:], b""
            if self._flac is not None:
                return self._hold_flac(data)
        if self._data_left is not None:  # chunks after a WAV's data (LIST, id3) are not audio
            data = data[:self._data_left]
            self._data_left -= len(data)
        self._pending += data
        fmt = self._format
        assert fmt is not None
        frame = fmt.width * fmt.channels
        whole = len(self._pending) - len(self._pending) % frame
        block, self._pending = self._pending[:whole], self._pending[whole:]
        return self._convert(fmt.to_float(block), fmt.rate, last=False)

    def _hold_flac(self, data: bytes) -> np.ndarray:
        """Keep FLAC bytes for the decode at the end (none decoded now), within `max_held_bytes`."""
        assert self._flac is not None
        if self._max_held_bytes and len(self._flac) + len(data) > self._max_held_bytes:
            raise RequestError(f"The FLAC stream is longer than {self._max_held_bytes / 2**20:g} MiB, the most "
                               "held for decoding at its end (max_message_mb in config.sh); send LINEAR_PCM "
                               "to stream longer audio.")
        self._flac += data
        return np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """End of stream: the samples still held (FLAC is decoded here, whole)."""
        if self._flac is not None:
            return self._decode_flac(bytes(self._flac))
        if self._format is None:
            if self._pending:
                raise AudioFormatError("The audio ended inside its WAV header.")
            return np.zeros(0, np.float32)
        return self._convert(np.zeros((0, self._format.channels), np.float32), self._format.rate, last=True)

    def _decode_flac(self, data: bytes) -> np.ndarray:
        import soundfile

        try:
            samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            # libsndfile's own words, without the "Error opening <BytesIO object at 0x...>" around them
            reason = (getattr(exc, "error_string", "") or str(exc).rsplit(": ", 1)[-1]).removeprefix("Error : ")
            raise AudioFormatError(f"The FLAC audio cannot be decoded: {reason.rstrip('.')}.") from None
        SampleFormat("FLAC", 2, rate, samples.shape[1]).check()
        self._check_channel(samples.shape[1])
        return self._convert(samples, rate, last=True)

    def _convert(self, frames: np.ndarray, rate: int, last: bool) -> np.ndarray:
        """The channel asked for of [frames, channels], resampled to 16 kHz, keeping filter state."""
        self.input_seconds += len(frames) / rate
        mono = frames[:, self._channel]
        if self._resampler is None:
            self._resampler = StreamResampler(rate, MODEL_RATE)
        return self._resampler.process(np.ascontiguousarray(mono, dtype=np.float32), last=last)


def decode_all(data: bytes, encoding: str, sample_rate: int, channels: int = 1, channel: int = 0) -> np.ndarray:
    """One channel of a whole recording (the first by default) to 16 kHz mono float32."""
    decoder = AudioDecoder(encoding, sample_rate, channels, channel)
    return np.concatenate([decoder.feed(data), decoder.flush()])
