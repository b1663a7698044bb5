"""`edged build --nemo/--onnx`: a user's NeMo model (generated stand-ins, tests/nemo_models.py) into an RMIR.

Checks the manifest against /work/notes/s7/nemo_contract.md for each family, the no-.nemo
layout, deploy and loading the deployed networks with ONNX Runtime, the CLI, and that each
wrong input is one clear error and no archive.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from edged.backends import BackendOptions, get_backend
from edged.errors import ModelImportError
from edged.importers import source_for_build
from edged.importers.nemo import import_nemo
from edged.importers.nemo_config import preprocessor_settings, read_tokens_txt
from edged.importers.spmodel import read_pieces
from edged.repository.deploy import deploy
from edged.repository.records import DEPLOY_RECORD, DeployTarget
from edged.rmir import RmirRef, extract_rmir
from edged.rmir.build import build_rmir
from edged.rmir.manifest import Manifest
from tests.nemo_models import NemoFiles, make_nemo, write_layout_dir, write_onnx
from tests.test_build_cli import edged, ok, user_error

sentencepiece = pytest.importorskip("sentencepiece", reason="the test tokenizer is trained with sentencepiece")

FAMILY = {"rnnt": "nemo-rnnt", "tdt": "nemo-tdt", "ctc": "nemo-ctc", "hybrid": "nemo-rnnt"}
PREPROCESSOR_KEYS = {
    "sample_rate", "window_size", "window_stride", "n_fft", "features", "window", "normalize", "dither",
    "preemph", "log", "log_zero_guard_type", "log_zero_guard_value", "mag_power", "lowfreq", "highfreq",
    "pad_to", "pad_value", "frame_splicing", "exact_pad", "mel_norm",
}
OPTIONS = BackendOptions(intra_op_threads=1, inter_op_threads=1)


def build(tmp_path: Path, nemo: Path | None, onnx_dir: Path | None, **overrides: Any) -> tuple[Manifest, Path]:
    """Build an RMIR the way `edged build` does; returns its manifest and the folder it was extracted to."""
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out.rmir"
    src = source_for_build("speech_recognition", [], None, None, overrides, work, nemo=nemo, onnx_dir=onnx_dir)
    build_rmir(src, RmirRef(out))
    dest = tmp_path / "extracted"
    dest.mkdir()
    manifest = extract_rmir(RmirRef(out), dest).manifest
    return manifest, dest


def tokens_of(folder: Path) -> list[str]:
    lines = (folder / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(len(lines))]
    return [line.rsplit(" ", 1)[0] for line in lines]


def sp_pieces(model: Path) -> list[str]:
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def run_like_exported(files: NemoFiles, folder: Path, manifest: Manifest) -> None:
    """The RMIR's networks give the same outputs as NeMo's export files (dimension renaming changed nothing)."""
    rng = np.random.default_rng(1)
    audio = {"audio_signal": rng.standard_normal((2, files.features, 57)).astype(np.float32),
             "length": np.array([57, 40], np.int64)}
    pairs = {n.name: (folder / n.file) for n in manifest.networks}
    originals = {p.stem.split("-")[0]: p for p in files.onnx_files}
    first = "model" if "model" in pairs else "encoder"
    new = ort.InferenceSession(str(pairs[first])).run(None, audio)
    old = ort.InferenceSession(str(originals[first])).run(None, audio)
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a, b)
    if "decoder_joint" in pairs:
        layers, hidden = manifest.parameters["decoder_state"]["layers"], manifest.parameters["decoder_state"]["hidden"]
        feeds = {"encoder_outputs": new[0][:, :, :1], "targets": np.array([[files.blank_id], [3]], np.int32),
                 "target_length": np.ones(2, np.int32),
                 "input_states_1": rng.standard_normal((layers, 2, hidden)).astype(np.float32),
                 "input_states_2": rng.standard_normal((layers, 2, hidden)).astype(np.float32)}
        out = ort.InferenceSession(str(pairs["decoder_joint"])).run(None, feeds)
        ref = ort.InferenceSession(str(originals["decoder_joint"])).run(None, feeds)
        for a, b in zip(out, ref):
            np.testing.assert_array_equal(a, b)
        classes = files.vocab_size + 1 + len(files.durations)
        assert out[0].shape == (2, 1, 1, classes)


# --- one RMIR per family ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["rnnt", "tdt", "ctc", "hybrid"])
def test_nemo_checkpoint_builds_an_rmir_per_the_contract(tmp_path: Path, family: str) -> None:
    """A .nemo plus its ONNX export: family, networks, tokens, parameters and shape ranges as the contract says."""
    files = make_nemo(tmp_path / "src", family, pred_layers=2 if family == "tdt" else 1)
    manifest, folder = build(tmp_path, files.nemo_path, files.onnx_dir)
    assert files.tokenizer_model is not None

    assert manifest.name == "model" and manifest.pipeline == "speech_recognition"
    assert manifest.model_family == FAMILY[family] and manifest.sample_rate == 16000
    assert manifest.license == "unknown" and manifest.language_code == "en-US"
    assert tokens_of(folder) == sp_pieces(files.tokenizer_model) == files.pieces
    assert (folder / "tokenizer.model").read_bytes() == files.tokenizer_model.read_bytes()

    p = manifest.parameters
    assert p["vocabulary_size"] == p["blank_id"] == len(files.pieces)
    assert p["subsampling_factor"] == 4
    assert set(p["preprocessor"]) == PREPROCESSOR_KEYS
    assert p["preprocessor"]["dither"] == 0.0  # the config's 1e-5 is for training
    assert (p["preprocessor"]["features"], p["preprocessor"]["n_fft"], p["preprocessor"]["window_size"]) == (80, 512, 0.025)
    assert p["preprocessor"]["normalize"] == "per_feature" and p["preprocessor"]["pad_to"] == 0
    assert p["endpointing"]["stop_history_ms"] == 700
    nets = {n.name: n for n in manifest.networks}
    if family == "ctc":
        assert set(nets) == {"model"}
        assert "decoder_state" not in p and "durations" not in p and "max_symbols_per_step" not in p
        assert [t.name for t in nets["model"].outputs] == ["logprobs"]
        assert nets["model"].outputs[0].shape == ("batch", "frames", len(files.pieces) + 1)
    else:
        assert set(nets) == {"encoder", "decoder_joint"}
        assert p["decoder_state"] == {"layers": files.pred_layers, "hidden": files.pred_hidden}
        assert p["max_symbols_per_step"] == 10
        assert p.get("durations") == ([0, 1, 2, 3, 4] if family == "tdt" else None)
        dj = nets["decoder_joint"]
        assert [t.name for t in dj.inputs] == ["encoder_outputs", "targets", "target_length", "input_states_1",
                                               "input_states_2"]
        assert {t.name: t.dtype for t in dj.inputs}["targets"] == "int32"
        assert dj.inputs[0].shape == ("batch", files.enc_dim, "decoder_frames")
        assert dj.shape_ranges["encoder_outputs"].max == (8, files.enc_dim, 1)
        assert dj.shape_ranges["input_states_1"].max == (files.pred_layers, 8, files.pred_hidden)
        assert [t.name for t in nets["encoder"].outputs] == ["outputs", "encoded_lengths"]
        assert nets["encoder"].outputs[0].shape == ("batch", files.enc_dim, "frames")
    first = nets.get("encoder") or nets["model"]
    assert first.inputs[0].shape == ("batch", 80, "time")
    assert first.shape_ranges["audio_signal"].min == (1, 80, 16)
    assert first.shape_ranges["audio_signal"].max == (8, 80, 3001)  # 30 s of 10 ms frames
    assert manifest.provenance["importer"] == "nemo" and manifest.provenance["source"] == "model.nemo"
    run_like_exported(files, folder, manifest)


def test_gzipped_nemo_name_language_and_licence_from_the_command(tmp_path: Path) -> None:
    """Old NeMo gzipped its archives; --name, --language-code and --license reach the manifest."""
    files = make_nemo(tmp_path / "src", "rnnt", gzip=True, name="stt_en_conformer_transducer_small")
    manifest, _ = build(tmp_path, files.nemo_path, files.onnx_dir, license="CC-BY-4.0", language_code="de-DE")
    assert manifest.name == "stt_en_conformer_transducer_small"
    assert (manifest.license, manifest.language_code) == ("CC-BY-4.0", "de-DE")
    manifest, _ = build(tmp_path / "again", files.nemo_path, files.onnx_dir, name="my-asr")
    assert manifest.name == "my-asr"


def test_hybrid_exported_as_ctc_is_a_ctc_model(tmp_path: Path) -> None:
    """A hybrid RNNT-CTC model exported with decoder_type ctc (one model.onnx) builds as nemo-ctc."""
    files = make_nemo(tmp_path / "src", "hybrid")
    ctc_dir = tmp_path / "ctc-export"
    write_onnx(ctc_dir, "ctc", vocab=files.vocab_size, enc_dim=files.enc_dim)
    manifest, folder = build(tmp_path, files.nemo_path, ctc_dir)
    assert manifest.model_family == "nemo-ctc"
    assert [n.name for n in manifest.networks] == ["model"]
    assert tokens_of(folder) == files.pieces


def test_char_model_labels_become_tokens_with_the_space_as_word_boundary(tmp_path: Path) -> None:
    """A char-based EncDecCTCModel: its labels are the tokens, the space label written '▁'."""
    files = make_nemo(tmp_path / "src", "ctc", char=True)
    manifest, folder = build(tmp_path, files.nemo_path, files.onnx_dir)
    assert tokens_of(folder)[:3] == ["\u2581", "a", "b"] and tokens_of(folder) == files.pieces
    assert manifest.parameters["vocabulary_size"] == 28 and "tokenizer" not in manifest.parameters
    assert [a.file for a in manifest.artifacts] == ["tokens.txt"]


def test_fastconformer_subsampling_and_window_in_samples(tmp_path: Path) -> None:
    """subsampling_factor 8 sets the encoder frames' range; a window given in samples is converted."""
    files = make_nemo(tmp_path / "src", "tdt", subsampling=8)
    config = yaml.safe_load(extract_member(files.nemo_path, "model_config.yaml"))
    pre = config["preprocessor"]
    del pre["window_size"], pre["window_stride"], pre["n_fft"]
    pre.update({"n_window_size": 400, "n_window_stride": 160})
    repack(files.nemo_path, "model_config.yaml", yaml.safe_dump(config).encode())
    manifest, _ = build(tmp_path, files.nemo_path, files.onnx_dir)
    p = manifest.parameters
    assert p["subsampling_factor"] == 8
    assert (p["preprocessor"]["window_size"], p["preprocessor"]["window_stride"]) == (0.025, 0.01)
    assert p["preprocessor"]["n_fft"] == 512  # smallest power of 2 >= 400 samples, as NeMo
    enc = {n.name: n for n in manifest.networks}["encoder"]
    assert enc.outputs[0].shape[2] == "frames"


# --- the layout without a .nemo ---------------------------------------------------------------------


def test_folder_with_nemo_yaml_and_tokenizer_model(tmp_path: Path) -> None:
    """--onnx DIR alone: the ONNX files, tokenizer.model and nemo.yaml give the same RMIR content."""
    files = make_nemo(tmp_path / "src", "tdt")
    layout = write_layout_dir(files, tmp_path / "my-parakeet")
    manifest, folder = build(tmp_path, None, layout)
    from_nemo, _ = build(tmp_path / "nemo", files.nemo_path, files.onnx_dir)
    assert manifest.name == "my-parakeet" and manifest.model_family == "nemo-tdt"
    assert tokens_of(folder) == files.pieces
    skip = {"source", "source_sha256", "nemo_target"}
    assert manifest.parameters == from_nemo.parameters
    assert {k: v for k, v in manifest.provenance.items() if k not in skip} == \
        {k: v for k, v in from_nemo.provenance.items() if k not in skip}


def test_folder_with_sherpa_style_tokens_txt(tmp_path: Path) -> None:
    """tokens.txt with a trailing `<blk> N` line (as sherpa-onnx writes it): the blank is dropped."""
    files = make_nemo(tmp_path / "src", "ctc")
    layout = write_layout_dir(files, tmp_path / "ctc-model", tokens_txt=True)
    with (layout / "tokens.txt").open("a", encoding="utf-8") as f:
        f.write(f"<blk> {files.vocab_size}\n")
    manifest, folder = build(tmp_path, None, layout)
    assert tokens_of(folder) == files.pieces and manifest.parameters["blank_id"] == files.vocab_size
    assert [a.file for a in manifest.artifacts] == ["tokens.txt"]


def test_folder_with_the_extracted_model_config(tmp_path: Path) -> None:
    """The .nemo's model_config.yaml and tokenizer, extracted beside the ONNX files, work as the .nemo does."""
    files = make_nemo(tmp_path / "src", "rnnt")
    layout = tmp_path / "extracted-model"
    layout.mkdir()
    with tarfile.open(files.nemo_path) as tar:
        tar.extractall(layout, filter="data")
    for f in files.onnx_files:
        (layout / f.name).write_bytes(f.read_bytes())
    manifest, folder = build(tmp_path, None, layout)
    assert manifest.model_family == "nemo-rnnt" and tokens_of(folder) == files.pieces


# --- deploy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["rnnt", "ctc"])
def test_deployed_nemo_model_loads_with_onnxruntime(tmp_path: Path, family: str, cpu_target: DeployTarget) -> None:
    """`edged deploy` of the RMIR: every network optimised, loadable and runnable with the ORT backend."""
    files = make_nemo(tmp_path / "src", family)
    work = tmp_path / "work"
    work.mkdir()
    rmir = tmp_path / "rmir" / "my-asr.rmir"
    rmir.parent.mkdir()
    build_rmir(import_nemo(files.nemo_path, files.onnx_dir, work, {"name": "my-asr"}), RmirRef(rmir))
    outcome = deploy(RmirRef(rmir), tmp_path / "models", cpu_target, OPTIONS)
    assert outcome.status == "deployed" and outcome.detail.startswith("onnxruntime")
    folder = tmp_path / "models" / "my-asr"
    record = yaml.safe_load((folder / DEPLOY_RECORD).read_text(encoding="utf-8"))
    assert set(record["networks"]) == ({"model"} if family == "ctc" else {"encoder", "decoder_joint"})
    assert (folder / "tokens.txt").is_file() and (folder / "tokenizer.model").is_file()
    backend = get_backend("onnxruntime")
    sessions = {n: backend.load(folder / e["file"], OPTIONS) for n, e in record["networks"].items()}
    audio: dict[str, np.ndarray] = {"audio_signal": np.zeros((1, 80, 100), np.float32),
                                    "length": np.array([100], np.int64)}
    first = sessions.get("encoder") or sessions["model"]
    out = first.run(audio)
    if family == "ctc":
        assert out["logprobs"].shape == (1, 25, files.vocab_size + 1)
    else:
        assert out["outputs"].shape == (1, files.enc_dim, 25) and out["encoded_lengths"].tolist() == [25]
        step = sessions["decoder_joint"].run({
            "encoder_outputs": out["outputs"][:, :, :1], "targets": np.array([[files.blank_id]], np.int32),
            "target_length": np.ones(1, np.int32),
            "input_states_1": np.zeros((1, 1, files.pred_hidden), np.float32),
            "input_states_2": np.zeros((1, 1, files.pred_hidden), np.float32)})
        assert step["outputs"].shape == (1, 1, 1, files.vocab_size + 1)
        assert step["output_states_1"].shape == (1, 1, files.pred_hidden)


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_builds_and_inspects_a_nemo_model(tmp_path: Path) -> None:
    """`edged build speech_recognition my.rmir --nemo my.nemo --onnx DIR`, then `edged inspect`."""
    files = make_nemo(tmp_path, "tdt", name="my-parakeet")
    out = ok(edged(tmp_path, "build", "speech_recognition", "my.rmir", "--nemo", str(files.nemo_path),
                   "--onnx", str(files.onnx_dir), "--license", "CC-BY-4.0"))
    assert "Built my.rmir (my-parakeet, speech_recognition" in out
    shown = ok(edged(tmp_path, "inspect", "my.rmir"))
    assert "family nemo-tdt" in shown and "licence CC-BY-4.0" in shown
    assert "decoder_joint inputs: encoder_outputs['batch', 32, 'decoder_frames']" in shown


def test_cli_errors_are_one_line_and_write_no_archive(tmp_path: Path) -> None:
    """Wrong inputs give one `edged:` line, exit 1, and no OUT.rmir (nor a temporary one) is left."""
    rnnt = make_nemo(tmp_path / "a", "rnnt")
    ctc = make_nemo(tmp_path / "b", "ctc")
    aed = make_nemo(tmp_path / "c", "rnnt", target="nemo.collections.asr.models.EncDecMultiTaskModel")

    def build_cli(*args: str) -> Any:
        return edged(tmp_path, "build", "speech_recognition", "out.rmir", *args)

    user_error(build_cli("--nemo", str(aed.nemo_path), "--onnx", str(aed.onnx_dir)),
               "EncDecMultiTaskModel", "EncDecRNNTBPEModel", "EncDecCTCModelBPE")
    user_error(build_cli("--nemo", str(rnnt.nemo_path), "--onnx", str(ctc.onnx_dir)),
               "transducer", "encoder-model.onnx and decoder_joint-model.onnx")
    user_error(build_cli("--nemo", str(rnnt.nemo_path)), "--onnx DIR")
    user_error(build_cli("--onnx", str(rnnt.onnx_dir)), "nemo.yaml")
    user_error(build_cli("--nemo", str(rnnt.nemo_path), "--onnx", str(rnnt.onnx_dir), "--model-family", "x"),
               "--model-family")
    user_error(edged(tmp_path, "build", "vad", "out.rmir", "--nemo", str(rnnt.nemo_path), "--onnx",
                     str(rnnt.onnx_dir)), "speech_recognition")
    assert not list(tmp_path.glob("*.rmir*")) and not list(tmp_path.glob(".*"))


# --- clear errors ----------------------------------------------------------------------------------


def import_error(tmp_path: Path, nemo: Path | None, onnx_dir: Path | None) -> str:
    work = tmp_path / "err-work"
    work.mkdir(exist_ok=True)
    with pytest.raises(ModelImportError) as info:
        import_nemo(nemo, onnx_dir, work)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_unsupported_families_name_what_is_supported(tmp_path: Path) -> None:
    """Canary (AED), a stateless transducer and an MFCC preprocessor are refused, saying what edged takes."""
    for i, target in enumerate(["nemo.collections.asr.models.EncDecMultiTaskModel",
                                "nemo.collections.asr.models.SLMModel"]):
        files = make_nemo(tmp_path / f"m{i}", "rnnt", target=target)
        message = import_error(tmp_path, files.nemo_path, files.onnx_dir)
        assert target.rsplit(".", 1)[1] in message and "EncDecRNNTBPEModel" in message
    files = make_nemo(tmp_path / "s", "rnnt")
    config = yaml.safe_load(extract_member(files.nemo_path, "model_config.yaml"))
    config["decoder"]["_target_"] = "nemo.collections.asr.modules.StatelessTransducerDecoder"
    repack(files.nemo_path, "model_config.yaml", yaml.safe_dump(config).encode())
    assert "stateless" in import_error(tmp_path, files.nemo_path, files.onnx_dir)
    config["decoder"]["_target_"] = "nemo.collections.asr.modules.RNNTDecoder"
    config["preprocessor"]["_target_"] = "nemo.collections.asr.modules.AudioToMFCCPreprocessor"
    repack(files.nemo_path, "model_config.yaml", yaml.safe_dump(config).encode())
    assert "AudioToMFCCPreprocessor" in import_error(tmp_path, files.nemo_path, files.onnx_dir)


def test_missing_tokenizer(tmp_path: Path) -> None:
    """A BPE model whose .nemo lacks the tokenizer file, and a folder without tokens, say so."""
    files = make_nemo(tmp_path / "src", "rnnt", tokenizer=False)
    message = import_error(tmp_path, files.nemo_path, files.onnx_dir)
    assert "no SentencePiece tokenizer" in message and "_tokenizer.model" in message
    layout = write_layout_dir(make_nemo(tmp_path / "src2", "ctc"), tmp_path / "layout")
    (layout / "tokenizer.model").unlink()
    assert "no tokenizer.model or tokens.txt" in import_error(tmp_path, None, layout)


def test_onnx_files_that_do_not_match_the_family(tmp_path: Path) -> None:
    """A CTC export given as a transducer's encoder, a transducer export for a CTC model, a TDT joint for RNN-T."""
    rnnt = make_nemo(tmp_path / "r", "rnnt")
    ctc = make_nemo(tmp_path / "c", "ctc")
    tdt = make_nemo(tmp_path / "t", "tdt")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "encoder-model.onnx").write_bytes((ctc.onnx_dir / "model.onnx").read_bytes())
    (mixed / "decoder_joint-model.onnx").write_bytes((rnnt.onnx_dir / "decoder_joint-model.onnx").read_bytes())
    message = import_error(tmp_path, rnnt.nemo_path, mixed)
    assert "encoder-model.onnx has no output 'outputs'" in message and "CTC export" in message
    assert "CTC model" in import_error(tmp_path, ctc.nemo_path, rnnt.onnx_dir)
    message = import_error(tmp_path, rnnt.nemo_path, tdt.onnx_dir)
    assert "54 outputs" in message and "durations" in message
    # An encoder given as the decoder_joint.
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "encoder-model.onnx").write_bytes((rnnt.onnx_dir / "encoder-model.onnx").read_bytes())
    (swapped / "decoder_joint-model.onnx").write_bytes((rnnt.onnx_dir / "encoder-model.onnx").read_bytes())
    message = import_error(tmp_path, rnnt.nemo_path, swapped)
    assert "decoder_joint-model.onnx" in message and "encoder_outputs" in message


def test_missing_encoder_and_features_mismatch(tmp_path: Path) -> None:
    """A folder with only the decoder_joint, an empty one, and an encoder for other features."""
    rnnt = make_nemo(tmp_path / "r", "rnnt")
    only_joint = tmp_path / "only-joint"
    only_joint.mkdir()
    (only_joint / "decoder_joint-model.onnx").write_bytes((rnnt.onnx_dir / "decoder_joint-model.onnx").read_bytes())
    assert "no encoder*.onnx" in import_error(tmp_path, rnnt.nemo_path, only_joint)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .onnx file" in import_error(tmp_path, rnnt.nemo_path, empty)
    assert "is not a folder" in import_error(tmp_path, rnnt.nemo_path, tmp_path / "nowhere")
    other = make_nemo(tmp_path / "o", "rnnt", features=64)
    message = import_error(tmp_path, rnnt.nemo_path, other.onnx_dir)
    assert "64 features" in message and "gives 80" in message


def test_not_a_nemo_archive_and_bad_layout_yaml(tmp_path: Path) -> None:
    """A file that is no tar, a tar without model_config.yaml, nemo.yaml with a wrong family or key."""
    rnnt = make_nemo(tmp_path / "r", "rnnt")
    bad = tmp_path / "bad.nemo"
    bad.write_bytes(b"this is not a tar archive at all" * 100)
    assert "not a .nemo archive" in import_error(tmp_path, bad, rnnt.onnx_dir)
    empty_tar = tmp_path / "empty.nemo"
    with tarfile.open(empty_tar, "w"):
        pass
    assert "no model_config.yaml" in import_error(tmp_path, empty_tar, rnnt.onnx_dir)
    layout = write_layout_dir(rnnt, tmp_path / "layout")
    (layout / "nemo.yaml").write_text("model_family: nemo-aed\nsubsampling_factor: 4\n", encoding="utf-8")
    assert "nemo-rnnt, nemo-tdt, nemo-ctc" in import_error(tmp_path, None, layout)
    (layout / "nemo.yaml").write_text("model_family: nemo-rnnt\nsubsampling: 4\n", encoding="utf-8")
    assert "unknown key(s) subsampling" in import_error(tmp_path, None, layout)
    (layout / "nemo.yaml").write_text("model_family: nemo-tdt\n", encoding="utf-8")
    assert "durations" in import_error(tmp_path, None, layout)
    (layout / "nemo.yaml").write_text("model_family: [nemo-rnnt\n  subsampling_factor: 4\n", encoding="utf-8")
    assert "not readable YAML" in import_error(tmp_path, None, layout)
    (layout / "nemo.yaml").write_text("model_family: nemo-rnnt\n", encoding="utf-8")
    encoder = layout / "encoder-model.onnx"
    encoder.write_bytes(encoder.read_bytes()[:5000])
    assert "not a readable ONNX model" in import_error(tmp_path, None, layout)


# --- pure helpers ----------------------------------------------------------------------------------


def test_sentencepiece_reader_matches_the_library(tmp_path: Path) -> None:
    """Pieces, scores and types read from the protobuf equal sentencepiece's own."""
    files = make_nemo(tmp_path, "ctc")
    assert files.tokenizer_model is not None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(files.tokenizer_model))
    pieces = read_pieces(files.tokenizer_model.read_bytes())
    assert [p.piece for p in pieces] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert [p.score for p in pieces] == pytest.approx([sp.get_score(i) for i in range(sp.get_piece_size())])
    assert [p.type == 2 for p in pieces] == [sp.is_unknown(i) for i in range(sp.get_piece_size())]
    for junk in (b"", b"\xff\xff\xff", b"plain text, not a protobuf"):
        with pytest.raises(ModelImportError, match="not a SentencePiece model"):
            read_pieces(junk)


def test_preprocessor_settings_fill_nemo_defaults() -> None:
    """Keys a config leaves out take AudioToMelSpectrogramPreprocessor's defaults; 'tiny' guard; no normalising."""
    got = preprocessor_settings({"normalize": None, "log_zero_guard_value": "tiny", "dither": 1e-5}, "cfg")
    assert got["window_size"] == 0.02 and got["n_fft"] == 512 and got["features"] == 64 and got["pad_to"] == 16
    assert got["normalize"] == "NA" and got["dither"] == 0.0
    assert got["log_zero_guard_value"] == float(np.finfo(np.float32).tiny)
    assert set(got) == PREPROCESSOR_KEYS
    assert preprocessor_settings({"window": None}, "cfg")["window"] == "none"
    for bad, needle in (({"normalize": {"fixed_mean": [0.0], "fixed_std": [1.0]}}, "fixed_mean"),
                        ({"frame_splicing": 3}, "splices 3"), ({"features": "many"}, "malformed")):
        with pytest.raises(ModelImportError, match=needle):
            preprocessor_settings(bad, "cfg")


def test_tokens_txt_must_be_in_id_order(tmp_path: Path) -> None:
    """A tokens.txt whose ids skip is refused with its line number."""
    path = tmp_path / "tokens.txt"
    path.write_text("<unk> 0\n\u2581a 1\nb 3\n", encoding="utf-8")
    with pytest.raises(ModelImportError, match="line 3"):
        read_tokens_txt(path)


# --- archive editing for the tests -------------------------------------------------------------------


def extract_member(nemo: Path, name: str) -> bytes:
    with tarfile.open(nemo) as tar:
        member = next(m for m in tar.getmembers() if Path(m.name).name == name)
        data = tar.extractfile(member)
        assert data is not None
        return data.read()


def repack(nemo: Path, name: str, data: bytes) -> None:
    """Replace one member of a (plain tar) .nemo."""
    with tarfile.open(nemo) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, content in members:
            if Path(m.name).name == name:
                content = data
            m.size = len(content)
            tar.addfile(m, io.BytesIO(content))
    nemo.write_bytes(buf.getvalue())


def test_readme_nemo_yaml_example_builds(tmp_path: Path) -> None:
    """The nemo.yaml shown in README's "Your own NeMo model" section builds as it says."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your own NeMo model", 1)[1].split("\n## ", 1)[0]
    example = next(block.split("\n", 1)[1] for block in section.split("```")[1::2] if block.startswith("yaml"))
    files = make_nemo(tmp_path / "src", "tdt", features=128, subsampling=8)
    layout = write_layout_dir(files, tmp_path / "layout")
    (layout / "nemo.yaml").write_text(example, encoding="utf-8")
    manifest, _ = build(tmp_path, None, layout)
    assert manifest.name == "my-parakeet" and manifest.model_family == "nemo-tdt"
    p = manifest.parameters
    assert (p["subsampling_factor"], p["durations"], p["preprocessor"]["features"]) == (8, [0, 1, 2, 3, 4], 128)
    assert p["preprocessor"]["pad_to"] == 16  # NeMo's default where the YAML says nothing


def test_subsampling_measured_when_the_description_lacks_it(tmp_path: Path) -> None:
    """nemo.yaml without subsampling_factor: the encoder is run once to find it."""
    files = make_nemo(tmp_path / "src", "ctc", subsampling=8)
    layout = write_layout_dir(files, tmp_path / "layout")
    desc = yaml.safe_load((layout / "nemo.yaml").read_text(encoding="utf-8"))
    del desc["subsampling_factor"]
    (layout / "nemo.yaml").write_text(yaml.safe_dump(desc), encoding="utf-8")
    manifest, _ = build(tmp_path, None, layout)
    assert manifest.parameters["subsampling_factor"] == 8
    model = manifest.networks[0]
    assert model.shape_ranges["audio_signal"].max == (8, 80, 3001)


def test_readme_flow_build_copy_init_models(tmp_path: Path) -> None:
    """README's steps: edged build --nemo/--onnx, copy into $model_loc/rmir, edged init, edged models shows it."""
    files = make_nemo(tmp_path / "src", "rnnt", name="my-conformer")
    ok(edged(tmp_path, "build", "speech_recognition", "my.rmir", "--nemo", str(files.nemo_path),
             "--onnx", str(files.onnx_dir)))
    (tmp_path / "repo" / "rmir").mkdir(parents=True)
    (tmp_path / "repo" / "rmir" / "my.rmir").write_bytes((tmp_path / "my.rmir").read_bytes())
    (tmp_path / "config.sh").write_text("model_loc=repo\nuse_existing_rmirs=true\nbackend=cpu\n", encoding="utf-8")
    out = ok(edged(tmp_path, "init", "-c", "config.sh"))
    assert "my.rmir" in out and "deployed" in out
    items = yaml.safe_load(ok(edged(tmp_path, "models", "-c", "config.sh", "--json")))
    assert [(i["name"], i["family"], i["state"]) for i in items] == [("my-conformer", "nemo-rnnt", "ok")]
    listing = ok(edged(tmp_path, "models", "-c", "config.sh")).splitlines()
    assert listing[0].split()[:5] == ["NAME", "PIPELINE", "LANGUAGE", "BACKEND", "FAMILY"]
    assert "nemo-rnnt" in listing[1]


def test_streaming_export_external_weights_and_plain_member_names(tmp_path: Path) -> None:
    """A cache-aware encoder export and an export with external weight files are refused clearly;
    a .nemo whose members have no `./` prefix reads as well."""
    import onnx
    from onnx import TensorProto, helper

    rnnt = make_nemo(tmp_path / "r", "rnnt")
    streaming = tmp_path / "streaming"
    streaming.mkdir()
    encoder = onnx.load(str(rnnt.onnx_dir / "encoder-model.onnx"))
    encoder.graph.input.append(helper.make_tensor_value_info("cache_last_channel", TensorProto.FLOAT,
                                                             [1, "B", 70, rnnt.enc_dim]))
    onnx.save(encoder, str(streaming / "encoder-model.onnx"))
    (streaming / "decoder_joint-model.onnx").write_bytes((rnnt.onnx_dir / "decoder_joint-model.onnx").read_bytes())
    message = import_error(tmp_path, rnnt.nemo_path, streaming)
    assert "cache_last_channel" in message and "without cache support" in message

    external = tmp_path / "external"
    external.mkdir()
    onnx.save(onnx.load(str(rnnt.onnx_dir / "encoder-model.onnx")), str(external / "encoder-model.onnx"),
              save_as_external_data=True, location="encoder-model.onnx.data", size_threshold=0)
    (external / "decoder_joint-model.onnx").write_bytes((rnnt.onnx_dir / "decoder_joint-model.onnx").read_bytes())
    assert "external data" in import_error(tmp_path, rnnt.nemo_path, external)

    with tarfile.open(rnnt.nemo_path) as tar:
        members = [(Path(m.name).name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    plain = tmp_path / "plain.nemo"
    with tarfile.open(plain, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest, folder = build(tmp_path / "plain", plain, rnnt.onnx_dir)
    assert manifest.name == "plain" and tokens_of(folder) == rnnt.pieces


def test_same_nemo_model_builds_the_same_bytes(tmp_path: Path) -> None:
    """Built archives are reproducible (README, RMIR format): two builds of one model are identical."""
    files = make_nemo(tmp_path / "src", "tdt")
    build(tmp_path / "one", files.nemo_path, files.onnx_dir)
    build(tmp_path / "two", files.nemo_path, files.onnx_dir)
    assert (tmp_path / "one" / "out.rmir").read_bytes() == (tmp_path / "two" / "out.rmir").read_bytes()


def test_unresolvable_subsampling_is_measured_and_jasper_strides_multiply(tmp_path: Path) -> None:
    """An interpolation edged cannot resolve is measured from the encoder, not guessed; a
    ConvASREncoder's block strides multiply (Citrinet, ContextNet)."""
    from edged.importers.nemo_config import _subsampling

    files = make_nemo(tmp_path / "src", "rnnt", subsampling=8)
    config = yaml.safe_load(extract_member(files.nemo_path, "model_config.yaml"))
    config["encoder"]["subsampling_factor"] = "${model.encoder_subsampling}"
    repack(files.nemo_path, "model_config.yaml", yaml.safe_dump(config).encode())
    manifest, _ = build(tmp_path, files.nemo_path, files.onnx_dir)
    assert manifest.parameters["subsampling_factor"] == 8
    blocks = [{"stride": [1]}, {"stride": [2]}, {"stride": [2]}, {"stride": [1]}, {"stride": [2]}]
    assert _subsampling({"_target_": "nemo.collections.asr.modules.ConvASREncoder", "jasper": blocks}) == 8
    assert _subsampling({"jasper": [{"stride": ["${x}"]}]}) is None
    assert _subsampling({"_target_": "nemo.collections.asr.modules.ConformerEncoder"}) == 4
