"""A loaded ASR model: its recogniser (Moonshine or NeMo), Silero VAD, default endpointing; streams and jobs."""

from __future__ import annotations

import logging
import time

from edged.errors import ModelLoadError
from edged.loader import LoadedModel
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.endpointing import EndpointParams, Vad
from edged.pipelines.asr.jobs import DecodeJob, JobKind, StreamConfig
from edged.pipelines.asr.nemo import NEMO_FAMILIES
from edged.pipelines.asr.nemo.recogniser import NemoRecogniser
from edged.pipelines.asr.recogniser import Hypothesis, Recogniser, beam_width
from edged.pipelines.asr.resultmaker import ResultMaker
from edged.pipelines.asr.stream import AsrStream
from edged.pipelines.asr.whisper.recogniser import WHISPER_FAMILY, Language, WhisperRecogniser
from edged.pipelines.lanes import Lanes
from edged.pipelines.pools import Pools

_LOGGER = logging.getLogger(__name__)

MAX_BATCH = 8
# Utterances decoded together are zero-padded to the longest (the encoder has no mask), so only
# utterances of similar length share a batch (and streaming finals only equal lengths).
_MAX_PAD_RATIO = 1.25
# Jobs that decode a whole utterance (a final, or one decoded ahead that may become it).
_WHOLE = (JobKind.FINAL, JobKind.SPECULATIVE)
_MAX_PAD_SAMPLES = MODEL_RATE
# Activations grow with the batch's total audio; bounding it bounds the memory a batch takes.
_MAX_BATCH_SAMPLES = 40 * MODEL_RATE
# Whisper's text of a window of utterances with fewer tokens per second of their audio ended
# early (English speech gives 3 to 4): on the evalcorpus, "Chapter 11." for the 6.5 s of
# ls-train-clean-100-730-358-0000, which faster-whisper reads whole.
_MIN_TOKENS_PER_S = 1.0

def _exact(job: DecodeJob) -> bool:
    """Whether a job is a streaming final, decoded without padding (batched only with equal
    lengths): padding changes what Moonshine hears, and streams' finals gain little from
    batches since their drafts leave few decoder calls."""
    return job.kind in _WHOLE and job.stream.config.speculative


def _batches(todo: list[DecodeJob]) -> list[list[DecodeJob]]:
    """Jobs in batches of similar lengths (streaming finals only with equal lengths)."""
    todo = sorted(todo, key=lambda j: (_exact(j), len(j.audio)))
    groups = []
    while todo:
        group = [todo.pop(0)]
        first = len(group[0].audio)
        limit = first if _exact(group[0]) else max(first * _MAX_PAD_RATIO, first + _MAX_PAD_SAMPLES)
        while (todo and len(group) < MAX_BATCH and _exact(todo[0]) == _exact(group[0])
               and len(todo[0].audio) * (len(group) + 1) <= _MAX_BATCH_SAMPLES
               and len(todo[0].audio) <= limit):
            group.append(todo.pop(0))
        groups.append(group)
    return groups


def _fill_lanes(groups: list[list[DecodeJob]], lanes: int) -> list[list[DecodeJob]]:
    """Split the biggest batches until every lane has one: two one-thread calls side by side
    beat one batch on every core (see edged.pipelines.lanes)."""
    while len(groups) < lanes:
        biggest = max(groups, key=lambda g: (len(g), sum(len(j.audio) for j in g)), default=[])
        if len(biggest) < 2:
            break
        groups.remove(biggest)
        half = (len(biggest) + 1) // 2
        groups += [biggest[:half], biggest[half:]]
    return groups


def _previous_text(job: DecodeJob) -> list[int]:
    """The tokens of the text before a job's audio, as its decode reads them (none: no
    previous window). On the evalcorpus' two recordings longer than a window: 7 -> 6 word
    errors (faster-whisper, which reads them likewise: 6)."""
    before = job.previous
    if before is None or before.hyp is None:
        return []
    return before.hyp.tokens


def ended_early(job: DecodeJob, hyp: Hypothesis) -> bool:
    """Whether Whisper ended a window of utterances' text too early to hold them all: fewer than
    _MIN_TOKENS_PER_S for its utterances' seconds (it may read the end of text in a long pause)."""
    seconds = sum(end - start for start, end in job.parts) / MODEL_RATE
    return len(job.parts) > 1 and hyp.stopped == "eos" and len(hyp.tokens) < _MIN_TOKENS_PER_S * seconds


def utterance_by_utterance(rec: WhisperRecogniser, job: DecodeJob, language: Language,
                            previous: list[int]) -> Hypothesis:
    """A window's hypothesis from its utterances decoded one by one (each after the same previous text)."""
    audios = [job.audio[start - job.start:end - job.start] for start, end in job.parts]
    hyps = rec.decode(audios, languages=[language] * len(audios), previous=[previous] * len(audios))
    _LOGGER.debug("A window's text ended early: its %d utterances decoded one by one", len(audios))
    return Hypothesis([t for h in hyps for t in h.tokens], [p for h in hyps for p in h.logprobs],
                      rec.frames(len(job.audio)), hyps[-1].stopped, language=hyps[0].language)


class AsrModel:
    """A recogniser (Moonshine, or NeMo by the manifest's family) + Silero VAD, shared by every
    stream; `decode_jobs` runs many streams' jobs."""

    def __init__(self, asr: LoadedModel, vad: LoadedModel, pools: Pools) -> None:
        """`pools` holds the thread pool of its lanes (one per model name, kept across reloads)."""
        if "vad" not in vad.sessions:
            raise ModelLoadError(f"Model {vad.name} has no 'vad' network; redeploy silero-vad.")
        self.name = asr.name
        family = asr.manifest.model_family
        self.recogniser: Recogniser | NemoRecogniser = (
            NemoRecogniser(asr) if family in NEMO_FAMILIES
            else WhisperRecogniser(asr) if family == WHISPER_FAMILY else Recogniser(asr))
        self.vad = Vad(vad.sessions["vad"])
        params = dict(asr.manifest.parameters.get("endpointing", {}))
        threshold = vad.manifest.parameters.get("threshold")
        if threshold is not None:
            params.setdefault("speech_threshold", threshold)
        self.endpoint = EndpointParams.from_manifest(params)
        rec = self.recogniser
        self.results = (ResultMaker(rec.tokenizer, rec.alignment_heads, asr.manifest.language_code,
                                    rec.samples_per_frame) if isinstance(rec, Recogniser)
                        else ResultMaker(rec.tokenizer, language_code=asr.manifest.language_code))
        self.lanes = Lanes(asr.lanes, pools, f"asr-{asr.name}")
        self.window_samples = self.recogniser.window_samples if isinstance(self.recogniser, WhisperRecogniser) else 0
        """Offline: utterances decoded together in windows of up to this many samples (Whisper
        only, see edged.pipelines.asr.packing); 0: each utterance alone."""
        self.seconds_per_sample = 0.05 / MODEL_RATE
        """Recent decode wall time per sample of audio (a moving average over batches)."""

    def start_stream(self, config: StreamConfig) -> AsrStream:
        """A new stream with its own audio, VAD and endpointing state."""
        return AsrStream(self, config)

    def decode_jobs(self, jobs: list[DecodeJob]) -> None:
        """Decode queued jobs (of one or many streams) in length-matched batches, the batches
        side by side on the model's lanes; empties `jobs`. A job whose `previous` job is among
        them waits for a later round (its decode reads that one's text)."""
        todo = [j for j in jobs if j.hyp is None]
        ready = [j for j in jobs if j.hyp is not None]
        jobs.clear()
        for job in ready:
            job.stream.complete(job)
        while todo:
            waiting = {id(j) for j in todo}
            now = [j for j in todo if j.previous is None or id(j.previous) not in waiting]
            todo = [j for j in todo if j not in now]
            self._decode_round(now)

    def _decode_round(self, todo: list[DecodeJob]) -> None:
        """Decode jobs that wait for no other, in batches on the lanes, and hand them back."""
        # Longest first, so that the lanes end together (a stream's results come back in the
        # order its jobs were made, whatever the order they complete in: see take_results).
        groups = sorted(_fill_lanes(_batches(todo), self.lanes.count),
                        key=lambda g: -sum(len(j.audio) for j in g))
        for group, (hyps, seconds) in zip(groups, self.lanes.map(self._decode_batch, groups)):
            per_sample = seconds / max(1, sum(len(j.audio) for j in group))
            self.seconds_per_sample += 0.2 * (per_sample - self.seconds_per_sample)
            for job, hyp in zip(group, hyps):
                job.hyp, job.seconds, job.previous = hyp, seconds, None
                job.stream.complete(job)

    def _decode_batch(self, group: list[DecodeJob]) -> tuple[list[Hypothesis], float]:
        """One batch's hypotheses and the seconds they took (on a lane: touches no stream)."""
        t0 = time.perf_counter()
        attention = any(j.kind in _WHOLE and j.stream.config.word_times for j in group)
        rec = self.recogniser
        biases = [rec.phrase_bias(j.stream.config.boost) for j in group]
        # Finals (and speculative finals, which may become them) with alternatives: a beam each.
        beams = [j.kind in _WHOLE and j.stream.config.max_alternatives > 1 for j in group]
        if isinstance(rec, WhisperRecogniser):  # no beam yet: every job greedy, in its language
            languages = [j.stream.config.language for j in group]
            previous = [_previous_text(j) for j in group]
            found = rec.decode([j.audio for j in group], [j.draft for j in group], attention, languages=languages,
                               previous=previous)
            for i, job in enumerate(group):
                if ended_early(job, found[i]):
                    found[i] = utterance_by_utterance(rec, job, languages[i], previous[i])
            return found, time.perf_counter() - t0
        greedy = [i for i, beam in enumerate(beams) if not beam]
        hyps = dict(zip(greedy, rec.decode([group[i].audio for i in greedy], [group[i].draft for i in greedy],
                                           attention, [biases[i] for i in greedy])))
        for i, job in enumerate(group):
            if beams[i]:
                hyps[i] = rec.beam(job.audio, beam_width(job.stream.config.max_alternatives), biases[i],
                                   job.stream.config.word_times)
        return [hyps[i] for i in range(len(group))], time.perf_counter() - t0

