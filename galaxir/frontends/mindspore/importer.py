"""MindIR graphs to galaxir modules.

MindSpore exports the graph it compiled: parameters, ``Constant`` value nodes and CNodes
whose ``op_type`` is ``REF::<primitive>`` (the primitive's name and attributes sit in
``ModelProto.primitives``).  Newer primitives take what used to be attributes as inputs
(``AvgPool(x, kernel_size, strides, pad_mode, data_format)``), so a converter reads an
argument with ``ctx.arg(name, index)``: the attribute when the primitive has one, else
the constant input at that index.  Side-effect plumbing (Load, UpdateState, Depend,
monads) only orders the graph and becomes nothing.

Each primitive has a converter ``fn(ctx) -> Value | tuple`` registered in ``ops``.
"""
from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import GalaxirError, ModelImportError, UnsupportedOpError
from ...ir import Builder, GraphBuilder, Module, Value
from ...ir.types import DType, TensorType
from ..registry import ConverterTable
from .reader import MONAD, attr_value, load_model, numpy_dtype, tensor_array

Converter = Callable[["MindContext"], Any]
#: MindSpore primitives' converters by op_type (``"Conv2D"``); ``@converter`` registers one
CONVERTERS = ConverterTable(__package__ + ".ops")
converter = CONVERTERS.register


def short(name: str) -> str:
    """``120_61___main___LeNet_construct_22:c1.weight`` -> ``c1.weight``."""
    return name.split(":")[1] if name.count(":") >= 1 and not name.startswith("ValueNode") \
        else name


@dataclass
class MindContext:
    """What a converter sees of the node it converts."""

    node: Any
    op_type: str
    attrs: dict[str, Any]
    inputs: list[Any]
    b: Builder

    @property
    def name(self) -> str:
        return short(self.node.name) or self.op_type

    def arg(self, name: str, index: int, default: Any = None) -> Any:
        """An argument: the primitive's attribute ``name`` or the input at ``index``."""
        if name in self.attrs:
            return self.attrs[name]
        if index < len(self.inputs):
            v = self.inputs[index]
            if isinstance(v, Value):
                s = self.static(v)
                if s is None:
                    raise self.unsupported(f"argument '{name}' is computed at run time; "
                                           "galaxir needs it constant")
                return s.tolist()
            return v.tolist() if isinstance(v, np.ndarray) else v
        if default is None:
            raise ModelImportError(f"MindIR node '{self.name}' ({self.op_type}): argument "
                                   f"'{name}' (input {index}) is missing")
        return default

    def value(self, index: int, dtype: DType | None = None) -> Value:
        """Input ``index`` as a tensor Value (constants become constant ops)."""
        if index >= len(self.inputs):
            raise ModelImportError(f"MindIR node '{self.name}' ({self.op_type}) has "
                                   f"{len(self.inputs)} inputs; input {index} is missing")
        return self.tensor(self.inputs[index], dtype)

    def tensor(self, x: Any, dtype: DType | None = None) -> Value:
        if isinstance(x, Value):
            if dtype is not None and isinstance(x.type, TensorType) and x.type.dtype != dtype:
                return self.op("cast", x, to=dtype)
            return x
        if x is None or x is MONAD or isinstance(x, tuple) and any(isinstance(e, Value) for e in x):
            raise ModelImportError(f"MindIR node '{self.name}' ({self.op_type}): expected a "
                                   f"tensor, got {x!r}")
        arr = np.asarray(x)
        if dtype is not None:
            arr = arr.astype(dtype.numpy)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        return self.b.op("constant", value=arr)

    def static(self, v: Any) -> np.ndarray | None:
        if isinstance(v, Value):
            p = v.producer
            return np.asarray(p.attrs["value"]) if p is not None and p.name == "constant" else None
        if v is None or v is MONAD:
            return None
        return np.asarray(v)

    def i64(self, values: Any) -> Value:
        return self.b.op("constant", value=np.asarray(values, dtype=np.int64))

    def op(self, name: str, *operands: Value | None, num_results: int | None = None, **attrs):
        return self.b.op(name, *operands, num_results=num_results, **attrs)

    def rank(self, v: Value) -> int:
        if not isinstance(v.type, TensorType) or v.type.shape is None:
            raise self.unsupported("needs an input of known rank")
        return len(v.type.shape)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"MindIR node '{self.name}' ({self.op_type}): {why}")


class MindIRImporter:
    def __init__(self, model: Any, folder: Path | None, dim_names: dict | None = None):
        self.model = model
        self.folder = folder
        self.prims = {p.name: p for p in model.primitives}
        #: the function graphs (MindSpore's control flow: branches, loop headers and bodies)
        self.graphs = {f.name: f for f in model.functions}
        #: loop headers being converted into a loop (a call of one is the loop's next iteration)
        self.loops: list[str] = []
        self.env: dict[str, Any] = {}
        self.dim_names = dim_names or {}

    def op_type(self, node: Any) -> tuple[str, Any]:
        """The primitive's op_type and its PrimitiveProto (None for value nodes)."""
        t = node.op_type
        if t.startswith("REF::"):
            prim = self.prims.get(t[5:])
            if prim is None:
                # a call of a function graph: MindSpore's control flow or a cell kept whole
                return "call", None
            return prim.op_type, prim
        return t, None

    def check_supported(self) -> None:
        """Every op the graph uses has a converter, or one error lists all that do not."""
        conv = CONVERTERS.loaded()
        missing: dict[str, list[str]] = {}
        for node in [n for g in (self.model.graph, *self.model.functions) for n in g.node]:
            t, prim = self.op_type(node)
            if t != "Constant" and prim is not None and t not in conv:
                missing.setdefault(t, []).append(short(node.name))
        if missing:
            lines = "; ".join(f"{t} ({', '.join(n[:3])}{', ...' if len(n) > 3 else ''})"
                              for t, n in sorted(missing.items()))
            raise UnsupportedOpError(f"MindIR model uses {len(missing)} op type(s) galaxir does "
                                     f"not convert: {lines}. MindSpore's ONNX export "
                                     "(mindspore.export(..., file_format='ONNX')) is the other route")

    def input_type(self, vi: Any) -> TensorType:
        if len(vi.tensor) != 1:
            raise ModelImportError(f"MindIR input '{short(vi.name)}' is not one tensor")
        t = vi.tensor[0]
        dims = []
        for i, d in enumerate(t.dims):
            if d >= 0:
                dims.append(int(d))
            else:
                dims.append(self.dim_names.get((short(vi.name), i),
                                               "batch" if i == 0 else f"{short(vi.name)}_{i}"))
        return TensorType(DType.from_numpy(numpy_dtype(t.data_type, short(vi.name))), tuple(dims))

    def run(self) -> Module:
        g = self.model.graph
        self.check_supported()
        gb = GraphBuilder()
        for vi in g.input:
            self.env[vi.name] = gb.input(short(vi.name), self.input_type(vi))
        for p in g.parameter:
            b = Builder(gb.graph.block, provenance=(short(p.name),))
            v = b.op("constant", value=tensor_array(p, self.folder, f"parameter '{short(p.name)}'"))
            self.env[p.name] = v
        result = self.convert_graph(g, self.env, gb.graph.block)
        outputs = self.flatten(result, short(g.output[0].name) if g.output else "output")
        if not outputs:
            raise ModelImportError("MindIR graph has no tensor output")
        for i, v in enumerate(outputs):
            if v in gb.graph.inputs or any(v is o for o in gb.graph.outputs):
                v = Builder(gb.graph.block).op("identity", v)
            gb.output(v, "output" if len(outputs) == 1 else f"output_{i}")
        module = gb.module({"producer": f"{self.model.producer_name} {self.model.producer_version}".strip()})
        module.verify()
        return module

    def convert_graph(self, g: Any, env: dict[str, Any], block: Any) -> Any:
        """Convert graph ``g``'s nodes into ``block`` with ``env`` (its inputs bound);
        the value of its (first) output."""
        self.convert_nodes(g, env, block)
        if not g.output:
            raise ModelImportError(f"MindIR graph '{short(g.name)}' has no output")
        return self.lookup(g.output[0].name, None, env)

    def convert_nodes(self, g: Any, env: dict[str, Any], block: Any, skip_calls: bool = False) -> None:
        """Convert ``g``'s nodes into ``block``; ``skip_calls`` leaves out calls of graphs
        (a loop header's final call, which the loop itself stands for)."""
        conv = CONVERTERS.loaded()
        for node in g.node:
            t, prim = self.op_type(node)
            b = Builder(block, provenance=(short(node.name),))
            if t == "call" and prim is None and skip_calls:
                continue
            if t == "Constant":
                vals = [attr_value(a, self.folder, f"value node '{node.name}'")
                        for a in node.attribute if a.name == "value"]
                result = vals[0] if vals else None
            elif prim is None:  # a call of a function graph, or of a Partial / Switch value
                from .control import call
                result = call(self, node, env, b)
            else:
                attrs = {a.name: attr_value(a, self.folder, f"primitive '{prim.name}'")
                         for a in prim.attribute if a.name not in ("input_names", "output_names")}
                inputs = [self.lookup(i, node, env) for i in node.input]
                ctx = MindContext(node, t, attrs, inputs, b)
                try:
                    result = conv[t](ctx)
                except GalaxirError:
                    raise
                except (ValueError, TypeError, IndexError, KeyError) as e:
                    raise ModelImportError(f"MindIR node '{ctx.name}' ({t}): {e}") from None
            for out in list(node.output) or [node.name]:
                env[out] = result
            if node.name not in env.maps[0] if isinstance(env, ChainMap) else node.name not in env:
                env[node.name] = result

    def flatten(self, v: Any, name: str) -> list[Value]:
        if isinstance(v, Value):
            return [v]
        if isinstance(v, tuple):
            return [x for e in v for x in self.flatten(e, name)]
        if v is MONAD or v is None:
            return []
        raise UnsupportedOpError(f"MindIR output '{name}' is a constant ({type(v).__name__}), "
                                 "not a tensor computed from the inputs")

    def lookup(self, name: str, node: Any, env: dict[str, Any] | None = None) -> Any:
        env = self.env if env is None else env
        if name not in env:
            if name in self.graphs:
                from .control import Closure
                return Closure(self.graphs[name], ())
            who = f"node '{short(node.name)}'" if node is not None else "the graph output"
            raise ModelImportError(f"MindIR {who} reads '{short(name)}', which is not defined "
                                   "before it")
        return env[name]


def import_mindir(source: Any, dim_names: dict | None = None) -> Module:
    """A galaxir Module from a ``.mindir`` path or its bytes.  Dims MindSpore exported as
    dynamic (-1) become symbolic: ``batch`` for axis 0, ``<input>_<axis>`` otherwise."""
    model, folder = load_model(source)
    return MindIRImporter(model, folder, dim_names).run()
