"""ONNX graphs to galaxir modules.

Each ONNX op type has a converter, ``fn(ctx) -> list[Value]`` (one per node output), that
builds galaxir ops with ``ctx.b``.  Converters see the node's opset version, so one
converter handles every version of its op and the IR only knows the newest semantics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import GalaxirError, ModelImportError, UnsupportedOpError
from ...ir import Block, Builder, Graph, Region, Value
from ...ir.core import MAX_NESTING
from ...ir.types import (UNKNOWN, AnyType, DType, MapType, OptionalType, SequenceType,
                         TensorType, Type, refine, types_compatible)
from ..registry import ConverterTable

Converter = Callable[["ConvertContext"], Sequence[Value | None]]
#: the largest dense form of a sparse tensor the importer builds: 2 GiB, what a protobuf
#: model file can hold at all (larger, a few bytes of sparse data would be a memory bomb)
MAX_DENSE_BYTES = 2 ** 31
#: ONNX converters by (domain, op_type); ``@converter`` registers one
CONVERTERS = ConverterTable(__package__ + ".ops")
DEFAULT_DOMAINS = ("", "ai.onnx")


def converter(*op_types: str, domain: str = ""):
    """Register the converter of ONNX ``op_types`` in ``domain``."""
    return CONVERTERS.register(*((domain, t) for t in op_types))


def simple(op_type: str, gx_name: str, attrs: dict[str, str] | None = None,
           domain: str = "", drop: Sequence[str] = ()) -> None:
    """Register a one-to-one converter; ``attrs`` renames ONNX attributes, ``drop`` ignores some."""
    rename = attrs or {}

    def convert(ctx: "ConvertContext"):
        kw = {rename.get(k, k): v for k, v in ctx.attrs.items() if k not in drop}
        return ctx.op(gx_name, *ctx.inputs, num_results=len(ctx.node.output), **kw)
    CONVERTERS[(domain, op_type)] = convert


def get_converter(domain: str, op_type: str) -> Converter | None:
    CONVERTERS.loaded()
    if domain == "ai.onnx":
        domain = ""
    return CONVERTERS.get((domain, op_type))


# -- types --------------------------------------------------------------------------------
def _dtype_of(code: int, where: str) -> DType:
    try:
        return DType.from_onnx(code)
    except ValueError:
        raise ModelImportError(f"{where or 'a type'}: element type {code} is not an ONNX tensor "
                               "element type galaxir knows") from None


def convert_type(tp: onnx.TypeProto, where: str = "", depth: int = 0) -> Type:
    """The galaxir type of an ONNX type; ``where`` names the value in error messages."""
    if depth > MAX_NESTING:
        raise ModelImportError(f"{where or 'a type'}: sequence/optional/map types nest more than "
                               f"{MAX_NESTING} levels deep (galaxir's limit)")
    which = tp.WhichOneof("value")
    if which == "tensor_type" or which == "sparse_tensor_type":
        tt = getattr(tp, which)
        if tt.elem_type == 0:
            return AnyType()
        dtype = _dtype_of(tt.elem_type, where)
        if not tt.HasField("shape"):
            return TensorType(dtype, None)
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value) if d.dim_value >= 0 else UNKNOWN)
            elif d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(UNKNOWN)
        return TensorType(dtype, tuple(dims))
    if which == "sequence_type":
        return SequenceType(convert_type(tp.sequence_type.elem_type, where, depth + 1))
    if which == "optional_type":
        return OptionalType(convert_type(tp.optional_type.elem_type, where, depth + 1))
    if which == "map_type":
        return MapType(_dtype_of(tp.map_type.key_type, where),
                       convert_type(tp.map_type.value_type, where, depth + 1))
    return AnyType()


def tensor_to_numpy(t: onnx.TensorProto, base_dir: str | None = None) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:  # loader.load_model reads all of them
        raise ModelImportError(f"tensor '{t.name}': external data was not read in by the loader "
                               "(it only reads data inside the model's folder)")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise ModelImportError(f"tensor '{t.name}' could not be decoded: {e}") from e
    if arr.dtype.kind in "SU":
        arr = arr.astype(object)
    if arr.dtype == object:
        arr = np.vectorize(lambda s: s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s,
                           otypes=[object])(arr) if arr.size else arr
    return arr


def decode_attr(a: onnx.AttributeProto) -> Any:
    A = onnx.AttributeProto
    if a.type == A.FLOAT:
        return float(a.f)
    if a.type == A.INT:
        return int(a.i)
    if a.type == A.STRING:
        return a.s.decode("utf-8", "surrogateescape")
    if a.type == A.TENSOR:
        return tensor_to_numpy(a.t)
    if a.type == A.SPARSE_TENSOR:
        return sparse_to_dense(a.sparse_tensor)
    if a.type == A.GRAPH:
        return a.g
    if a.type == A.TYPE_PROTO:
        return convert_type(a.tp)
    if a.type == A.FLOATS:
        return tuple(float(x) for x in a.floats)
    if a.type == A.INTS:
        return tuple(int(x) for x in a.ints)
    if a.type == A.STRINGS:
        return tuple(s.decode("utf-8", "surrogateescape") for s in a.strings)
    if a.type == A.TENSORS:
        return tuple(tensor_to_numpy(t) for t in a.tensors)
    if a.type == A.GRAPHS:
        return tuple(a.graphs)
    if a.type == A.TYPE_PROTOS:
        return tuple(convert_type(t) for t in a.type_protos)
    raise ModelImportError(f"attribute '{a.name}' has unsupported type {a.type}")


def sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array of a sparse tensor, its dims, indices and values checked first."""
    def bad(msg: str) -> ModelImportError:
        return ModelImportError(f"sparse tensor '{sp.values.name}': {msg}")

    values = tensor_to_numpy(sp.values).reshape(-1)
    indices = tensor_to_numpy(sp.indices)
    shape = tuple(int(d) for d in sp.dims)
    if any(d < 0 for d in shape):
        raise bad(f"dims {list(shape)} must be >= 0")
    if indices.dtype.kind not in "iu":
        raise bad(f"indices must be integers, got {indices.dtype}")
    indices = indices.astype(np.int64)
    nnz, numel = values.size, math.prod(shape)
    if indices.ndim == 2:  # coordinates per element
        if indices.shape != (nnz, len(shape)):
            raise bad(f"indices of shape {list(indices.shape)} do not give {len(shape)} coordinates "
                      f"for each of the {nnz} values")
        outside = (indices < 0) | (indices >= np.asarray(shape, np.int64))
        flat = np.ravel_multi_index(tuple(indices.T), shape) if nnz and not outside.any() else \
            indices.reshape(-1)[:0]
    elif indices.ndim == 1:  # linear positions
        if indices.size != nnz:
            raise bad(f"{indices.size} indices for {nnz} values")
        outside = (indices < 0) | (indices >= numel)
        flat = indices
    else:
        raise bad(f"indices must be 1-D or 2-D, got shape {list(indices.shape)}")
    if outside.any():
        raise bad(f"an index lies outside dims {list(shape)}")
    if numel * values.dtype.itemsize > MAX_DENSE_BYTES:
        raise bad(f"its dense form {list(shape)} would need {numel * values.dtype.itemsize} bytes "
                  f"(more than {MAX_DENSE_BYTES})")
    try:
        dense = np.zeros(numel, dtype=values.dtype)
    except (MemoryError, ValueError) as e:
        raise bad(f"its dense form {list(shape)} cannot be allocated: {e}") from None
    dense[flat] = values
    return dense.reshape(shape)


# -- the per-node context -------------------------------------------------------------------
@dataclass
class ConvertContext:
    """Everything a converter needs about the node it converts."""

    importer: "GraphImporter"
    node: onnx.NodeProto
    inputs: list[Value | None]
    attrs: dict[str, Any]
    opset: int
    b: Builder

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def num_outputs(self) -> int:
        return len(self.node.output)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def const(self, i: int) -> np.ndarray | None:
        """Input ``i`` as a numpy array when it is a compile-time constant, else None."""
        v = self.input(i)
        return None if v is None else v.constant_value()

    def op(self, name: str, *operands: Value | None, num_results: int | None = None, **attrs):
        return self.b.op(name, *operands, num_results=num_results, **attrs)

    def constant(self, value: Any, dtype: Any = None) -> Value:
        return self.b.constant(value, dtype)

    def subgraph(self, graph: onnx.GraphProto, arg_types: Sequence[Type] | None = None) -> Region:
        """Import a graph attribute as a region; it may read values of enclosing graphs."""
        return self.importer.import_subgraph(graph, arg_types)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"ONNX node '{self.node.name}' ({self.node.domain or 'ai.onnx'}::{self.node.op_type}, "
            f"opset {self.opset}): {why}")


# -- graphs ------------------------------------------------------------------------------------
@dataclass
class ModelInfo:
    opsets: dict[str, int]
    functions: dict[tuple[str, str], onnx.FunctionProto] = field(default_factory=dict)
    base_dir: str | None = None


class GraphImporter:
    def __init__(self, info: ModelInfo, parent: "GraphImporter | None" = None):
        self.info = info
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1  # how deep its graph nests
        if self.depth > MAX_NESTING:
            raise ModelImportError(f"subgraphs nest more than {MAX_NESTING} levels deep "
                                   "(galaxir's limit)")
        self.scope: dict[str, Value] = {}
        self.value_info: dict[str, Type] = {}

    def lookup(self, name: str) -> Value | None:
        imp: GraphImporter | None = self
        while imp is not None:
            if name in imp.scope:
                return imp.scope[name]
            imp = imp.parent
        return None

    def import_main(self, graph: onnx.GraphProto) -> Graph:
        g = Graph()
        inits = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
        for inp in graph.input:
            if inp.name in inits:
                continue  # an initializer listed as input (IR < 4): a constant with a default
            self.scope[inp.name] = g.add_input(inp.name, convert_type(inp.type, f"graph input '{inp.name}'"))
        self._fill(graph, g.block)
        outs = [self._output(o.name, o.type) for o in graph.output]
        g.set_outputs(outs, [o.name for o in graph.output])
        return g

    def import_subgraph(self, graph: onnx.GraphProto, arg_types: Sequence[Type] | None) -> Region:
        child = GraphImporter(self.info, self)
        block = Block()
        for i, inp in enumerate(graph.input):
            t = convert_type(inp.type, f"subgraph input '{inp.name}'")
            if arg_types is not None and i < len(arg_types):
                given = arg_types[i]
                if isinstance(t, AnyType) or (isinstance(t, TensorType) and t.shape is None
                                              and isinstance(given, TensorType)):
                    t = given if not isinstance(t, TensorType) or given.dtype == t.dtype else t
            child.scope[inp.name] = block.add_arg(t, inp.name)
        child._fill(graph, block)
        outs = [child._output(o.name, o.type) for o in graph.output]
        Builder(block).ret(*outs)
        return Region(block)

    def _output(self, name: str, tp: onnx.TypeProto) -> Value:
        v = self.lookup(name)
        if v is None:
            raise ModelImportError(f"graph output '{name}' is not produced by any node, input or initializer")
        declared = convert_type(tp, f"graph output '{name}'")
        if isinstance(declared, AnyType) or isinstance(v.type, AnyType):
            return v
        if contradicts(declared, v.type):
            raise ModelImportError(f"graph output '{name}' is declared {declared} but the graph "
                                   f"computes {v.type}")
        if isinstance(v.type, TensorType) and types_compatible(declared, v.type):
            v.type = refine(v.type, declared)
        return v

    def _fill(self, graph: onnx.GraphProto, block: Block) -> None:
        b = Builder(block)
        for vi in graph.value_info:
            self.value_info[vi.name] = convert_type(vi.type, f"value_info '{vi.name}'")
        for t in graph.initializer:
            v = b.op("constant", value=tensor_to_numpy(t, self.info.base_dir))
            v.name = t.name
            self.scope[t.name] = v
        for sp in graph.sparse_initializer:
            v = b.op("constant", value=sparse_to_dense(sp))
            v.name = sp.values.name
            self.scope[sp.values.name] = v
        for node in topological_order(graph, self):
            self.convert_node(node, block)

    def convert_node(self, node: onnx.NodeProto, block: Block, before=None) -> None:
        label = node.name or f"{node.op_type}({', '.join(node.output)})"
        domain = "" if node.domain == "ai.onnx" else node.domain
        inputs = []
        for name in node.input:
            if not name:
                inputs.append(None)
                continue
            v = self.lookup(name)
            if v is None:
                raise ModelImportError(f"ONNX node '{label}' ({node.op_type}) reads '{name}', which "
                                       "no node, input or initializer defines")
            inputs.append(v)
        attrs = {a.name: decode_attr(a) for a in node.attribute}
        opset = self.info.opsets.get(domain)
        if opset is None and domain == "":
            opset = self.info.opsets.get("ai.onnx")
        check_arity(node, label, domain, opset)
        fn = get_converter(domain, node.op_type)
        if fn is None and (domain, node.op_type) in self.info.functions:
            from .functions import inline_function
            fn = inline_function(self.info.functions[(domain, node.op_type)])
        if fn is None:
            from .functions import schema_function
            fn = schema_function(domain, node.op_type, opset or 1)
        if fn is None:
            raise UnsupportedOpError(
                f"ONNX node '{label}': op {domain or 'ai.onnx'}::{node.op_type} (opset {opset}) "
                "is not supported by galaxir's ONNX importer")
        b = Builder(block, before=before, provenance=(label,))
        ctx = ConvertContext(self, node, inputs, attrs, opset or 1, b)
        try:
            outs = fn(ctx)
        except GalaxirError as e:
            if "ONNX node '" in str(e):  # names its node already (perhaps one in a subgraph)
                raise
            raise type(e)(f"ONNX node '{label}' ({node.op_type}): {e}") from e
        except Exception as e:
            raise ModelImportError(f"ONNX node '{label}' ({node.op_type}): conversion failed: "
                                   f"{type(e).__name__}: {e}") from e
        if isinstance(outs, Value):
            outs = [outs]
        outs = list(outs) if outs is not None else []
        for name, v in zip(node.output, outs):
            if not name or v is None:
                continue
            if v.name is None and v.producer is not None and v.producer.provenance == (label,):
                v.name = name
            declared = self.value_info.get(name)
            if declared is not None and isinstance(v.type, TensorType) and \
                    isinstance(declared, TensorType):
                if declared.dtype != v.type.dtype:  # a wrong dtype is an error (as onnxruntime says)
                    raise ModelImportError(f"ONNX node '{label}' ({node.op_type}): output '{name}' is "
                                           f"declared {declared} in value_info but computes {v.type}")
                if types_compatible(declared, v.type):  # a stale shape is only a hint that misfit
                    v.type = refine(v.type, declared)
            self.scope[name] = v
        missing = [n for n, v in zip(node.output, outs + [None] * len(node.output)) if n and v is None]
        if missing and len(outs) < len(node.output):
            raise ModelImportError(f"ONNX node '{label}' ({node.op_type}): output(s) {missing} are "
                                   "used but the converter does not produce them")


def contradicts(declared: Type, computed: Type) -> bool:
    """Does a declared type say something the computed one rules out: another dtype or rank,
    or another number for a static dim?  (Symbol names are the graph's own: an output
    declared [M] may compute [N].  An optional that holds a value may be declared as it.)"""
    if isinstance(declared, AnyType) or isinstance(computed, AnyType):
        return False
    if isinstance(computed, OptionalType) and not isinstance(declared, OptionalType):
        computed = computed.elem
    if isinstance(declared, OptionalType) and not isinstance(computed, OptionalType):
        declared = declared.elem
    if isinstance(declared, TensorType) and isinstance(computed, TensorType):
        if declared.dtype != computed.dtype:
            return True
        if declared.shape is None or computed.shape is None:
            return False
        return len(declared.shape) != len(computed.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b
            for a, b in zip(declared.shape, computed.shape))
    if type(declared) is not type(computed):
        return True
    if isinstance(declared, MapType):
        return declared.key != computed.key or contradicts(declared.value, computed.value)
    if isinstance(declared, (SequenceType, OptionalType)):
        return contradicts(declared.elem, computed.elem)
    return False


def check_arity(node: onnx.NodeProto, label: str, domain: str, opset: int | None) -> None:
    """A node's input and output counts against its ONNX schema (extra inputs are not
    silently dropped).  Ops without a schema (local functions, custom domains) pass."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset or 1, domain)
    except onnx.defs.SchemaError:
        return
    name = f"{node.op_type}-{schema.since_version}"
    for what, n, lo, hi, verb in (("inputs", len(node.input), schema.min_input, schema.max_input, "takes"),
                                  ("outputs", len(node.output), schema.min_output, schema.max_output, "has")):
        if not lo <= n <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}" if hi < 2 ** 31 - 1 else f"at least {lo}"
            raise ModelImportError(f"ONNX node '{label}' ({node.op_type}) has {n} {what}; {name} "
                                   f"{verb} {want}")


def topological_order(graph: onnx.GraphProto, imp: GraphImporter) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is defined first; a name defined twice (SSA) or
    a cycle is an import error."""
    defined: dict[str, str] = {}
    for t in list(graph.initializer) + [sp.values for sp in graph.sparse_initializer]:
        if t.name in defined:
            raise ModelImportError(f"'{t.name}' is defined twice: by two initializers")
        defined[t.name] = "an initializer"
    for inp in graph.input:
        defined.setdefault(inp.name, "a graph input")  # an initializer may be listed as an input
    produced_by: dict[str, int] = {}
    for i, n in enumerate(graph.node):
        for o in n.output:
            if not o:
                continue
            if o in defined:
                raise ModelImportError(f"'{o}' is defined twice: by {defined[o]} and by ONNX node "
                                       f"'{n.name or n.op_type}' ({n.op_type}); a graph defines each "
                                       "name once")
            defined[o] = f"ONNX node '{n.name or n.op_type}' ({n.op_type})"
            produced_by[o] = i
    deps: list[set[int]] = []
    for i, n in enumerate(graph.node):
        d = set()
        for name in list(n.input) + _subgraph_reads(n, imp.depth + 1):
            j = produced_by.get(name)
            if j is not None and j != i:
                d.add(j)
            elif j == i:
                raise ModelImportError(f"ONNX node '{n.name or n.op_type}' ({n.op_type}) reads its own output '{name}': a cycle")
        deps.append(d)
    order, state = [], [0] * len(graph.node)
    for start in range(len(graph.node)):
        if state[start]:
            continue
        stack = [(start, iter(sorted(deps[start])))]
        state[start] = 1
        while stack:
            i, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[i] = 2
                order.append(graph.node[i])
            elif state[nxt] == 1:
                cyc = [graph.node[k].name or graph.node[k].op_type for k, _ in stack]
                raise ModelImportError(f"the graph has a cycle through nodes {cyc}")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
    return order


def _subgraph_reads(node: onnx.NodeProto, depth: int) -> list[str]:
    """Names a node's subgraphs read from enclosing scopes (they order the node too);
    ``depth`` is how deep those subgraphs nest (at most ``MAX_NESTING``)."""
    names: list[str] = []
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        if graphs and depth > MAX_NESTING:
            raise ModelImportError(f"ONNX node '{node.name or node.op_type}' ({node.op_type}): its "
                                   f"subgraphs nest more than {MAX_NESTING} levels deep (galaxir's limit)")
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                names.extend(x for x in n.input if x and x not in local)
                names.extend(x for x in _subgraph_reads(n, depth + 1) if x not in local)
            names.extend(o.name for o in g.output if o.name not in local)
    return names
