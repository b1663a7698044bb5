"""Where a microWakeWord model runs: pymicro-wakeword's TFLite library and pymicro-features' front end.

A microWakeWord model is an int8 streaming TFLite Micro graph whose ring buffers live in resource
variables (VAR_HANDLE, READ_VARIABLE, ASSIGN_VARIABLE); its features come from the TFLite Micro
audio front end (fixed-point noise reduction and gain control). Both run exactly as Home
Assistant's microWakeWord runs them only in TFLite's own code, so edged loads the package's
library (shipped in the pymicro-wakeword wheel for x86_64 and aarch64) and the package's front end,
and imports them only here, at a model's load.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from edged.errors import BackendError

INSTALL_HINT = (
    "Wake words need pymicro-wakeword (its TFLite library) and pymicro-features (the audio front "
    "end): `pip install 'edged[wake]'`. On aarch64 (Jetson) pymicro-features has no wheel, so pip "
    "builds it from its source, which needs a C++ compiler and the Python headers "
    "(`sudo apt install g++ python3-dev`)."
)


class WakeRuntimeError(BackendError):
    """The wake-word runtime (pymicro-wakeword, pymicro-features) is not installed or does not load."""


def runtime_missing() -> str | None:
    """Why wake words cannot run here (a sentence), or None; probes without importing."""
    for module, dist in (("pymicro_wakeword", "pymicro-wakeword"), ("micro_features_cpp", "pymicro-features")):
        if importlib.util.find_spec(module) is None:
            return f"{dist} is not installed. {INSTALL_HINT}"
    return None


def microwakeword() -> ModuleType:
    """The `pymicro_wakeword.microwakeword` module, or WakeRuntimeError saying what to install."""
    if (reason := runtime_missing()) is not None:
        raise WakeRuntimeError(reason)
    try:
        from pymicro_wakeword import microwakeword as module
    except (ImportError, OSError) as exc:
        raise WakeRuntimeError(f"pymicro-wakeword does not load ({exc}). {INSTALL_HINT}") from None
    return module
