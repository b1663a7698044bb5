"""Every exception edged raises on purpose: one sentence saying what was wrong and what to do.

The CLI prints `str(exc)` of an EdgedError as one line and exits non-zero; anything else
is a bug and keeps its traceback. Each class has a `kind` (subclasses inherit it) that every door
maps to its own status, so the doors never repeat the class hierarchy.
"""

KINDS = ("failed", "exhausted", "unavailable", "unknown_model", "unknown_voice", "bad_audio",
         "bad_request", "off", "unauthorized", "timeout", "forbidden", "unsupported_media_type",
         "unknown_speaker")
"""Every `EdgedError.kind`: what a door tells a client about the error."""


class EdgedError(Exception):
    """Base class: a user-facing error whose message is a complete sentence."""

    kind = "failed"
    """One of KINDS: "failed" for anything that is neither the client's mistake nor a full server."""


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


class ModelLoadError(EdgedError):
    """A loaded model lacks a network, artifact or parameter its pipeline needs."""


class AudioFormatError(EdgedError):
    """Client audio cannot be decoded: unknown encoding, bad header, wrong rate or channels."""

    kind = "bad_audio"


class RequestError(EdgedError):
    """A recognition or synthesis request asks for something edged cannot do (bad model, limit)."""

    kind = "bad_request"


class TtsError(EdgedError):
    """Speech synthesis could not run (voice files, espeak-ng)."""


class TtsRequestError(TtsError):
    """A synthesis request cannot be served as asked (empty or too long text, bad SSML, rate)."""

    kind = "bad_request"


class UnknownVoiceError(TtsRequestError):
    """A synthesis request names a voice no loaded model provides."""

    kind = "unknown_voice"


class UnknownWakeWordError(EdgedError):
    """A wake-word request names a wake word no deployed model provides."""

    kind = "unknown_model"


class UnknownSpeakerError(RequestError):
    """No enrolled speaker has the name asked for."""

    kind = "unknown_speaker"


class ResourceExhaustedError(EdgedError):
    """The server is full (streams, memory): a servicer answers RESOURCE_EXHAUSTED with this text."""

    kind = "exhausted"


class ModelStateError(EdgedError):
    """A model cannot be loaded or unloaded now (failed, broken, stale)."""

    kind = "unavailable"


class ModelNotFoundError(ModelStateError):
    """No deployed model has the name asked for."""

    kind = "unknown_model"


class ModelDoesNotFitError(ModelStateError):
    """A model would not fit the memory budget now."""

    kind = "exhausted"


class DaemonError(EdgedError):
    """The daemon cannot be started, stopped or reached as asked."""


class FeatureOffError(EdgedError):
    """A request needs a part of the daemon that config.sh turns off (the microphone, the speaker)."""

    kind = "off"


class AudioDeviceError(EdgedError):
    """A microphone or speaker cannot be found, opened or used (PortAudio's reason in one sentence)."""


class ForbiddenError(EdgedError):
    """A client this server does not serve: a page of a foreign origin, a `Host` that is not
    this server's (edged.doors.web.guard), an address `wyoming_allowed_clients` does not list."""

    kind = "forbidden"


class IdleTimeoutError(EdgedError):
    """A client sent (or read) nothing for longer than its door waits (asr_stream_idle_timeout_s)."""

    kind = "timeout"


class DrainingError(EdgedError):
    """The server is draining before it stops and takes no new streams (gRPC UNAVAILABLE)."""

    kind = "unavailable"
