"""Reading and writing RMIR files: a tar whose first member is manifest.yaml, optionally encrypted.

Archives are read as a stream, one pass, so an encrypted archive is never decrypted to disk
as a whole and a truncated one fails where its data ends. Every member's sha256 is checked
against the manifest; unknown, missing or altered members are errors.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from edged.errors import RmirError
from edged.rmir.crypto import DecryptingReader, encrypt_stream, is_encrypted
from edged.rmir.manifest import MANIFEST_NAME, Manifest, manifest_from_yaml

_KEY_RE = re.compile(r"^(.+\.rmir):(.*)$", re.DOTALL)
_BLOCK = 1 << 20

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class RmirRef:
    """An RMIR path plus the key after ':' (None for a plain archive)."""

    path: Path
    key: str | None = None

    def __str__(self) -> str:
        return str(self.path)


def parse_rmir_ref(spec: str, default_key: str | None = None) -> RmirRef:
    """Split `path.rmir[:KEY]`; without `:KEY` the default key (MODEL_DEPLOY_KEY) applies."""
    m = _KEY_RE.match(spec)
    if m:
        if not m.group(2):
            raise RmirError(f"{spec!r} ends with ':' but gives no key; write {m.group(1)}:KEY.")
        return RmirRef(Path(m.group(1)), m.group(2))
    return RmirRef(Path(spec), default_key or None)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def write_rmir(
    out: RmirRef, manifest: Manifest, files: dict[str, Path], progress: Progress | None = None
) -> None:
    """Write an RMIR holding `manifest` and the given member files, atomically replacing `out`."""
    if set(files) != set(manifest.members()):
        raise RmirError("Internal error: the files given do not match the manifest's members.")
    out.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.path.name}.", suffix=".tmp", dir=out.path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            if out.key:
                with tempfile.TemporaryFile(dir=out.path.parent) as plain:
                    _write_tar(plain, manifest, files, progress)
                    plain.seek(0)
                    encrypt_stream(plain, raw, out.key)
            else:
                _write_tar(raw, manifest, files, progress)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an archive is meant to be copied around
        os.replace(tmp, out.path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_tar(
    dst: BinaryIO, manifest: Manifest, files: dict[str, Path], progress: Progress | None
) -> None:
    total = sum(size for _, size in manifest.members().values())
    done = 0
    with tarfile.open(fileobj=dst, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        text = manifest.to_yaml().encode("utf-8")
        tar.addfile(_tarinfo(MANIFEST_NAME, len(text)), io.BytesIO(text))
        for name in sorted(files):
            with open(files[name], "rb") as f:
                tar.addfile(_tarinfo(name, os.fstat(f.fileno()).st_size), f)
            done += manifest.members()[name][1]
            if progress:
                progress(done, total)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata so the same inputs always give the same archive bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


class _HashingReader(io.RawIOBase):
    """Passes reads through while hashing the raw file bytes (the RMIR's own sha256)."""

    def __init__(self, f: io.BufferedIOBase) -> None:
        super().__init__()
        self._f, self.sha = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]  # io passes these; typeshed: any buffer
        n = self._f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
        return n or 0


@contextmanager
def _open_tar(ref: RmirRef) -> Iterator[tuple[tarfile.TarFile, BinaryIO, _HashingReader]]:
    """The archive as a tar stream, its plaintext stream, and the raw file's hashing reader."""
    where = str(ref.path)
    try:
        f = open(ref.path, "rb")  # noqa: SIM115 - outside `with` so only open's errors are mapped; `with f` follows
    except FileNotFoundError:
        raise RmirError(f"{where} does not exist; check the path.") from None
    except OSError as exc:
        raise RmirError(f"{where} cannot be read: {exc.strerror}.") from None
    with f:
        head = f.read(len(b"EDGED-RMIR-AEAD1"))
        f.seek(0)
        hashing = _HashingReader(f)
        stream: BinaryIO = io.BufferedReader(hashing, _BLOCK)
        if is_encrypted(head):
            stream = io.BufferedReader(DecryptingReader(stream, ref.key, where), _BLOCK)
        elif not head:
            raise RmirError(f"{where} is empty; it is not an RMIR.")
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                yield tar, stream, hashing
        # TarError, not only ReadError: Python 3.10 reads a file of zeros as a stream that must
        # seek backwards (StreamError), 3.11 and later as a ReadError.
        except (tarfile.TarError, EOFError) as exc:
            raise RmirError(
                f"{where} is truncated or is not an RMIR archive ({exc}); copy or fetch it again."
            ) from None


def _first_manifest(tar: tarfile.TarFile, where: str) -> Manifest:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isfile():
        raise RmirError(f"{where} does not start with {MANIFEST_NAME}; it is not an RMIR.")
    f = tar.extractfile(first)
    assert f is not None
    return manifest_from_yaml(f.read(), f"{where}: {MANIFEST_NAME}")


def read_manifest(ref: RmirRef) -> Manifest:
    """Read only the manifest (the first member); cheap even for large archives."""
    with _open_tar(ref) as (tar, _, _):
        return _first_manifest(tar, str(ref.path))


@dataclass(frozen=True)
class ExtractResult:
    """What a full pass over an archive found: its manifest and its own sha256."""

    manifest: Manifest
    sha256: str


def extract_rmir(
    ref: RmirRef, dest: Path | None, progress: Progress | None = None
) -> ExtractResult:
    """Check every member of an archive and, if `dest` is given, write them into it.

    With `dest=None` this is `edged verify`. On any error the files written so far stay in
    `dest` for the caller to discard (deploy writes into a staging folder).
    """
    where = str(ref.path)
    with _open_tar(ref) as (tar, plaintext, hashing):
        manifest = _first_manifest(tar, where)
        expected = manifest.members()
        total = sum(size for _, size in expected.values())
        done = 0
        seen: set[str] = set()
        while (info := tar.next()) is not None:
            if info.name not in expected or info.name in seen or not info.isfile():
                raise RmirError(f"{where} holds an unexpected member {info.name!r}; it was altered.")
            seen.add(info.name)
            sha, size = expected[info.name]
            if info.size != size:
                raise RmirError(
                    f"{where}: member {info.name} has {info.size} bytes, the manifest says {size}; "
                    "the archive is corrupt."
                )
            src = tar.extractfile(info)
            assert src is not None
            actual = _copy_hashed(src, dest / info.name if dest else None)
            if actual != sha:
                raise RmirError(
                    f"{where}: member {info.name} has sha256 {actual[:12]}..., the manifest says "
                    f"{sha[:12]}...; the archive is corrupt or was altered."
                )
            done += size
            if progress:
                progress(done, total)
        missing = sorted(set(expected) - seen)
        if missing:
            raise RmirError(
                f"{where} lacks {', '.join(missing)}; it is truncated or incomplete, copy it again."
            )
        # tarfile stops at the first end-of-archive block, so the rest of the plaintext (tar
        # padding) may still be unread: read it, so every encrypted chunk is authenticated,
        # including a last one holding only padding, and a cut or altered end is detected.
        while plaintext.read(_BLOCK):
            pass
        # Read to the true end so the file hash covers every byte (and trailing junk is seen).
        while hashing.read(_BLOCK):
            pass
    return ExtractResult(manifest, hashing.sha.hexdigest())


def _copy_hashed(src: IO[bytes], dst_path: Path | None) -> str:
    h = hashlib.sha256()
    dst = open(dst_path, "wb") if dst_path else None  # noqa: SIM115 - optional, so closed in finally
    try:
        while block := src.read(_BLOCK):
            h.update(block)
            if dst:
                dst.write(block)
        if dst:
            dst.flush()
            os.fsync(dst.fileno())
    finally:
        if dst:
            dst.close()
    return h.hexdigest()
