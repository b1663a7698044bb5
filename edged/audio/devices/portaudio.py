"""PortAudio through PyAudio: listing devices, finding one, opening a stream at a rate it takes.

PyAudio is optional (`edged[audio]`): it is imported only when a device is used, and its absence
is one AudioDeviceError. A stream opens at the rate the caller wants when the device takes it,
else at 48 kHz, 44.1 kHz or the device's own rate (USB microphones often refuse 16 kHz), mono,
else stereo. PortAudio's initialisation, enumeration and stream opening and closing are not
thread-safe, so they run under PA_LOCK; reads and writes of an open stream do not take it.
PortAudio lists devices at initialisation only: a device plugged in later is seen once every
PyAudio instance of the process has been released.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from edged.errors import AudioDeviceError

_LOGGER = logging.getLogger(__name__)

Kind = Literal["input", "output"]
NOUN = {"input": "microphone", "output": "speaker"}
_FALLBACK_RATES = (48000, 44100)
PA_LOCK = threading.RLock()
_native_log_handlers: list[Any] = []  # ctypes callbacks handed to C must outlive every call


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device, as `edged dictate --list-devices` shows it."""

    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: float
    host_api: str
    is_default_input: bool
    is_default_output: bool

    def channels(self, kind: Kind) -> int:
        """Channels the device offers in the direction `kind`."""
        return self.max_input_channels if kind == "input" else self.max_output_channels


def _pyaudio() -> ModuleType:
    """The pyaudio module, or an AudioDeviceError saying how to install it."""
    try:
        import pyaudio
    except ImportError as exc:
        raise AudioDeviceError(
            "PyAudio is not installed: install edged[audio] (pip install 'edged[audio]', which builds "
            "against the portaudio19-dev package) to use a microphone or speaker."
        ) from exc
    return pyaudio


def _quiet_native_logs() -> None:
    """Route alsa-lib's and libjack's probing chatter (printed on stderr) to DEBUG logging, once."""
    if _native_log_handlers:
        return

    def log(source: str) -> Callable[..., None]:
        def handler(*args: Any) -> None:
            text = args[-1] if source == "jack" else args[4]
            _LOGGER.debug("%s: %s", source, (text or b"").decode(errors="replace").strip())

        return handler

    # alsa-lib's handler is variadic; the fixed arguments are all we read.
    alsa_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
    jack_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    for library, setters, handler_type in (
        ("libasound.so.2", ("snd_lib_error_set_handler",), alsa_type),
        ("libjack.so.0", ("jack_set_error_function", "jack_set_info_function"), jack_type),
    ):
        try:
            lib = ctypes.CDLL(library)
        except OSError:
            continue  # not on this system, so it has nothing to say
        handler = handler_type(log("alsa" if library.startswith("libasound") else "jack"))
        _native_log_handlers.append(handler)
        for setter in setters:
            with contextlib.suppress(AttributeError):
                getattr(lib, setter)(handler)
    _native_log_handlers.append(None)  # marks "done" even where neither library exists


def initialise() -> tuple[ModuleType, Any]:
    """Import pyaudio and initialise PortAudio (which enumerates the devices afresh)."""
    pyaudio = _pyaudio()
    with PA_LOCK:
        os.environ.setdefault("JACK_NO_START_SERVER", "1")  # never let probing spawn a jackd
        _quiet_native_logs()
        return pyaudio, pyaudio.PyAudio()


def terminate(pa: Any) -> None:
    """Release a PyAudio instance (PortAudio counts initialisations; the last one tears down)."""
    with PA_LOCK:
        pa.terminate()


def pa_message(exc: BaseException) -> str:
    """PortAudio's text from a PyAudio ValueError(text, code) or OSError(code, text)."""
    args = exc.args
    if len(args) == 2:
        return str(args[0] if isinstance(args[0], str) else args[1])
    return str(exc)


def enumerate_devices(pa: Any) -> list[DeviceInfo]:
    """Every device PortAudio lists, in index order."""
    defaults = {}
    for kind, getter in (("input", pa.get_default_input_device_info), ("output", pa.get_default_output_device_info)):
        try:
            defaults[kind] = int(getter()["index"])
        except (OSError, ValueError):
            defaults[kind] = -1
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        devices.append(
            DeviceInfo(
                index=index,
                name=str(info["name"]),
                max_input_channels=int(info["maxInputChannels"]),
                max_output_channels=int(info["maxOutputChannels"]),
                default_rate=float(info["defaultSampleRate"]),
                host_api=str(pa.get_host_api_info_by_index(info["hostApi"])["name"]),
                is_default_input=index == defaults["input"],
                is_default_output=index == defaults["output"],
            )
        )
    return devices


def choose_device(devices: list[DeviceInfo], spec: str | int | None, kind: Kind) -> DeviceInfo:
    """The device `spec` names among `devices` (see find_device)."""
    usable = [d for d in devices if d.channels(kind) > 0]
    noun = NOUN[kind]
    listing = ", ".join(f"{d.index} {d.name!r}" for d in usable) or "none"
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        found = next((d for d in usable if (d.is_default_input if kind == "input" else d.is_default_output)), None)
        if found is None:
            raise AudioDeviceError(f"There is no default {noun}; available: {listing}.")
        return found
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        found = next((d for d in usable if d.index == index), None)
        if found is None:
            raise AudioDeviceError(f"There is no {noun} with index {index}; available: {listing}.")
        return found
    wanted = spec.strip().lower()
    exact = [d for d in usable if d.name.lower() == wanted]
    partial = [d for d in usable if wanted in d.name.lower()]
    if exact or partial:
        return (exact or partial)[0]
    raise AudioDeviceError(f"No {noun} name contains {spec!r}; available: {listing}.")


def list_devices() -> list[DeviceInfo]:
    """Every audio device PortAudio sees on this machine, in index order."""
    _, pa = initialise()
    try:
        with PA_LOCK:
            return enumerate_devices(pa)
    finally:
        terminate(pa)


def find_device(spec: str | int | None, kind: Kind) -> DeviceInfo:
    """The device for `spec`: None or "" the default one, an int or digits an index, else a name substring."""
    return choose_device(list_devices(), spec, kind)


def _candidate_rates(wanted: int, default_rate: float) -> list[int]:
    """Rates to try, best first: the one wanted, 48 kHz, 44.1 kHz, the device's own."""
    rates = []
    for rate in (wanted, *_FALLBACK_RATES, int(default_rate)):
        if rate > 0 and rate not in rates:
            rates.append(rate)
    return rates


def open_stream(
    pyaudio: ModuleType, pa: Any, device: DeviceInfo, kind: Kind, rate: int, block_ms: int | None, **kwargs: Any
) -> tuple[Any, int, int]:
    """Open an int16 stream on `device` at the first rate (and mono, else stereo) it takes."""
    error = "no supported rate"
    rates = _candidate_rates(rate, device.default_rate)
    with PA_LOCK:
        for candidate in rates:
            for channels in (1, 2):
                if channels > device.channels(kind):
                    continue
                frames = round(candidate * block_ms / 1000) if block_ms else pyaudio.paFramesPerBufferUnspecified
                try:
                    pa.is_format_supported(
                        candidate,
                        **{
                            f"{kind}_device": device.index,
                            f"{kind}_channels": channels,
                            f"{kind}_format": pyaudio.paInt16,
                        },
                    )
                    stream = pa.open(
                        rate=candidate,
                        channels=channels,
                        format=pyaudio.paInt16,
                        frames_per_buffer=frames,
                        **{kind: True, f"{kind}_device_index": device.index},
                        **kwargs,
                    )
                except (ValueError, OSError) as exc:  # PortAudio refused this rate or channel count
                    error = pa_message(exc)
                    continue
                _LOGGER.info("Opened %s %r at %d Hz, %d channel(s)", NOUN[kind], device.name, candidate, channels)
                return stream, candidate, channels
    tried = ", ".join(str(r) for r in rates)
    raise AudioDeviceError(
        f"The {NOUN[kind]} {device.name!r} could not be opened at {tried} Hz ({error}): "
        "check it or choose another device."
    )
