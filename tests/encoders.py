"""Real encoders for test uploads: FFmpeg's through PyAV (WebM/Opus, M4A/AAC) and libsndfile's
(MP3, Ogg Opus), from 16-bit mono PCM."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

UPLOADS = {"webm": ("webm", "libopus"), "m4a": ("ipod", "aac"), "mp3": ("MP3", "MPEG_LAYER_III"),
           "ogg": ("OGG", "OPUS")}
"""File extension: (container, codec) of each compressed upload the tests make."""


def encode(pcm: bytes, rate: int, ext: str) -> bytes:
    """`pcm` as a file of the kind `ext` names (one of UPLOADS), made by a real encoder."""
    container, codec = UPLOADS[ext]
    if container in ("MP3", "OGG"):
        out = io.BytesIO()
        soundfile.write(out, np.frombuffer(pcm, "<i2"), rate, format=container, subtype=codec)
        return out.getvalue()
    av = pytest.importorskip("av", reason="WebM and M4A are made (and read by edged) with PyAV: edged[media]")
    out = io.BytesIO()
    with av.open(out, "w", format=container) as media:
        track = media.add_stream(codec, rate=48000 if codec == "libopus" else rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, "<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=track.format.name, layout="mono", rate=track.rate)
        for part in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in track.encode(part):
                media.mux(packet)
        for packet in track.encode(None):
            media.mux(packet)
    return out.getvalue()


def opus_bomb(seconds: float) -> bytes:
    """A WebM file of `seconds` of Opus silence (one tiny packet, repeated): small, long to decode."""
    av = pytest.importorskip("av", reason="the WebM is made with PyAV: edged[media]")
    out = io.BytesIO()
    with av.open(out, "w", format="webm") as media:
        track = media.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        first = next(p for p in [*track.encode(frame), *track.encode(None)] if p.size)
        payload = bytes(first)
        for i in range(int(seconds * 50)):  # 20 ms packets
            packet = av.Packet(payload)
            packet.stream, packet.pts, packet.dts = track, i * 960, i * 960
            packet.time_base = first.time_base
            media.mux(packet)
    return out.getvalue()
