"""galaxir modules back to ONNX, so a model optimized here can go to other tools.

galaxir op semantics are those of the newest ONNX version of the op, with the same operand
order and attribute names, so most ops map one to one.  Ops with no ONNX form (fused ops,
custom ops) are first rewritten through their ``decompose``; an op with neither is an
UnsupportedOpError.  An op that runs channels-last (``layout="NHWC"``, set by the O3
layout pass) goes out as its ONNX (channels-first) form between two Transposes.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx
import onnx.defs
from onnx import helper, numpy_helper

from ...errors import FormatError, UnsupportedOpError
from ...ir import Block, Builder, Module, Operation, Value
from ...ir.opdef import describe, lookup
from ...ir.types import (UNKNOWN, DType, OptionalType, SequenceType, TensorType, Type)

MIN_OPSET = 21
DOMAIN_PREFIXES = {"ml.": "ai.onnx.ml", "training.": "ai.onnx.preview.training", "preview.": "ai.onnx.preview"}
REGION_ATTRS = {"if": ("then_branch", "else_branch"), "loop": ("body",), "scan": ("body",),
                "sequence_map": ("body",)}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("normalization", "norm")


@functools.lru_cache(maxsize=1)
def _onnx_names() -> dict[tuple[str, str], tuple[str, int]]:
    """(domain, key) -> (ONNX op type, the opset where it first appeared) over every schema."""
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for s in onnx.defs.get_all_schemas_with_history():
        if s.deprecated:
            continue
        k = (s.domain, _key(s.name))
        if k not in out or s.since_version < out[k][1]:
            out[k] = (s.name, s.since_version)
    return out


def _optional_outputs(domain: str, op_type: str, opset: int) -> list[bool]:
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        return []
    opt = onnx.defs.OpSchema.FormalParameterOption.Optional
    return [o.option == opt for o in schema.outputs]


def onnx_op_for(name: str) -> tuple[str, str, int] | None:
    """(domain, op type, first opset) of the ONNX op with a galaxir op's semantics.
    galaxir follows the newest version of each op; exporting at an opset where the op
    exists uses the version in force there, which accepts what galaxir emits as long as
    the model uses no feature newer than that opset (the source model's opset is the floor)."""
    domain, base = "", name
    for prefix, dom in DOMAIN_PREFIXES.items():
        if name.startswith(prefix):
            domain, base = dom, name[len(prefix):]
            break
    hit = _onnx_names().get((domain, _key(base)))
    if hit is None:
        return None
    return domain, hit[0], hit[1]


def type_proto(t: Type) -> onnx.TypeProto:
    if isinstance(t, TensorType):
        shape = None if t.shape is None else [None if d == UNKNOWN else d for d in t.shape]
        return helper.make_tensor_type_proto(t.dtype.onnx, shape)
    if isinstance(t, SequenceType):
        return helper.make_sequence_type_proto(type_proto(t.elem))
    if isinstance(t, OptionalType):
        return helper.make_optional_type_proto(type_proto(t.elem))
    return onnx.TypeProto()


def tensor_proto(arr: np.ndarray, name: str) -> onnx.TensorProto:
    if arr.dtype == object:
        t = helper.make_tensor(name, onnx.TensorProto.STRING, arr.shape,
                               [str(s).encode("utf-8", "surrogateescape") for s in arr.reshape(-1)])
        return t
    return numpy_helper.from_array(np.asarray(arr), name)


def _unique(base: str, taken: set[str], sep: str) -> str:
    """``base``, or ``base{sep}1``, ``base{sep}2``... whichever is free; marks it taken."""
    name, i = base, 1
    while name in taken:
        name = f"{base}{sep}{i}"
        i += 1
    taken.add(name)
    return name


class _Exporter:
    def __init__(self):
        self.names: dict[int, str] = {}
        self.taken: set[str] = set()
        self.opsets: dict[str, int] = {"": MIN_OPSET}
        self.counter = 0
        self.node_names: set[str] = set()
        self.returned: set[int] = set()

    def name(self, v: Value) -> str:
        key = id(v)
        if key not in self.names:
            base = v.name or f"v{self.counter}"
            self.counter += 1
            self.names[key] = self.fresh(base)
        return self.names[key]

    def fresh(self, base: str) -> str:
        return _unique(base, self.taken, "_")

    def node_name(self, op: Operation) -> str:
        """Unique node names: the op's source nodes (several ops may share one source)."""
        return _unique(",".join(op.provenance) or op.name, self.node_names, "#")

    def attr_value(self, key: str, v: Any, op: Operation) -> Any:
        if isinstance(v, DType):
            return v.onnx
        if isinstance(v, np.ndarray):
            return tensor_proto(v, key)
        if isinstance(v, Type):
            return type_proto(v)
        if isinstance(v, bool):
            return int(v)
        return v

    def block(self, block: Block, main: bool, initializers: list,
              out_names: list[str] | None = None) -> tuple[list, list[str]]:
        """Nodes for a block; returns (nodes, output names).  ``out_names`` (main graph)
        are reserved up front and given to the outputs."""
        self.returned.update(id(v) for v in block.results if v is not None)
        nodes: list[onnx.NodeProto] = []
        for op in block:
            if op.is_terminator:
                break
            nodes.extend(self.op(op, main, initializers))
        outs = []
        local = {id(r) for op in block for r in op.results}
        seen: set[str] = set()
        for i, v in enumerate(block.results):
            n = self.name(v)
            if main or id(v) not in local or n in seen:
                # a graph output must be produced by a node of its own graph, once
                copy = out_names[i] if out_names else self.fresh(n + "_out")
                nodes.append(helper.make_node("Identity", [n], [copy]))
                n = copy
            seen.add(n)
            outs.append(n)
        return nodes, outs

    def op(self, op: Operation, main: bool, initializers: list) -> list[onnx.NodeProto]:
        if op.name == "constant":
            n = self.name(op.result)
            t = tensor_proto(op.attrs["value"], n)
            if main:
                initializers.append(t)
                return []
            return [helper.make_node("Constant", [], [n], value=t)]
        if op.attrs.get("layout") == "NHWC":
            return self.channels_last(op, main, initializers)
        target = onnx_op_for(op.name)
        if target is None:
            od = lookup(op.name)
            if od is not None and od.decompose is not None:
                return self.decomposed(op, main, initializers)
            raise UnsupportedOpError(f"{describe(op)}: no ONNX op has the semantics of '{op.name}' "
                                     "and it has no decomposition")
        domain, op_type, since = target
        self.opsets[domain] = max(self.opsets.get(domain, 1), since if domain else max(since, MIN_OPSET))
        inputs = ["" if v is None else self.name(v) for v in op.operands]
        while inputs and inputs[-1] == "":
            inputs.pop()
        outputs = [self.name(r) if (r.uses or id(r) in self.returned) else "" for r in op.results]
        optional = _optional_outputs(domain, op_type, self.opsets[domain])
        for i, r in enumerate(op.results):  # unused outputs the schema requires keep a name
            if outputs[i] == "" and not (i < len(optional) and optional[i]):
                outputs[i] = self.name(r)
        while outputs and outputs[-1] == "":
            outputs.pop()
        attrs = {k: self.attr_value(k, v, op) for k, v in op.attrs.items()}
        for key, region in zip(REGION_ATTRS.get(op.name, ()), op.regions):
            attrs[key] = self.graph(region.block, f"{op.name}_{key}")
        node = helper.make_node(op_type, inputs, outputs, name=self.node_name(op),
                                domain=domain or None, **attrs)
        return [node]

    def decomposed(self, op: Operation, main: bool, initializers: list) -> list[onnx.NodeProto]:
        """Export a composite op through its decomposition, built in a scratch block."""
        scratch = Block()
        b = Builder(scratch, provenance=op.provenance, created_by=f"export:{op.name}")
        return self.rewritten(op, b, op.opdef.decompose(b, op), main, initializers)

    def channels_last(self, op: Operation, main: bool, initializers: list) -> list[onnx.NodeProto]:
        """``op(x)`` with ``layout="NHWC"`` as ``transpose(op_nchw(transpose(x)))``: its
        activations (x, and fused_conv's residual z) move channels to axis 1 and back; the
        weights already have the ONNX form."""
        activations = (0, 3) if op.name == "fused_conv" else (0,)
        scratch = Block()
        b = Builder(scratch, provenance=op.provenance, created_by=f"export:{op.name}")
        operands = list(op.operands)
        for i in activations:
            v = operands[i] if i < len(operands) else None
            if v is not None:
                if not isinstance(v.type, TensorType) or v.type.shape is None:
                    raise UnsupportedOpError(f"{describe(op)}: a channels-last op needs a known rank to export")
                r = len(v.type.shape)
                operands[i] = b.transpose(v, perm=(0, r - 1, *range(1, r - 1)))
        attrs = {k: v for k, v in op.attrs.items() if k != "layout"}
        inner = b.create(op.name, *operands, num_results=len(op.results), **attrs)
        outs = []
        for r_in, r_out in zip(inner.results, op.results):
            r = len(r_out.type.shape)
            outs.append(b.transpose(r_in, perm=(0, *range(2, r), 1)))
        return self.rewritten(op, b, outs, main, initializers)

    def rewritten(self, op: Operation, b: Builder, outs: list[Value], main: bool,
                  initializers: list) -> list[onnx.NodeProto]:
        """The nodes of the ops ``b`` built in its scratch block, then an Identity from each
        of ``outs`` to the name of ``op``'s result it replaces."""
        scratch = b.block
        b.ret(*outs)
        nodes = []
        for inner in scratch:
            if inner.is_terminator:
                break
            nodes.extend(self.op(inner, main, initializers))
        for r, v in zip(op.results, outs):
            nodes.append(helper.make_node("Identity", [self.name(v)], [self.name(r)]))
        return nodes

    def graph(self, block: Block, name: str) -> onnx.GraphProto:
        inputs = [helper.make_value_info(self.name(a), type_proto(a.type)) for a in block.args]
        nodes, outs = self.block(block, False, [])
        outputs = [helper.make_value_info(n, type_proto(v.type)) for n, v in zip(outs, block.results)]
        return helper.make_graph(nodes, name, inputs, outputs)


def export_onnx(module: Module, opset: int | None = None) -> onnx.ModelProto:
    """An ONNX model with the module's semantics."""
    from google.protobuf.message import DecodeError
    try:
        return _export(module, opset)
    except (DecodeError, RecursionError) as e:
        # protobuf refuses messages nested deeper than its own limit (about 30 subgraphs),
        # below galaxir's MAX_NESTING
        raise FormatError(f"ONNX export: the model's control flow is nested deeper than "
                          f"protobuf accepts ({e})") from None


def _export(module: Module, opset: int | None) -> onnx.ModelProto:
    ex = _Exporter()
    g = module.graph
    for v in g.inputs:
        ex.taken.add(v.name)
        ex.names[id(v)] = v.name
    ex.taken.update(g.output_names)
    initializers: list[onnx.TensorProto] = []
    nodes, outs = ex.block(g.block, True, initializers, list(g.output_names))
    inputs = [helper.make_value_info(v.name, type_proto(v.type)) for v in g.inputs]
    outputs = [helper.make_value_info(n, type_proto(v.type)) for n, v in zip(outs, g.outputs)]
    graph = helper.make_graph(nodes, module.name or "galaxir", inputs, outputs, initializers)
    for key, version in module.metadata.items():  # the source model's opsets are the floor
        if (key == "onnx_opset" or key.startswith("onnx_opset:")) and version.isdigit():
            domain = key.partition(":")[2]
            if domain in ex.opsets:
                ex.opsets[domain] = max(ex.opsets[domain], int(version))
    if opset is not None:
        ex.opsets[""] = max(ex.opsets[""], opset)
    model = helper.make_model(graph, producer_name="galaxir",
                              opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(ex.opsets.items())])
    model.ir_version = min(model.ir_version, 10)
    for k, v in module.metadata.items():
        if not k.startswith("onnx."):
            model.metadata_props.add(key=f"galaxir.{k}", value=str(v))
    return model
