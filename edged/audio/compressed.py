"""Compressed recordings as clients upload them (MP3, Ogg Vorbis or Opus) to 16 kHz mono 16-bit
PCM, decoded frame by frame and stopped as soon as they pass a duration limit, so that a small file
that unpacks to hours of audio (a decompression bomb) costs no more than the limit.

They go through libsndfile (python-soundfile, a dependency already). WebM with Opus (what a
browser's MediaRecorder makes) is remuxed first: its Opus packets are read out of the Matroska
container (edged.audio.webm) and written into an Ogg Opus stream (edged.audio.ogg), counted against
the limit as they go, with an OpusHead that asks libsndfile for 16 kHz mono, so that libopus
decodes straight to what recognition takes; an Ogg Opus upload's OpusHead is rewritten the same
way. MP4/M4A is recognised by its first bytes and refused with the formats edged
reads: its decoders (FFmpeg's) come, as wheels, only with GPL encoders beside them.
"""

from __future__ import annotations

import enum
import io
import itertools
import wave
from collections.abc import Iterator

import numpy as np

from edged.audio.ogg import MAX_PACKET, OggOpusWriter, ogg_crc, opus_packet_samples
from edged.audio.resample import StreamResampler, float_to_pcm16
from edged.audio.webm import OpusStream
from edged.errors import AudioFormatError, RequestError

MODEL_RATE = 16000
_BLOCK = 8192
"""Frames libsndfile decodes at a time."""


class Container(enum.Enum):
    """A compressed container edged recognises by its first bytes; the value is its name for people."""

    MP3 = "MP3"
    OGG = "Ogg"
    WEBM = "WebM"
    MP4 = "MP4 (M4A)"

    @property
    def decodable(self) -> bool:
        """Whether edged decodes it (through libsndfile)."""
        return self is not Container.MP4


UPLOAD_FORMATS = "WAV, FLAC, MP3, Ogg (Vorbis, Opus) or WebM (Opus)"
"""The uploads edged reads, for people."""


def sniff(head: bytes) -> Container | None:
    """The compressed container `head` (a file's first bytes) starts, or None (WAV, FLAC, other)."""
    if head[:4] == b"OggS":
        return Container.OGG
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, of which WebM is a profile
        return Container.WEBM
    if head[4:8] == b"ftyp":
        return Container.MP4
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and (head[1] >> 1) & 3):
        return Container.MP3  # an ID3v2 tag or an MPEG audio frame (layer bits set: not AAC's ADTS)
    return None


READ_AS_IS = (b"RIFF", b"RF64", b"fLaC")
"""The starts of uploads the recognition pipeline reads itself (WAV, FLAC)."""


def upload_container(name: str, audio: bytes) -> Container | None:
    """The compressed container of an upload (None: WAV or FLAC); AudioFormatError naming the
    upload if it is none edged reads."""
    container = sniff(audio[:16])
    if container is None and audio[:4] not in READ_AS_IS:
        start = audio[:8].hex(" ") if audio else "nothing"
        raise AudioFormatError(f"{name!r} is not audio edged can read (it starts with {start}); "
                               f"send {UPLOAD_FORMATS}.")
    return container


def decode_to_wav(data: bytes, container: Container, max_seconds: float) -> bytes:
    """The recording as a 16 kHz mono 16-bit WAV file. AudioFormatError naming the container if it
    cannot be read; RequestError as soon as the audio passes `max_seconds` (0: no limit)."""
    if not container.decodable:
        raise AudioFormatError(f"{container.value} audio is not supported; send {UPLOAD_FORMATS}.")
    if container is Container.WEBM:
        data, container = _webm_as_ogg(data, max_seconds), Container.OGG
    elif container is Container.OGG:
        data = _ogg_opus_for_recognition(data)
    blocks = _libsndfile_blocks(data, container)
    resampler: StreamResampler | None = None
    pcm: list[bytes] = []
    seconds = 0.0
    for samples, rate in blocks:
        if resampler is None or resampler.src_rate != rate:
            if resampler is not None:
                pcm.append(float_to_pcm16(resampler.process(np.zeros(0, np.float32), last=True)))
            resampler = StreamResampler(rate, MODEL_RATE)
        seconds += len(samples) / rate
        if max_seconds and seconds > max_seconds:
            raise _too_long(max_seconds)
        pcm.append(float_to_pcm16(resampler.process(samples, last=False)))
    if resampler is None or not seconds:
        raise AudioFormatError(f"The {container.value} file holds no audio that can be decoded.")
    pcm.append(float_to_pcm16(resampler.process(np.zeros(0, np.float32), last=True)))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MODEL_RATE)
        w.writeframes(b"".join(pcm))
    return out.getvalue()


def _too_long(max_seconds: float) -> RequestError:
    return RequestError(f"The audio is longer than the limit of {max_seconds:g} s per request "
                        "(asr_max_audio_seconds in config.sh).")


def _webm_as_ogg(data: bytes, max_seconds: float) -> bytes:
    """The Opus packets of a WebM file as an Ogg Opus stream; RequestError as soon as they pass
    `max_seconds` (0: no limit)."""
    stream = OpusStream(data)
    packets = stream.packets()
    first = next(packets, None)
    head = stream.head
    if len(head) < 19 or not head.startswith(b"OpusHead"):
        raise AudioFormatError("The WebM file's Opus track has no valid OpusHead.")
    ogg = OggOpusWriter(_decoded_for_recognition(head))
    samples = 0
    for packet in itertools.chain([] if first is None else [first], packets):
        duration = opus_packet_samples(packet)
        if duration is None or len(packet) > MAX_PACKET:
            raise AudioFormatError(f"The WebM file holds an invalid Opus packet (starting {packet[:4].hex(' ')}).")
        samples += duration
        if max_seconds and samples > max_seconds * 48000:
            raise _too_long(max_seconds)
        ogg.packet(packet, duration)
    if not samples:
        raise AudioFormatError("The WebM file holds no Opus audio.")
    return ogg.finish()


def _decoded_for_recognition(head: bytes) -> bytes:
    """An OpusHead whose stream libsndfile decodes at MODEL_RATE, in mono where it is mono or stereo.

    libsndfile decodes at the head's input sample rate (where Opus has it: 8, 12, 16, 24 or
    48 kHz), and libopus decodes any packet at any of those rates and to one channel (mixing
    stereo down) by itself: cheaper than decoding a browser's 48 kHz stereo and resampling and
    averaging after it (RFC 7845 makes the input rate a hint, and channel mapping family 0 a
    plain mono or stereo stream). Other channel mappings keep their channels.
    """
    out = bytearray(head)
    out[12:16] = MODEL_RATE.to_bytes(4, "little")
    if out[18] == 0:  # channel mapping family 0: one or two channels, no mapping table
        out[9] = 1
    return bytes(out)


def _ogg_opus_for_recognition(data: bytes) -> bytes:
    """An Ogg Opus upload with its first page's OpusHead as _decoded_for_recognition makes it (the
    page's checksum made again); any other Ogg file as it is. RFC 7845 puts the OpusHead alone on
    the first page."""
    if len(data) < 28 or data[:4] != b"OggS" or data[26] != 1:  # the head alone, one lacing value
        return data
    start, size = 28, data[27]
    head = data[start:start + size]
    if size == 255 or len(head) < 19 or not head.startswith(b"OpusHead"):
        return data
    page = bytearray(data[:22] + bytes(4) + data[26:start] + _decoded_for_recognition(head))
    page[22:26] = ogg_crc(bytes(page)).to_bytes(4, "little")
    return bytes(page) + data[start + size:]


def _libsndfile_blocks(data: bytes, container: Container) -> Iterator[tuple[np.ndarray, int]]:
    """Mono float32 blocks (channels averaged) and their rate, through libsndfile."""
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            if f.format != container.name:
                raise AudioFormatError(f"The file starts like {container.value} but libsndfile reads it as {f.format}.")
            while True:
                block = f.read(_BLOCK, dtype="float32", always_2d=True)
                if not len(block):
                    return
                yield block.mean(axis=1), f.samplerate
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        # libsndfile's own words, without the "Error opening <BytesIO object at 0x...>" around them
        reason = (getattr(exc, "error_string", "") or str(exc).rsplit(": ", 1)[-1]).removeprefix("Error : ")
        if reason.startswith("File does not exist"):  # what libsndfile says of an MPEG stream it cannot sync to
            reason = "no audio frames in it"
        raise AudioFormatError(f"The {container.value} audio cannot be decoded: {reason.rstrip('.')}.") from None
