"""An Ogg Opus stream written from Opus packets (RFC 7845 over RFC 3533): the OpusHead page, an
OpusTags page, then the audio packets, each page carrying the granule position (48 kHz samples
decoded by the end of its last packet) and its CRC. Used to hand Opus packets that came in another
container (WebM) to libsndfile, which decodes Ogg Opus.
"""

from __future__ import annotations

import struct
import zlib

_REVERSED_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))
"""Each byte with its bits in the opposite order."""
_BOS, _EOS = 0x02, 0x04
"""Page header flags: first and last page of the stream."""
_MAX_PAGE_PACKETS = 50
"""Packets on a page at most: a second of 20 ms packets."""
MAX_PACKET = 255 * 255 - 1
"""The largest packet a page holds whole (255 lacing values); Opus packets are smaller (RFC 6716)."""
_VENDOR = b"edged"


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum: CRC-32 with polynomial 0x04C11DB7, MSB first, no initial or final
    inversion. zlib's CRC-32 is the same polynomial bit-reflected, with both inversions: reversing
    each byte's bits, undoing the inversions and reversing the result's 32 bits gives Ogg's."""
    reflected = zlib.crc32(data.translate(_REVERSED_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def opus_tags() -> bytes:
    """An OpusTags packet: edged as the vendor, no comments."""
    return b"OpusTags" + struct.pack("<I", len(_VENDOR)) + _VENDOR + struct.pack("<I", 0)


class OggOpusWriter:
    """Pages of one logical Ogg Opus stream, as bytes."""

    def __init__(self, opus_head: bytes, serial: int = 0x65646765) -> None:
        self._serial = serial
        self._sequence = 0
        self._granule = 0
        self._held: list[bytes] = []
        self._out = bytearray()
        self._page([opus_head], 0, _BOS)
        self._page([opus_tags()], 0, 0)

    def packet(self, data: bytes, samples: int) -> None:
        """Add an audio packet (at most MAX_PACKET bytes) that decodes to `samples` (at 48 kHz,
        per its TOC byte)."""
        if len(self._held) == _MAX_PAGE_PACKETS or _segments([*self._held, data]) > 255:
            self._page(self._held, self._granule, 0)
            self._held = []
        self._held.append(data)
        self._granule += samples

    def finish(self) -> bytes:
        """The whole stream, its last page marked end-of-stream."""
        self._page(self._held, self._granule, _EOS)
        self._held = []
        return bytes(self._out)

    def _page(self, packets: list[bytes], granule: int, flags: int) -> None:
        lacing = bytearray()
        for p in packets:  # a packet is 255-byte segments, then one shorter (possibly empty)
            lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
        if len(lacing) > 255:
            raise ValueError(f"an Ogg page holds at most 255 segments, not {len(lacing)}")
        header = (b"OggS" + struct.pack("<BBqIII", 0, flags, granule, self._serial, self._sequence, 0)
                  + bytes([len(lacing)]) + bytes(lacing))
        page = header + b"".join(packets)
        crc = ogg_crc(page)
        self._out += page[:22] + struct.pack("<I", crc) + page[26:]
        self._sequence += 1


def _segments(packets: list[bytes]) -> int:
    """Lacing values the packets take on a page."""
    return sum(len(p) // 255 + 1 for p in packets)


_SILK_FRAMES = (480, 960, 1920, 2880)
_HYBRID_FRAMES = (480, 960)
_CELT_FRAMES = (120, 240, 480, 960)
MAX_PACKET_SAMPLES = 5760
"""An Opus packet decodes to at most 120 ms (RFC 6716, 3.2.5)."""


def opus_packet_samples(packet: bytes) -> int | None:
    """The 48 kHz samples an Opus packet decodes to, from its TOC byte and frame count (RFC 6716,
    3.1); None if it is not a valid packet's start (empty, no frame count, over 120 ms)."""
    if not packet:
        return None
    config, code = packet[0] >> 3, packet[0] & 3
    frame = (_SILK_FRAMES[config % 4] if config < 12 else _HYBRID_FRAMES[config % 2] if config < 16
             else _CELT_FRAMES[config % 4])
    if code == 3 and len(packet) < 2:
        return None
    frames = 1 if code == 0 else 2 if code in (1, 2) else packet[1] & 0x3F
    samples = frame * frames
    return samples if 0 < samples <= MAX_PACKET_SAMPLES else None
