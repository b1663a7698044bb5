"""`edged bench speakers`: how well the speaker encoder tells voices apart, and what it costs.

- Speaker identification: the equal error rate (EER) over every pair of utterances, same speaker
  or not. Utterances are the evalcorpus clips, each cut in two halves (most of its speakers have one
  clip), plus sentences read by espeak-ng's voices as extra speakers.
- Diarization: simulated conversations of 2 to 4 of those speakers (turns of 2 to 15 s cut from
  their audio, pauses of 0.2 to 1.5 s), diarized over their turns as an endpointer would find them,
  scored by pyannote.metrics' diarization error rate (collar 0.25 s, no overlap).
- Cost: the encoder's CPU seconds per second of audio.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edged.audio.resample import resample
from edged.errors import ConfigError
from edged.pipelines.speaker.diarize import DiarizeOptions, SpeakerTurn, diarize
from edged.pipelines.speaker.encoder import SpeakerEncoder

if TYPE_CHECKING:
    from edged.config import Settings

ESPEAK_VOICES = ("en-us", "en+f3", "en-gb-x-rp+m2", "en+f5", "en-us+m7", "en-029+f2")
"""espeak-ng voice variants that act as extra speakers."""

ESPEAK_SENTENCES = (
    "Please call Stella and ask her to bring these things with her from the store.",
    "The birch canoe slid on the smooth planks beside the quiet river.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother.",
    "We also need a small plastic snake and a big toy frog for the kids.",
)


@dataclass(frozen=True)
class Utterance:
    """Audio of one speaker at 16 kHz."""

    speaker: str
    audio: np.ndarray


@dataclass(frozen=True)
class SpeakerFigures:
    """What `edged bench speakers` measured."""

    model: str
    speakers: int
    utterances: int
    same_pairs: int
    different_pairs: int
    eer: float
    eer_threshold: float
    conversations: int
    der: float | None
    """None where pyannote.metrics is not installed."""
    der_by_speakers: dict[int, float]
    cpu_per_audio_s: float
    """The encoder's CPU seconds per second of audio embedded (process time, all threads)."""

    def json(self) -> str:
        """The figures as JSON."""
        return json.dumps(asdict(self), indent=2)

    def text(self) -> str:
        """The figures for a person."""
        der = "not measured (pip install pyannote.metrics)" if self.der is None else f"{100 * self.der:.1f} %"
        by = ", ".join(f"{k} speakers {100 * v:.1f} %" for k, v in sorted(self.der_by_speakers.items()))
        return (f"speaker model {self.model}: {self.speakers} speakers, {self.utterances} utterances\n"
                f"EER {100 * self.eer:.1f} % at cosine {self.eer_threshold:.3f} "
                f"({self.same_pairs} same-speaker pairs, {self.different_pairs} different)\n"
                f"DER {der} over {self.conversations} conversations" + (f" ({by})" if by else "") + "\n"
                f"encoder CPU {self.cpu_per_audio_s:.3f} s per s of audio")


def evalcorpus_utterances(manifest: Path) -> list[Utterance]:
    """Each clip of the manifest (JSON lines with `audio` and `speaker`), cut in two halves."""
    import soundfile as sf

    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        audio, rate = sf.read(manifest.parent / item["audio"], dtype="float32", always_2d=True)
        mono = resample(audio[:, 0], rate, 16000)
        half = len(mono) // 2
        out += [Utterance(str(item["speaker"]), mono[:half]), Utterance(str(item["speaker"]), mono[half:])]
    return out


def espeak_utterances(voices: tuple[str, ...] = ESPEAK_VOICES) -> list[Utterance]:
    """Every sentence of ESPEAK_SENTENCES read by every voice."""
    from edged.pipelines.tts.phonemes import Espeak

    out = []
    for voice in voices:
        for sentence in ESPEAK_SENTENCES:
            pcm, rate = Espeak.speak(sentence, voice)
            out.append(Utterance(f"espeak-{voice}", resample(pcm.astype(np.float32) / 32768.0, rate, 16000)))
    return out


def equal_error_rate(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): where the share of same-speaker scores below the threshold meets the share
    of different-speaker scores at or above it (the mean of the two at the closest point)."""
    thresholds = np.unique(np.concatenate([same, different]))
    misses = np.searchsorted(np.sort(same), thresholds, side="left") / len(same)
    false_alarms = 1.0 - np.searchsorted(np.sort(different), thresholds, side="left") / len(different)
    best = int(np.argmin(np.abs(misses - false_alarms)))
    return float((misses[best] + false_alarms[best]) / 2), float(thresholds[best])


def pair_scores(embeddings: np.ndarray, speakers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every pair: (same speaker, different speakers)."""
    scores = embeddings @ embeddings.T
    ids = np.array(speakers)
    upper = np.triu(np.ones_like(scores, dtype=bool), k=1)
    same = ids[:, None] == ids[None, :]
    return scores[upper & same], scores[upper & ~same]


@dataclass(frozen=True)
class Conversation:
    """A simulated conversation: its audio and who speaks when."""

    audio: np.ndarray
    turns: list[SpeakerTurn]
    speakers: int


def simulate_conversation(pool: dict[str, list[np.ndarray]], speakers: int, rng: np.random.Generator,
                          turns: int = 8, rate: int = 16000) -> Conversation:
    """`turns` turns of `speakers` speakers from `pool` (speaker -> audio), taking turns at random
    (never the same twice in a row), each turn 2 to 15 s of the speaker's audio, pauses of 0.2 to 1.5 s."""
    chosen = [str(s) for s in rng.choice(sorted(pool), size=speakers, replace=False)]
    voices = {s: np.concatenate(pool[s]) for s in chosen}
    parts: list[np.ndarray] = []
    reference: list[SpeakerTurn] = []
    at, last = 0, ""
    for i in range(turns):
        who = chosen[i] if i < speakers else str(rng.choice([s for s in chosen if s != last]))
        source = voices[who]
        length = min(len(source), int(rng.uniform(2.0, 15.0) * rate))
        start = int(rng.integers(0, len(source) - length + 1))
        pause = np.zeros(int(rng.uniform(0.2, 1.5) * rate), dtype=np.float32)
        parts += [pause, source[start:start + length]]
        at += len(pause)
        reference.append(SpeakerTurn(at / rate, (at + length) / rate, chosen.index(who) + 1))
        at += length
        last = who
    return Conversation(np.concatenate(parts), reference, speakers)


def diarization_error(reference: list[SpeakerTurn], hypothesis: list[SpeakerTurn]) -> float:
    """pyannote.metrics' DER of one conversation (collar 0.25 s, overlap skipped)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for t in reference:
        ref[Segment(t.start_s, t.end_s)] = f"ref{t.speaker}"
    for t in hypothesis:
        hyp[Segment(t.start_s, t.end_s)] = f"hyp{t.speaker}"
    metric = DiarizationErrorRate(collar=0.25, skip_overlap=True)
    return float(metric(ref, hyp, uem=ref.get_timeline().extent()))


def bench_speakers(encoder: SpeakerEncoder, utterances: list[Utterance], conversations: int = 30,
                   seed: int = 0) -> SpeakerFigures:
    """EER over all pairs of `utterances`, DER over simulated conversations made from them."""
    if len({u.speaker for u in utterances}) < 4:
        raise ConfigError("The speaker bench needs utterances of at least 4 speakers.")
    cpu0 = time.process_time()
    embeddings = np.stack([encoder.embed(u.audio) for u in utterances])
    cpu = time.process_time() - cpu0
    audio_s = sum(len(u.audio) for u in utterances) / 16000
    same, different = pair_scores(embeddings, [u.speaker for u in utterances])
    eer, threshold = equal_error_rate(same, different)
    pool: dict[str, list[np.ndarray]] = {}
    for u in utterances:
        pool.setdefault(u.speaker, []).append(u.audio)
    rng = np.random.default_rng(seed)
    by_count: dict[int, list[float]] = {}
    try:
        import pyannote.metrics  # noqa: F401 - optional: DER is left out without it
        scoring = True
    except ImportError:
        scoring = False
    for i in range(conversations if scoring else 0):
        talk = simulate_conversation(pool, 2 + i % 3, rng)
        hypothesis = diarize(encoder, talk.audio, [(t.start_s, t.end_s) for t in talk.turns],
                             DiarizeOptions(threshold=encoder.cluster_threshold))
        by_count.setdefault(talk.speakers, []).append(diarization_error(talk.turns, hypothesis))
    every = [d for ders in by_count.values() for d in ders]
    return SpeakerFigures(
        model=encoder.name, speakers=len(pool), utterances=len(utterances), same_pairs=len(same),
        different_pairs=len(different), eer=eer, eer_threshold=threshold,
        conversations=len(every), der=float(np.mean(every)) if every else None,
        der_by_speakers={k: float(np.mean(v)) for k, v in by_count.items()},
        cpu_per_audio_s=cpu / audio_s)


def deployed_encoder(settings: Settings, name: str = "") -> SpeakerEncoder:
    """The speaker model `name` (or the first) deployed in config.sh's model repository, loaded here."""
    from edged.backends import BackendOptions
    from edged.backends.probe import probe
    from edged.loader import load_model
    from edged.repository.records import current_target, list_models

    target = current_target(probe(), settings.backend)
    found = [m for m in list_models(settings.model_loc / "models", target)
             if m.manifest is not None and m.manifest.pipeline == "speaker" and (not name or m.name == name)]
    if not found:
        raise ConfigError(f"No speaker model {name or ''} is deployed in {settings.model_loc}; add "
                          "builtin:voicefilter-dvector to models_speaker in config.sh and run `edged init`.")
    return SpeakerEncoder(load_model(found[0], BackendOptions.from_settings(settings)))
