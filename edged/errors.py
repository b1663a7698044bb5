"""Every exception edged raises on purpose: one sentence saying what was wrong and what to do.

The CLI prints `str(exc)` of an EdgedError as one line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class EdgedError(Exception):
    """Base class: a user-facing error whose message is a complete sentence."""


class ConfigError(EdgedError):
    """config.sh (or a command-line option) holds a value edged cannot use."""


class RmirError(EdgedError):
    """An RMIR archive is missing, truncated, corrupt, tampered with, or of an unknown format."""


class WrongKeyError(RmirError):
    """An encrypted RMIR could not be opened with the given key (or no key was given)."""


class ModelImportError(EdgedError):
    """A model importer could not find or read its source files."""


class FetchError(EdgedError):
    """A model archive could not be downloaded (HTTP error, stalled server, hash mismatch)."""


class DeployError(EdgedError):
    """A model could not be deployed into the model repository."""


class BackendError(EdgedError):
    """An inference backend could not load or run a network."""
