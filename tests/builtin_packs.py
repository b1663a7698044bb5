"""Opt-in built-in models from their PyPI packs, for the tests of those packs: skipped with the
extra to install where a pack is missing, else built and deployed into one repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from edged.rmir.build import ModelSource, build_rmir


def skip_without(packs: tuple[str, ...], extra: str) -> None:
    """Skip the test (with the pip command) unless every pack module is importable."""
    missing = [p for p in packs if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"model packs not installed: {', '.join(missing)} (pip install '.[{extra}]')")


def deploy_builtins(names: tuple[str, ...], tmp: Path, target: DeployTarget) -> dict[str, ModelSource]:
    """Build each `builtin:NAME` into tmp/NAME.rmir and deploy it into tmp/repo/models; what each
    importer made, by name."""
    from edged.backends import BackendOptions
    from edged.importers import builtin_source
    from edged.repository.deploy import deploy

    built = {}
    for name in names:
        work = tmp / f"work-{name}"
        work.mkdir()
        built[name] = builtin_source(name, work)
        build_rmir(built[name], RmirRef(tmp / f"{name}.rmir"))
        deploy(RmirRef(tmp / f"{name}.rmir"), tmp / "repo" / "models", target, BackendOptions())
    return built
