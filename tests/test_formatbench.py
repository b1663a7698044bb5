"""The WebM/Opus clips `edged bench formats` uploads (a browser's recording, made without one): read
back by edged's own WebM reader at full length, with the speech in them."""

from __future__ import annotations

import io
import wave

import numpy as np

from edged.audio.compressed import Container, decode_to_wav, sniff
from edged.audio.webm import OpusStream
from edged.client.webm_clip import BROWSER_RATE, browser_webm, ogg_opus, ogg_packets


def _tone(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


def test_browser_webm_reads_back_whole() -> None:
    webm = browser_webm(_tone(3.0, 22050), 22050)
    assert sniff(webm[:16]) is Container.WEBM
    stream = OpusStream(webm)
    packets = list(stream.packets())
    head = stream.head
    assert head.startswith(b"OpusHead") and head[9] == 2  # stereo, as MediaRecorder records
    assert int.from_bytes(head[12:16], "little") == BROWSER_RATE
    assert packets == ogg_packets(ogg_opus(_tone(3.0, 22050), 22050, channels=2))[2:]
    with wave.open(io.BytesIO(decode_to_wav(webm, Container.WEBM, 0))) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        assert abs(len(audio) / w.getframerate() - 3.0) < 0.03
    spectrum = np.abs(np.fft.rfft(audio[8000:40000]))
    assert abs(np.argmax(spectrum) * 16000 / 32000 - 440) < 2  # the tone, at its pitch


def test_ogg_packets_are_the_headers_then_the_audio() -> None:
    packets = ogg_packets(ogg_opus(_tone(1.0, 16000), 16000))
    assert packets[0].startswith(b"OpusHead") and packets[1].startswith(b"OpusTags")
    assert 45 <= len(packets) - 2 <= 55  # 20 ms packets


def test_bench_formats_command_says_when_no_server_answers() -> None:
    """`edged bench formats` at a port nobody listens on: one line naming the URL, exit status 1."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    done = subprocess.run([sys.executable, "-m", "edged", "bench", "formats", "--url", f"http://127.0.0.1:{port}",
                           "--runs", "1"], capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done
    assert lines[0].startswith(f"edged: Cannot reach the HTTP door at http://127.0.0.1:{port}: "), lines
