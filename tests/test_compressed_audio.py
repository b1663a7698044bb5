"""Compressed uploads (edged.audio.compressed) decoded by the real libraries, in this process:
files made by real encoders, truncated and corrupt ones, and one that unpacks to far more audio
than the limit."""

from __future__ import annotations

import io
import re
import time
import wave
import zipfile

import numpy as np
import pytest

from edged.audio.compressed import Container, decode_to_wav, sniff
from edged.audio.ogg import ogg_crc, opus_packet_samples
from edged.errors import AudioFormatError, RequestError
from tests.encoders import UPLOADS, encode, looped_webm, opus_bomb

RATE = 16000
TONE_HZ = 440.0
SECONDS = 3.0
KINDS = {"mp3": Container.MP3, "ogg": Container.OGG, "oga": Container.OGG, "webm": Container.WEBM}


def tone() -> bytes:
    t = np.arange(int(RATE * SECONDS)) / RATE
    return (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype("<i2").tobytes()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768, w.getframerate()


@pytest.mark.parametrize("ext", list(UPLOADS))
def test_each_format_decodes_to_the_same_sound(ext: str) -> None:
    data = encode(tone(), RATE, ext)
    assert sniff(data[:16]) is KINDS[ext]
    samples, rate = read_wav(decode_to_wav(data, KINDS[ext], max_seconds=60))
    assert rate == RATE
    assert abs(len(samples) / rate - SECONDS) < 0.1, len(samples) / rate  # encoder delay and padding at most
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * rate / len(samples) - TONE_HZ) < 2
    assert 0.2 < np.sqrt(np.mean(samples[rate // 2:-rate // 2] ** 2)) < 0.35  # 12000/32768/sqrt(2) = 0.26


def test_what_is_not_compressed_is_left_alone() -> None:
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff(b"fLaC\x00\x00\x00\x22") is None
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a", b"a")
    assert sniff(zipped.getvalue()[:16]) is None


@pytest.mark.parametrize("ext", list(UPLOADS))
def test_truncated_and_corrupt_files_name_their_format(ext: str) -> None:
    data = encode(tone(), RATE, ext)
    name = KINDS[ext].value
    with pytest.raises(AudioFormatError, match=re.escape(f"The {name}")) as cut:
        decode_to_wav(data[:40], KINDS[ext], max_seconds=60)
    with pytest.raises(AudioFormatError, match=re.escape(f"The {name}")) as corrupt:
        decode_to_wav(data[:16] + bytes(b ^ 0x5A for b in data[16:]), KINDS[ext], max_seconds=60)
    for refusal in (cut.value, corrupt.value):
        assert "\n" not in str(refusal) and "0x" not in str(refusal), refusal


def test_a_file_cut_in_its_audio_gives_the_audio_before_the_cut() -> None:
    """As FFmpeg does (and so OpenAI's API): what arrived is recognised."""
    data = encode(tone(), RATE, "ogg")
    samples, rate = read_wav(decode_to_wav(data[:len(data) // 2], Container.OGG, max_seconds=60))
    assert 0.5 < len(samples) / rate < SECONDS - 0.5


def test_decoding_stops_as_soon_as_the_limit_is_passed() -> None:
    """Two and a half minutes of Opus in under 40 KB: refused after about the limit's worth of
    decoding, in a fraction of the time decoding all of it takes."""
    bomb = opus_bomb(150)
    assert len(bomb) < 40_000
    started = time.monotonic()
    samples, rate = read_wav(decode_to_wav(bomb, Container.OGG, max_seconds=0))
    whole = time.monotonic() - started
    assert abs(len(samples) / rate - 150) < 0.1
    started = time.monotonic()
    with pytest.raises(RequestError, match="limit of 5 s"):
        decode_to_wav(bomb, Container.OGG, max_seconds=5)
    assert time.monotonic() - started < whole / 4, whole


@pytest.mark.parametrize(("head", "name"), [(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00", "MP4 (M4A)")])
def test_containers_edged_does_not_decode_are_refused_with_what_it_does(head: bytes, name: str) -> None:
    container = sniff(head)
    assert container is not None and not container.decodable
    with pytest.raises(AudioFormatError) as refused:
        decode_to_wav(head + bytes(1000), container, max_seconds=60)
    assert str(refused.value) == f"{name} audio is not supported; send WAV, FLAC, MP3, Ogg (Vorbis, Opus) or WebM (Opus)."


def test_a_looped_webm_stops_at_the_limit() -> None:
    """MediaRecorder's smallest block 10,000 times (200 s of Opus): refused once past 5 s."""
    bomb = looped_webm(encode(tone(), RATE, "webm"), 10_000)
    started = time.monotonic()
    with pytest.raises(RequestError, match="limit of 5 s"):
        decode_to_wav(bomb, Container.WEBM, max_seconds=5)
    assert time.monotonic() - started < 1


def test_webm_it_cannot_trust_is_refused_in_one_line() -> None:
    """Another codec, a size left unknown where only live elements may, a million elements
    (nested: read without recursion) with no audio, 65 tracks, an Opus packet with no valid TOC:
    each an AudioFormatError."""
    webm = encode(tone(), RATE, "webm")
    tracks = webm.index(b"\x16\x54\xae\x6b")
    assert webm[tracks + 4] & 0x80  # a one-byte size, as MediaRecorder writes it
    header = webm[:webm.index(b"\x18\x53\x80\x67")] + b"\x18\x53\x80\x67\x01" + b"\xff" * 7
    cases = {
        "no Opus audio track (its tracks: A_VORB)": webm.replace(b"A_OPUS", b"A_VORB"),
        "an unknown size": webm[:tracks + 4] + b"\xff" + webm[tracks + 5:],
        "more elements than its audio needs (1001 by byte": header + b"\x1f\x43\xb6\x75\xff" * 1_000_000,
        "more than 64 tracks": header + b"\x16\x54\xae\x6b\x40\x82" + b"\xae\x80" * 65,
        # a SimpleBlock of track 1 in the last Cluster (of unknown size): TOC code 3 with 0 frames
        "invalid Opus packet (starting 03 00)": webm + b"\xa3\x86\x81\x00\x00\x80\x03\x00",
    }
    for words, data in cases.items():
        with pytest.raises(AudioFormatError) as refused:
            decode_to_wav(data, Container.WEBM, max_seconds=60)
        message = str(refused.value)
        assert message.startswith("The WebM file") and words in message and "\n" not in message, message


def test_ogg_pages_carry_the_checksum_libogg_checks() -> None:
    """edged's CRC of each page libsndfile wrote (its checksum field zeroed) is the one it wrote."""
    data, pos = encode(tone(), RATE, "ogg"), 0
    while pos < len(data):
        segments = data[pos + 26]
        end = pos + 27 + segments + sum(data[pos + 27:pos + 27 + segments])
        page = data[pos:end]
        assert ogg_crc(page[:22] + bytes(4) + page[26:]) == int.from_bytes(page[22:26], "little")
        pos = end
    assert pos == len(data) > 0


@pytest.mark.parametrize(("packet", "samples"), [
    (bytes([31 << 3 | 0]), 960),        # CELT 20 ms, one frame
    (bytes([16 << 3 | 1]), 240),        # CELT 2.5 ms, two frames
    (bytes([1 << 3 | 3, 3]), 2880),     # SILK 20 ms, three frames (code 3)
    (bytes([13 << 3 | 2]), 1920),       # hybrid 20 ms, two frames
    (bytes([3 << 3 | 3, 3]), None),     # SILK 60 ms x 3: over 120 ms
    (bytes([0 | 3, 0]), None),          # code 3 with no frames
    (bytes([0 | 3]), None),             # code 3 without its count
    (b"", None),
])
def test_opus_packet_durations_follow_the_toc_byte(packet: bytes, samples: int | None) -> None:
    assert opus_packet_samples(packet) == samples


def test_opus_is_decoded_at_16_khz_mono() -> None:
    """An Ogg Opus upload of 48 kHz stereo (a browser's, or ffmpeg's default) reaches libsndfile with
    an OpusHead asking for 16 kHz mono (its page's checksum made again, or libsndfile would refuse
    it), and decodes to the whole tone; Vorbis is left as it is."""
    import soundfile

    from edged.audio.compressed import _ogg_opus_for_recognition
    from edged.client.webm_clip import ogg_opus

    stereo = ogg_opus(tone(), RATE, channels=2)
    with soundfile.SoundFile(io.BytesIO(stereo)) as original:
        assert (original.samplerate, original.channels) == (48000, 2)
    with soundfile.SoundFile(io.BytesIO(_ogg_opus_for_recognition(stereo))) as asked:
        assert (asked.samplerate, asked.channels) == (16000, 1)
    audio, rate = read_wav(decode_to_wav(stereo, Container.OGG, 0))
    assert rate == RATE and abs(len(audio) / rate - SECONDS) < 0.03
    spectrum = np.abs(np.fft.rfft(audio[RATE // 2:RATE // 2 + RATE]))
    assert abs(np.argmax(spectrum) - TONE_HZ) < 2 and 0.2 < np.abs(audio).max() < 0.5
    vorbis = encode(tone(), RATE, "oga")
    assert _ogg_opus_for_recognition(vorbis) == vorbis
