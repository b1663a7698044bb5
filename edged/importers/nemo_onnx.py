"""The ONNX files NeMo's export writes for an ASR model: finding them, checking their signature,
and naming their dynamic dimensions for the RMIR's TensorRT shape ranges.

`model.export("model.onnx")` writes `encoder-model.onnx` and `decoder_joint-model.onnx` for a
transducer and `model.onnx` for a CTC model. Their inputs and outputs are NeMo's
`input_types`/`output_types` (docs/contract: /work/notes/s7/nemo_contract.md), with dynamic axes
named by torch.onnx (`audio_signal_dynamic_axes_1` ...). The importer renames those axes, in
its copy of each graph, to the names the manifest's `dim_ranges` give ranges for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from edged.errors import ModelImportError

DYNAMIC = ("batch", "time", "frames", "decoder_frames", "decoder_steps")
"""Dimension roles renamed to these names in the RMIR's graphs (ranges in the manifest)."""

_F, _I32, _I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
Port = tuple[str, int, tuple[str, ...]]
"""(name, ONNX element type, dimension roles): a role in DYNAMIC, or a size read from the graph."""

SIGNATURES: dict[str, tuple[tuple[Port, ...], tuple[Port, ...]]] = {
    "encoder": (
        (("audio_signal", _F, ("batch", "features", "time")), ("length", _I64, ("batch",))),
        (("outputs", _F, ("batch", "enc_dim", "frames")), ("encoded_lengths", _I64, ("batch",))),
    ),
    "decoder_joint": (
        (("encoder_outputs", _F, ("batch", "enc_dim", "decoder_frames")),
         ("targets", _I32, ("batch", "decoder_steps")),
         ("target_length", _I32, ("batch",)),
         ("input_states_1", _F, ("layers", "batch", "hidden")),
         ("input_states_2", _F, ("layers", "batch", "hidden"))),
        (("outputs", _F, ("batch", "decoder_frames", "decoder_steps", "classes")),
         ("prednet_lengths", _I32, ("batch",)),
         ("output_states_1", _F, ("layers", "batch", "hidden")),
         ("output_states_2", _F, ("layers", "batch", "hidden"))),
    ),
    "model": (
        (("audio_signal", _F, ("batch", "features", "time")), ("length", _I64, ("batch",))),
        (("logprobs", _F, ("batch", "frames", "classes")),),
    ),
}
"""Network -> (inputs, outputs) of NeMo's export: ConformerEncoder (and the other ASR encoders),
RNNTDecoderJoint, and EncDecCTCModel's single graph."""


@dataclass(frozen=True)
class ExportFiles:
    """The ONNX files of one export, by network name (`encoder`/`decoder_joint`, or `model`)."""

    networks: dict[str, Path]

    @property
    def transducer(self) -> bool:
        """An encoder plus decoder_joint export (RNN-T or TDT)."""
        return "decoder_joint" in self.networks


def find_export(onnx_dir: Path) -> ExportFiles:
    """The export in `onnx_dir`: `encoder*.onnx` + `decoder_joint*.onnx`, or one other `.onnx`."""
    if not onnx_dir.is_dir():
        raise ModelImportError(f"{onnx_dir} is not a folder; --onnx takes the folder NeMo's export wrote into.")
    files = sorted(onnx_dir.glob("*.onnx"))
    enc = [f for f in files if f.name.startswith("encoder")]
    dec = [f for f in files if f.name.startswith("decoder_joint")]
    rest = [f for f in files if f not in enc and f not in dec]
    for role, found in (("encoder", enc), ("decoder_joint", dec)):
        if len(found) > 1:
            raise ModelImportError(f"{onnx_dir} holds {len(found)} {role}*.onnx files "
                                   f"({', '.join(f.name for f in found)}); leave one.")
    if enc and dec:
        return ExportFiles({"encoder": enc[0], "decoder_joint": dec[0]})
    if enc or dec:
        lack = "decoder_joint" if enc else "encoder"
        raise ModelImportError(f"{onnx_dir} has {(enc or dec)[0].name} but no {lack}*.onnx; a transducer "
                               f"export writes both encoder-model.onnx and decoder_joint-model.onnx.")
    if len(rest) == 1:
        return ExportFiles({"model": rest[0]})
    if not rest:
        raise ModelImportError(f"{onnx_dir} holds no .onnx file; export the model there first "
                               "(README, \"Your own NeMo model\").")
    raise ModelImportError(f"{onnx_dir} holds several .onnx files ({', '.join(f.name for f in rest)}) and "
                           "none is named encoder*/decoder_joint*; leave NeMo's export only.")


def load_network(path: Path) -> onnx.ModelProto:
    """Load one exported ONNX file with its weights; ModelImportError for what edged cannot pack."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
        raise ModelImportError(f"{path} is not a readable ONNX model ({one_line(exc)}).") from None
    if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ModelImportError(f"{path.name} keeps its weights in external data files (an export over 2 GB); "
                               "edged packs single-file ONNX networks only.")
    return model


def check_signature(network: str, model: onnx.ModelProto, file: str) -> dict[str, int]:
    """Check `model` against NeMo's export signature of `network`; the static sizes it has (enc_dim ...)."""
    inputs_spec, outputs_spec = SIGNATURES[network]
    inits = {t.name for t in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in inits}
    outputs = {v.name: v for v in model.graph.output}
    guess = _guess(network, set(inputs) | set(outputs))
    extra = [n for n in inputs if n not in {p[0] for p in inputs_spec}]
    if extra:
        if any(n.startswith("cache_") for n in extra):
            guess = "; it is a cache-aware streaming export: export the model without cache support"
        raise ModelImportError(f"{file} takes input(s) {', '.join(extra)} that NeMo's {_what(network)} export "
                               f"does not have (it takes {_names(inputs_spec)}){guess}.")
    sizes: dict[str, int] = {}
    for kind, specs, have in (("input", inputs_spec, inputs), ("output", outputs_spec, outputs)):
        for name, elem, roles in specs:
            if name not in have:
                raise ModelImportError(
                    f"{file} has no {kind} {name!r} ({_port(elem, roles)}); its {kind}s are "
                    f"{', '.join(have) or 'none'}, and NeMo's {_what(network)} export has {_names(specs)}"
                    f"{guess}.")
            t = have[name].type.tensor_type
            if t.elem_type != elem or len(t.shape.dim) != len(roles):
                got = f"{_dtype(t.elem_type)} of rank {len(t.shape.dim)}"
                raise ModelImportError(f"{file}: {kind} {name!r} is {got}; NeMo's {_what(network)} export has "
                                       f"{_port(elem, roles)}.")
            for dim, role in zip(t.shape.dim, roles):
                if role in DYNAMIC or not dim.HasField("dim_value"):
                    continue
                if sizes.setdefault(role, dim.dim_value) != dim.dim_value:
                    raise ModelImportError(f"{file}: {kind} {name!r} has {role} {dim.dim_value} where another "
                                           f"tensor has {sizes[role]}; they should be equal.")
    return sizes


def name_dynamic_dims(model: onnx.ModelProto, network: str) -> onnx.ModelProto:
    """Name each dynamic dimension of the graph's inputs and outputs by its role (edits `model`).

    The same old name elsewhere in the graph (value_info) is renamed too, where it stands for
    one role only, so shape hints stay consistent.
    """
    inputs_spec, outputs_spec = SIGNATURES[network]
    roles = {p[0]: p[2] for p in (*inputs_spec, *outputs_spec)}
    renamed: dict[str, set[str]] = {}
    for value in (*model.graph.input, *model.graph.output):
        if value.name not in roles:
            continue
        for dim, role in zip(value.type.tensor_type.shape.dim, roles[value.name]):
            if role not in DYNAMIC or dim.HasField("dim_value"):
                continue
            if dim.dim_param:
                renamed.setdefault(dim.dim_param, set()).add(role)
            dim.dim_param = role
    for value in model.graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            new = renamed.get(dim.dim_param)
            if new and len(new) == 1:
                dim.dim_param = next(iter(new))
    return model


def one_line(exc: BaseException) -> str:
    """An exception's first line, for a one-sentence error (YAML and ONNX Runtime messages run long)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".:")


def _what(network: str) -> str:
    return {"encoder": "encoder", "decoder_joint": "decoder_joint", "model": "CTC model"}[network]


def _names(specs: tuple[Port, ...]) -> str:
    return ", ".join(p[0] for p in specs)


def _dtype(elem: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "untyped"


def _port(elem: int, roles: tuple[str, ...]) -> str:
    return f"{_dtype(elem)} [{', '.join(roles)}]"


def _guess(network: str, have: set[str]) -> str:
    """What a mismatched file looks like, when it is recognisably another export."""
    if network != "model" and "logprobs" in have:
        return "; this file is a CTC export (logprobs), not a transducer's"
    if network == "model" and "encoded_lengths" in have:
        return "; this file is a transducer's encoder, whose decoder_joint-model.onnx should sit beside it"
    if network != "decoder_joint" and "input_states_1" in have:
        return "; this file is a decoder_joint export"
    return ""
