"""Riva ASR API end to end: a real `edged start` with Moonshine and Silero, driven by riva.client."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import subprocess
import threading
import time
import wave
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import riva.client
from riva.client.proto import riva_asr_pb2 as rasr

from edged.backends import BackendOptions
from edged.backends.onnxruntime import OrtSession
from edged.client.textnorm import normalize, word_errors
from edged.pipelines.asr.audio import _G711
from edged.pipelines.asr.jobs import DecodeJob, StreamConfig
from edged.pipelines.asr.model import AsrModel
from edged.pipelines.asr.results import Result
from edged.pipelines.asr.stream import _WINDOW
from edged.pipelines.pools import Pools
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from tests.asr_driving import steady_decodes, stream_results
from tests.conftest import require_default_packs
from tests.test_server import free_port, serving

MAX_STREAMS = 8
BECKETT_TEXT = "Ever tried ever failed, no matter try again fail again fail better."


def beckett_path() -> Path:
    """The test clip that ships with moonshine-cpp (16 kHz mono WAV, 10 s)."""
    import moonshine_cpp

    return Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"


def pcm_of(path: Path) -> tuple[bytes, int]:
    """The samples of a 16-bit WAV file and its rate."""
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate()


@pytest.fixture(scope="module")
def asr_repo(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path],
             cpu_target: DeployTarget) -> Path:
    """A model repository with the default ASR and VAD models deployed."""
    require_default_packs()
    repo = tmp_path_factory.mktemp("asr-server") / "repo"
    for name in ("moonshine-base-en", "silero-vad"):
        deploy(RmirRef(default_rmirs[name]), repo / "models", cpu_target, BackendOptions())
    return repo


@pytest.fixture(scope="module")
def asr_model(asr_repo: Path, cpu_target: DeployTarget, pools: Pools) -> AsrModel:
    """The ASR pipeline in this process (Moonshine and Silero, 2 threads)."""
    from edged.loader import load_model
    from edged.repository.records import list_models

    models = {m.name: m for m in list_models(asr_repo / "models", cpu_target)}
    options = BackendOptions(intra_op_threads=2)
    return AsrModel(load_model(models["moonshine-base-en"], options), load_model(models["silero-vad"], options), pools)


@pytest.fixture(scope="module")
def asr_server(asr_repo: Path) -> Iterator[str]:
    """A server with the default ASR and VAD models on a loopback port; yields its address."""
    tmp = asr_repo.parent
    port = free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(
        f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
        f"service_enabled_tts=false\nasr_max_streams={MAX_STREAMS}\nasr_max_audio_seconds=120\n"
        "asr_stream_idle_timeout_s=4\nmetrics_port=0\nhttp_enabled=false\nwyoming_enabled=false\n", encoding="utf-8")
    with serving(cfg, port) as address:
        yield address


def stereo_wav(left: bytes, right: bytes, rate: int) -> bytes:
    """A stereo 16-bit WAV of two mono PCM tracks (the shorter padded with silence)."""
    a, b = (np.frombuffer(x, dtype="<i2") for x in (left, right))
    frames = np.zeros((max(len(a), len(b)), 2), dtype="<i2")
    frames[:len(a), 0], frames[:len(b), 1] = a, b
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return out.getvalue()


def service(address: str) -> riva.client.ASRService:
    return riva.client.ASRService(riva.client.Auth(uri=address))


def config(**kw: object) -> riva.client.RecognitionConfig:
    base = {"language_code": "en-US", "enable_automatic_punctuation": True, "max_alternatives": 1}
    base.update(kw)
    return riva.client.RecognitionConfig(**base)


def stream_chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_offline_recognize_beckett_with_words(asr_server: str) -> None:
    """Recognize: punctuated text, confidence, ordered word times inside the audio."""
    pcm, rate = pcm_of(beckett_path())
    resp = service(asr_server).offline_recognize(
        pcm, config(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate,
                    enable_word_time_offsets=True))
    text = " ".join(r.alternatives[0].transcript for r in resp.results)
    errors, words = word_errors(BECKETT_TEXT, text)
    assert errors / words <= 0.2, text
    assert "." in text and text[0].isupper()
    times = [(w.start_time, w.end_time) for r in resp.results for w in r.alternatives[0].words]
    assert len(times) >= 10
    assert all(0 <= s <= e <= 10_000 for s, e in times)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(times))
    assert all(0 < r.alternatives[0].confidence <= 1 for r in resp.results)


def test_streaming_wav_header_unset_encoding_with_interims(asr_server: str) -> None:
    """As transcribe_file.py: the WAV as is (header in the first chunk), encoding unset."""
    data = beckett_path().read_bytes()
    sc = riva.client.StreamingRecognitionConfig(config=config(enable_automatic_punctuation=False),
                                                interim_results=True)
    finals, interims = [], []
    last_interim: dict[int, str] = {}  # final index -> the interim just before it

    def paced() -> Iterator[bytes]:  # twice real time: interims come per interval of audio
        for chunk in stream_chunks(data, 3200):
            yield chunk
            time.sleep(0.05)

    for resp in service(asr_server).streaming_response_generator(paced(), sc):
        for r in resp.results:
            if r.is_final:
                if interims and interims[-1].audio_processed <= r.audio_processed:
                    last_interim[len(finals)] = normalize(interims[-1].alternatives[0].transcript)
                finals.append(r)
            else:
                interims.append(r)
    text = " ".join(r.alternatives[0].transcript for r in finals)
    assert word_errors(BECKETT_TEXT, text)[0] <= 2, text
    assert text == text.lower() and "," not in text and "." not in text
    assert len(interims) >= 3 and all(0 <= r.stability < 1 for r in interims)
    # Interims converge: most utterances' last interim already reads as their final.
    same = [last_interim[i] == normalize(finals[i].alternatives[0].transcript) for i in last_interim]
    assert same and sum(same) >= len(same) / 2, (last_interim, [f.alternatives[0].transcript for f in finals])


def test_resampled_stereo_mulaw_and_flac(asr_server: str) -> None:
    """44.1 kHz stereo PCM, 8 kHz mu-law and FLAC all reach the recogniser as 16 kHz mono."""
    import soundfile
    import soxr

    pcm, rate = pcm_of(beckett_path())
    mono = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    asr = service(asr_server)
    hi = soxr.resample(mono, rate, 44100)
    stereo = (np.repeat(hi[:, None], 2, axis=1) * 32767).astype("<i2").tobytes()
    texts = [" ".join(r.alternatives[0].transcript for r in asr.offline_recognize(
        stereo, config(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=44100,
                       audio_channel_count=2)).results)]
    lo = soxr.resample(mono, rate, 8000)
    table = _G711["MULAW"]
    order = np.argsort(table)
    # Nearest mu-law code for each sample (encoding by the decoder's own table).
    idx = np.clip(np.searchsorted(table[order], lo), 1, 255)
    nearer = np.where(np.abs(table[order][idx - 1] - lo) < np.abs(table[order][idx] - lo), idx - 1, idx)
    mulaw = order[nearer].astype(np.uint8).tobytes()
    texts.append(" ".join(r.alternatives[0].transcript for r in asr.offline_recognize(
        mulaw, config(encoding=riva.client.AudioEncoding.MULAW, sample_rate_hertz=8000)).results))
    flac = io.BytesIO()
    soundfile.write(flac, mono, rate, format="FLAC")
    texts.append(" ".join(r.alternatives[0].transcript for r in asr.offline_recognize(
        flac.getvalue(), config(encoding=riva.client.AudioEncoding.FLAC)).results))
    for text in texts:
        errors, words = word_errors(BECKETT_TEXT, text)
        assert errors / words <= 0.3, text


def test_list_models_config(asr_server: str) -> None:
    """GetRivaSpeechRecognitionConfig lists the model as online and offline with its language."""
    resp = service(asr_server).stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest())
    kinds = {(c.model_name, c.parameters["type"], c.parameters["language_code"]) for c in resp.model_config}
    assert kinds == {("moonshine-base-en", "online", "en-US"), ("moonshine-base-en", "offline", "en-US")}


def _stream_text(asr: riva.client.ASRService, pcm: bytes, rate: int, chunk_s: float, pace: float) -> str:
    def chunks() -> Iterator[bytes]:
        for chunk in stream_chunks(pcm, int(rate * chunk_s) * 2):
            yield chunk
            time.sleep(pace)
    sc = riva.client.StreamingRecognitionConfig(
        config=config(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate),
        interim_results=True)
    return " ".join(r.alternatives[0].transcript for resp in asr.streaming_response_generator(chunks(), sc)
                    for r in resp.results if r.is_final)


def test_streaming_client_sending_at_once_loses_nothing(asr_server: str) -> None:
    """All the audio sent at once (queued with the config): every word, three times over.
    (Not compared with offline: offline segments are decoded in batches whose padding can make
    Moonshine repeat a short phrase, "No matter, no matter.", where streaming does not.)"""
    pcm, rate = pcm_of(beckett_path())
    pcm = pcm[int(1.6 * rate) * 2:]  # it starts with speech: "Ever failed."
    asr = service(asr_server)
    texts = [_stream_text(asr, pcm, rate, 0.05, 0) for _ in range(3)]
    assert word_errors("ever failed no matter try again fail again fail better", texts[0])[0] <= 1, texts
    assert texts[1] == texts[0] and texts[2] == texts[0]


def test_eight_concurrent_streams_do_not_cross(asr_server: str) -> None:
    """8 streams at once, each a different cut of the clip: each gets its own transcript."""
    pcm, rate = pcm_of(beckett_path())
    asr = service(asr_server)
    bytes_per_s = rate * 2
    # Clip i starts at sentence i: "Ever tried", "Ever failed", "No matter", "Try again"...
    starts = [0.0, 1.6, 3.25, 4.6, 6.3, 7.9, 0.0, 3.25]
    lin = riva.client.AudioEncoding.LINEAR_PCM
    expected = [normalize(" ".join(r.alternatives[0].transcript for r in asr.offline_recognize(
        pcm[int(s * bytes_per_s) // 2 * 2:], config(encoding=lin, sample_rate_hertz=rate)).results))
        for s in starts[:6]]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = normalize(_stream_text(asr, pcm[int(starts[i] * bytes_per_s) // 2 * 2:], rate, 0.16, 0.02))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 8
    for i in range(8):
        want = expected[i] if i < 6 else expected[starts.index(starts[i])]
        errors, words = word_errors(want, results[i])
        assert errors <= max(2, words // 5), (i, want, results[i])
        assert results[i].split()[:2] == want.split()[:2], (i, want, results[i])


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    err = info.value
    return err.code(), err.details()  # type: ignore[attr-defined]


def test_errors_are_precise(asr_server: str) -> None:
    """Unknown model or language, bad encodings, malformed audio, too much audio: INVALID_ARGUMENT."""
    asr = service(asr_server)
    pcm, rate = pcm_of(beckett_path())
    lin = riva.client.AudioEncoding.LINEAR_PCM
    cases = [
        (pcm, config(model="nope", encoding=lin, sample_rate_hertz=rate), "nope' is not deployed; deployed ASR models: moonshine-base-en (en-US)"),
        (pcm, config(language_code="de-DE", encoding=lin, sample_rate_hertz=rate), "language 'de-DE'"),
        (pcm, config(encoding=riva.client.AudioEncoding.OGGOPUS, sample_rate_hertz=rate), "OGGOPUS is not supported"),
        (pcm, config(), "encoding is not set"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk", config(), "WAV header"),
        (pcm, config(encoding=lin, sample_rate_hertz=4000), "4000 Hz"),
        (bytes(16000 * 2 * 121), config(encoding=lin, sample_rate_hertz=16000), "limit of 120 s"),
    ]
    too_many = config(encoding=lin, sample_rate_hertz=rate)
    riva.client.add_word_boosting_to_config(too_many, [f"word{i}" for i in range(101)], 20.0)
    unbounded = config(encoding=lin, sample_rate_hertz=rate)
    riva.client.add_word_boosting_to_config(unbounded, ["Beckett"], float("inf"))
    endless = config(encoding=lin, sample_rate_hertz=rate)
    riva.client.add_endpoint_parameters_to_config(endless, 0, 0, 0, 0, float("inf"), 0)
    above_one = config(encoding=lin, sample_rate_hertz=rate)
    riva.client.add_endpoint_parameters_to_config(above_one, 0, 0, 0, 0, 0, 2.5)
    cases += [(pcm, too_many, "101 boosted phrases are too many; at most 100"),
              (pcm, unbounded, "a boost must be a finite number"),
              (pcm, endless, "stop_threshold is inf"), (pcm, above_one, "it must be from 0 to 1")]
    for audio, cfg, message in cases:
        code, details = _code(lambda audio=audio, cfg=cfg: asr.offline_recognize(audio, cfg))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (message, details)
    sc = riva.client.StreamingRecognitionConfig(config=config(model="nope"))
    code, details = _code(lambda: list(asr.streaming_response_generator([pcm[:3200]], sc)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not deployed" in details
    code, _ = _code(lambda: asr.stub.GetRivaSpeechRecognitionConfig(
        rasr.RivaSpeechRecognitionConfigRequest(model_name="nope")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_limit_and_idle_timeout(asr_server: str) -> None:
    """One stream above asr_max_streams is RESOURCE_EXHAUSTED; a silent client is ended after the idle timeout."""
    asr = service(asr_server)
    sc = riva.client.StreamingRecognitionConfig(
        config=config(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000))
    release = threading.Event()
    outcomes: list[grpc.StatusCode] = []

    def hold() -> Iterator[bytes]:
        yield bytes(3200)
        release.wait(20)

    def run() -> None:
        try:
            list(asr.streaming_response_generator(hold(), sc))
            outcomes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            outcomes.append(exc.code())

    threads = [threading.Thread(target=run) for _ in range(MAX_STREAMS)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    code, details = _code(lambda: list(asr.streaming_response_generator([bytes(3200)], sc)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"the limit is {MAX_STREAMS}" in details
    for t in threads:
        t.join(timeout=30)
    release.set()
    # The held streams sent nothing for longer than asr_stream_idle_timeout_s (4 s).
    assert outcomes == [grpc.StatusCode.DEADLINE_EXCEEDED] * MAX_STREAMS


def _evalcorpus(evalcorpus: Path, limit_s: float) -> list[dict[str, object]]:
    clips = [json.loads(line) for line in (evalcorpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    # Spread over categories, short clips first, within the time budget.
    chosen, total = [], 0.0
    seen: set[object] = set()
    for clip in sorted(clips, key=lambda c: (c["category"] in seen, c["duration_s"])):
        if total + float(clip["duration_s"]) <= limit_s and clip["category"] not in seen:
            chosen.append(clip)
            seen.add(clip["category"])
            total += float(clip["duration_s"])
    return chosen


def test_evalcorpus_wer_offline_and_streaming(asr_server: str, evalcorpus: Path) -> None:
    """A sample of real speech: WER bounds for offline and streaming recognition."""
    asr = service(asr_server)
    errors = {"offline": 0, "streaming": 0}
    words = 0
    for clip in _evalcorpus(evalcorpus, limit_s=45):
        pcm, rate = pcm_of(evalcorpus / str(clip["audio"]))
        offline = " ".join(r.alternatives[0].transcript for r in asr.offline_recognize(
            pcm, config(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate)).results)
        streaming = _stream_text(asr, pcm, rate, 0.16, 0)
        e, n = word_errors(str(clip["text"]), offline)
        errors["offline"] += e
        errors["streaming"] += word_errors(str(clip["text"]), streaming)[0]
        words += n
    assert words > 50
    assert errors["offline"] / words <= 0.12, errors
    assert errors["streaming"] / words <= 0.12, errors


def test_transcribe_cli_json(asr_server: str) -> None:
    """`edged transcribe --server ADDR --json FILE`: text, words and times."""
    import sys

    out = subprocess.run([sys.executable, "-m", "edged", "transcribe", "--server", asr_server, "--json",
                          str(beckett_path())], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    (item,) = json.loads(out.stdout)
    assert word_errors(BECKETT_TEXT, item["transcript"])[0] <= 2
    words = [w for r in item["results"] for w in r["words"]]
    assert words and all(w["start_ms"] <= w["end_ms"] for w in words)


def test_bench_asr_reports_real_time_figures_and_where_it_saturates(asr_server: str, tmp_path: Path) -> None:
    """`edged bench asr --realtime --json` keeps its keys and adds how far behind real time the
    responses were; `--sweep` streams 1 then 2 real-time streams and says whether each kept up."""
    import sys

    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"audio": str(beckett_path()), "text": BECKETT_TEXT}) + "\n", encoding="utf-8")
    base = [sys.executable, "-m", "edged", "bench", "asr", "--server", asr_server, "--manifest", str(manifest)]
    out = subprocess.run([*base, "--streams", "1", "--realtime", "--json", "--chunk-ms", "320"],
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"wer_offline", "wer_streaming", "final_latency_p95_ms", "interim_gap_p95_ms", "max_lag_after_audio_ms",
            "behind_p95_ms", "behind_max_ms"} <= set(report)
    assert report["wer_streaming"] <= 20.0 and report["realtime"] is True
    assert 0.0 <= report["behind_p95_ms"] <= report["behind_max_ms"] < 10_000
    # The final that ends the stream, timed from the client's last chunk.
    assert 0.0 <= report["stop_final_p50_ms"] <= report["stop_final_p95_ms"] < 10_000 and report["stagger_s"] == 0.0
    staggered = subprocess.run([*base, "--streams", "2", "--realtime", "--json", "--stagger", "1.5"],
                               capture_output=True, text=True, timeout=180, check=False)
    assert staggered.returncode == 0, staggered.stderr
    assert json.loads(staggered.stdout)["stagger_s"] == 1.5
    out = subprocess.run([*base, "--streams", "2", "--sweep", "--sweep-seconds", "5", "--json"],
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["streams"] for r in rows] == [1, 2]
    assert all(r["finals"] >= 5 * r["streams"] and isinstance(r["keeps_up"], bool) for r in rows), rows
    text = subprocess.run([*base, "--streams", "1", "--sweep", "--sweep-seconds", "5"],
                          capture_output=True, text=True, timeout=180, check=False).stdout
    assert "keeps up" in text.splitlines()[0] and ("Keeps up" in text or "Saturates" in text), text


def test_stream_interims_windowed_finals_unchanged(asr_model: AsrModel, monkeypatch: pytest.MonkeyPatch,
                                                   float_decoder: OrtSession, evalcorpus: Path) -> None:
    """Long speech streamed in real time with interims (on a test clock, decodes counted at 50 ms
    per second of audio whatever the machine's load): interims decode bounded windows, most
    finals are the speculative decodes started at the likely end, and the finals read exactly
    as without interims (drafts only save decoder calls; on the float32 decoder, since int8
    activations round a draft and a step slightly differently)."""
    clip = evalcorpus / "clips" / "long-lj-LJ001-0001-to-0008.wav"
    if not clip.is_file():
        pytest.skip(f"{clip} is not there")
    monkeypatch.setattr(asr_model.recogniser, "decoder", float_decoder)
    steady_decodes(asr_model, monkeypatch)
    pcm, rate = pcm_of(clip)
    pcm = pcm[:rate * 2 * 30]
    decoded: list[tuple[str, int]] = []
    decode_jobs = asr_model.decode_jobs

    def recording(jobs: list[DecodeJob]) -> None:
        decoded.extend((j.kind, len(j.audio)) for j in jobs if j.hyp is None)
        decode_jobs(jobs)

    monkeypatch.setattr(asr_model, "decode_jobs", recording)

    def finals(interims: bool) -> tuple[list[str], int]:
        config = StreamConfig(encoding="LINEAR_PCM", sample_rate=rate, interim_results=interims)
        results = stream_results(lambda: asr_model.start_stream(config), pcm, 2 * rate)  # 160 ms chunks
        return [r.transcript for r in results if r.is_final], sum(not r.is_final for r in results)

    plain, _ = finals(False)
    decoded.clear()
    streamed, interims = finals(True)
    assert streamed == plain
    assert interims >= 20
    assert any(kind == "commit" for kind, _ in decoded)
    assert max(n for kind, n in decoded if kind == "interim") <= _WINDOW
    fresh = sum(kind == "final" for kind, _ in decoded)
    assert fresh <= len(streamed) // 2, decoded


def _run_stream(asr_model: AsrModel, config: StreamConfig, data: bytes, bytes_per_s: int,
                chunk_s: float = 0.16) -> list[str]:
    """The finals' transcripts of `data` streamed in chunks through the batcher, on a clock at
    the pace of the audio."""
    results = stream_results(lambda: asr_model.start_stream(config), data, bytes_per_s, chunk_s)
    return [r.transcript for r in results if r.is_final]


def test_stream_recognises_one_channel(asr_model: AsrModel) -> None:
    """Of a stereo WAV with other speech on each channel a stream recognises the first channel
    (as Riva does), or the one its config names; neither is mixed with the other."""
    pcm, rate = pcm_of(beckett_path())
    samples = np.frombuffer(pcm, dtype="<i2")
    cut = int(4.4 * rate)  # "Ever tried. Ever failed. No matter." | "Try again. Fail again. ..."
    wav = stereo_wav(samples[:cut].tobytes(), samples[cut:2 * cut].tobytes(), rate)
    first = " ".join(_run_stream(asr_model, StreamConfig(), wav, 4 * rate))
    second = " ".join(_run_stream(asr_model, StreamConfig(channel=1), wav, 4 * rate))
    assert word_errors("Ever tried. Ever failed. No matter.", first)[0] <= 1, first
    assert word_errors("Try again. Fail again. Fail better.", second)[0] <= 1, second


def _runners(pools: Pools) -> tuple[Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]]:
    """A batcher's `run` and `run_interims` as the service gives them: a one-thread inference
    executor and a one-thread interim lane, both of `pools`."""
    def on(name: str) -> Callable[..., Awaitable[Any]]:
        pool = pools.get(name, 1)
        return lambda fn, *args: asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return on("infer"), on("asr-interims")


def test_end_utterance_gives_the_final_now_and_the_stream_goes_on(asr_model: AsrModel) -> None:
    """Ending the open utterance mid-speech (Riva's force_eou, through the batcher as the
    service does it) gives its final at once, with the words so far; the speech after it makes
    utterances of its own. Outside an utterance it does nothing."""
    from edged.pipelines.asr.batcher import AsrBatcher

    pcm, rate = pcm_of(beckett_path())
    cut = 2 * int(1.2 * rate)  # "Ever tried." said, its endpoint (~1.66 s) not reached yet
    chunk = 2 * int(0.08 * rate)

    async def run() -> tuple[list[Result], list[Result], list[Result], list[Result]]:
        with Pools() as pools:
            batcher = AsrBatcher(*_runners(pools))
            stream = asr_model.start_stream(StreamConfig(encoding="LINEAR_PCM", sample_rate=rate, word_times=True))
            before = []
            for i in range(0, cut, chunk):
                before += await batcher.feed(stream, pcm[i:min(i + chunk, cut)])
            assert stream.in_speech
            forced = await batcher.feed(stream, b"", end_utterance=True)
            again = await batcher.feed(stream, b"", end_utterance=True)
            after = []
            for i in range(cut, len(pcm), chunk):
                after += await batcher.feed(stream, pcm[i:i + chunk])
            return before, forced, again, after + await batcher.finish(stream)

    before, forced, again, after = asyncio.run(run())
    assert not [r for r in before if r.is_final]
    (final,) = forced
    assert final.is_final and final.transcript == "Ever tried.", final
    assert final.language_code == "en-US"
    assert final.audio_processed <= 1.2 and final.end_s <= 1.2
    assert [w.word for w in final.words] == ["Ever", "tried."]
    assert not again
    rest = [r for r in after if r.is_final]
    assert len(rest) >= 5 and all(r.start_s >= final.end_s for r in rest)
    text = " ".join(r.transcript for r in rest)
    assert word_errors("Ever failed, no matter try again fail again fail better.", text)[0] <= 1, text


def test_long_recording_is_recognised_slice_by_slice(asr_model: AsrModel) -> None:
    """A recording of several offline slices through the batcher: each slice's memory is given
    back before the next (release_memory between slices), and the results, taken slice by slice,
    come back whole and in order: every repetition of the clip recognised as the clip alone."""
    from edged.pipelines.asr.batcher import _OFFLINE_SLICE_BYTES, AsrBatcher
    from edged.pipelines.asr.jobs import offline_config

    pcm, rate = pcm_of(beckett_path())
    repeats = _OFFLINE_SLICE_BYTES // len(pcm) + 2  # a little over one slice
    releases: list[float] = []

    async def run() -> list[Result]:
        with Pools() as pools:
            batcher = AsrBatcher(*_runners(pools), release_memory=lambda: releases.append(time.monotonic()))
            config = offline_config(StreamConfig(encoding="LINEAR_PCM", sample_rate=rate))
            return await batcher.recognize(asr_model.start_stream(config), pcm * repeats)

    results = asyncio.run(run())
    assert len(releases) == (len(pcm) * repeats - 1) // _OFFLINE_SLICE_BYTES
    assert all(r.is_final for r in results)
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(results))
    text = " ".join(r.transcript for r in results)
    errors, words = word_errors(" ".join([BECKETT_TEXT] * repeats), text)
    assert errors / words <= 0.1, text


@pytest.mark.parametrize("lanes", [1, 2])
def test_streams_at_once_through_the_batcher_get_the_finals_each_gets_alone(asr_model: AsrModel, lanes: int) -> None:
    """Three real-time streams through one batcher, started a second apart: finals first,
    speculative finals in a call of their own, interims on a lane of their own (beside the
    finals, or in turns with them on one lane). Each stream gets exactly the finals it gets
    alone, once each, and interims while it speaks."""
    from edged.pipelines.asr.batcher import AsrBatcher

    pcm, rate = pcm_of(beckett_path())
    alone = _run_stream(asr_model, StreamConfig(encoding="LINEAR_PCM", sample_rate=rate), pcm, 2 * rate)
    chunk = 2 * int(0.16 * rate)

    async def one(batcher: AsrBatcher, delay: float) -> list[Result]:
        await asyncio.sleep(delay)
        stream = asr_model.start_stream(StreamConfig(encoding="LINEAR_PCM", sample_rate=rate, interim_results=True))
        results: list[Result] = []
        t0 = time.monotonic()
        for i in range(0, len(pcm), chunk):
            await asyncio.sleep(max(0.0, t0 + i / (2 * rate) - time.monotonic()))
            results += await batcher.feed(stream, pcm[i:i + chunk])
        return results + await batcher.finish(stream)

    async def run() -> list[list[Result]]:
        with Pools() as pools:
            batcher = AsrBatcher(*_runners(pools), lanes=lanes)
            return list(await asyncio.gather(*(one(batcher, float(d)) for d in range(3))))

    for results in asyncio.run(run()):
        assert [r.transcript for r in results if r.is_final] == alone
        assert len([r for r in results if not r.is_final]) >= 3


def test_a_session_that_ends_unfinished_leaves_no_stream_for_interims(asr_repo: Path) -> None:
    """A stream given no new audio gets no new interim of the same audio, and a client that
    vanishes mid-speech (its session ends without finish) leaves no stream in the interim lane."""
    from edged.config import Settings
    from edged.service.asr import RecognitionRequest
    from edged.service.context import ServiceContext

    pcm, rate = pcm_of(beckett_path())

    async def run() -> tuple[int, int, int]:
        with Pools() as pools:
            ctx = ServiceContext.create(Settings(model_loc=asr_repo, service_enabled_tts=False), pools)
            ctx.registry.scan()
            await ctx.registry.load_initial()
            assert ctx.asr is not None
            batcher = ctx.asr.batcher
            request = RecognitionRequest(encoding="LINEAR_PCM", sample_rate=rate, interim_results=True)
            async with ctx.asr.session(request) as session:
                chunk, t0 = 2 * int(0.16 * rate), time.monotonic()
                for i in range(0, 2 * int(1.2 * rate), chunk):  # "Ever tried." at the pace of speech
                    await asyncio.sleep(max(0.0, t0 + i / (2 * rate) - time.monotonic()))
                    await session.feed(pcm[i:i + chunk])
                (stream,) = session.streams
                assert stream.in_speech
                during = len(batcher._active)
                model = stream.model
                decoded: list[str] = []
                decode_jobs = model.decode_jobs

                def recording(jobs: list[DecodeJob]) -> None:
                    decoded.extend(j.kind for j in jobs)
                    decode_jobs(jobs)

                model.decode_jobs = recording  # type: ignore[method-assign]
                for _ in range(8):  # no audio, while other streams' cycles wake the interim lane
                    batcher._wake.set()
                    await asyncio.sleep(0.15)
                model.decode_jobs = decode_jobs  # type: ignore[method-assign]
            return during, len(batcher._active), decoded.count("interim")

    during, after, stale = asyncio.run(run())
    assert during == 1 and after == 0
    assert stale <= 1  # at most the interim of the last chunk's audio (16 before interims needed new audio)
