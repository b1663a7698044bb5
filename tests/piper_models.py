"""Generated stand-ins for Piper voices: VITS graphs with Piper's export signature and node names,
random weights (fixed seed), and a matching `.onnx.json`.

No Piper voice but the default can be installed in tests, so these voices say nothing a listener
would understand; what they share with Piper's exports (torch.onnx of piper's SynthesizerTrn.infer,
opset 15) is what edged reads: the inputs `input` [batch_size, phonemes] int64, `input_lengths`
[batch_size] int64, `scales` [3] float (noise, length, noise_w) and, multi-speaker, `sid`
[batch_size] int64; the output [batch_size, 1, 1, time]; the module names (`/enc_p/`, `/dp/`,
`/flow/flows.N/`, `/dec/conv_pre`, `/dec/cond`, `/dec/ups.N`, `/dec/resblocks.N`, `/emb_g`) and
the data flow between them: durations from the duration predictor (noise_w), the alignment path
built from their ceiling, the prior sampled with noise_scale, the flow run in reverse (coupling
layers with WaveNet-style stacks, each followed by a flip), the frames mask multiplied in before
the HiFi-GAN generator, and the speaker embedding conditioning the duration predictor, the flow
and the generator. The text encoder is a few masked convolutions where Piper has a transformer.

API:

    voice = make_piper_voice(tmp_path, "de_DE-test-x_low", quality="x_low", espeak="de")
    voice.onnx, voice.config_path, voice.config   # the graph, its .onnx.json beside it, as a dict
    make_piper_voice(tmp, "es_ES-many-low", speakers=["ana", "luis"])   # multi-speaker (sid)
    make_piper_voice(tmp, "x", generator_prefix="/generator/")          # not Piper's names
    make_piper_voice(tmp, "x", global_decoder=True)  # a generator that sees the whole utterance
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Shape:
    """The hyper-parameters of one of Piper's quality levels (scaled by `width` for tests)."""

    sample_rate: int
    hidden: int
    upsample_initial: int
    upsample_rates: tuple[int, ...]
    resblock: str  # "1": two convolutions per dilation (high); "2": one (x_low to medium)
    kernels: tuple[int, ...]
    dilations: tuple[tuple[int, ...], ...]


QUALITIES = {
    "x_low": Shape(16000, 96, 256, (8, 8, 4), "2", (3, 5, 7), ((1, 2), (2, 6), (3, 12))),
    "low": Shape(16000, 192, 256, (8, 8, 4), "2", (3, 5, 7), ((1, 2), (2, 6), (3, 12))),
    "medium": Shape(22050, 192, 512, (8, 8, 4), "2", (3, 5, 7), ((1, 2), (2, 6), (3, 12))),
    "high": Shape(22050, 192, 512, (8, 8, 2, 2), "1", (3, 7, 11), ((1, 3, 5), (1, 3, 5), (1, 3, 5))),
}
"""Piper's training configurations (piper_train, vits/config.py), by the name voices carry."""

SYMBOLS = ["_", "^", "$", " ", "!", "'", "(", ")", ",", "-", ".", ":", ";", "?", *"abcdefhijklmnopqrstuvwxyz",
           *map(chr, (0xE6, 0xE7, 0xF0, 0xF8, 0x127, 0x14B, 0x153, 0x3B2, 0x3B8, 0x3C7, 0x1D7B, 0x2C71)),
           *map(chr, range(0x250, 0x2B0)), *map(chr, (0x2B2, 0x2C8, 0x2CC, 0x2D0, 0x2D1, 0x2DE)),
           *map(chr, (0x303, 0x327, 0x329, 0x32A, 0x32F, 0x361))]
"""Phoneme symbols with ids in their order, as in Piper's espeak voices' phoneme_id_map."""

_LANGUAGES = {"de": ("German", "Deutsch", "Germany"), "es": ("Spanish", "Español", "Spain"),
              "en": ("English", "English", "United States"), "fr": ("French", "Français", "France")}


@dataclass(frozen=True)
class PiperVoice:
    """A generated voice's files."""

    onnx: Path
    config_path: Path
    config: dict[str, Any]


class _Builder:
    """Nodes and initializers of one graph; each op's outputs are named as torch.onnx names them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._names: set[str] = set()

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, name: str, *values: int) -> str:
        return self.init(name, np.asarray(values, np.int64))

    def op(self, op: str, name: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        assert name not in self._names, name
        self._names.add(name)
        outs = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, module: str, x: str, cin: int, cout: int, kernel: int = 1, dilation: int = 1,
             bias: bool = True, gain: float = 1.0) -> str:
        """A Conv1d `module` ("/dec/conv_pre"), its weights `dec.conv_pre.weight` as torch names them."""
        key = module.strip("/").replace("/", ".")
        w = self.rng.standard_normal((cout, cin, kernel)) * gain / np.sqrt(cin * kernel)
        inputs = [x, self.init(f"{key}.weight", w.astype(np.float32))]
        if bias:
            inputs.append(self.init(f"{key}.bias", (0.1 * self.rng.standard_normal(cout)).astype(np.float32)))
        pad = dilation * (kernel - 1) // 2
        return self.op("Conv", f"{module}/Conv", inputs, dilations=[dilation], group=1,
                       kernel_shape=[kernel], pads=[pad, pad], strides=[1])

    def conv_transpose(self, module: str, x: str, cin: int, cout: int, rate: int) -> str:
        key = module.strip("/").replace("/", ".")
        kernel = 2 * rate
        w = self.rng.standard_normal((cin, cout, kernel)) / np.sqrt(cin * 2)
        b = 0.1 * self.rng.standard_normal(cout)
        return self.op("ConvTranspose", f"{module}/ConvTranspose",
                       [x, self.init(f"{key}.weight", w.astype(np.float32)),
                        self.init(f"{key}.bias", b.astype(np.float32))],
                       dilations=[1], group=1, kernel_shape=[kernel], pads=[rate // 2, rate // 2],
                       strides=[rate])


def _graph(b: _Builder, shape: Shape, width: float, n_symbols: int, speakers: int, generator: str,
           global_decoder: bool) -> tuple[list[Any], Any]:
    """The nodes of SynthesizerTrn.infer; returns the graph's inputs and its output."""
    hidden = max(8, int(shape.hidden * width))
    up0 = max(16, int(shape.upsample_initial * width))
    gin = 16 if speakers > 1 else 0
    half = hidden // 2
    inputs = [helper.make_tensor_value_info("input", TensorProto.INT64, ["batch_size", "phonemes"]),
              helper.make_tensor_value_info("input_lengths", TensorProto.INT64, ["batch_size"]),
              helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])]
    zero, one, two = b.ints("/Constant_output_0", 0), b.ints("/Constant_1_output_0", 1), \
        b.ints("/Constant_2_output_0", 2)
    scalar = {i: b.init(f"/enc_p/Constant_{i}_output_0", np.asarray(i, np.int64)) for i in (0, 1, 2)}
    noise_scale = b.op("Gather", "/Gather", ["scales", scalar[0]], axis=0)
    length_scale = b.op("Gather", "/Gather_1", ["scales", scalar[1]], axis=0)
    noise_w = b.op("Gather", "/Gather_2", ["scales", scalar[2]], axis=0)
    g = ""
    if speakers > 1:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, ["batch_size"]))
        emb = b.init("emb_g.weight", b.rng.standard_normal((speakers, gin)).astype(np.float32))
        g = b.op("Unsqueeze", "/Unsqueeze_12", [b.op("Gather", "/emb_g/Gather", [emb, "sid"]),
                                                  b.ints("/Constant_3_output_0", -1)])

    # Text encoder: embedding, mask from the lengths, masked convolutions, then the prior's stats.
    table = b.init("enc_p.emb.weight", b.rng.standard_normal((n_symbols, hidden)).astype(np.float32))
    x = b.op("Transpose", "/enc_p/Transpose", [b.op("Gather", "/enc_p/emb/Gather", [table, "input"])],
             perm=[0, 2, 1])
    length = b.op("Gather", "/enc_p/Gather", [b.op("Shape", "/enc_p/Shape", ["input"]), scalar[1]], axis=0)
    steps = b.op("Unsqueeze", "/enc_p/Unsqueeze", [b.op("Range", "/enc_p/Range", [scalar[0], length, scalar[1]]),
                                                   zero])
    less = b.op("Less", "/enc_p/Less", [steps, b.op("Unsqueeze", "/enc_p/Unsqueeze_1", ["input_lengths", one])])
    x_mask = b.op("Unsqueeze", "/enc_p/Unsqueeze_2", [b.op("Cast", "/enc_p/Cast_1", [less], to=TensorProto.FLOAT),
                                                      one])
    for i in range(2):
        x = b.op("Mul", f"/enc_p/encoder/Mul_{i}", [b.op("Relu", f"/enc_p/encoder/Relu_{i}", [
            b.conv(f"/enc_p/encoder/convs.{i}", x, hidden, hidden, 3)]), x_mask])
    stats = b.op("Mul", "/enc_p/Mul_2", [b.conv("/enc_p/proj", x, hidden, 2 * hidden), x_mask])
    m_p, logs_p = b.op("Split", "/enc_p/Split", [stats, b.ints("onnx::Split_1", hidden, hidden)], 2, axis=1)

    # Duration predictor: log durations (noise_w scales its noise), kept between 0 and 2.
    h = b.conv("/dp/pre", x, hidden, hidden)
    if g:
        h = b.op("Add", "/dp/Add", [h, b.conv("/dp/cond", g, gin, hidden)])
    logw = b.conv("/dp/proj", b.op("Relu", "/dp/Relu", [h]), hidden, 1)
    noise = b.op("Mul", "/dp/Mul_1", [b.op("RandomNormalLike", "/dp/RandomNormalLike", [logw], dtype=1), noise_w])
    logw = b.op("Add", "/dp/Add_1", [b.op("Tanh", "/dp/Tanh", [b.op("Add", "/dp/Add_2", [logw, noise])]),
                                     b.init("/dp/Constant_output_0", np.asarray(1.0, np.float32))])

    # Durations to frames: the ceiling of exp(logw) * length_scale; the frames mask; the path.
    w = b.op("Mul", "/Mul_1", [b.op("Mul", "/Mul", [b.op("Exp", "/Exp", [logw]), x_mask]), length_scale])
    w_ceil = b.op("Ceil", "/Ceil", [w])
    total = b.op("ReduceSum", "/ReduceSum", [w_ceil, b.ints("/Constant_4_output_0", 1, 2)], keepdims=0)
    lengths = b.op("Cast", "/Cast", [b.op("Clip", "/Clip", [total, b.init(
        "/Constant_5_output_0", np.asarray(1.0, np.float32))])], to=TensorProto.INT64)
    frames = b.op("ReduceMax", "/ReduceMax", [lengths], keepdims=0)
    y_steps = b.op("Range", "/Range", [scalar[0], frames, scalar[1]])
    y_less = b.op("Less", "/Less", [b.op("Unsqueeze", "/Unsqueeze", [y_steps, zero]),
                                    b.op("Unsqueeze", "/Unsqueeze_1", [lengths, one])])
    y_mask = b.op("Unsqueeze", "/Unsqueeze_2", [b.op("Cast", "/Cast_2", [y_less], to=TensorProto.FLOAT), one])
    ends = b.op("Transpose", "/Transpose", [b.op("CumSum", "/CumSum", [w_ceil, two])], perm=[0, 2, 1])
    starts = b.op("Sub", "/Sub", [ends, b.op("Transpose", "/Transpose_1", [w_ceil], perm=[0, 2, 1])])
    y_pos = b.op("Reshape", "/Reshape", [b.op("Cast", "/Cast_3", [y_steps], to=TensorProto.FLOAT),
                                         b.ints("/Constant_6_output_0", 1, 1, -1)])
    inside = b.op("Cast", "/Cast_4", [b.op("Less", "/Less_1", [y_pos, ends])], to=TensorProto.FLOAT)
    before = b.op("Cast", "/Cast_5", [b.op("Less", "/Less_2", [y_pos, starts])], to=TensorProto.FLOAT)
    path = b.op("Sub", "/Sub_1", [inside, before])  # [batch, phonemes, frames]
    m_p = b.op("MatMul", "/MatMul", [m_p, path])
    logs_p = b.op("MatMul", "/MatMul_1", [logs_p, path])
    sample = b.op("Mul", "/Mul_6", [b.op("Mul", "/Mul_5", [
        b.op("RandomNormalLike", "/RandomNormalLike", [m_p], dtype=1),
        b.op("Exp", "/Exp_1", [b.op("Tanh", "/Tanh", [logs_p])])]), noise_scale])
    z = b.op("Add", "/Add", [m_p, sample])

    # The flow in reverse: flows.{odd} flip the channels, flows.{even} are coupling layers.
    flip = [b.ints(f"/flow/Constant_{i}_output_0", v) for i, v in enumerate((-1, -(2 ** 62), 1, -1))]
    split_half = b.ints("onnx::Split_2", half, half)
    for i in reversed(range(8)):
        module = f"/flow/flows.{i}"
        if i % 2:
            z = b.op("Slice", f"{module}/Slice", [z, *flip])
            continue
        x0, x1 = b.op("Split", f"{module}/Split", [z, split_half], 2, axis=1)
        h = b.op("Mul", f"{module}/Mul", [b.conv(f"{module}/pre", x0, half, hidden), y_mask])
        cond = b.conv(f"{module}/enc/cond_layer", g, gin, 4 * hidden) if g else ""
        skip = ""
        for layer in range(2):
            a = b.conv(f"{module}/enc/in_layers.{layer}", h, hidden, 2 * hidden, 5)
            if cond:
                part = b.op("Slice", f"{module}/enc/Slice_c{layer}", [
                    cond, b.ints(f"{module}/enc/Constant_s{layer}", 2 * hidden * layer),
                    b.ints(f"{module}/enc/Constant_e{layer}", 2 * hidden * (layer + 1)), one])
                a = b.op("Add", f"{module}/enc/Add_c{layer}", [a, part])
            t, s = b.op("Split", f"{module}/enc/Split_{layer}", [a, b.ints(f"{module}/enc/split_{layer}",
                                                                           hidden, hidden)], 2, axis=1)
            acts = b.op("Mul", f"{module}/enc/Mul_a{layer}", [b.op("Tanh", f"{module}/enc/Tanh_{layer}", [t]),
                                                              b.op("Sigmoid", f"{module}/enc/Sigmoid_{layer}", [s])])
            last = layer == 1
            rs = b.conv(f"{module}/enc/res_skip_layers.{layer}", acts, hidden, hidden if last else 2 * hidden)
            if last:
                out = rs
            else:
                res, out = b.op("Split", f"{module}/enc/Split_r{layer}", [rs, b.ints(
                    f"{module}/enc/split_r{layer}", hidden, hidden)], 2, axis=1)
                h = b.op("Mul", f"{module}/enc/Mul_{layer}", [b.op("Add", f"{module}/enc/Add_{layer}", [h, res]),
                                                              y_mask])
            skip = b.op("Add", f"{module}/enc/Add_s{layer}", [skip, out]) if skip else out
        h = b.op("Mul", f"{module}/enc/Mul_3", [skip, y_mask])
        mean = b.op("Mul", f"{module}/Mul_1", [b.conv(f"{module}/post", h, hidden, half), y_mask])
        x1 = b.op("Mul", f"{module}/Mul_3", [b.op("Sub", f"{module}/Sub", [x1, mean]), y_mask])
        z = b.op("Concat", f"{module}/Concat", [x0, x1], axis=1)

    # The HiFi-GAN generator on the masked latent frames.
    d = generator
    x = b.conv(f"{d}conv_pre", b.op("Mul", "/Mul_7", [z, y_mask]), hidden, up0, 7)
    if g:
        x = b.op("Add", f"{d}Add_cond", [x, b.conv(f"{d}cond", g, gin, up0)])
    if global_decoder:  # an utterance-wide normalisation: no chunk sees what the whole does
        x = b.op("Sub", f"{d}Sub_mean", [x, b.op("ReduceMean", f"{d}ReduceMean", [x], axes=[2], keepdims=1)])
    channels, block = up0, 0
    leak = b.init(f"{d}Constant_output_0", np.asarray(float(len(shape.kernels)), np.float32))
    for i, rate in enumerate(shape.upsample_rates):
        x = b.op("LeakyRelu", f"{d}LeakyRelu" + (f"_{i}" if i else ""), [x], alpha=0.1)
        x = b.conv_transpose(f"{d}ups.{i}", x, channels, channels // 2, rate)
        channels //= 2
        total_ = ""
        for kernel, dilations in zip(shape.kernels, shape.dilations):
            r, y = f"{d}resblocks.{block}", x
            for j, dilation in enumerate(dilations):
                t = b.op("LeakyRelu", f"{r}/LeakyRelu_{j}", [y], alpha=0.1)
                t = b.conv(f"{r}/convs{'1' if shape.resblock == '1' else ''}.{j}", t, channels, channels,
                           kernel, dilation, gain=0.5)
                if shape.resblock == "1":
                    t = b.op("LeakyRelu", f"{r}/LeakyRelu_b{j}", [t], alpha=0.1)
                    t = b.conv(f"{r}/convs2.{j}", t, channels, channels, kernel, gain=0.5)
                y = b.op("Add", f"{r}/Add_{j}", [t, y])
            total_ = b.op("Add", f"{d}Add_{block}", [total_, y]) if total_ else y
            block += 1
        x = b.op("Div", f"{d}Div_{i}", [total_, leak])
    x = b.op("LeakyRelu", f"{d}LeakyRelu_post", [x], alpha=0.01)
    x = b.op("Tanh", f"{d}Tanh", [b.conv(f"{d}conv_post", x, channels, 1, 7, bias=False)])
    b.nodes.append(helper.make_node("Unsqueeze", [x, one], ["output"], name="/Unsqueeze_11"))
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 1, 1, "time"])
    return inputs, output


def make_piper_voice(tmp: Path, name: str, quality: str = "x_low", espeak: str = "de",
                     speakers: list[str] | None = None, sample_rate: int | None = None, width: float = 0.125,
                     seed: int = 0, generator_prefix: str = "/dec/", global_decoder: bool = False) -> PiperVoice:
    """Write `tmp/NAME.onnx` and `tmp/NAME.onnx.json`, a voice of Piper's `quality` shape (its
    channels times `width`), speaking the espeak-ng voice `espeak`."""
    shape = QUALITIES[quality]
    rate = sample_rate or shape.sample_rate
    b = _Builder(seed)
    speakers = speakers or []
    inputs, output = _graph(b, shape, width, len(SYMBOLS), len(speakers), generator_prefix, global_decoder)
    graph = helper.make_graph(b.nodes, "main_graph", inputs, [output], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="pytorch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    tmp.mkdir(parents=True, exist_ok=True)
    onnx_path = tmp / f"{name}.onnx"
    onnx.save(model, str(onnx_path))
    family = espeak.split("-")[0]
    english, native, country = _LANGUAGES.get(family, (family, family, family))
    code = name.split("-")[0]
    config: dict[str, Any] = {
        "dataset": name.split("-")[1] if "-" in name else name,
        "audio": {"sample_rate": rate, "quality": quality},
        "espeak": {"voice": espeak},
        "language": {"code": code, "family": family, "region": code.partition("_")[2],
                     "name_native": native, "name_english": english, "country_english": country},
        "inference": {"noise_scale": 0.5, "length_scale": 1.1, "noise_w": 0.7},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": {s: [i] for i, s in enumerate(SYMBOLS)},
        "num_symbols": len(SYMBOLS),
        "num_speakers": max(1, len(speakers)),
        "speaker_id_map": {s: i for i, s in enumerate(speakers)},
        "piper_version": "1.0.0",
    }
    config_path = tmp / f"{name}.onnx.json"
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return PiperVoice(onnx_path, config_path, config)
