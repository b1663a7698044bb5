"""Sample-rate conversion through libsoxr (python-soxr, LGPL-2.1+): one-shot and streaming.

ASR resamples client audio (8 to 48 kHz) to 16 kHz chunk by chunk; TTS resamples the voice's
22.05 kHz to the rate a client asks for. The streaming form keeps the filter state between
chunks, so chunk boundaries leave no clicks and the output length tracks the input exactly.
"""

from __future__ import annotations

import numpy as np
import soxr


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    """Little-endian 16-bit PCM (bytes or int16 array) to float32 in [-1, 1)."""
    data = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else pcm
    return data.astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """float32 in [-1, 1] to little-endian 16-bit PCM bytes (clipped, rounded)."""
    return np.clip(np.rint(audio * 32767.0), -32768, 32767).astype("<i2").tobytes()


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole mono float32 signal."""
    if src_rate == dst_rate:
        return audio.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(audio.astype(np.float32, copy=False), src_rate, dst_rate, "HQ"), dtype=np.float32)


class StreamResampler:
    """Resamples a mono float32 stream chunk by chunk, keeping filter state between chunks."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._stream = (
            None if src_rate == dst_rate
            else soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality="HQ")
        )

    def process(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk; `last=True` flushes what the filter still holds."""
        chunk = chunk.astype(np.float32, copy=False)
        if self._stream is None:
            return chunk
        return np.asarray(self._stream.resample_chunk(chunk, last=last), dtype=np.float32)
