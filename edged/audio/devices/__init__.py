"""Local audio devices, the one import for the daemon and the CLI: list, find, capture, play.

The parts live in their own modules: `portaudio` (PyAudio access, device listing and opening),
`microphone` (capture, reconnection) and `speaker` (playback queue). None imports PyAudio until
a device is used, so edged runs without the `audio` extra.
"""

from edged.audio.devices.microphone import Microphone, Reconnector
from edged.audio.devices.portaudio import DeviceInfo, find_device, list_devices
from edged.audio.devices.speaker import ChunkFeed, PlaybackHandle, Speaker
from edged.errors import AudioDeviceError

__all__ = [
    "AudioDeviceError",
    "ChunkFeed",
    "DeviceInfo",
    "Microphone",
    "PlaybackHandle",
    "Reconnector",
    "Speaker",
    "find_device",
    "list_devices",
]
