"""WebM/Opus clips without a browser: the Opus packets libsndfile writes in Ogg, re-wrapped in
Matroska as Chromium's MediaRecorder writes `audio/webm;codecs=opus` (an EBML header, a Segment of
unknown size, one A_OPUS track with the OpusHead as its CodecPrivate, Clusters of SimpleBlocks).
For benchmarks that upload what a browser would (`edged bench formats`).
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile

from edged.audio.ogg import opus_packet_samples
from edged.audio.resample import resample

BROWSER_RATE = 48000
"""MediaRecorder records at the audio context's rate: 48 kHz, in stereo."""
_CLUSTER_MS = 1000
"""Milliseconds of audio per Cluster (a SimpleBlock's time is a 16-bit offset from its Cluster's)."""
_UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def _element(element_id: int, body: bytes) -> bytes:
    """One EBML element: its id's bytes, its size as an 8-byte variable-length integer, its body."""
    size = b"\x01" + len(body).to_bytes(7, "big")
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size + body


def _uint(element_id: int, value: int) -> bytes:
    return _element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def ogg_packets(data: bytes) -> list[bytes]:
    """The packets of an Ogg stream of one logical stream, in order (pages are not checked)."""
    packets, partial, pos = [], b"", 0
    while pos + 27 <= len(data) and data[pos:pos + 4] == b"OggS":
        count = data[pos + 26]
        lacing, body = data[pos + 27:pos + 27 + count], pos + 27 + count
        for size in lacing:  # a packet ends at its first lacing value under 255
            partial += data[body:body + size]
            body += size
            if size < 255:
                packets.append(partial)
                partial = b""
        pos = body
    return packets


def opus_in_webm(ogg_opus: bytes) -> bytes:
    """An Ogg Opus stream's packets as a live WebM file, as MediaRecorder writes it."""
    head, _tags, *audio = ogg_packets(ogg_opus)
    channels = head[9]
    track = _element(0xAE, _uint(0xD7, 1) + _uint(0x73C5, 1) + _uint(0x83, 2) + _element(0x86, b"A_OPUS")
                     + _element(0x63A2, head)
                     + _element(0xE1, _element(0xB5, struct.pack(">d", BROWSER_RATE)) + _uint(0x9F, channels)))
    out = bytearray(_element(0x1A45DFA3, _uint(0x4286, 1) + _uint(0x42F7, 1) + _uint(0x42F2, 4) + _uint(0x42F3, 8)
                             + _element(0x4282, b"webm") + _uint(0x4287, 4) + _uint(0x4285, 2)))
    out += (0x18538067).to_bytes(4, "big") + _UNKNOWN_SIZE
    out += _element(0x1549A966, _uint(0x2AD7B1, 1_000_000) + _element(0x4D80, b"edged") + _element(0x5741, b"edged"))
    out += _element(0x1654AE6B, track)
    samples, cluster_ms, blocks = 0, 0, bytearray()
    for packet in audio:
        ms = samples // 48
        if ms - cluster_ms >= _CLUSTER_MS and blocks:
            out += _element(0x1F43B675, _uint(0xE7, cluster_ms) + blocks)
            cluster_ms, blocks = ms, bytearray()
        blocks += _element(0xA3, b"\x81" + struct.pack(">hB", ms - cluster_ms, 0x80) + packet)
        samples += opus_packet_samples(packet) or 960
    if blocks:
        out += _element(0x1F43B675, _uint(0xE7, cluster_ms) + blocks)
    return bytes(out)


def ogg_opus(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    """16-bit mono PCM as Ogg Opus at 48 kHz (Opus takes 8, 12, 16, 24 or 48 kHz; encoders use 48),
    the mono audio in each of `channels`."""
    audio = resample(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, rate, BROWSER_RATE)
    out = io.BytesIO()
    soundfile.write(out, np.repeat(audio[:, None], channels, axis=1), BROWSER_RATE, format="OGG", subtype="OPUS")
    return out.getvalue()


def browser_webm(pcm: bytes, rate: int) -> bytes:
    """16-bit mono PCM as a browser's recording: 48 kHz stereo Opus in WebM."""
    return opus_in_webm(ogg_opus(pcm, rate, channels=2))
