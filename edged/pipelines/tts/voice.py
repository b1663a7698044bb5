"""A Piper VITS voice: its config (phoneme map, espeak voice, scales, speakers) and its networks."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.backends import Session
from edged.errors import TtsError
from edged.pipelines.tts.phonemes import PhonemeIds

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceConfig:
    """What the voice was trained with, read once from its `.onnx.json`."""

    sample_rate: int
    espeak_voice: str
    phoneme_ids: PhonemeIds
    noise_scale: float
    length_scale: float
    noise_w: float
    speakers: dict[str, int]
    phoneme_type: str = "espeak"
    """"espeak": IPA from espeak-ng's `espeak_voice`; "text": the text's own letters are the phonemes."""

    @property
    def english(self) -> bool:
        """Whether the voice speaks English (edged's text normalisation is English only)."""
        return self.phoneme_type == "espeak" and self.espeak_voice.lower().split("-")[0] == "en"

    @classmethod
    def load(cls, path: Path) -> VoiceConfig:
        """Read a Piper voice config; TtsError if it is not one."""
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            inference = config.get("inference", {})
            return cls(
                sample_rate=int(config["audio"]["sample_rate"]),
                espeak_voice=str((config.get("espeak") or {}).get("voice", "")),
                phoneme_ids=PhonemeIds(config["phoneme_id_map"], config.get("phoneme_map") or {}),
                noise_scale=float(inference.get("noise_scale", 0.667)),
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_w=float(inference.get("noise_w", 0.8)),
                speakers={str(k): int(v) for k, v in (config.get("speaker_id_map") or {}).items()},
                phoneme_type=str(config.get("phoneme_type", "espeak")),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TtsError(f"{path} is not a usable Piper voice config ({exc}).") from None


SEAM_CONTEXT_SHARE = 0.75
"""Share of the exact context (a network's receptive field, measured at build time) run either
side of a range of frames. The receptive field's edge weighs little: on en_US-joe-medium the
decoder's 8 frames of 11 leave seams at most 0.0024 off (-52 dBFS), an SNR of 66 dB against the
whole utterance's audio with a seam every 64 frames; the flow's 22 of 29 leave the audio
100 dB from exact. 27 % less context run twice."""

_OLD_MAX_RUN_FRAMES = 1024
"""Most frames one run of the flow or decoder takes, context included, for RMIRs built before
the manifest recorded it as `max_run_frames` (their `frames` shape range ends there)."""


@dataclass
class Latent:
    """One utterance between the encoder and the decoder, its frames made as they are needed.

    `z` holds the decoder's input; frames before `ready` are final. For a voice packed as one
    network (older RMIRs) `z` is the whole audio, one "frame".
    """

    z: np.ndarray
    """[1, channels, frames] (or the audio, [samples])."""
    ready: int
    prior: np.ndarray | None = None
    """The flow's input, [1, channels, frames], while some of `z` is still to make."""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """The other inputs of the flow and decoder (a multi-speaker voice's embedding `g`)."""

    @property
    def frames(self) -> int:
        """Frames to decode."""
        return int(self.z.shape[-1]) if self.z.ndim == 3 else 1


class VoiceNetwork:
    """Runs the VITS networks: phoneme ids to the prior's frames (`encode`), then any range of
    frames through the flow and decoder to float32 audio at the voice's rate (`decode`), as if
    the utterance were run whole: both are convolutional, and each range is run with context
    either side: the bulk of what their receptive fields need (measured when the RMIR was built;
    see SEAM_CONTEXT_SHARE).
    """

    def __init__(self, sessions: Mapping[str, Session], config: VoiceConfig, parameters: Mapping[str, Any],
                 lane_sessions: Mapping[str, Session] | None = None) -> None:
        self.config = config
        self.chunked = {"encoder", "flow", "decoder"} <= set(sessions)
        if not self.chunked and "voice" not in sessions:
            raise TtsError(f"A Piper voice needs networks encoder, flow and decoder (or voice), not "
                           f"{', '.join(sessions)}.")
        self.hop = int(parameters.get("hop_length", 0)) if self.chunked else 1
        self.context = int(parameters.get("decoder_context_frames", 0))
        self.flow_context = int(parameters.get("flow_context_frames", 0))
        self.seam_context = max(1, round(self.context * SEAM_CONTEXT_SHARE))
        """Decoder frames run either side of a chunk (`context` makes chunks exact)."""
        self.flow_seam = max(1, round(self.flow_context * SEAM_CONTEXT_SHARE))
        """Flow frames run either side of a range (`flow_context` makes them exact)."""
        # The engines' `frames` range ends there, so every run of the flow or decoder must fit.
        self.max_run_frames = int(parameters.get("max_run_frames", _OLD_MAX_RUN_FRAMES))
        if self.chunked and min(self.hop, self.context, self.flow_context) <= 0:
            raise TtsError("The voice's manifest lacks hop_length, decoder_context_frames or "
                           "flow_context_frames; rebuild its RMIR.")
        self._encoder = sessions["encoder"] if self.chunked else sessions["voice"]
        self._flow, self._decoder = sessions.get("flow"), sessions.get("decoder")
        self._lane_decoder = (lane_sessions or {}).get("decoder", self._decoder)
        """The decoder for runs side by side with others: a lane's share of the cores as threads."""
        self._has_sid = any(i.name == "sid" for i in self._encoder.inputs)

    def encode(self, ids: list[int], length_scale: float, speaker: int = 0) -> Latent:
        """One utterance's prior (its frames' count settled); `length_scale` > 1 speaks slower."""
        cfg = self.config
        inputs: dict[str, np.ndarray] = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray([cfg.noise_scale, length_scale, cfg.noise_w], dtype=np.float32),
        }
        if self._has_sid:
            inputs["sid"] = np.asarray([speaker], dtype=np.int64)
        outputs = self._encoder.run(inputs)
        if not self.chunked:
            return Latent(np.asarray(next(iter(outputs.values())), dtype=np.float32).reshape(-1), 1)
        prior = np.asarray(outputs.pop("z_p"), dtype=np.float32)
        return Latent(np.empty_like(prior), 0, prior, outputs)

    def seconds(self, latent: Latent) -> float:
        """How long the utterance's audio is (known once it is encoded, before it is decoded)."""
        samples = latent.frames * self.hop if self.chunked else latent.z.shape[-1]
        return float(samples) / self.config.sample_rate

    def prepare(self, latent: Latent, stop: int, ahead: bool = True) -> None:
        """Run the flow so that frames up to `stop` can be decoded: on every frame still to make
        (`ahead`), or on just those (a request's first audio)."""
        need = min(latent.frames, stop + self.seam_context)
        if self.chunked and latent.ready < need:
            self._run_flow(latent, latent.frames if ahead else need)

    def decode(self, latent: Latent, start: int, stop: int, side_by_side: bool = False) -> np.ndarray:
        """Audio of frames [start, stop) (the flow runs first if `prepare` did not); with
        `side_by_side`, on the lane decoder (other runs go at the same time)."""
        if not self.chunked:
            return latent.z
        decoder = self._lane_decoder if side_by_side else self._decoder
        assert decoder is not None
        self.prepare(latent, stop)
        lo, hi = max(0, start - self.seam_context), min(latent.frames, stop + self.seam_context)
        z = np.ascontiguousarray(latent.z[:, :, lo:hi])
        audio = np.asarray(next(iter(decoder.run({"z": z, **latent.extra}).values())),
                           dtype=np.float32).reshape(-1)
        return audio[(start - lo) * self.hop:(stop - lo) * self.hop]

    def _run_flow(self, latent: Latent, upto: int) -> None:
        """Make z's frames [ready, upto) final, in runs of at most max_run_frames."""
        assert self._flow is not None and latent.prior is not None
        while latent.ready < upto:
            stop = min(upto, latent.ready + self.max_run_frames - 2 * self.flow_seam)
            lo = max(0, latent.ready - self.flow_seam)
            hi = min(latent.frames, stop + self.flow_seam)
            z_p = np.ascontiguousarray(latent.prior[:, :, lo:hi])
            feeds = {"z_p": z_p, "mask": np.ones((1, 1, hi - lo), np.float32), **latent.extra}
            z = self._flow.run(feeds)["z"]
            latent.z[:, :, latent.ready:stop] = z[:, :, latent.ready - lo:stop - lo]
            latent.ready = stop
        if latent.ready == latent.frames:
            latent.prior = None

    def infer(self, ids: list[int], length_scale: float, speaker: int = 0) -> np.ndarray:
        """One utterance's whole audio."""
        latent = self.encode(ids, length_scale, speaker)
        return self.decode(latent, 0, latent.frames)
