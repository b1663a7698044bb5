"""Riva API fidelity through riva.client against a real `edged start` (ASR, VAD and TTS).

Stock clients must behave as against Riva: finals end with a space, only the first channel is
recognised unless each channel is asked for, the RequestId comes back, results carry their
language, word boosting and the profanity filter change the text, force_eou ends an utterance,
and max_alternatives gives distinct alternatives. Speech comes from edged's own voice (in this
process, without its random noise, so the same every run) and from moonshine-cpp's beckett.wav.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import riva.client
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_common_pb2

from edged.backends import BackendOptions
from edged.client.textnorm import word_errors
from edged.pipelines.asr.audio import decode_all
from edged.pipelines.pools import Pools
from edged.pipelines.tts import SynthesisRequest, TtsModel
from edged.pipelines.tts.limits import SynthesisLimits
from edged.repository.records import DeployTarget, list_models
from tests.test_asr_server import beckett_path, pcm_of, stereo_wav
from tests.test_server import free_port, serving

RATE = 16000
LIN = riva.client.AudioEncoding.LINEAR_PCM
RARE_SENTENCE = "Please send the new report to Kubrix before the meeting on Friday."
RARE_WORD = "kubrix"
PROFANE_SENTENCE = "Well this is shit, I said."


@pytest.fixture(scope="module")
def voice(default_repo: Path, cpu_target: DeployTarget, pools: Pools) -> TtsModel:
    """edged's voice in this process without the VITS noise, so that its speech is the same every run."""
    from edged.loader import load_model

    deployed = next(m for m in list_models(default_repo / "models", cpu_target) if m.name == "piper-joe-medium")
    tts = TtsModel(load_model(deployed, BackendOptions()), pools, SynthesisLimits(max_text_chars=600))
    tts.network.config = replace(tts.network.config, noise_scale=0.0, noise_w=0.0)
    return tts


@pytest.fixture(scope="module")
def address(default_repo: Path) -> Iterator[str]:
    """`edged start` with the three default models on a loopback port."""
    tmp = default_repo.parent
    port = free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(f'model_loc="{tmp / "repo"}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   "metrics_port=0\nhttp_enabled=false\nwyoming_enabled=false\n", encoding="utf-8")
    with serving(cfg, port) as address:
        yield address


def asr(address: str) -> riva.client.ASRService:
    return riva.client.ASRService(riva.client.Auth(uri=address))


def config(**kw: object) -> riva.client.RecognitionConfig:
    base: dict[str, object] = {"language_code": "en-US", "enable_automatic_punctuation": True,
                               "max_alternatives": 1, "encoding": LIN, "sample_rate_hertz": RATE}
    base.update(kw)
    return riva.client.RecognitionConfig(**base)


def spoken(voice: TtsModel, text: str) -> bytes:
    """16 kHz 16-bit PCM of `text` in edged's voice, with a second of silence after."""
    audio = b"".join(c.pcm for c in voice.synthesize(SynthesisRequest(text, sample_rate=RATE)))
    return bytes(RATE // 4 * 2) + audio + bytes(RATE * 2)


def beckett() -> bytes:
    pcm, rate = pcm_of(beckett_path())
    assert rate == RATE
    return pcm


def text_of(response: rasr.RecognizeResponse) -> str:
    return "".join(r.alternatives[0].transcript for r in response.results)


def stream(address: str, requests: list[rasr.StreamingRecognizeRequest]) -> list[rasr.StreamingRecognizeResponse]:
    """StreamingRecognize with hand-made requests (runtime_config and id are not in riva.client's helper)."""
    with grpc.insecure_channel(address) as channel:
        return list(rasr_grpc.RivaSpeechRecognitionStub(channel).StreamingRecognize(iter(requests), timeout=60))


def chunked(first: rasr.StreamingRecognitionConfig, pcm: bytes, size: int = 3200) -> list[rasr.StreamingRecognizeRequest]:
    return [rasr.StreamingRecognizeRequest(streaming_config=first),
            *(rasr.StreamingRecognizeRequest(audio_content=pcm[i:i + size]) for i in range(0, len(pcm), size))]


def test_finals_end_with_a_space_as_rivas_do(address: str) -> None:
    """transcribe_file_offline.py concatenates the results: words must not run together."""
    response = asr(address).offline_recognize(beckett(), config())
    assert len(response.results) >= 3
    assert all(r.alternatives[0].transcript.endswith(" ") for r in response.results)
    text = text_of(response)
    assert "tried. Ever" in text or "tried, ever" in text.lower(), text
    assert ".E" not in text and ".N" not in text
    sc = riva.client.StreamingRecognitionConfig(config=config(), interim_results=True)
    results = [r for resp in asr(address).streaming_response_generator(
        [beckett()[i:i + 3200] for i in range(0, len(beckett()), 3200)], sc) for r in resp.results]
    finals = [r for r in results if r.is_final]
    assert finals and all(r.alternatives[0].transcript.endswith(" ") for r in finals)
    assert all(not r.alternatives[0].transcript.endswith(" ") for r in results if not r.is_final)


def test_only_the_first_channel_unless_each_is_asked_for(address: str, voice: TtsModel) -> None:
    """Riva recognises channel 1 of multi-channel audio; with separate recognition every channel,
    each result tagged with its channel."""
    fox = spoken(voice, "The quick brown fox jumps over the lazy dog.")
    wav = stereo_wav(beckett(), fox, RATE)
    plain = asr(address).offline_recognize(wav, config(encoding=None, sample_rate_hertz=None))
    assert {r.channel_tag for r in plain.results} == {1}
    assert "tried" in text_of(plain).lower() and "fox" not in text_of(plain).lower()
    both = asr(address).offline_recognize(wav, config(
        encoding=None, sample_rate_hertz=None, enable_separate_recognition_per_channel=True))
    by_channel = {tag: "".join(r.alternatives[0].transcript for r in both.results if r.channel_tag == tag)
                  for tag in {r.channel_tag for r in both.results}}
    assert set(by_channel) == {1, 2}
    assert "tried" in by_channel[1].lower() and "fox" not in by_channel[1].lower()
    assert "fox" in by_channel[2].lower() and "tried" not in by_channel[2].lower()
    sc = rasr.StreamingRecognitionConfig(config=config(
        encoding=None, sample_rate_hertz=None, enable_separate_recognition_per_channel=True))
    finals = [r for resp in stream(address, chunked(sc, wav, 6400)) for r in resp.results if r.is_final]
    assert "fox" in "".join(r.alternatives[0].transcript for r in finals if r.channel_tag == 2).lower()
    assert "tried" in "".join(r.alternatives[0].transcript for r in finals if r.channel_tag == 1).lower()


def test_request_id_and_language_code_come_back(address: str) -> None:
    """The RequestId is echoed (offline and in every streaming response); alternatives name their language."""
    rid = riva_common_pb2.RequestId(value="req-42")
    with grpc.insecure_channel(address) as channel:
        response = rasr_grpc.RivaSpeechRecognitionStub(channel).Recognize(
            rasr.RecognizeRequest(config=config(), audio=beckett(), id=rid), timeout=60)
    assert response.id.value == "req-42"
    assert all(list(r.alternatives[0].language_code) == ["en-US"] for r in response.results)
    requests = chunked(rasr.StreamingRecognitionConfig(config=config(), interim_results=True), beckett())
    requests[0].id.CopyFrom(rid)
    responses = stream(address, requests)
    assert responses and all(r.id.value == "req-42" for r in responses)
    assert all(list(r.results[0].alternatives[0].language_code) == ["en-US"] for r in responses)


def test_word_boosting_recognises_a_rare_word_only_when_boosted(address: str, voice: TtsModel) -> None:
    """speech_contexts bias the decoder toward their phrases (shallow fusion)."""
    pcm = spoken(voice, RARE_SENTENCE)
    plain = text_of(asr(address).offline_recognize(pcm, config()))
    assert RARE_WORD not in plain.lower(), plain
    boosted_config = config()
    riva.client.add_word_boosting_to_config(boosted_config, ["Kubrix"], 20.0)
    boosted = text_of(asr(address).offline_recognize(pcm, boosted_config))
    assert RARE_WORD in boosted.lower(), boosted
    other_config = config()
    riva.client.add_word_boosting_to_config(other_config, ["photosynthesis"], 20.0)
    assert text_of(asr(address).offline_recognize(pcm, other_config)) == plain
    sc = rasr.StreamingRecognitionConfig(config=boosted_config)
    finals = [r for resp in stream(address, chunked(sc, pcm)) for r in resp.results if r.is_final]
    assert RARE_WORD in "".join(r.alternatives[0].transcript for r in finals).lower()


def test_profanity_filter_masks_as_riva_does(address: str, voice: TtsModel) -> None:
    """First letter kept, the rest asterisks; nothing masked without the filter."""
    pcm = spoken(voice, PROFANE_SENTENCE)
    plain = text_of(asr(address).offline_recognize(pcm, config()))
    assert "shit" in plain.lower(), plain
    masked = text_of(asr(address).offline_recognize(pcm, config(profanity_filter=True)))
    assert "shit" not in masked.lower() and "s***" in masked.lower(), masked
    assert masked.lower().replace("s***", "shit") == plain.lower()


def test_force_eou_ends_the_utterance_at_once(address: str) -> None:
    """runtime_config force_eou on a request: a final for the speech so far, right there."""
    pcm = beckett()
    cut = int(1.0 * RATE) * 2  # inside "Ever tried" / "ever failed"
    sc = rasr.StreamingRecognitionConfig(config=config())
    requests = chunked(sc, pcm[:cut])
    requests[-1].runtime_config["force_eou"] = "true"
    requests += chunked(sc, pcm[cut:])[1:]
    forced = [r for resp in stream(address, requests) for r in resp.results if r.is_final]
    normal = [r for resp in stream(address, chunked(sc, pcm)) for r in resp.results if r.is_final]
    assert forced[0].audio_processed == pytest.approx(cut / 2 / RATE, abs=0.25)
    assert not any(abs(r.audio_processed - cut / 2 / RATE) < 0.25 for r in normal)
    assert forced[0].alternatives[0].transcript.strip()
    assert "better" in "".join(r.alternatives[0].transcript for r in forced).lower()


def test_max_alternatives_gives_distinct_alternatives_best_first(address: str, voice: TtsModel) -> None:
    """Up to N distinct transcripts per final from a small beam; the first as with one."""
    pcm = spoken(voice, RARE_SENTENCE)
    one = asr(address).offline_recognize(pcm, config())
    three = asr(address).offline_recognize(pcm, config(max_alternatives=3))
    assert [len(r.alternatives) for r in one.results] == [1] * len(one.results)
    assert any(len(r.alternatives) > 1 for r in three.results)
    for result in three.results:
        texts = [a.transcript for a in result.alternatives]
        assert len(texts) <= 3 and len(set(texts)) == len(texts)
    errors, _ = word_errors(text_of(one), text_of(three))
    assert errors <= 1, (text_of(one), text_of(three))  # the beam's best is greedy's, or nearly


def test_decoded_channel_of_a_stereo_wav_is_the_first() -> None:
    """The pipeline reads channel 0 of a WAV, not a downmix (what the server relies on)."""
    wav = stereo_wav(beckett(), bytes(len(beckett())), RATE)
    samples = decode_all(wav, "", 0)
    reference = np.frombuffer(beckett(), dtype="<i2").astype(np.float32) / 32768.0
    assert np.abs(samples[:len(reference)] - reference).max() < 1e-3
