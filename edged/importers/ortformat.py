"""Convert ONNX Runtime flatbuffer models (.ort) back to ONNX protobuf models.

ONNX Runtime saves .ort files as a flatbuffer whose root table is `InferenceSession`
(file identifier "ORTM"). The schema classes ship in the onnxruntime wheel under
`onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs`; this module walks those
tables and rebuilds the equivalent `onnx.ModelProto`, so ONNX Runtime can apply its
full load-time optimisations (e.g. constant-folding weight dequantisation) again.
"""

from __future__ import annotations

import heapq
import logging
from pathlib import Path
from typing import Any

import onnx
from onnx import (
    AttributeProto,
    GraphProto,
    NodeProto,
    TensorProto,
    TypeProto,
    ValueInfoProto,
)

from edged.errors import ModelImportError

_LOGGER = logging.getLogger(__name__)

_FILE_IDENTIFIER = b"ORTM"
_INT64_MAX = 2**63 - 1
_TWO_GB = 2**31
# Numbers of the flatbuffer unions/enums we switch on (see ort.fbs).
_TYPE_TENSOR, _TYPE_SEQUENCE, _TYPE_MAP = 1, 2, 3
_DIM_VALUE, _DIM_PARAM = 1, 2
_NODE_FUSED = 1


def _schema() -> Any:
    """Import the flatbuffer schema classes bundled with onnxruntime."""
    try:
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs
    except ImportError as exc:
        raise ModelImportError(
            f"Reading .ort models needs onnxruntime and the flatbuffers package ({exc}); "
            "install them with pip."
        ) from exc
    return fbs


def _text(value: bytes | None) -> str:
    """Decode an optional flatbuffer string."""
    return value.decode("utf-8") if value else ""


class _Converter:
    """Walks one `InferenceSession` flatbuffer and emits protobuf messages."""

    def __init__(self, fbs: Any, source: str, sidecar: Path | None) -> None:
        self._fbs = fbs
        self._source = source
        self._sidecar = sidecar
        self._sidecar_bytes: bytes | None = None

    def model(self, buf: bytes) -> onnx.ModelProto:
        """Convert the whole buffer to a ModelProto."""
        session = self._fbs.InferenceSession.InferenceSession.GetRootAs(buf, 0)
        fb_model = session.Model()
        if fb_model is None or fb_model.Graph() is None:
            raise ModelImportError(f"{self._source} is an ONNX Runtime .ort file without a model graph.")
        _LOGGER.debug("%s: ORT format version %s", self._source, _text(session.OrtVersion()))
        model = onnx.ModelProto(
            ir_version=fb_model.IrVersion(),
            producer_name=_text(fb_model.ProducerName()),
            producer_version=_text(fb_model.ProducerVersion()),
            domain=_text(fb_model.Domain()),
            doc_string=_text(fb_model.DocString()),
        )
        if 0 < fb_model.ModelVersion() < _INT64_MAX:  # ORT writes INT64_MAX for "unset"
            model.model_version = fb_model.ModelVersion()
        for i in range(fb_model.OpsetImportLength()):
            opset = fb_model.OpsetImport(i)
            model.opset_import.add(domain=_text(opset.Domain()), version=opset.Version())
        for i in range(fb_model.MetadataPropsLength()):
            entry = fb_model.MetadataProps(i)
            model.metadata_props.add(key=_text(entry.Key()), value=_text(entry.Value()))
        model.graph.CopyFrom(self.graph(fb_model.Graph(), "main_graph"))
        model.graph.doc_string = _text(fb_model.GraphDocString())
        return model

    def graph(self, g: Any, name: str) -> GraphProto:
        """Convert one (sub)graph; outer-scope names are left as plain references."""
        if g.RuntimeOptimizations() is not None:
            _LOGGER.debug("%s: ignoring saved runtime optimisation records in %s", self._source, name)
        infos = {}
        for i in range(g.NodeArgsLength()):
            arg = g.NodeArgs(i)
            infos[_text(arg.Name())] = self.value_info(arg)
        graph = GraphProto(name=name)
        for i in range(g.InputsLength()):
            graph.input.append(infos.get(_text(g.Inputs(i))) or ValueInfoProto(name=_text(g.Inputs(i))))
        for i in range(g.OutputsLength()):
            graph.output.append(infos.get(_text(g.Outputs(i))) or ValueInfoProto(name=_text(g.Outputs(i))))
        for i in range(g.InitializersLength()):
            graph.initializer.append(self.tensor(g.Initializers(i)))
        for i in range(g.SparseInitializersLength()):
            graph.sparse_initializer.append(self.sparse_tensor(g.SparseInitializers(i)))
        nodes = [self.node(g.Nodes(i)) for i in range(g.NodesLength())]
        graph.node.extend(self._topological(nodes, name))
        # value_info only for values this graph computes: not its boundary, not outer scope.
        boundary = {vi.name for vi in graph.input} | {vi.name for vi in graph.output}
        for node, _ in nodes:
            for out in node.output:
                info = infos.get(out)
                if out and out not in boundary and info is not None and info.HasField("type"):
                    graph.value_info.append(info)
        return graph

    def _topological(self, nodes: list[tuple[NodeProto, list[str]]], name: str) -> list[NodeProto]:
        """Order nodes so producers precede consumers (stable w.r.t. the stored order)."""
        producer = {out: i for i, (node, _) in enumerate(nodes) for out in node.output if out}
        consumers: list[list[int]] = [[] for _ in nodes]
        pending = [0] * len(nodes)
        for i, (node, implicit) in enumerate(nodes):
            for src in {producer[v] for v in [*node.input, *implicit] if v in producer}:
                consumers[src].append(i)
                pending[i] += 1
        ready = [i for i, count in enumerate(pending) if count == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in consumers[i]:
                pending[j] -= 1
                if pending[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) != len(nodes):
            _LOGGER.warning("%s: graph %s has a cycle; keeping the stored node order", self._source, name)
            order = list(range(len(nodes)))
        return [nodes[i][0] for i in order]

    def node(self, n: Any) -> tuple[NodeProto, list[str]]:
        """Convert a node; also return its implicit (outer-scope) inputs for ordering."""
        if n.Type() == _NODE_FUSED:
            _LOGGER.warning("%s: node %r is a fused (compiled) node; it may not load", self._source, _text(n.Name()))
        node = NodeProto(
            op_type=_text(n.OpType()),
            domain=_text(n.Domain()),
            name=_text(n.Name()),
            doc_string=_text(n.DocString()),
            input=[_text(n.Inputs(i)) for i in range(n.InputsLength())],
            output=[_text(n.Outputs(i)) for i in range(n.OutputsLength())],
        )
        node.attribute.extend(self.attribute(n.Attributes(i)) for i in range(n.AttributesLength()))
        return node, [_text(n.ImplicitInputs(i)) for i in range(n.ImplicitInputsLength())]

    def attribute(self, a: Any) -> AttributeProto:
        """Convert a node attribute of any supported type."""
        kind = a.Type()
        attr = AttributeProto(name=_text(a.Name()), doc_string=_text(a.DocString()), type=kind)
        if kind == AttributeProto.FLOAT:
            attr.f = a.F()
        elif kind == AttributeProto.INT:
            attr.i = a.I()
        elif kind == AttributeProto.STRING:
            attr.s = a.S() or b""
        elif kind == AttributeProto.TENSOR:
            attr.t.CopyFrom(self.tensor(a.T()))
        elif kind == AttributeProto.GRAPH:
            attr.g.CopyFrom(self.graph(a.G(), attr.name))
        elif kind == AttributeProto.FLOATS:
            attr.floats.extend(a.FloatsAsNumpy().tolist() if a.FloatsLength() else [])
        elif kind == AttributeProto.INTS:
            attr.ints.extend(a.IntsAsNumpy().tolist() if a.IntsLength() else [])
        elif kind == AttributeProto.STRINGS:
            attr.strings.extend(a.Strings(i) for i in range(a.StringsLength()))
        elif kind == AttributeProto.TENSORS:
            attr.tensors.extend(self.tensor(a.Tensors(i)) for i in range(a.TensorsLength()))
        elif kind == AttributeProto.GRAPHS:
            attr.graphs.extend(self.graph(a.Graphs(i), f"{attr.name}_{i}") for i in range(a.GraphsLength()))
        else:
            raise ModelImportError(f"{self._source} has attribute {attr.name!r} of unsupported type {kind}.")
        return attr

    def tensor(self, t: Any) -> TensorProto:
        """Convert a dense tensor (inline raw/string data or external sidecar data)."""
        tensor = TensorProto(
            name=_text(t.Name()),
            doc_string=_text(t.DocString()),
            dims=t.DimsAsNumpy().tolist() if t.DimsLength() else [],
            data_type=t.DataType(),
        )
        if t.DataType() == TensorProto.STRING:
            tensor.string_data.extend(t.StringData(i) for i in range(t.StringDataLength()))
        elif t.ExternalDataOffset() >= 0:
            tensor.raw_data = self._external(tensor, t.ExternalDataOffset())
        elif t.RawDataLength():
            tensor.raw_data = t.RawDataAsNumpy().tobytes()
        return tensor

    def _external(self, tensor: TensorProto, offset: int) -> bytes:
        """Read a tensor stored outside the flatbuffer from the `<model>.data` sidecar file."""
        if self._sidecar is None or not self._sidecar.is_file():
            raise ModelImportError(
                f"{self._source} keeps tensor {tensor.name!r} in an external data file, "
                "which must sit next to it as '<model>.data'."
            )
        if self._sidecar_bytes is None:
            self._sidecar_bytes = self._sidecar.read_bytes()
        count = 1
        for dim in tensor.dims:
            count *= dim
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        end = offset + count * itemsize
        if end > len(self._sidecar_bytes):
            raise ModelImportError(
                f"{self._source} needs tensor {tensor.name!r} from {self._sidecar}, which is too short."
            )
        return self._sidecar_bytes[offset:end]

    def sparse_tensor(self, s: Any) -> onnx.SparseTensorProto:
        """Convert a sparse initializer."""
        sparse = onnx.SparseTensorProto(dims=s.DimsAsNumpy().tolist() if s.DimsLength() else [])
        sparse.values.CopyFrom(self.tensor(s.Values()))
        sparse.indices.CopyFrom(self.tensor(s.Indices()))
        return sparse

    def value_info(self, v: Any) -> ValueInfoProto:
        """Convert a NodeArg (name + optional type) to a ValueInfoProto."""
        info = ValueInfoProto(name=_text(v.Name()), doc_string=_text(v.DocString()))
        if v.Type() is not None:
            kind = self.type_proto(v.Type())
            if kind.WhichOneof("value") is not None:
                info.type.CopyFrom(kind)
        return info

    def type_proto(self, ti: Any) -> TypeProto:
        """Convert a TypeInfo union (tensor, sequence or map) to a TypeProto."""
        fbs = self._fbs
        result = TypeProto(denotation=_text(ti.Denotation()))
        kind, table = ti.ValueType(), ti.Value()
        if kind == _TYPE_TENSOR:
            tt = fbs.TensorTypeAndShape.TensorTypeAndShape()
            tt.Init(table.Bytes, table.Pos)
            result.tensor_type.elem_type = tt.ElemType()
            shape = tt.Shape()
            if shape is not None:  # None means unknown rank
                result.tensor_type.shape.SetInParent()
                for i in range(shape.DimLength()):
                    dim, proto = shape.Dim(i), result.tensor_type.shape.dim.add()
                    proto.denotation = _text(dim.Denotation())
                    value = dim.Value()
                    if value is not None and value.DimType() == _DIM_VALUE:
                        proto.dim_value = value.DimValue()
                    elif value is not None and value.DimType() == _DIM_PARAM:
                        proto.dim_param = _text(value.DimParam())
        elif kind == _TYPE_SEQUENCE:
            seq = fbs.SequenceType.SequenceType()
            seq.Init(table.Bytes, table.Pos)
            result.sequence_type.elem_type.CopyFrom(self.type_proto(seq.ElemType()))
        elif kind == _TYPE_MAP:
            mapping = fbs.MapType.MapType()
            mapping.Init(table.Bytes, table.Pos)
            result.map_type.key_type = mapping.KeyType()
            result.map_type.value_type.CopyFrom(self.type_proto(mapping.ValueType()))
        return result


def ort_to_onnx(data: bytes | Path) -> onnx.ModelProto:
    """Convert an ONNX Runtime flatbuffer model (.ort) to an ONNX ModelProto."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        source, sidecar = str(path), path.with_name(path.name + ".data")
        try:
            buf = path.read_bytes()
        except OSError as exc:
            raise ModelImportError(f"Cannot read ONNX Runtime model {path}: {exc.strerror or exc}.") from exc
    else:
        source, sidecar, buf = "The given bytes", None, bytes(data)
    if len(buf) < 8 or buf[4:8] != _FILE_IDENTIFIER:
        raise ModelImportError(
            f"{source} is not an ONNX Runtime .ort model: the flatbuffer identifier 'ORTM' is missing at offset 4."
        )
    converter = _Converter(_schema(), source, sidecar)
    try:
        model = converter.model(buf)
    except ModelImportError:
        raise
    except Exception as exc:  # corrupt offsets surface as struct/index/unicode errors
        raise ModelImportError(
            f"{source} is not a readable ONNX Runtime .ort model: {type(exc).__name__}: {exc}."
        ) from exc
    size = model.ByteSize()
    if size >= _TWO_GB:
        raise ModelImportError(f"{source} converts to a {size}-byte ONNX model, over protobuf's 2 GB limit.")
    _LOGGER.debug("converted %s: %d nodes, %d bytes", source, len(model.graph.node), size)
    return model
