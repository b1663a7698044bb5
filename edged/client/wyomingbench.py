"""Wyoming beside gRPC on one running server: ASR latency after the end of audio, TTS first audio.

    python -m edged.client.wyomingbench --grpc 127.0.0.1:50051 --wyoming 127.0.0.1:10300 \\
        --corpus /work/shared/evalcorpus/manifest.jsonl --clips 12 \\
        --sentences /work/shared/tts_sentences.txt [--realtime]

ASR: per clip, Wyoming's time from `audio-stop` (all chunks written, as fast as the socket takes
them, or at the speed of speech with --realtime) to `transcript`, beside gRPC offline Recognize
of the same 16-bit PCM (request to response). TTS: `synthesize` to the first `audio-chunk`
beside gRPC SynthesizeOnline to its first audio, same sentences. One warm-up of each first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import wave
from pathlib import Path

import numpy as np
import riva.client
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.tts import Synthesize

from edged.client.textnorm import word_errors

CHUNK_S = 0.1


def _pcm(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, path
        return w.readframes(w.getnframes()), w.getframerate()


async def wyoming_transcribe(host: str, port: int, pcm: bytes, rate: int, realtime: bool) -> tuple[str, float]:
    """The transcript and the seconds from audio-stop to it."""
    step = int(rate * CHUNK_S) * 2
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i:i + step]).event())
            if realtime:
                await asyncio.sleep(CHUNK_S)
        await client.write_event(AudioStop().event())
        t0 = time.perf_counter()
        while True:
            event = await client.read_event()
            assert event is not None and not Error.is_type(event.type), event
            if Transcript.is_type(event.type):
                return Transcript.from_event(event).text, time.perf_counter() - t0


async def wyoming_first_audio(host: str, port: int, text: str) -> float:
    """Seconds from synthesize to the first audio-chunk (the rest is read to the end)."""
    async with AsyncTcpClient(host, port) as client:
        t0 = time.perf_counter()
        await client.write_event(Synthesize(text=text).event())
        first = 0.0
        while True:
            event = await client.read_event()
            assert event is not None and not Error.is_type(event.type), event
            if AudioChunk.is_type(event.type) and not first:
                first = time.perf_counter() - t0
            if AudioStop.is_type(event.type):
                return first


def grpc_recognize(asr: riva.client.ASRService, pcm: bytes, rate: int) -> tuple[str, float]:
    config = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate,
                                           language_code="en-US", max_alternatives=1,
                                           enable_automatic_punctuation=True)
    t0 = time.perf_counter()
    response = asr.offline_recognize(pcm, config)
    return "".join(r.alternatives[0].transcript for r in response.results), time.perf_counter() - t0


def grpc_first_audio(tts: riva.client.SpeechSynthesisService, text: str) -> float:
    t0 = time.perf_counter()
    first = 0.0
    for response in tts.synthesize_online(text, language_code="en-US", sample_rate_hz=22050):
        if response.audio and not first:
            first = time.perf_counter() - t0
    return first


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc", default="127.0.0.1:50051")
    parser.add_argument("--wyoming", default="127.0.0.1:10300")
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/evalcorpus/manifest.jsonl"))
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--sentences", type=Path, default=Path("/work/shared/tts_sentences.txt"))
    parser.add_argument("--realtime", action="store_true", help="send Wyoming audio at the speed of speech")
    args = parser.parse_args()
    host, port = args.wyoming.rsplit(":", 1)
    auth = riva.client.Auth(uri=args.grpc)
    asr, tts = riva.client.ASRService(auth), riva.client.SpeechSynthesisService(auth)

    if args.corpus.exists():
        rows = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
        every = max(1, len(rows) // args.clips)
        clips = rows[::every][:args.clips]
        first, rate0 = _pcm(args.corpus.parent / clips[0]["audio"])
        asyncio.run(wyoming_transcribe(host, int(port), first, rate0, False))  # warm-up
        grpc_recognize(asr, first, rate0)
        wy, gr, wy_err, gr_err, words = [], [], 0, 0, 0
        for clip in clips:
            pcm, rate = _pcm(args.corpus.parent / clip["audio"])
            text_w, t_w = asyncio.run(wyoming_transcribe(host, int(port), pcm, rate, args.realtime))
            text_g, t_g = grpc_recognize(asr, pcm, rate)
            wy.append(t_w)
            gr.append(t_g)
            ref = clip.get("text_normalized") or clip["text"]
            e_w, n = word_errors(ref, text_w)
            e_g, _ = word_errors(ref, text_g)
            wy_err, gr_err, words = wy_err + e_w, gr_err + e_g, words + n
        print(f"ASR, {len(clips)} clips ({'real-time' if args.realtime else 'as fast as possible'} Wyoming audio):")
        print(f"  Wyoming audio-stop -> transcript  p50 {_p(wy, 50):7.0f} ms  p95 {_p(wy, 95):7.0f} ms  "
              f"WER {wy_err / words:.1%}")
        print(f"  gRPC offline Recognize            p50 {_p(gr, 50):7.0f} ms  p95 {_p(gr, 95):7.0f} ms  "
              f"WER {gr_err / words:.1%}")
    else:
        print(f"ASR skipped: {args.corpus} is absent")

    sentences = [s.strip() for s in args.sentences.read_text().splitlines() if s.strip()]
    asyncio.run(wyoming_first_audio(host, int(port), sentences[0]))  # warm-up
    grpc_first_audio(tts, sentences[0])
    wy_t = [asyncio.run(wyoming_first_audio(host, int(port), s)) for s in sentences]
    gr_t = [grpc_first_audio(tts, s) for s in sentences]
    print(f"TTS, {len(sentences)} sentences, time to first audio:")
    print(f"  Wyoming synthesize -> audio-chunk  p50 {_p(wy_t, 50):7.0f} ms  p95 {_p(wy_t, 95):7.0f} ms")
    print(f"  gRPC SynthesizeOnline first chunk  p50 {_p(gr_t, 50):7.0f} ms  p95 {_p(gr_t, 95):7.0f} ms")


if __name__ == "__main__":
    main()
