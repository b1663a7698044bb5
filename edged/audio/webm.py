"""The Opus packets of a WebM (Matroska) file, as a browser's MediaRecorder writes it
(`audio/webm;codecs=opus`): an EBML header, then a Segment holding Tracks (a TrackEntry with
CodecID `A_OPUS` and the OpusHead as its CodecPrivate) and Clusters of SimpleBlocks or
BlockGroups. MediaRecorder writes live files, whose Segment and Clusters have an unknown size.

The file is read in one pass over its elements, without recursion: an element edged needs the
children of (the masters below) is entered by stepping over its header; any other element is
stepped over whole, so it must have a size that ends within the file. Sizes that cannot be trusted
(an unknown size anywhere but on a Segment or Cluster, an element running past the end of the file
or a leaf larger than edged reads) are refused with AudioFormatError. So is a file of more elements
than its audio needs (tiny elements cost a step each): the elements read stay within a budget that
grows with the frames found, which the caller's duration limit bounds.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator

from edged.errors import AudioFormatError

EBML = 0x1A45DFA3
_DOC_TYPE = 0x4282
_SEGMENT = 0x18538067
_TRACKS = 0x1654AE6B
_TRACK_ENTRY = 0xAE
_TRACK_NUMBER = 0xD7
_CODEC_ID = 0x86
_CODEC_PRIVATE = 0x63A2
_CLUSTER = 0x1F43B675
_BLOCK_GROUP = 0xA0
_SIMPLE_BLOCK = 0xA3
_BLOCK = 0xA1

_MASTERS = frozenset({EBML, _SEGMENT, _TRACKS, _TRACK_ENTRY, _CLUSTER, _BLOCK_GROUP})
"""Elements whose children are read (the rest are stepped over)."""
_LIVE = frozenset({_SEGMENT, _CLUSTER})
"""Elements that may have an unknown size (they end where the file or the next of their kind starts)."""
_MAX_LEAF = 1 << 20
"""The largest element edged steps over or reads (1 MiB): a block, a CodecPrivate, a Cue..."""
_DOC_TYPES = (b"webm", b"matroska")
_ELEMENTS_FIRST = 1000
"""Elements read before any audio: the headers, tracks, seek heads a file starts with."""
_ELEMENTS_PER_FRAME = 16
"""Elements read per Opus frame beyond those: its block, group, timings, other tracks' blocks."""
_MAX_TRACKS = 64


class _Lacing(enum.IntEnum):
    """A block's lacing (its flags' bits 1 and 2): how many frames it packs and how."""

    NONE = 0
    XIPH = 1
    FIXED = 2
    EBML = 3


@dataclasses.dataclass
class Track:
    """A TrackEntry as far as edged reads it."""

    number: int = 0
    codec: str = ""
    private: bytes = b""


class OpusStream:
    """The first Opus track of a WebM file: `head` (its OpusHead) once `packets()` has yielded or
    ended, and its packets in order."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._tracks: list[Track] = []
        self._opus: Track | None = None
        self._frames = 0

    @property
    def head(self) -> bytes:
        return (self._opus or self._opus_track()).private

    def packets(self) -> Iterator[bytes]:
        """The Opus track's frames, read as far as the caller takes them."""
        data, pos = self._data, 0
        doc_type = b""
        elements = 0
        while pos < len(data):
            start = pos
            elements += 1
            if elements > _ELEMENTS_FIRST + _ELEMENTS_PER_FRAME * self._frames:
                raise AudioFormatError(f"The WebM file has more elements than its audio needs "
                                       f"({elements} by byte {start}, for {self._frames} Opus frames).")
            element, size, pos = element_header(data, pos)
            if start == 0 and element != EBML:
                raise AudioFormatError("The WebM file does not start with an EBML header.")
            if size is None and element not in _LIVE:
                raise AudioFormatError(f"The WebM file gives element {element:X} at byte {start} an unknown size.")
            if element in _MASTERS:
                if size is not None and pos + size > len(data) and element not in _LIVE:
                    raise _cut(element, start)
                if element == _TRACK_ENTRY:
                    if len(self._tracks) == _MAX_TRACKS:
                        raise AudioFormatError(f"The WebM file has more than {_MAX_TRACKS} tracks.")
                    self._tracks.append(Track())
                elif element == _SEGMENT and doc_type not in _DOC_TYPES:
                    raise AudioFormatError(f"The WebM file says it is of type {doc_type[:16]!r}, not webm or matroska.")
                continue
            if size is None or size > _MAX_LEAF:
                raise AudioFormatError(f"The WebM file gives element {element:X} at byte {start} "
                                       f"a size edged does not read ({size} bytes).")
            if pos + size > len(data):
                raise _cut(element, start)
            body, pos = data[pos:pos + size], pos + size
            if element == _DOC_TYPE:
                doc_type = body.rstrip(b"\0")
            elif element in (_TRACK_NUMBER, _CODEC_ID, _CODEC_PRIVATE):
                self._track_field(element, body, start)
            elif element in (_SIMPLE_BLOCK, _BLOCK):
                yield from self._opus_frames(body, start)
        if self._opus is None:
            self._opus = self._opus_track()

    def _opus_track(self) -> Track:
        """The first Opus track with an OpusHead."""
        track = next((t for t in self._tracks if t.codec == "A_OPUS" and t.private), None)
        if track is None:
            raise AudioFormatError(f"The WebM file has no Opus audio track{self._codecs()}.")
        return track

    def _track_field(self, element: int, body: bytes, start: int) -> None:
        if not self._tracks:
            raise AudioFormatError(f"The WebM file has a track field outside a TrackEntry at byte {start}.")
        track = self._tracks[-1]
        if element == _TRACK_NUMBER:
            track.number = int.from_bytes(body, "big")
        elif element == _CODEC_ID:
            track.codec = body.rstrip(b"\0").decode("ascii", "replace")
        else:
            track.private = body

    def _opus_frames(self, block: bytes, start: int) -> Iterator[bytes]:
        """The frames of a (Simple)Block of the Opus track; nothing for other tracks."""
        number, pos = _size(block, 0)
        if self._opus is None:
            self._opus = self._opus_track()
        if number != self._opus.number:
            return
        if pos + 3 > len(block):
            raise AudioFormatError(f"The WebM file has a block too short for its header at byte {start}.")
        lacing = _Lacing((block[pos + 2] >> 1) & 3)
        if lacing is not _Lacing.NONE:
            raise AudioFormatError(f"The WebM file packs frames into blocks ({lacing.name.lower()} lacing), "
                                   "which edged does not read; MediaRecorder does not.")
        self._frames += 1
        yield block[pos + 3:]

    def _codecs(self) -> str:
        codecs = [t.codec for t in self._tracks if t.codec]
        return f" (its tracks: {', '.join(codecs)[:80]})" if codecs else ""


def _cut(element: int, start: int) -> AudioFormatError:
    return AudioFormatError(f"The WebM file is cut short: element {element:X} at byte {start} runs past its end.")


def _vint(data: bytes, pos: int) -> tuple[int, int]:
    """The EBML variable-length integer at `pos`, with its length marker, and its length."""
    if pos >= len(data):
        raise AudioFormatError(f"The WebM file is cut short in an element header at byte {pos}.")
    first = data[pos]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or pos + length > len(data):
        raise AudioFormatError(f"The WebM file has an invalid element header at byte {pos}.")
    return int.from_bytes(data[pos:pos + length], "big"), length


def element_header(data: bytes, pos: int) -> tuple[int, int | None, int]:
    """The ID (with its length marker, as IDs are written) and size (None: unknown) of the element
    at `pos`, and the position of its body."""
    element, length = _vint(data, pos)
    size, body = _size(data, pos + length)
    return element, size, body


def _size(data: bytes, pos: int) -> tuple[int | None, int]:
    """A size at `pos` (None: unknown, all value bits set) and the position after it."""
    raw, length = _vint(data, pos)
    value = raw & ((1 << (7 * length)) - 1)
    return (None if value == (1 << (7 * length)) - 1 else value), pos + length
