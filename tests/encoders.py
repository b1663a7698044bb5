"""Real encoders for test uploads, from 16-bit mono PCM: libsndfile's (MP3, Ogg Vorbis, Ogg Opus)
and Chromium's MediaRecorder (WebM/Opus, as Open WebUI's microphone button uploads it)."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edged.audio.webm import element_header

UPLOADS = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "OPUS"), "oga": ("OGG", "VORBIS"),
           "webm": ("WebM", "Opus, by Chromium's MediaRecorder")}
"""File extension: (container, codec) of each compressed upload the tests make."""
CHROMIUM = Path("/usr/bin/chromium")

_RECORD = """async ([samples, rate]) => {
  const context = new AudioContext({sampleRate: 48000});
  const buffer = context.createBuffer(1, samples.length, rate);
  buffer.copyToChannel(Float32Array.from(samples), 0);
  const source = context.createBufferSource();
  source.buffer = buffer;
  const sink = context.createMediaStreamDestination();
  source.connect(sink);
  const recorder = new MediaRecorder(sink.stream, {mimeType: 'audio/webm;codecs=opus'});
  const parts = [];
  recorder.ondataavailable = (e) => parts.push(e.data);
  const stopped = new Promise((done) => { recorder.onstop = done; });
  source.onended = () => setTimeout(() => recorder.stop(), 300);
  await context.resume();
  recorder.start(250);
  source.start();
  await stopped;
  const bytes = new Uint8Array(await new Blob(parts).arrayBuffer());
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}"""
"""Plays the samples through WebAudio into a MediaRecorder, in real time, as a page recording the
microphone would (timeslices of 250 ms: a live WebM, its Segment and Clusters of unknown size)."""


def encode(pcm: bytes, rate: int, ext: str) -> bytes:
    """`pcm` as a file of the kind `ext` names (one of UPLOADS), made by a real encoder."""
    if ext == "webm":
        return recorded_webm(pcm, rate)
    container, codec = UPLOADS[ext]
    out = io.BytesIO()
    soundfile.write(out, np.frombuffer(pcm, "<i2"), rate, format=container, subtype=codec)
    return out.getvalue()


@functools.lru_cache(maxsize=4)
def recorded_webm(pcm: bytes, rate: int) -> bytes:
    """`pcm` recorded by Chromium's MediaRecorder as audio/webm;codecs=opus (skips where Debian's
    chromium or Playwright is missing)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    samples = (np.frombuffer(pcm, "<i2") / 32768).tolist()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"])
        try:
            return base64.b64decode(browser.new_page().evaluate(_RECORD, [samples, rate]))
        finally:
            browser.close()


def opus_bomb(seconds: float) -> bytes:
    """An Ogg Opus file of `seconds` of silence at 8 kHz: small (about 230 bytes a second), long to decode."""
    out = io.BytesIO()
    soundfile.write(out, np.zeros(int(seconds * 8000), "<i2"), 8000, format="OGG", subtype="OPUS")
    return out.getvalue()


def looped_webm(webm: bytes, blocks: int) -> bytes:
    """A WebM file of MediaRecorder's header and first Cluster's header, then its smallest block
    `blocks` times: small, long to decode (each block is a 20 ms Opus packet)."""
    pos, smallest, cluster = 0, b"", -1
    while pos < len(webm):
        element, size, body = element_header(webm, pos)
        if element == 0x1F43B675 and cluster < 0:  # the first Cluster: its header, its Timecode
            cluster = body
        elif element == 0xA3 and size is not None and cluster >= 0 and (  # a SimpleBlock, the smallest yet
                not smallest or body + size - pos < len(smallest)):
            smallest = webm[pos:body + size]
        is_master = element in (0x18538067, 0x1F43B675)  # Segment, Cluster: their children are read
        pos = body if is_master or size is None else body + size
    _, size, body = element_header(webm, cluster)  # the Timecode after the Cluster's header
    assert size is not None and smallest
    return webm[:body + size] + smallest * blocks
