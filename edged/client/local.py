"""Clients of the daemon's microphone and speaker (edged.v1), and `edged dictate`.

`say`, `set_microphone` and `follow_transcripts` talk to edged's own service. `dictate` streams
this machine's microphone over the Riva API (StreamingRecognize), so it works against edged
and against a Riva server alike.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc

from edged.client.health import open_channel
from edged.client.status import api_metadata
from edged.errors import DaemonError, EdgedError
from edged.proto import edged_pb2, edged_pb2_grpc


@dataclass(frozen=True)
class Target:
    """Where a client command goes: address, channel credentials, API key."""

    address: str
    credentials: grpc.ChannelCredentials | None = None
    api_key: str = ""

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """One unary edged.v1 call; the server's refusal becomes one EdgedError sentence."""
        with open_channel(self.address, self.credentials) as channel:
            stub = edged_pb2_grpc.EdgedStub(channel)
            try:
                return getattr(stub, method)(request, timeout=timeout, metadata=api_metadata(self.api_key))
            except grpc.RpcError as exc:
                raise _error(exc, self.address) from None


def _error(exc: grpc.RpcError, address: str) -> EdgedError:
    code, details = exc.code(), exc.details()
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (details or "").lower():
        return DaemonError(f"No edged answers at {address}; start it with `edged start`.")
    return EdgedError(details or code.name)


def say(target: Target, text: str, voice: str = "", interrupt: bool = False, wait: bool = True) -> Any:
    """Speak on the daemon's speaker; returns the SpeakResponse."""
    return target.call("Speak", edged_pb2.SpeakRequest(text=text, voice=voice, interrupt=interrupt, wait=wait))


def stop_speaking(target: Target) -> Any:
    return target.call("StopSpeaking", edged_pb2.StopSpeakingRequest(), timeout=10)


def set_microphone(target: Target, muted: bool) -> Any:
    return target.call("SetMicrophone", edged_pb2.MicrophoneRequest(muted=muted), timeout=10)


def microphone_status(target: Target) -> Any:
    """The MicrophoneStatus part of the daemon's status."""
    return target.call("Status", edged_pb2.StatusRequest(), timeout=10).microphone


def follow_transcripts(target: Target, interim: bool = False) -> Iterator[Any]:
    """The daemon microphone's transcripts as they come, until the daemon stops."""
    with open_channel(target.address, target.credentials) as channel:
        stub = edged_pb2_grpc.EdgedStub(channel)
        call = stub.Transcripts(edged_pb2.TranscriptsRequest(interim_results=interim),
                                metadata=api_metadata(target.api_key))
        try:
            yield from call
        except grpc.RpcError as exc:
            raise _error(exc, target.address) from None
        finally:
            call.cancel()


def transcript_json(message: Any) -> str:
    """One transcript as a JSON line (times as Unix seconds)."""
    return json.dumps({
        "final": message.is_final, "text": message.text, "confidence": round(message.confidence, 3),
        "start": round(message.start_s, 3), "end": round(message.end_s, 3),
        "latency_ms": round(message.latency_ms),
        "words": [{"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3)} for w in message.words],
        **({"wake_word": message.wake_word} if message.wake_word else {}),
        **({"speaker": message.speaker} if message.speaker else {}),
    }, ensure_ascii=False)


class _Display:
    """Interim text rewritten in place on a terminal; finals as lines; only finals on a pipe."""

    def __init__(self, out: TextIO, tty: bool, output: Path | None) -> None:
        self.out, self.tty, self.output = out, tty, output
        self._shown = False

    def interim(self, text: str) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        shown = text if len(text) <= width else "…" + text[-(width - 1):]
        self.out.write("\r\x1b[K" + shown)
        self.out.flush()
        self._shown = True

    def final(self, text: str) -> None:
        if self._shown:
            self.out.write("\r\x1b[K")
            self._shown = False
        self.out.write(text + "\n")
        self.out.flush()
        if self.output is not None:
            with open(self.output, "a", encoding="utf-8") as f:
                f.write(text + "\n")

    def close(self) -> None:
        if self._shown:
            self.out.write("\r\x1b[K")
            self.out.flush()


def dictate(target: Target, device: str | None, out: TextIO, tty: bool, output: Path | None = None,
            language: str = "en-US", duration: float = 0.0) -> int:
    """Stream the microphone to a Riva-API server until Ctrl-C (or `duration` s); returns finals shown.

    The first Ctrl-C ends the audio, so the server sends the last final; a second one quits at once.
    """
    from riva.client.proto import riva_asr_pb2 as rasr
    from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
    from riva.client.proto import riva_audio_pb2 as raudio

    from edged.audio.devices import Microphone
    from edged.pipelines.asr.audio import MODEL_RATE

    mic = Microphone(device, rate=MODEL_RATE)
    mic.open()
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    def requests() -> Iterator[Any]:
        yield rasr.StreamingRecognizeRequest(streaming_config=rasr.StreamingRecognitionConfig(
            config=rasr.RecognitionConfig(encoding=raudio.LINEAR_PCM, sample_rate_hertz=MODEL_RATE,
                                          language_code=language, max_alternatives=1,
                                          enable_automatic_punctuation=True, audio_channel_count=1),
            interim_results=tty))
        end = time.monotonic() + duration if duration else float("inf")
        while not stop.is_set() and time.monotonic() < end:
            block = mic.read(0.2)
            if block is not None and len(block):
                pcm = (block.clip(-1.0, 1.0) * 32767.0).astype("<i2").tobytes()
                yield rasr.StreamingRecognizeRequest(audio_content=pcm)

    display = _Display(out, tty, output)
    finals = 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)
    try:
        with open_channel(target.address, target.credentials) as channel:
            stub = rasr_grpc.RivaSpeechRecognitionStub(channel)
            try:
                for response in stub.StreamingRecognize(requests(), metadata=api_metadata(target.api_key)):
                    for result in response.results:
                        if not result.alternatives:
                            continue
                        text = result.alternatives[0].transcript.strip()
                        if result.is_final:
                            if text:
                                display.final(text)
                                finals += 1
                        else:
                            display.interim(text)
            except grpc.RpcError as exc:
                raise _error(exc, target.address) from None
    finally:
        display.close()
        stop.set()
        mic.close()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    return finals
