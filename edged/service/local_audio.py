"""What the machine's own microphone and speaker take and give, as plain data.

`edged.doors.local.audio.LocalAudio` speaks these; a door that exposes it (edged.v1 over gRPC)
converts them to and from its messages. The field names are edged.v1's, so a door converts by
name (`edged_pb2.Transcript(**asdict(heard))`) and a JSON rendering has edged.v1's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HeardWord:
    """One word of a final transcript, with its times on the wall clock."""

    word: str
    start_s: float
    """Unix time of its start."""
    end_s: float
    confidence: float = 0.0


@dataclass(frozen=True)
class Heard:
    """One transcript of the microphone (a final, or an interim while a subscriber asks for them)."""

    text: str
    is_final: bool
    confidence: float = 0.0
    stability: float = 0.0
    start_s: float = 0.0
    """Unix time of the utterance's start."""
    end_s: float = 0.0
    """Unix time of its end."""
    latency_ms: float = 0.0
    """From the end of the audio it covers to this result."""
    words: list[HeardWord] = field(default_factory=list)
    """Finals only."""
    wake_word: str = ""
    """The wake word (its model's name) that opened the utterance (`local_wake_words`); "" without."""
    speaker: str = ""
    """Finals, where a speaker model is deployed: who said it (A, B, ... or an enrolled name)."""


@dataclass(frozen=True)
class SpeakRequest:
    """Say a text (or SSML) on the speaker."""

    text: str
    voice: str = ""
    """Voice name as in Riva (e.g. English-US.Joe); "" for the first."""
    interrupt: bool = False
    """Stop what is playing and drop the queue first."""
    wait: bool = False
    """Answer when playback has ended, not when the request is queued."""


@dataclass(frozen=True)
class SpeakOutcome:
    """What became of a SpeakRequest (when queued, or when played with `wait`)."""

    id: int
    first_audio_ms: float = 0.0
    """From the request to its first audio written to the device (when waited)."""
    seconds: float = 0.0
    """Seconds of speech played (when waited)."""
    interrupted: bool = False
    """Stopped before its end (interrupt, StopSpeaking or barge-in)."""
    queued: int = 0
    """Utterances ahead of this one when it was queued."""


@dataclass(frozen=True)
class MicrophoneStatus:
    """The microphone's part of the server's status."""

    enabled: bool = False
    state: str = "off"
    """listening, muted, off, or why it is not open ("retrying in 4 s: ...")."""
    device: str = ""
    device_rate: int = 0
    """Rate the device was opened at (resampled to 16 kHz)."""
    muted: bool = False
    overflows: int = 0
    """Blocks dropped because recognition fell behind."""
    audio_s: float = 0.0
    """Seconds heard since start."""
    finals: int = 0
    """Final transcripts since start."""


@dataclass(frozen=True)
class SpeakerStatus:
    """The speaker's part of the server's status."""

    enabled: bool = False
    state: str = "off"
    """idle, playing, off, or the error of the last playback."""
    device: str = ""
    queued: int = 0
    """Utterances waiting behind the one playing."""
    played: int = 0
    """Utterances played since start."""


@dataclass(frozen=True)
class LocalAudioStatus:
    """Microphone and speaker (both "off" where the daemon runs no local audio)."""

    microphone: MicrophoneStatus = field(default_factory=MicrophoneStatus)
    speaker: SpeakerStatus = field(default_factory=SpeakerStatus)
