"""Real encoders for test uploads: libsndfile's (MP3, Ogg Vorbis, Ogg Opus), from 16-bit mono PCM."""

from __future__ import annotations

import io

import numpy as np
import soundfile

UPLOADS = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "OPUS"), "oga": ("OGG", "VORBIS")}
"""File extension: (container, codec) of each compressed upload the tests make."""


def encode(pcm: bytes, rate: int, ext: str) -> bytes:
    """`pcm` as a file of the kind `ext` names (one of UPLOADS), made by a real encoder."""
    container, codec = UPLOADS[ext]
    out = io.BytesIO()
    soundfile.write(out, np.frombuffer(pcm, "<i2"), rate, format=container, subtype=codec)
    return out.getvalue()


def opus_bomb(seconds: float) -> bytes:
    """An Ogg Opus file of `seconds` of silence at 8 kHz: small (about 230 bytes a second), long to decode."""
    out = io.BytesIO()
    soundfile.write(out, np.zeros(int(seconds * 8000), "<i2"), 8000, format="OGG", subtype="OPUS")
    return out.getvalue()
