"""Diarization: clustering, cutting and labelling (pure logic), the bench's EER, and Riva's
`Recognize` with `diarization_config` through riva.client on a simulated conversation."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import subprocess
import sys
import wave
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import openai
import pytest
import riva.client
from openai.types.audio import TranscriptionDiarized, TranscriptionDiarizedSegment
from riva.client.proto import riva_asr_pb2 as rasr

from edged.backends import BackendOptions
from edged.client.speakerbench import equal_error_rate, pair_scores
from edged.pipelines.speaker.clustering import cluster_speakers
from edged.pipelines.speaker.diarize import DiarizeOptions, SpeakerTurn, pieces, speaker_at
from edged.pipelines.speaker.encoder import SpeakerEncoder, unit
from edged.pipelines.speaker.online import OnlineSpeakers
from edged.pipelines.tts import TtsModel
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from tests.test_riva_fidelity import RATE, config, spoken, voice  # noqa: F401 - voice is a fixture
from tests.test_server import free_port, serving
from tests.test_speaker_encoder import espeak_voice


def voices(groups: list[int], dim: int = 16, spread: float = 0.1, seed: int = 0) -> np.ndarray:
    """Unit vectors: one random direction per group, each row its group's plus a little noise."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(groups) + 1, dim)))
    return unit(centres[groups] + spread * rng.standard_normal((len(groups), dim)))


def test_clusters_follow_the_voices_numbered_by_first_appearance() -> None:
    groups = [2, 2, 0, 1, 0, 2, 1]
    labels = cluster_speakers(voices(groups), np.ones(len(groups)), threshold=0.6)
    assert labels.tolist() == [0, 0, 1, 2, 1, 0, 2]


def test_max_speakers_caps_the_clusters() -> None:
    groups = [0, 1, 2, 3, 0, 1, 2, 3]
    embeddings = voices(groups)
    assert len(set(cluster_speakers(embeddings, np.ones(8), 0.6).tolist())) == 4
    capped = cluster_speakers(embeddings, np.ones(8), 0.6, max_speakers=2)
    assert len(set(capped.tolist())) == 2
    # Utterances of one voice stay together when voices are merged.
    assert all(capped[i] == capped[i + 4] for i in range(4))


def test_threshold_one_keeps_everyone_apart_and_nothing_clusters_to_nothing() -> None:
    embeddings = voices([0, 1, 2], spread=0.3)
    assert cluster_speakers(embeddings, np.ones(3), 1.01).tolist() == [0, 1, 2]
    assert cluster_speakers(np.zeros((0, 16)), np.zeros(0), 0.6).tolist() == []


def test_long_utterances_are_cut_into_pieces() -> None:
    options = DiarizeOptions(piece_s=3.0, max_piece_s=4.5)
    cut = pieces([(0.0, 4.0), (5.0, 14.0)], options)
    assert cut[0] == (0.0, 4.0)
    assert len(cut) == 4 and cut[1][0] == 5.0 and cut[-1][1] == 14.0
    assert all(abs((b - a) - 3.0) < 1e-9 for a, b in cut[1:])


def test_a_word_takes_the_turn_it_overlaps_most() -> None:
    turns = [SpeakerTurn(0.0, 2.0, 1), SpeakerTurn(2.0, 4.0, 2)]
    assert speaker_at(turns, 1.5, 2.2) == 1
    assert speaker_at(turns, 1.9, 3.0) == 2
    assert speaker_at(turns, 5.0, 5.5) == 2  # after every turn: the nearest
    assert speaker_at([], 0.0, 1.0) == 0


def test_equal_error_rate() -> None:
    rng = np.random.default_rng(0)
    assert equal_error_rate(rng.uniform(0.6, 1.0, 50), rng.uniform(0.0, 0.5, 80))[0] == 0.0
    same, different = rng.normal(0.7, 0.1, 4000), rng.normal(0.5, 0.1, 4000)
    eer, threshold = equal_error_rate(same, different)
    assert abs(threshold - 0.6) < 0.02
    assert abs(eer - 0.1587) < 0.02  # both tails one sigma beyond the middle
    embeddings = voices([0, 0, 1])
    s, d = pair_scores(embeddings, ["a", "a", "b"])
    assert len(s) == 1 and len(d) == 2


# --- through riva.client ------------------------------------------------------------------------

SENTENCES = [
    "Good morning, I wanted to talk about the schedule for the next release of the project.",
    "Sure, I think we can ship it on Thursday if the tests pass tonight.",
    "That works for me, but the documentation still needs a careful review first.",
    "I can review the documentation tomorrow morning before lunch.",
    "Great, then let us meet again on Wednesday to decide.",
]


@pytest.fixture(scope="module")
def server(default_repo: Path, speaker_rmir: Path, cpu_target: DeployTarget) -> Iterator[tuple[str, int]]:
    """`edged start` with the default models and the speaker encoder: (gRPC address, HTTP port)."""
    deploy(RmirRef(speaker_rmir), default_repo / "models", cpu_target, BackendOptions())
    port, http = free_port(), free_port()
    cfg = default_repo.parent / "config.sh"
    cfg.write_text(f'model_loc="{default_repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nhttp_port={http}\nwyoming_enabled=false\n", encoding="utf-8")
    with serving(cfg, port) as address:
        yield address, http


@pytest.fixture(scope="module")
def address(server: tuple[str, int]) -> str:
    return server[0]


@pytest.fixture(scope="module")
def openai_client(server: tuple[str, int]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server[1]}/v1", api_key="unused", max_retries=0)


SPEAKERS = [0, 1, 2, 0, 1]
"""Who says each of SENTENCES: edged's voice (0) and two espeak-ng voices."""


def conversation(voice: TtsModel) -> tuple[bytes, list[float]]:  # noqa: F811 - the fixture's value
    """SENTENCES said in turn by SPEAKERS, a pause of 1 to 1.5 s after each: the 16-bit PCM and
    the second each turn starts at."""
    rng = np.random.default_rng(1)
    parts, starts, at = [], [], 0
    for who, sentence in zip(SPEAKERS, SENTENCES):
        if who == 0:
            audio = np.frombuffer(spoken(voice, sentence), dtype="<i2").astype(np.float32) / 32768
        else:
            audio = espeak_voice(sentence, ("en-us", "en+f3")[who - 1])
        pause = np.zeros(int(rng.uniform(1.0, 1.5) * RATE), np.float32)
        starts.append(at / RATE)
        parts += [audio, pause]
        at += len(audio) + len(pause)
    pcm = (np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2").tobytes()
    return pcm, starts


@pytest.fixture(scope="module")
def talk(voice: TtsModel) -> tuple[bytes, list[float]]:  # noqa: F811 - the fixture's value
    """The conversation (made once per module)."""
    return conversation(voice)


def assert_tags_follow_the_turns(words: list[rasr.WordInfo], starts: list[float]) -> None:
    """Each turn's words carry one speaker_tag, a different one per voice, the same when a voice
    comes back."""
    assert len(words) > 40, words
    tags_by_turn: list[Counter[int]] = [Counter() for _ in SPEAKERS]
    for w in words:
        middle = (w.start_time + w.end_time) / 2000
        tags_by_turn[max(i for i, s in enumerate(starts) if s <= middle)][w.speaker_tag] += 1
    tag_of_turn = [c.most_common(1)[0][0] for c in tags_by_turn]
    agreeing = sum(c[t] for c, t in zip(tags_by_turn, tag_of_turn)) / len(words)
    assert agreeing >= 0.9, tags_by_turn
    assert 0 not in tag_of_turn
    by_speaker = {s: {t for s2, t in zip(SPEAKERS, tag_of_turn) if s2 == s} for s in set(SPEAKERS)}
    assert all(len(tags) == 1 for tags in by_speaker.values()), by_speaker
    assert len({next(iter(tags)) for tags in by_speaker.values()}) == 3, by_speaker


def test_recognize_tags_words_with_their_speakers(address: str, talk: tuple[bytes, list[float]]) -> None:
    """Each turn's words carry one speaker_tag, a different one per voice, the same when a voice
    comes back; max_speaker_count=1 puts everyone together."""
    pcm, starts = talk
    asr = riva.client.ASRService(riva.client.Auth(uri=address))
    cfg = config()
    riva.client.add_speaker_diarization_to_config(cfg, True, 3)
    response = asr.offline_recognize(pcm, cfg)
    assert_tags_follow_the_turns([w for r in response.results for w in r.alternatives[0].words], starts)

    one = config()
    riva.client.add_speaker_diarization_to_config(one, True, 1)
    together = asr.offline_recognize(pcm, one)
    assert {w.speaker_tag for r in together.results for w in r.alternatives[0].words} == {1}


def streamed_finals(address: str, pcm: bytes, max_speakers: int) -> list[rasr.StreamingRecognitionResult]:
    """The finals of `pcm` streamed in 100 ms chunks with diarization on."""
    asr = riva.client.ASRService(riva.client.Auth(uri=address))
    cfg = config()
    riva.client.add_speaker_diarization_to_config(cfg, True, max_speakers)
    streaming = riva.client.StreamingRecognitionConfig(config=cfg, interim_results=True)
    chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
    return [r for response in asr.streaming_response_generator(chunks, streaming)
            for r in response.results if r.is_final]


def test_streaming_labels_each_final_as_it_comes(address: str, talk: tuple[bytes, list[float]]) -> None:
    """StreamingRecognize with diarization_config: every final's words carry the speaker of their
    turn (online clustering, labels never revised); max_speaker_count=1 puts everyone together."""
    pcm, starts = talk
    finals = streamed_finals(address, pcm, 3)
    assert_tags_follow_the_turns([w for r in finals for w in r.alternatives[0].words], starts)
    together = streamed_finals(address, pcm, 1)
    assert {w.speaker_tag for r in together for w in r.alternatives[0].words} == {1}


def wav_of(pcm: bytes) -> bytes:
    """16 kHz mono 16-bit PCM as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return out.getvalue()


def labels_by_voice(segments: list[TranscriptionDiarizedSegment], starts: list[float]) -> dict[int, set[str]]:
    """The speaker labels diarized_json gave each voice of the conversation (by the turn each
    segment's middle falls in)."""
    by_voice: dict[int, set[str]] = {}
    for seg in segments:
        turn = max(i for i, s in enumerate(starts) if s <= (seg.start + seg.end) / 2)
        by_voice.setdefault(SPEAKERS[turn], set()).add(seg.speaker)
    return by_voice


def test_openai_diarized_json_and_verbose_json_name_the_speakers(openai_client: openai.OpenAI,
                                                                 talk: tuple[bytes, list[float]]) -> None:
    """diarized_json as gpt-4o-transcribe-diarize gives it (segments with speaker A, B, ...), and
    verbose_json's segments with `speaker`, through the openai package."""
    pcm, starts = talk
    wav = wav_of(pcm)
    diarized = openai_client.audio.transcriptions.create(model="gpt-4o-transcribe-diarize", file=("c.wav", wav),
                                                         response_format="diarized_json")
    assert isinstance(diarized, TranscriptionDiarized), type(diarized)
    assert diarized.task == "transcribe" and 20 < diarized.duration < 60 and "Thursday" in diarized.text
    segs = diarized.segments
    assert len(segs) >= len(SPEAKERS) and all(s.type == "transcript.text.segment" and s.end > s.start for s in segs)
    turn_speaker = labels_by_voice(segs, starts)
    assert all(len(labels) == 1 for labels in turn_speaker.values()), turn_speaker
    assert sorted(next(iter(v)) for v in turn_speaker.values()) == ["A", "B", "C"]
    verbose = openai_client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav),
                                                        response_format="verbose_json")
    assert [s.model_extra["speaker"] for s in verbose.segments or []] == [s.speaker for s in segs]


def test_transcribe_json_shows_the_speakers(address: str, talk: tuple[bytes, list[float]], tmp_path: Path) -> None:
    pcm, starts = talk
    (tmp_path / "c.wav").write_bytes(wav_of(pcm))
    proc = subprocess.run([sys.executable, "-m", "edged", "transcribe", "--server", address, "--json", "--speakers",
                           str(tmp_path / "c.wav")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)[0]["results"]
    by_voice: dict[int, set[int]] = {}
    for r in results:
        middle = (r["words"][0]["start_ms"] + r["words"][-1]["end_ms"]) / 2000
        by_voice.setdefault(SPEAKERS[max(i for i, s in enumerate(starts) if s <= middle)], set()).add(r["speaker"])
    assert sorted(next(iter(v)) for v in by_voice.values() if len(v) == 1) == [1, 2, 3], by_voice
    assert all("speaker" in w for r in results for w in r["words"])


def test_without_diarization_words_carry_no_speaker(address: str, talk: tuple[bytes, list[float]]) -> None:
    pcm, _ = talk
    asr = riva.client.ASRService(riva.client.Auth(uri=address))
    response = asr.offline_recognize(pcm, config(enable_word_time_offsets=True))
    assert {w.speaker_tag for r in response.results for w in r.alternatives[0].words} == {0}


def test_negative_max_speaker_count_is_refused(address: str) -> None:
    asr = riva.client.ASRService(riva.client.Auth(uri=address))
    cfg = config()
    riva.client.add_speaker_diarization_to_config(cfg, True, -1)
    with pytest.raises(grpc.RpcError) as caught:
        asr.offline_recognize(bytes(RATE * 2), cfg)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_speaker_count" in str(caught.value.details())


def test_speaker_bench_on_espeak_voices(speaker_encoder: SpeakerEncoder) -> None:
    """`edged bench speakers`' figures on espeak-ng's six voices: pairs of every kind, an EER
    well under chance, a DER where pyannote.metrics is installed, a CPU cost."""
    from edged.client.speakerbench import bench_speakers, espeak_utterances

    utterances = espeak_utterances()
    figures = bench_speakers(speaker_encoder, utterances, conversations=2)
    count = len(utterances)
    assert figures.same_pairs + figures.different_pairs == count * (count - 1) // 2
    assert figures.speakers == 6 and figures.eer < 0.25
    assert figures.cpu_per_audio_s > 0
    if importlib.util.find_spec("pyannote") is not None:
        assert figures.der is not None and 0.0 <= figures.der < 0.5
        assert figures.conversations == 2
    assert "EER" in figures.text()


def test_bench_without_a_speaker_model_says_what_to_do(tmp_path: Path) -> None:
    """`edged bench speakers` where none is deployed: exit 1, one line naming models_speaker."""
    (tmp_path / "config.sh").write_text(f'model_loc="{tmp_path / "repo"}"\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "edged", "bench", "speakers", "-c", str(tmp_path / "config.sh"),
                           "--no-espeak"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "models_speaker" in proc.stderr and "Traceback" not in proc.stderr


def test_online_speakers_label_as_they_go_and_keep_to_the_cap() -> None:
    groups = [0, 1, 0, 2, 1, 2]
    embeddings = voices(groups, seed=3)
    online = OnlineSpeakers(threshold=0.6)
    assert [online.assign(e, 3.0).number for e in embeddings] == [1, 2, 1, 3, 2, 3]
    capped = OnlineSpeakers(threshold=0.6, max_speakers=2)
    labels = [capped.assign(e, 3.0).number for e in embeddings]
    assert labels[:3] == [1, 2, 1] and set(labels) == {1, 2}
    # A short utterance of a new voice joins the nearest speaker instead of starting one.
    short = OnlineSpeakers(threshold=0.6, min_new_s=1.0)
    assert [short.assign(e, s).number for e, s in zip(embeddings[:4], [3.0, 0.5, 3.0, 3.0])] == [1, 1, 1, 2]


def test_enrolled_speakers_are_named_once_heard() -> None:
    embeddings = voices([0, 1, 0, 2], seed=4)
    online = OnlineSpeakers(threshold=0.6, known_threshold=0.55)
    online.enrol("ada", embeddings[1])
    labels = [online.assign(e, 3.0) for e in embeddings]
    assert [(label.number, label.name) for label in labels] == [(1, ""), (2, "ada"), (1, ""), (3, "")]
    assert [label.text() for label in labels] == ["A", "ada", "A", "C"]


def test_streamed_embedding_is_built_window_by_window(speaker_encoder: SpeakerEncoder) -> None:
    """An utterance handed over as it grows reuses the windows embedded before, and comes out as the whole
    utterance's embedding (the final's audio may stop short of what was handed over). Not to the
    last bit: the int8 encoder quantizes its activations over the whole batch it is given."""
    from concurrent.futures import ThreadPoolExecutor

    from edged.pipelines.speaker.streaming import StreamSpeakers

    audio = espeak_voice(SENTENCES[0], "en-us")
    with ThreadPoolExecutor(1) as pool:
        speakers = StreamSpeakers(speaker_encoder, pool, OnlineSpeakers(0.6))
        for end in range(4000, len(audio), 8000):
            grown = speakers.embed_utterance(7, audio[:end])
            assert float(grown @ speaker_encoder.embed(audio[:end])) > 0.999
        whole = speakers.embed_utterance(7, audio)
        shorter = speakers.embed_utterance(7, audio[:len(audio) // 2])
    assert float(whole @ speaker_encoder.embed(audio)) > 0.999
    assert float(shorter @ speaker_encoder.embed(audio[:len(audio) // 2])) > 0.999


def edged_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_enrolled_speaker_is_named_in_labels(openai_client: openai.OpenAI, default_repo: Path,
                                             talk: tuple[bytes, list[float]], tmp_path: Path) -> None:
    """`edged speakers enroll` with clips of one voice (none of the conversation's sentences), through
    the running server, which names that voice's segments; list shows it; remove forgets it, and an unknown
    name is one line and exit 1."""
    cfg = str(default_repo.parent / "config.sh")
    clips = []
    for i, text in enumerate(["Yesterday the weather was cold and windy, so we stayed inside and read books.",
                              "My favourite colour is green, like the leaves of the old oak in the garden."]):
        clips.append(tmp_path / f"ada{i}.wav")
        audio = (np.clip(espeak_voice(text, "en+f3"), -1, 1) * 32767).astype("<i2").tobytes()
        clips[-1].write_bytes(wav_of(audio))
    enrolled = edged_cli("speakers", "enroll", "ada", *map(str, clips), "-c", cfg, cwd=tmp_path)
    assert enrolled.returncode == 0 and "Enrolled ada" in enrolled.stdout, enrolled.stderr
    assert "running daemon" in enrolled.stdout  # through its edged.v1 EnrollSpeaker
    try:
        listed = edged_cli("speakers", "list", "-c", cfg, cwd=tmp_path)
        assert "ada" in listed.stdout and "voicefilter-dvector" in listed.stdout
        assert "embedding" not in listed.stdout + enrolled.stdout + enrolled.stderr
        pcm, starts = talk
        diarized = openai_client.audio.transcriptions.create(model="gpt-4o-transcribe-diarize",
                                                             file=("c.wav", wav_of(pcm)), response_format="diarized_json")
        by_voice = labels_by_voice(diarized.segments, starts)
        assert by_voice[2] == {"ada"} and "ada" not in by_voice[0] | by_voice[1], by_voice
    finally:
        removed = edged_cli("speakers", "remove", "ada", "-c", cfg, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    again = edged_cli("speakers", "remove", "ada", "-c", cfg, cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.strip().count("\n") == 0 and "No speaker 'ada'" in again.stderr


def test_openai_known_speaker_references_name_their_voices(openai_client: openai.OpenAI,
                                                           talk: tuple[bytes, list[float]]) -> None:
    """known_speaker_names[] with known_speaker_references[] (data URLs) name those voices in
    diarized_json; references that do not pair up or are not data URLs are a 400 with one line."""
    text = "Yesterday the weather was cold and windy, so we stayed inside and read some books."
    reference = (np.clip(espeak_voice(text, "en-us"), -1, 1) * 32767).astype("<i2").tobytes()
    url = "data:audio/wav;base64," + base64.b64encode(wav_of(reference)).decode()
    pcm, starts = talk
    diarized = openai_client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("c.wav", wav_of(pcm)), response_format="diarized_json",
        known_speaker_names=["bob"], known_speaker_references=[url])
    by_voice = labels_by_voice(diarized.segments, starts)
    assert by_voice[1] == {"bob"} and "bob" not in by_voice[0] | by_voice[2], by_voice
    short = wav_of(pcm[:RATE * 2])
    for names, refs, says in ((["bob", "ann"], [url], "one reference per name"),
                              (["bob"], ["https://example.com/bob.wav"], "not a base64 data URL")):
        with pytest.raises(openai.BadRequestError) as caught:
            openai_client.audio.transcriptions.create(
                model="gpt-4o-transcribe-diarize", file=("s.wav", short), response_format="diarized_json",
                known_speaker_names=names, known_speaker_references=refs)
        assert says in str(caught.value)
