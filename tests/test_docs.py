"""The README stays true: its test command is what CI runs, its config reference is generated."""

from __future__ import annotations

import re

from edged.config import settings_reference_markdown
from tests.conftest import REPO_ROOT


def test_readme_test_command_is_what_ci_runs() -> None:
    """.ci/run runs exactly the test command the README gives."""
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert command is not None
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"\n{command.group(1)}\n" in readme


def test_readme_quick_start_runs_init_then_start() -> None:
    """The first README command installs the default models, then runs edged init and edged start."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    first = next(line for line in readme.splitlines() if "edged init" in line and "pip install" in line)
    assert "'.[models]'" in first
    assert first.index("edged init") < first.index("edged start")


def test_readme_settings_reference_is_generated() -> None:
    """The README's configuration reference is exactly what the declarations generate."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- settings:begin -->")[1].split("<!-- settings:end -->")[0]
    assert block.strip() == settings_reference_markdown().strip()
