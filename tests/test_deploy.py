"""`edged deploy`: real archives, real files, real processes.

The bar for every fault: a clear error, and the repository as it was. `models/` then holds only
complete model folders (with deploy.yaml); dot-folders are staging and never models.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from edged.backends import BackendOptions, get_backend
from edged.errors import DeployError, RmirError, WrongKeyError
from edged.repository.deploy import DeployOutcome, clean_leftovers, deploy
from edged.repository.records import (
    DEPLOY_RECORD,
    DeployTarget,
    list_models,
    read_record,
)
from edged.rmir import RmirRef, file_sha256
from edged.rmir.build import ModelSource, build_manifest, build_rmir
from edged.rmir.manifest import MANIFEST_NAME
from tests.conftest import REPO_ROOT, make_tiny_onnx, tiny_source

OPTIONS = BackendOptions(intra_op_threads=1, inter_op_threads=1)
BIG_MB = 200


# --- helpers ------------------------------------------------------------------------------


def visible_models(models_dir: Path) -> set[str]:
    """Names of the folders the daemon would take for models (anything not starting with '.')."""
    if not models_dir.is_dir():
        return set()
    return {p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}


def leftovers(models_dir: Path) -> list[str]:
    """Staging and old folders an interrupted deploy left behind."""
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.name.startswith((".staging-", ".old-")))


def assert_repository(models_dir: Path, expected: set[str], *, staging_ok: bool = False) -> None:
    """`models_dir` holds exactly the complete models `expected` (and no leftovers unless allowed)."""
    assert visible_models(models_dir) == expected
    for name in expected:
        folder = models_dir / name
        assert (folder / MANIFEST_NAME).is_file(), f"{name} has no manifest"
        record = read_record(folder)
        assert record is not None and record.name == name, f"{name} has no deploy record"
        for net in record.networks.values():
            assert (folder / net.file).is_file(), f"{name} lacks {net.file}"
    if not staging_ok:
        assert leftovers(models_dir) == []


def deploy_tiny(ref: RmirRef | Path, models_dir: Path, target: DeployTarget, **kw: bool) -> DeployOutcome:
    """Deploy with the test's backend options."""
    ref = ref if isinstance(ref, RmirRef) else RmirRef(ref)
    return deploy(ref, models_dir, target, OPTIONS, **kw)


def source_with(
    work: Path,
    *,
    name: str = "tiny-asr",
    seed: int = 0,
    blob_bytes: int = 0,
) -> ModelSource:
    """The tiny test model, optionally with other weights and a big random artifact."""
    src = tiny_source(work, name=name)
    if seed:
        src = dataclasses.replace(src, networks={
            "encoder": make_tiny_onnx(work / "enc.onnx", seed=seed),
            "decoder": make_tiny_onnx(work / "dec.onnx", seed=seed + 1),
        })
    if blob_bytes:
        blob = work / "blob.bin"
        with open(blob, "wb") as f:
            left = blob_bytes
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
        src = dataclasses.replace(src, artifacts=(*src.artifacts, blob))
    return src


def build(out: Path, src: ModelSource, key: str | None = None) -> Path:
    """Build `src` into `out` (encrypted with `key` if given)."""
    build_rmir(src, RmirRef(out, key))
    return out


def flip_byte_in_member(rmir: Path, member: str, at: int = 10) -> None:
    """Corrupt one byte of a member's data in a plain RMIR, keeping every size the same."""
    with tarfile.open(rmir, "r:") as tar:
        info = tar.getmember(member)
        offset = info.offset_data + min(at, info.size - 1)
    with open(rmir, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m edged ARGS` as a user would, without config or key from this environment."""
    child_env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DEPLOY_KEY", "EDGED_CONFIG")}
    child_env["PYTHONPATH"] = str(REPO_ROOT)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edged", *args], cwd=cwd, env=child_env,
        capture_output=True, text=True, timeout=timeout,
    )


def wait_for_staging(models_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> str:
    """Poll until a deploy child has a staging folder in `models_dir`; return its name."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [n for n in leftovers(models_dir) if n.startswith(".staging-")] if models_dir.is_dir() else []
        if found:
            return found[0]
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the deploy finished (rc {proc.returncode}) before its staging folder was seen: {err!r}")
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    pytest.fail(f"no staging folder appeared in {models_dir} within {timeout_s} s")


def spawn_deploy(rmir: Path, models_dir: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start `python -m edged deploy RMIR MODELS` as a child process."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DEPLOY_KEY", "EDGED_CONFIG")}
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "deploy", "--threads", "1", str(rmir), str(models_dir)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def big_rmir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-asr with a 200 MB random artifact, so extracting it takes a moment."""
    work = tmp_path_factory.mktemp("big")
    return build(work / "tiny-asr.rmir", source_with(work / "src", blob_bytes=BIG_MB << 20))


# --- deploying and redeploying ------------------------------------------------------------


def test_deploy_writes_a_complete_model(tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """A deploy gives manifest, record, optimised networks and artifacts, all consistent."""
    models = tmp_path / "models"
    outcome = deploy_tiny(tiny_rmir, models, cpu_target)
    assert outcome.name == "tiny-asr" and outcome.status == "deployed"
    assert outcome.detail.startswith("onnxruntime, load ")
    assert_repository(models, {"tiny-asr"})

    folder = models / "tiny-asr"
    record = yaml.safe_load((folder / DEPLOY_RECORD).read_text(encoding="utf-8"))
    assert record == outcome.record.to_dict()
    assert record["backend"] == "onnxruntime"
    assert record["pipeline"] == "speech_recognition"
    assert record["device"] == cpu_target.device
    assert record["versions"]["onnxruntime"] == cpu_target.versions["onnxruntime"]
    assert record["versions"]["edged"]
    assert record["source"] == {"rmir": "tiny-asr.rmir", "sha256": file_sha256(tiny_rmir)}
    assert record["load"]["load_seconds"] >= 0
    assert record["load"]["memory_mb"] > 0
    assert record["load"]["networks"] == 2
    assert set(record["networks"]) == {"encoder", "decoder"}
    for net in record["networks"].values():
        assert (folder / net["file"]).stat().st_size == net["size"] > 0
    assert (folder / "vocab.txt").read_text(encoding="utf-8") == "a\nb\nc\n"
    assert yaml.safe_load((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["name"] == "tiny-asr"
    assert not (folder / ".src").exists()

    # The deployed networks run.
    session = get_backend("onnxruntime").load(folder / record["networks"]["encoder"]["file"], OPTIONS)
    out = session.run({"x": np.ones((1, 3, 4), np.float32)})
    assert out["y"].shape == (1, 3, 8)


def test_second_deploy_skips_and_force_redeploys(tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """An up-to-date deployment is skipped; --force deploys it again."""
    models = tmp_path / "models"
    first = deploy_tiny(tiny_rmir, models, cpu_target)
    again = deploy_tiny(tiny_rmir, models, cpu_target)
    assert again.status == "skipped" and again.detail == "up to date"
    assert again.record == first.record
    forced = deploy_tiny(tiny_rmir, models, cpu_target, force=True)
    assert forced.status == "deployed"
    assert_repository(models, {"tiny-asr"})


def test_changed_rmir_is_redeployed(tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """Rebuilding the same model with other weights makes the next deploy redo it."""
    models = tmp_path / "models"
    deploy_tiny(tiny_rmir, models, cpu_target)
    old_sha = file_sha256(tiny_rmir)
    build(tiny_rmir, source_with(tmp_path / "src2", seed=42))
    assert file_sha256(tiny_rmir) != old_sha
    outcome = deploy_tiny(tiny_rmir, models, cpu_target)
    assert outcome.status == "deployed"
    assert outcome.record.source_sha256 == file_sha256(tiny_rmir)
    assert read_record(models / "tiny-asr") == outcome.record
    assert_repository(models, {"tiny-asr"})


def test_record_for_another_device_is_stale_and_redeployed(
    tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget
) -> None:
    """A deployment made for another CPU shows as stale and the next deploy redoes it."""
    models = tmp_path / "models"
    deploy_tiny(tiny_rmir, models, cpu_target)
    assert [m.stale for m in list_models(models, cpu_target)] == [[]]

    record_path = models / "tiny-asr" / DEPLOY_RECORD
    record = yaml.safe_load(record_path.read_text(encoding="utf-8"))
    record["device"]["cpu_isa"] = ["asimd", "sve"]
    record_path.write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")

    (listed,) = list_models(models, cpu_target)
    assert listed.name == "tiny-asr" and listed.problem is None
    assert len(listed.stale) == 1 and "cpu_isa" in listed.stale[0]

    outcome = deploy_tiny(tiny_rmir, models, cpu_target)
    assert outcome.status == "deployed"
    assert outcome.record.device == cpu_target.device
    assert read_record(models / "tiny-asr") == outcome.record
    assert [m.stale for m in list_models(models, cpu_target)] == [[]]


def test_list_models_ignores_dot_folders_and_flags_missing_record(
    tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget
) -> None:
    """Staging folders are never listed; a folder without deploy.yaml is listed as a problem."""
    models = tmp_path / "models"
    deploy_tiny(tiny_rmir, models, cpu_target)
    (models / ".staging-other-1").mkdir()
    (models / "half").mkdir()
    (models / "half" / MANIFEST_NAME).write_bytes((models / "tiny-asr" / MANIFEST_NAME).read_bytes())
    listed = {m.name: m for m in list_models(models, cpu_target)}
    assert set(listed) == {"half", "tiny-asr"}
    assert listed["tiny-asr"].problem is None
    assert listed["half"].problem is not None and "no deploy record" in listed["half"].problem


# --- faults: a clear error and the repository as it was -------------------------------------


def test_corrupt_rmir_deploys_nothing_and_keeps_the_old_model(
    tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget
) -> None:
    """A flipped byte in a member is an RmirError; the previous deployment stays as it was."""
    models = tmp_path / "models"
    deploy_tiny(tiny_rmir, models, cpu_target)
    before = (models / "tiny-asr" / DEPLOY_RECORD).read_text(encoding="utf-8")
    files_before = sorted(p.name for p in (models / "tiny-asr").iterdir())

    corrupt = tmp_path / "corrupt" / "tiny-asr.rmir"
    corrupt.parent.mkdir()
    corrupt.write_bytes(tiny_rmir.read_bytes())
    flip_byte_in_member(corrupt, "encoder.onnx")
    with pytest.raises(RmirError, match=r"member encoder\.onnx has sha256 .*corrupt"):
        deploy_tiny(corrupt, models, cpu_target)
    assert_repository(models, {"tiny-asr"})
    assert (models / "tiny-asr" / DEPLOY_RECORD).read_text(encoding="utf-8") == before
    assert sorted(p.name for p in (models / "tiny-asr").iterdir()) == files_before

    with pytest.raises(RmirError):
        deploy_tiny(corrupt, models, cpu_target, force=True)
    assert (models / "tiny-asr" / DEPLOY_RECORD).read_text(encoding="utf-8") == before


def test_corrupt_rmir_into_empty_repository(tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """A corrupt artifact (the last member) leaves no model and no staging behind."""
    flip_byte_in_member(tiny_rmir, "vocab.txt", at=0)
    models = tmp_path / "models"
    with pytest.raises(RmirError, match=r"vocab\.txt"):
        deploy_tiny(tiny_rmir, models, cpu_target)
    assert_repository(models, set())


def test_truncated_rmir(tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """An archive cut inside a member's data is an RmirError and deploys nothing."""
    with tarfile.open(tiny_rmir, "r:") as tar:
        info = tar.getmember("encoder.onnx")
        cut = info.offset_data + info.size // 2
    tiny_rmir.write_bytes(tiny_rmir.read_bytes()[:cut])
    models = tmp_path / "models"
    with pytest.raises(RmirError):
        deploy_tiny(tiny_rmir, models, cpu_target)
    assert_repository(models, set())


def test_wrong_key_writes_nothing(tmp_path: Path, cpu_target: DeployTarget) -> None:
    """An encrypted RMIR with a wrong or missing key is a WrongKeyError; nothing is written."""
    rmir = build(tmp_path / "secret.rmir", source_with(tmp_path / "src"), key="right horse")
    models = tmp_path / "models"
    with pytest.raises(WrongKeyError, match="wrong"):
        deploy_tiny(RmirRef(rmir, "wrong horse"), models, cpu_target)
    with pytest.raises(WrongKeyError, match="encrypted"):
        deploy_tiny(RmirRef(rmir), models, cpu_target)
    assert not models.exists() or visible_models(models) == set()
    assert leftovers(models) == []

    outcome = deploy_tiny(RmirRef(rmir, "right horse"), models, cpu_target)
    assert outcome.status == "deployed"
    assert_repository(models, {"tiny-asr"})


def test_unknown_format_version(tmp_path: Path, cpu_target: DeployTarget) -> None:
    """An archive from a newer edged (format_version 99) is refused before anything is written."""
    src = source_with(tmp_path / "src")
    manifest = build_manifest(src).to_dict()
    manifest["format_version"] = 99
    members = {f"{n}.onnx": p for n, p in src.networks.items()} | {p.name: p for p in src.artifacts}
    rmir = tmp_path / "future.rmir"
    with tarfile.open(rmir, "w", format=tarfile.PAX_FORMAT) as tar:
        text = yaml.safe_dump(manifest, sort_keys=False).encode("utf-8")
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        for name, path in sorted(members.items()):
            tar.add(path, arcname=name)
    with tarfile.open(rmir) as tar:
        assert tar.getnames()[0] == MANIFEST_NAME
    models = tmp_path / "models"
    with pytest.raises(RmirError, match="format version 99.*upgrade edged"):
        deploy_tiny(rmir, models, cpu_target)
    assert not models.exists()


def test_missing_rmir(tmp_path: Path, cpu_target: DeployTarget) -> None:
    """A path that does not exist is an RmirError naming it."""
    missing = tmp_path / "nope.rmir"
    with pytest.raises(RmirError, match="nope.rmir does not exist"):
        deploy_tiny(missing, tmp_path / "models", cpu_target)
    assert not (tmp_path / "models").exists()


def test_sigkill_half_way_leaves_no_model(big_rmir: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """A deploy killed mid-extraction leaves only a dot-folder; the next deploy completes and cleans it."""
    models = tmp_path / "models"
    proc = spawn_deploy(big_rmir, models, tmp_path)
    staging = wait_for_staging(models, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert visible_models(models) == set()
    assert staging in leftovers(models)

    outcome = deploy_tiny(big_rmir, models, cpu_target)
    assert outcome.status == "deployed"
    assert_repository(models, {"tiny-asr"})
    assert (models / "tiny-asr" / "blob.bin").stat().st_size == BIG_MB << 20


def test_sigkill_during_redeploy_keeps_previous_model(
    big_rmir: Path, tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget
) -> None:
    """Killing a redeploy leaves the previous good deployment exactly as it was."""
    models = tmp_path / "models"
    deploy_tiny(tiny_rmir, models, cpu_target)
    before = (models / "tiny-asr" / DEPLOY_RECORD).read_text(encoding="utf-8")

    proc = spawn_deploy(big_rmir, models, tmp_path)  # same name, other archive: a redeploy
    wait_for_staging(models, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert visible_models(models) == {"tiny-asr"}
    assert (models / "tiny-asr" / DEPLOY_RECORD).read_text(encoding="utf-8") == before
    assert not (models / "tiny-asr" / "blob.bin").exists()
    assert_repository(models, {"tiny-asr"}, staging_ok=True)


def test_kill_between_swap_renames_restores_previous_model(
    tiny_rmir: Path, tmp_path: Path, cpu_target: DeployTarget
) -> None:
    """A deploy killed after moving the old model aside, before moving the new one in, loses nothing."""
    models = tmp_path / "models"
    deploy_tiny(tiny_rmir, models, cpu_target)
    before = (models / "tiny-asr" / DEPLOY_RECORD).read_text(encoding="utf-8")
    # The state such a kill leaves: the old model aside, a staging folder, no model in place.
    os.rename(models / "tiny-asr", models / ".old-tiny-asr-12345")
    (models / ".staging-tiny-asr-12345").mkdir()
    assert visible_models(models) == set()

    clean_leftovers(models)
    assert visible_models(models) == {"tiny-asr"}
    assert (models / "tiny-asr" / DEPLOY_RECORD).read_text(encoding="utf-8") == before
    assert not any(p.name.startswith(".") and p.is_dir() for p in models.iterdir())
    assert deploy(RmirRef(tiny_rmir), models, cpu_target, BackendOptions()).status == "skipped"


def test_concurrent_deploy_waits_then_skips(
    big_rmir: Path, tmp_path: Path, cpu_target: DeployTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A second deploy into the same folder waits for the lock, then finds the model up to date."""
    models = tmp_path / "models"
    proc = spawn_deploy(big_rmir, models, tmp_path)
    wait_for_staging(models, proc)  # the child holds the lock from before staging until the end
    with caplog.at_level(logging.INFO, logger="edged.repository.deploy"):
        outcome = deploy_tiny(big_rmir, models, cpu_target)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert b"tiny-asr: deployed" in out
    assert outcome.status == "skipped"
    assert any("Another deploy is running" in r.getMessage() for r in caplog.records)
    assert_repository(models, {"tiny-asr"})


# --- a full disk ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs, unmounted at the end whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def remount(mnt: Path, size: str) -> None:
    """Resize the test tmpfs."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True, capture_output=True)


def test_full_disk_during_extraction(small_disk: Path, tmp_path: Path, cpu_target: DeployTarget) -> None:
    """A model that does not fit is a DeployError saying the disk is full; nothing is left."""
    rmir = build(tmp_path / "tiny-asr.rmir", source_with(tmp_path / "src", blob_bytes=5 << 20))
    models = small_disk / "models"
    with pytest.raises(DeployError, match="is full.*free some space") as info:
        deploy_tiny(rmir, models, cpu_target)
    assert "tiny-asr" in str(info.value)
    assert_repository(models, set())
    assert file_sha256(rmir)  # the archive itself is untouched...

    remount(small_disk, "32M")
    assert deploy_tiny(rmir, models, cpu_target).status == "deployed"  # ...and deploys where it fits
    assert_repository(models, {"tiny-asr"})


def test_full_disk_while_optimising(
    small_disk: Path, tmp_path: Path, cpu_target: DeployTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that fills up when ONNX Runtime writes the optimised graph is also 'disk full'."""
    st = os.statvfs(small_disk)
    # Leave room for exactly the extracted members (blob + 3 small files) and manifest.yaml.
    blob = (st.f_blocks - 4) * st.f_frsize
    rmir = build(tmp_path / "tiny-asr.rmir", source_with(tmp_path / "src", blob_bytes=blob))
    models = small_disk / "models"
    with caplog.at_level(logging.INFO, logger="edged.repository.deploy"):
        with pytest.raises(DeployError, match="is full.*free some space"):
            deploy_tiny(rmir, models, cpu_target)
    assert any("Optimising tiny-asr/encoder" in r.getMessage() for r in caplog.records), (
        "the disk filled up before the optimisation step; the test's size arithmetic is off"
    )
    assert_repository(models, set())

    remount(small_disk, "32M")
    assert deploy_tiny(rmir, models, cpu_target).status == "deployed"
    assert_repository(models, {"tiny-asr"})


# --- the CLI --------------------------------------------------------------------------------


def test_cli_deploy_prints_status(tiny_rmir: Path, tmp_path: Path) -> None:
    """`edged deploy` prints the outcome; a second run says skipped."""
    models = tmp_path / "models"
    first = cli("deploy", str(tiny_rmir), str(models), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("tiny-asr: deployed (onnxruntime, load ")
    second = cli("deploy", str(tiny_rmir), str(models), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "tiny-asr: skipped (up to date)"
    forced = cli("deploy", "-f", str(tiny_rmir), str(models), cwd=tmp_path)
    assert forced.returncode == 0 and "tiny-asr: deployed" in forced.stdout
    assert_repository(models, {"tiny-asr"})


def test_cli_deploy_encrypted_with_key(tmp_path: Path) -> None:
    """`edged deploy X.rmir:KEY` decrypts; MODEL_DEPLOY_KEY stands in for a missing :KEY."""
    rmir = build(tmp_path / "secret.rmir", source_with(tmp_path / "src"), key="k3y")
    models = tmp_path / "models"
    ok = cli("deploy", f"{rmir}:k3y", str(models), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    again = cli("deploy", str(rmir), str(models), cwd=tmp_path, env={"MODEL_DEPLOY_KEY": "k3y"})
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stdout


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, no traceback, and exactly one 'edged:' line on stderr, the last one."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("edged:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for needle in needles:
        assert needle in errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("garbage", ("not an RMIR",)),
        ("flip", ("corrupt",)),
        ("missing", ("does not exist",)),
        ("wrong-key", ("key", "wrong")),
    ],
)
def test_cli_deploy_bad_rmir(tiny_rmir: Path, tmp_path: Path, damage: str, needles: tuple[str, ...]) -> None:
    """A bad archive: exit status 1, one clear 'edged:' line, no traceback, no model."""
    rmir = tmp_path / "bad" / "tiny-asr.rmir"
    rmir.parent.mkdir()
    if damage == "garbage":
        rmir.write_bytes(b"\x00not a tar at all\n" * 100)
    elif damage == "flip":
        rmir.write_bytes(tiny_rmir.read_bytes())
        flip_byte_in_member(rmir, "decoder.onnx")
    elif damage == "wrong-key":
        build(rmir, source_with(tmp_path / "src2"), key="right")
    arg = f"{rmir}:wrong" if damage == "wrong-key" else str(rmir)
    models = tmp_path / "models"
    proc = cli("deploy", arg, str(models), cwd=tmp_path)
    line = assert_one_error_line(proc, *needles)
    if damage == "garbage":
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "tiny-asr.rmir" in line
    assert proc.stdout == ""
    assert visible_models(models) == set() and leftovers(models) == []
