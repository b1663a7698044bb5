"""A Piper VITS voice: its config (phoneme map, espeak voice, scales, speakers) and its network."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

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

    @classmethod
    def load(cls, path: Path) -> VoiceConfig:
        """Read a Piper voice config; TtsError if it is not one."""
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            inference = config.get("inference", {})
            return cls(
                sample_rate=int(config["audio"]["sample_rate"]),
                espeak_voice=str(config["espeak"]["voice"]),
                phoneme_ids=PhonemeIds(config["phoneme_id_map"]),
                noise_scale=float(inference.get("noise_scale", 0.667)),
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_w=float(inference.get("noise_w", 0.8)),
                speakers={str(k): int(v) for k, v in (config.get("speaker_id_map") or {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TtsError(f"{path} is not a usable Piper voice config ({exc}).") from None


class VoiceNetwork:
    """Runs the VITS network: phoneme ids in, float32 audio at the voice's rate out."""

    def __init__(self, session: Session, config: VoiceConfig) -> None:
        self._session = session
        self.config = config
        self._has_sid = any(i.name == "sid" for i in session.inputs)

    def infer(self, ids: list[int], length_scale: float, speaker: int = 0) -> np.ndarray:
        """One utterance's audio; `length_scale` > 1 speaks slower."""
        cfg = self.config
        inputs: dict[str, np.ndarray] = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray([cfg.noise_scale, length_scale, cfg.noise_w], dtype=np.float32),
        }
        if self._has_sid:
            inputs["sid"] = np.asarray([speaker], dtype=np.int64)
        outputs = self._session.run(inputs)
        return np.asarray(next(iter(outputs.values())), dtype=np.float32).reshape(-1)
