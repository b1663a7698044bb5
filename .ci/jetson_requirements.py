"""Print the requirements of the README's Jetson install, as pip would resolve them on a Jetson.

JetPack 6 is aarch64 with Python 3.10. `pip download --platform ...` evaluates environment markers
against the machine it runs on, not the target, so the markers of pyproject.toml are evaluated here
for the target and the requirements printed without them. PyAudio is left out: it has no Linux
wheel on PyPI and builds from its sdist against PortAudio (the README installs portaudio19-dev);
`.ci/run` checks that sdist separately.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

TARGET = {"platform_machine": "aarch64", "python_version": "3.10", "python_full_version": "3.10.12",
          "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
EXTRAS = ("models", "gpu", "audio")
# The wake extra is left out: pymicro-wakeword (aarch64 wheel) requires pymicro-features, which
# has no aarch64 wheel and builds from its sdist on the Jetson (`.ci/run` checks that sdist).
SOURCE_ONLY = {"pyaudio"}
# What the README's Jetson command adds: cuda-python matching JetPack 6's CUDA 12.6.
README_EXTRA = ["cuda-python>=12.6,<12.7"]


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(r for extra in EXTRAS for r in project["optional-dependencies"][extra])]
    for text in [*wanted, *README_EXTRA]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(TARGET):
            continue
        if req.name.lower() in SOURCE_ONLY:
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    sys.exit(main())
