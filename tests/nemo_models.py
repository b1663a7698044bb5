"""Generated stand-ins for NeMo ASR models: ONNX graphs with NeMo's export signatures, a real
SentencePiece BPE tokenizer trained here, packed into a `.nemo`-layout tar.

No NeMo checkpoint can be installed in tests, so these models have random weights (fixed seed)
and give random transcripts; what they share with real NeMo exports is every input and output
name, dtype, layout and symbolic dimension naming (`audio_signal_dynamic_axes_1` ...), the
lengths computed in-graph, and the archive layout (`./model_config.yaml`, hash-prefixed
`..._tokenizer.model`).

API (everything else is a helper):

    files = make_nemo(tmp_path, "rnnt")        # "rnnt" | "tdt" | "ctc" | "hybrid" (RNNT export)
    files.nemo_path        # TMP/model.nemo (tar; gzip=True for a .tar.gz-style one)
    files.onnx_dir         # encoder-model.onnx + decoder_joint-model.onnx, or model.onnx (CTC)
    files.pieces           # sentencepiece id_to_piece(i) for every id (no blank; blank = len)
    files.vocab_size, files.blank_id, files.durations, files.subsampling, files.features,
    files.enc_dim, files.pred_hidden, files.pred_layers, files.config (the model_config dict)

    make_nemo(tmp, "rnnt", size="small")       # ~10 M parameters, like a small Conformer
                                               # (d_model 176, 16 layers, 80 features, /4)
    make_nemo(tmp, "ctc", char=True)           # char-based: labels in the config, no tokenizer
    make_nemo(tmp, "rnnt", target="nemo.collections.asr.models.EncDecMultiTaskModel")  # unsupported
    make_nemo(tmp, "rnnt", tokenizer=False)    # a BPE config whose tokenizer file is missing
    write_layout_dir(files, dest)              # the no-.nemo layout: ONNX + tokenizer.model + nemo.yaml

The encoder is a strided Conv1d (kernel = stride = subsampling, right padding so frames =
ceil(time / subsampling), as NeMo's `encoded_lengths`), then `layers` Conformer-like macaron
blocks (half feed-forward, masked single-head self-attention, half feed-forward; residuals and
LayerNorms). The attention masks padded frames, so a batch (features zero past each length, as
NeMo's preprocessor pads) gives each item the outputs it gets alone. The decoder_joint is NeMo's
RNNTDecoderJoint export: an embedding (blank row zero, as NeMo's blank_as_pad), `pred_layers`
ONNX LSTMs, and the joint (Linear enc + Linear pred, ReLU, Linear to vocab+1 [+ durations]),
returning logits. The CTC model is the encoder, a Linear and LogSoftmax (`logprobs`).
"""

from __future__ import annotations

import gzip as gzip_module
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

FAMILIES = ("rnnt", "tdt", "ctc", "hybrid")
TDT_DURATIONS = [0, 1, 2, 3, 4]

TARGETS = {
    "rnnt": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
    "tdt": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
    "ctc": "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
    "hybrid": "nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models.EncDecHybridRNNTCTCBPEModel",
}
CHAR_TARGETS = {
    "rnnt": "nemo.collections.asr.models.rnnt_models.EncDecRNNTModel",
    "ctc": "nemo.collections.asr.models.ctc_models.EncDecCTCModel",
}
CHAR_LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"enc_dim": 32, "layers": 1, "pred_hidden": 32, "joint_hidden": 32, "vocab": 48},
    # NeMo's Conformer-S shape (d_model 176, 16 layers); pred/joint 320 as its transducer configs.
    "small": {"enc_dim": 176, "layers": 16, "pred_hidden": 320, "joint_hidden": 320, "vocab": 128},
}

_TEXT = """\
the quick brown fox jumps over the lazy dog
she sells sea shells by the sea shore
a journey of a thousand miles begins with a single step
speech recognition turns spoken words into written text
the weather today is cloudy with a chance of rain in the evening
please call me back when you get this message
we will meet at the station at half past seven
turn left at the next corner and then go straight ahead
my favourite colour is green and my brother likes blue
the meeting has been moved to thursday afternoon
how much does it cost to send a parcel to london
there are twelve months in a year and seven days in a week
can you recommend a good restaurant near the river
the children played in the garden until it was dark
remember to switch off the lights before you leave
our train was delayed by almost forty minutes this morning
open the window and let some fresh air into the room
he reads the newspaper every morning with a cup of coffee
the library closes at nine on weekdays and at five on sundays
thank you very much for your help with the project
"""


@dataclass(frozen=True)
class NemoFiles:
    """What make_nemo wrote and the facts a test compares a build or a decoder against."""

    nemo_path: Path
    onnx_dir: Path
    family: str
    """"rnnt", "tdt", "ctc" or "hybrid" (as asked; a hybrid is exported as RNNT)."""
    pieces: list[str]
    """Token of each id as tokens.txt holds it, in id order, without the blank (blank_id ==
    len(pieces)): SentencePiece's id_to_piece, or a char model's labels with the space as '▁'."""
    tokenizer_model: Path | None
    config: dict[str, Any]
    enc_dim: int
    pred_hidden: int
    pred_layers: int
    subsampling: int
    features: int
    durations: list[int] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        """Tokens without the blank."""
        return len(self.pieces)

    @property
    def blank_id(self) -> int:
        """NeMo's convention: the blank is the last class."""
        return len(self.pieces)

    @property
    def onnx_files(self) -> list[Path]:
        """The ONNX files NeMo's export would have written."""
        return sorted(self.onnx_dir.glob("*.onnx"))


def train_tokenizer(path: Path, vocab_size: int, seed_text: str = _TEXT) -> list[str]:
    """Train a SentencePiece BPE model as NeMo's tokenizer script does (unk 0, no bos/eos); its pieces."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(seed_text.splitlines()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def make_nemo(
    tmpdir: Path,
    family: str = "rnnt",
    *,
    size: str = "tiny",
    features: int = 80,
    subsampling: int = 4,
    pred_layers: int = 1,
    seed: int = 0,
    char: bool = False,
    tokenizer: bool = True,
    target: str | None = None,
    gzip: bool = False,
    normalize: str = "per_feature",
    name: str = "model",
) -> NemoFiles:
    """Write `name`.nemo and its ONNX export under `tmpdir`; see the module docstring."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    dims = SIZES[size]
    tmpdir = Path(tmpdir)
    work = tmpdir / f"{name}-parts"
    work.mkdir(parents=True, exist_ok=True)
    tok_path: Path | None = None
    if char:
        labels = list(CHAR_LABELS)
        pieces = ["\u2581" if c == " " else c for c in labels]
    else:
        tok_path = work / "tokenizer.model"
        pieces = train_tokenizer(tok_path, dims["vocab"])
    durations = list(TDT_DURATIONS) if family == "tdt" else []
    config = model_config(family, labels if char else pieces, dims, features, subsampling, pred_layers, char=char,
                          normalize=normalize)
    if char and family not in CHAR_TARGETS:
        raise ValueError(f"char=True is for {tuple(CHAR_TARGETS)} only")
    config["target"] = target or (CHAR_TARGETS if char else TARGETS)[family]
    config["nemo_version"] = "1.23.0"
    onnx_dir = tmpdir / f"{name}-onnx"
    write_onnx(onnx_dir, "ctc" if family == "ctc" else "rnnt", vocab=len(pieces), features=features,
               subsampling=subsampling, enc_dim=dims["enc_dim"], layers=dims["layers"],
               pred_hidden=dims["pred_hidden"], joint_hidden=dims["joint_hidden"],
               pred_layers=pred_layers, durations=durations, seed=seed)
    members: dict[str, bytes] = {}
    if tok_path is not None:
        h = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
        config["tokenizer"].update({
            "model_path": f"nemo:{h}_tokenizer.model",
            "vocab_path": "nemo:0f1e2d3c4b5a69788796a5b4c3d2e1f0_vocab.txt",
            "spe_tokenizer_vocab": "nemo:99aa88bb77cc66dd55ee44ff33001122_tokenizer.vocab",
        })
        if tokenizer:
            members[f"{h}_tokenizer.model"] = tok_path.read_bytes()
        members["0f1e2d3c4b5a69788796a5b4c3d2e1f0_vocab.txt"] = _wordpiece_vocab(pieces).encode()
        members["99aa88bb77cc66dd55ee44ff33001122_tokenizer.vocab"] = "".join(
            f"{p}\t0\n" for p in pieces).encode()
    members["model_config.yaml"] = yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode()
    members["model_weights.ckpt"] = b"not read by edged: the weights come from the ONNX export\n"
    nemo_path = tmpdir / f"{name}.nemo"
    _write_tar(nemo_path, members, gzip)
    return NemoFiles(nemo_path, onnx_dir, family, pieces, tok_path, config, dims["enc_dim"],
                     dims["pred_hidden"], pred_layers, subsampling, features, durations)


def write_layout_dir(files: NemoFiles, dest: Path, *, tokens_txt: bool = False) -> Path:
    """The no-.nemo layout: the ONNX files, tokenizer.model (or tokens.txt) and nemo.yaml in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in files.onnx_files:
        (dest / f.name).write_bytes(f.read_bytes())
    if tokens_txt or files.tokenizer_model is None:
        (dest / "tokens.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(files.pieces)),
                                         encoding="utf-8")
    else:
        (dest / "tokenizer.model").write_bytes(files.tokenizer_model.read_bytes())
    family = {"rnnt": "nemo-rnnt", "hybrid": "nemo-rnnt", "tdt": "nemo-tdt", "ctc": "nemo-ctc"}[files.family]
    desc: dict[str, Any] = {
        "model_family": family,
        "subsampling_factor": files.subsampling,
        "preprocessor": {k: v for k, v in files.config["preprocessor"].items() if k != "_target_"},
    }
    if files.durations:
        desc["durations"] = files.durations
    (dest / "nemo.yaml").write_text(yaml.safe_dump(desc, sort_keys=False), encoding="utf-8")
    return dest


def model_config(
    family: str, pieces: list[str], dims: dict[str, int], features: int, subsampling: int,
    pred_layers: int, *, char: bool = False, normalize: str = "per_feature",
) -> dict[str, Any]:
    """A model_config.yaml shaped like the ones NeMo saves (only the sections edged reads, and some noise)."""
    vocab = len(pieces)
    cfg: dict[str, Any] = {
        "sample_rate": 16000,
        "log_prediction": True,
        "skip_nan_grad": False,
        "model_defaults": {"enc_hidden": dims["enc_dim"], "pred_hidden": dims["pred_hidden"],
                           "joint_hidden": dims["joint_hidden"]},
        "train_ds": {"manifest_filepath": "/data/train_manifest.json", "sample_rate": 16000,
                     "batch_size": 16, "shuffle": True, "max_duration": 16.7},
    }
    if char:
        cfg["labels"] = list(pieces)
    else:
        cfg["tokenizer"] = {"dir": "/tokenizers/tokenizer_spe_bpe_v128", "type": "bpe"}
    cfg["preprocessor"] = {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": 16000, "normalize": normalize, "window_size": 0.025, "window_stride": 0.01,
        "window": "hann", "features": features, "n_fft": 512, "log": True, "frame_splicing": 1,
        "dither": 1.0e-05, "pad_to": 0, "pad_value": 0.0,
    }
    cfg["spec_augment"] = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                           "freq_masks": 2, "time_masks": 5, "freq_width": 27, "time_width": 0.05}
    cfg["encoder"] = {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": features, "feat_out": -1,
        "n_layers": dims["layers"], "d_model": dims["enc_dim"], "subsampling": "striding",
        "subsampling_factor": subsampling, "subsampling_conv_channels": dims["enc_dim"],
        "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": 4,
        "att_context_size": [-1, -1], "xscaling": True, "conv_kernel_size": 31, "dropout": 0.1,
    }
    if family == "ctc":
        cfg["decoder"] = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder",
                          "feat_in": dims["enc_dim"], "num_classes": vocab, "vocabulary": list(pieces)}
        cfg["optim"] = {"name": "adamw", "lr": 2.0}
        return cfg
    cfg["decoder"] = {
        "_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
        "random_state_sampling": False, "blank_as_pad": True, "vocab_size": vocab,
        "prednet": {"pred_hidden": "${model_defaults.pred_hidden}", "pred_rnn_layers": pred_layers,
                    "t_max": None, "dropout": 0.2},
    }
    cfg["joint"] = {
        "_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
        "preserve_memory": False, "fuse_loss_wer": True, "fused_batch_size": 4,
        "jointnet": {"joint_hidden": "${model_defaults.joint_hidden}", "activation": "relu",
                     "dropout": 0.2, "encoder_hidden": "${model_defaults.enc_hidden}",
                     "pred_hidden": "${model_defaults.pred_hidden}"},
        "num_classes": vocab, "vocabulary": list(pieces),
    }
    cfg["decoding"] = {"strategy": "greedy_batch", "greedy": {"max_symbols": 10},
                       "beam": {"beam_size": 2, "return_best_hypothesis": False}}
    cfg["loss"] = {"loss_name": "default", "warprnnt_numba_kwargs": {"fastemit_lambda": 0.0}}
    if family == "tdt":
        cfg["model_defaults"].update({"tdt_durations": list(TDT_DURATIONS),
                                      "num_tdt_durations": len(TDT_DURATIONS)})
        cfg["joint"]["num_extra_outputs"] = "${model_defaults.num_tdt_durations}"
        cfg["decoding"].update({"model_type": "tdt", "durations": "${model_defaults.tdt_durations}"})
        cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {
            "fastemit_lambda": 0.0, "clamp": -1.0, "durations": "${model_defaults.tdt_durations}",
            "sigma": 0.02, "omega": 0.1}}
    if family == "hybrid":
        cfg["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": dims["enc_dim"],
            "num_classes": vocab, "vocabulary": list(pieces)}}
    cfg["optim"] = {"name": "adamw", "lr": 2.0}
    return cfg


def write_onnx(
    out_dir: Path, kind: str, *, vocab: int, features: int = 80, subsampling: int = 4, enc_dim: int = 32,
    layers: int = 1, pred_hidden: int = 32, joint_hidden: int = 32, pred_layers: int = 1,
    durations: list[int] | None = None, seed: int = 0,
) -> list[Path]:
    """Write NeMo's export files for `kind` "rnnt" (also TDT with `durations`) or "ctc" into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if kind == "ctc":
        path = out_dir / "model.onnx"
        _save(ctc_model(rng, vocab, features, subsampling, enc_dim, layers), path)
        return [path]
    enc = out_dir / "encoder-model.onnx"
    dec = out_dir / "decoder_joint-model.onnx"
    _save(encoder_model(rng, features, subsampling, enc_dim, layers), enc)
    _save(decoder_joint_model(rng, vocab, enc_dim, pred_hidden, joint_hidden, pred_layers,
                              len(durations or [])), dec)
    return [enc, dec]


class _Graph:
    """Collects nodes and initializers of one generated graph, naming them uniquely."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"/{hint}_{self.count}"

    def const(self, value: Any, hint: str = "c", dtype: Any = np.float32) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int, hint: str = "w") -> str:
        return self.const(self.rng.standard_normal(shape) / np.sqrt(fan_in), hint)

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.name(f"{op_type}_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def out(self, op_type: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.name(op_type), **attrs))

    def linear(self, x: str, d_in: int, d_out: int) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.weight((d_in, d_out), d_in)]),
                               self.const(np.zeros(d_out))])

    def layer_norm(self, x: str, d: int) -> str:
        return self.op("LayerNormalization", [x, self.const(np.ones(d)), self.const(np.zeros(d))], axis=-1)


def _encode(g: _Graph, features: int, subsampling: int, enc_dim: int, layers: int) -> tuple[str, str]:
    """Encoder body from `audio_signal`, `length`: ([B, T', D] hidden, [B] int64 lengths)."""
    s = subsampling
    conv = g.op("Conv", ["audio_signal", g.weight((enc_dim, features, s), features * s),
                         g.const(np.zeros(enc_dim))], kernel_shape=[s], strides=[s], pads=[0, s - 1])
    x = g.op("Transpose", [g.op("Relu", [conv])], perm=[0, 2, 1])  # [B, T', D]
    # NeMo's striding subsampling: frames = ceil(length / factor) (calc_length, padding k//2).
    lengths = g.op("Div", [g.op("Add", ["length", g.const(s - 1, dtype=np.int64)]),
                           g.const(s, dtype=np.int64)])
    frames = g.op("Gather", [g.op("Shape", [x]), g.const(1, dtype=np.int64)], axis=0)
    steps = g.op("Range", [g.const(0, dtype=np.int64), frames, g.const(1, dtype=np.int64)])
    valid = g.op("Less", [g.op("Unsqueeze", [steps, g.const([0], dtype=np.int64)]),
                          g.op("Unsqueeze", [lengths, g.const([1], dtype=np.int64)])])  # [B, T']
    key_bias = g.op("Unsqueeze", [g.op("Where", [valid, g.const(0.0), g.const(-1e4)]),
                                  g.const([1], dtype=np.int64)])  # [B, 1, T']
    scale = g.const(1.0 / np.sqrt(enc_dim))
    for _ in range(layers):
        # Conformer's macaron block, without its convolution module: half FF, attention, half FF.
        x = _half_ff(g, x, enc_dim)
        h = g.layer_norm(x, enc_dim)
        q, k, v = (g.linear(h, enc_dim, enc_dim) for _ in range(3))
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])]),
                                          scale]), key_bias])
        att = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        x = g.op("Add", [x, g.linear(att, enc_dim, enc_dim)])
        x = _half_ff(g, x, enc_dim)
    return g.layer_norm(x, enc_dim), lengths


def _half_ff(g: _Graph, x: str, d: int) -> str:
    """x + 0.5 * FF(LayerNorm(x)), FF expanding 4 times."""
    ff = g.linear(g.op("Relu", [g.linear(g.layer_norm(x, d), d, 4 * d)]), 4 * d, d)
    return g.op("Add", [x, g.op("Mul", [ff, g.const(0.5)])])


def _audio_inputs(features: int) -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT,
                                      ["audio_signal_dynamic_axes_1", features, "audio_signal_dynamic_axes_2"]),
        helper.make_tensor_value_info("length", TensorProto.INT64, ["length_dynamic_axes_1"]),
    ]


def encoder_model(rng: np.random.Generator, features: int, subsampling: int, enc_dim: int,
                  layers: int) -> onnx.ModelProto:
    """NeMo's ConformerEncoder export: audio_signal [B, F, T], length [B] -> outputs [B, D, T'], encoded_lengths."""
    g = _Graph(rng)
    x, lengths = _encode(g, features, subsampling, enc_dim, layers)
    g.out("Transpose", [x], ["outputs"], perm=[0, 2, 1])
    g.out("Identity", [lengths], ["encoded_lengths"])
    graph = helper.make_graph(g.nodes, "encoder", _audio_inputs(features), [
        helper.make_tensor_value_info("outputs", TensorProto.FLOAT,
                                      ["outputs_dynamic_axes_1", enc_dim, "outputs_dynamic_axes_2"]),
        helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["encoded_lengths_dynamic_axes_1"]),
    ], g.inits)
    return _model(graph)


def ctc_model(rng: np.random.Generator, vocab: int, features: int, subsampling: int, enc_dim: int,
              layers: int) -> onnx.ModelProto:
    """NeMo's EncDecCTCModel export: audio_signal, length -> logprobs [B, T', vocab+1]."""
    g = _Graph(rng)
    x, _ = _encode(g, features, subsampling, enc_dim, layers)
    g.out("LogSoftmax", [g.linear(x, enc_dim, vocab + 1)], ["logprobs"], axis=-1)
    graph = helper.make_graph(g.nodes, "ctc", _audio_inputs(features), [
        helper.make_tensor_value_info("logprobs", TensorProto.FLOAT,
                                      ["logprobs_dynamic_axes_1", "logprobs_dynamic_axes_2", vocab + 1]),
    ], g.inits)
    return _model(graph)


def decoder_joint_model(rng: np.random.Generator, vocab: int, enc_dim: int, pred_hidden: int,
                        joint_hidden: int, pred_layers: int, n_durations: int = 0) -> onnx.ModelProto:
    """NeMo's RNNTDecoderJoint export (see the module docstring); logits, not log-softmaxed."""
    g = _Graph(rng)
    h_dim = pred_hidden
    table = rng.standard_normal((vocab + 1, h_dim)).astype(np.float32)
    table[vocab] = 0.0  # blank_as_pad: the blank (start symbol) embeds to zeros
    emb = g.op("Gather", [g.const(table, "embedding"), g.op("Cast", ["targets"], to=TensorProto.INT64)], axis=0)
    x = g.op("Transpose", [emb], perm=[1, 0, 2])  # [U=1, B, H]
    hs, cs = [], []
    for layer in range(pred_layers):
        def state(name: str) -> str:
            return g.op("Slice", [name, g.const([layer], dtype=np.int64), g.const([layer + 1], dtype=np.int64),  # noqa: B023 - called in this iteration only
                                  g.const([0], dtype=np.int64)])
        w = g.weight((1, 4 * h_dim, h_dim), h_dim)
        r = g.weight((1, 4 * h_dim, h_dim), h_dim)
        b = g.const(np.zeros((1, 8 * h_dim)))
        y, y_h, y_c = g.op("LSTM", [x, w, r, b, "", state("input_states_1"), state("input_states_2")],
                           n_out=3, hidden_size=h_dim)
        x = g.op("Squeeze", [y, g.const([1], dtype=np.int64)])  # [U, B, H]
        hs.append(y_h)
        cs.append(y_c)
    g.out("Concat", hs, ["output_states_1"], axis=0)
    g.out("Concat", cs, ["output_states_2"], axis=0)
    pred = g.op("Unsqueeze", [g.linear(g.op("Transpose", [x], perm=[1, 0, 2]), h_dim, joint_hidden),
                              g.const([1], dtype=np.int64)])  # [B, 1, U, J]
    enc = g.op("Unsqueeze", [g.linear(g.op("Transpose", ["encoder_outputs"], perm=[0, 2, 1]), enc_dim,
                                      joint_hidden), g.const([2], dtype=np.int64)])  # [B, T, 1, J]
    joint = g.op("Relu", [g.op("Add", [enc, pred])])
    g.out("Identity", [g.linear(joint, joint_hidden, vocab + 1 + n_durations)], ["outputs"])
    g.out("Identity", ["target_length"], ["prednet_lengths"])
    state_dims: list[Any] = [pred_layers, "input_states_1_dynamic_axes_1", h_dim]
    out_state_dims: list[Any] = [pred_layers, "output_states_1_dynamic_axes_1", h_dim]
    graph = helper.make_graph(g.nodes, "decoder_joint", [
        helper.make_tensor_value_info("encoder_outputs", TensorProto.FLOAT,
                                      ["encoder_outputs_dynamic_axes_1", enc_dim, "encoder_outputs_dynamic_axes_2"]),
        helper.make_tensor_value_info("targets", TensorProto.INT32,
                                      ["targets_dynamic_axes_1", "targets_dynamic_axes_2"]),
        helper.make_tensor_value_info("target_length", TensorProto.INT32, ["target_length_dynamic_axes_1"]),
        helper.make_tensor_value_info("input_states_1", TensorProto.FLOAT, state_dims),
        helper.make_tensor_value_info("input_states_2", TensorProto.FLOAT,
                                      [pred_layers, "input_states_2_dynamic_axes_1", h_dim]),
    ], [
        helper.make_tensor_value_info("outputs", TensorProto.FLOAT, [
            "outputs_dynamic_axes_1", "outputs_dynamic_axes_2", "outputs_dynamic_axes_3",
            vocab + 1 + n_durations]),
        helper.make_tensor_value_info("prednet_lengths", TensorProto.INT32, ["prednet_lengths_dynamic_axes_1"]),
        helper.make_tensor_value_info("output_states_1", TensorProto.FLOAT, out_state_dims),
        helper.make_tensor_value_info("output_states_2", TensorProto.FLOAT,
                                      [pred_layers, "output_states_2_dynamic_axes_1", h_dim]),
    ], g.inits)
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pytorch", producer_version="2.1.0")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def _wordpiece_vocab(pieces: list[str]) -> str:
    """NeMo's vocab.txt beside a SentencePiece model: word starts without '▁', the rest with '##'."""
    return "".join((p[1:] if p.startswith("\u2581") else f"##{p}") + "\n" for p in pieces if p[1:] or not p.startswith("\u2581"))


def _write_tar(path: Path, members: dict[str, bytes], gzip: bool) -> None:
    """NeMo's layout: a tar (gzipped in older NeMo) whose members are under `./`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(gzip_module.compress(data, mtime=0) if gzip else data)
