"""The textual form, MLIR-like.  ``parse(print_module(m))`` rebuilds ``m`` exactly.

    module @main {producer = "onnx"} {
    func @main(%x: f32[N,3,224,224]) -> (y: f32[N,1000]) {
      %0 = conv(%x, %w0, _) {strides = [2, 2]} : f32[N,64,112,112] loc(["Conv_0"])
      %1 = relu(%0) : f32[N,64,112,112]
      return %1
    }
    }

Tensors of up to 16 elements print as literals; larger ones as hex bytes, or with
``resources=True`` as ``dense_resource<...>`` names whose bytes follow in a trailing
``resources`` section, so a reader sees the graph first.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np

from .core import Block, Module, Operation, Value
from .types import DType, Type, TensorType

SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
INLINE_ELEMENTS = 16
RESOURCE_BYTES = 256


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    r = repr(float(x))
    return r if any(c in r for c in ".en") else r + ".0"


def format_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def format_tensor_literal(arr: np.ndarray) -> str:
    dt = DType.from_numpy(arr.dtype)
    ty = TensorType(dt, arr.shape)
    flat = arr.reshape(-1)
    if dt is DType.string:
        items = [format_str(x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else str(x)) for x in flat]
    elif dt is DType.bool:
        items = ["true" if x else "false" for x in flat]
    elif dt.is_int:
        items = [str(int(x)) for x in flat]
    elif dt in (DType.complex64, DType.complex128):
        items = [f"({format_float(x.real)}, {format_float(x.imag)})" for x in flat]
    else:
        items = [format_float(float(x)) for x in flat]
    return f"dense<{ty}: [{', '.join(items)}]>"


def tensor_hex(arr: np.ndarray) -> str:
    return "0x" + np.ascontiguousarray(arr).tobytes().hex()


class Printer:
    def __init__(self, resources: bool = True, names: bool = True):
        self.use_resources = resources
        self.use_names = names
        self.resources: dict[str, np.ndarray] = {}
        self.names: dict[int, str] = {}
        self.taken: set[str] = set()
        self.counter = 0
        self.elided = 0  # tensors shown as elided_N_bytes (resources=False)

    # -- values --------------------------------------------------------------------------
    def name_of(self, v: Value | None) -> str:
        if v is None:
            return "_"
        key = id(v)
        if key not in self.names:
            raise KeyError(f"value {v!r} used before it was printed (not dominated?)")
        return self.names[key]

    def define(self, v: Value, keep_name: bool = False) -> str:
        hint = v.name if (self.use_names or keep_name) else None
        if hint:
            base = hint if SAFE_NAME.match(hint) else None
            text = f"%{base}" if base else f"%{format_str(hint)}"
            if text in self.taken:
                i = 1
                while f"%{format_str(f'{hint}_{i}')}" in self.taken or f"%{hint}_{i}" in self.taken:
                    i += 1
                h2 = f"{hint}_{i}"
                text = f"%{h2}" if SAFE_NAME.match(h2) else f"%{format_str(h2)}"
        else:
            while f"%{self.counter}" in self.taken:
                self.counter += 1
            text = f"%{self.counter}"
            self.counter += 1
        self.taken.add(text)
        self.names[id(v)] = text
        return text

    # -- attributes ----------------------------------------------------------------------
    def attr(self, value, hint: str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return format_float(value)
        if isinstance(value, str):
            return format_str(value)
        if isinstance(value, DType):
            return f"dtype<{value.short}>"
        if isinstance(value, Type):
            return f"type<{value}>"
        if isinstance(value, tuple):
            return "[" + ", ".join(self.attr(v, hint) for v in value) + "]"
        if isinstance(value, np.ndarray):
            return self.tensor(value, hint)
        raise TypeError(f"cannot print attribute {value!r}")

    def tensor(self, arr: np.ndarray, hint: str) -> str:
        dt = DType.from_numpy(arr.dtype)
        if arr.size <= INLINE_ELEMENTS or dt is DType.string:
            return format_tensor_literal(arr)
        ty = TensorType(dt, arr.shape)
        if self.use_resources and arr.nbytes > RESOURCE_BYTES:
            key = re.sub(r"[^A-Za-z0-9_.]", "_", hint) or "blob"
            base, i = key, 1
            while key in self.resources:
                key = f"{base}_{i}"
                i += 1
            self.resources[key] = arr
            return f"dense_resource<{ty}: {key}>"
        if not self.use_resources and arr.nbytes > RESOURCE_BYTES:
            self.elided += 1
            return f"dense_resource<{ty}: elided_{arr.nbytes}_bytes>"
        return f"dense<{ty}: {tensor_hex(arr)}>"

    # -- ops and blocks --------------------------------------------------------------------
    def op(self, op: Operation, indent: str, out: list[str]) -> None:
        if op.is_terminator:
            out.append(f"{indent}return {', '.join(self.name_of(v) for v in op.operands)}".rstrip())
            return
        operands = ", ".join(self.name_of(v) for v in op.operands)
        hint = op.results[0].name if self.use_names and op.results and op.results[0].name else op.name
        attrs = ""
        if op.attrs:
            attrs = " {" + ", ".join(f"{k} = {self.attr(v, hint)}" for k, v in sorted(op.attrs.items())) + "}"
        types = ", ".join(str(r.type) for r in op.results)
        loc = ""
        if op.provenance or op.created_by:
            loc = " loc([" + ", ".join(format_str(p) for p in op.provenance) + "]"
            loc += f", {format_str(op.created_by)})" if op.created_by else ")"
        # Results are named after the regions are printed? No: regions may use outer values
        # only, never the op's own results, so define results first for a stable numbering.
        lhs = ", ".join(self.define(r) for r in op.results)
        lhs = f"{lhs} = " if lhs else ""
        name = op.name if SAFE_NAME.match(op.name) else format_str(op.name)
        if op.regions:
            out.append(f"{indent}{lhs}{name}({operands}){attrs} : ({types}){loc} (")
            for i, region in enumerate(op.regions):
                self.block(region.block, indent + "  ", out, header=True)
                if i < len(op.regions) - 1:
                    out[-1] += ","
            out.append(f"{indent})")
        else:
            out.append(f"{indent}{lhs}{name}({operands}){attrs} : ({types}){loc}")

    def block(self, block: Block, indent: str, out: list[str], header: bool) -> None:
        if header:
            args = ", ".join(f"{self.define(a)}: {a.type}" for a in block.args)
            out.append(f"{indent}{{^({args})")
        for op in block:
            self.op(op, indent + "  ", out)
        if header:
            out.append(f"{indent}}}")

    def module(self, m: Module) -> str:
        out: list[str] = []
        meta = ""
        if m.metadata:
            meta = " {" + ", ".join(f"{format_str(k)} = {format_str(v)}" for k, v in sorted(m.metadata.items())) + "}"
        name = m.name if SAFE_NAME.match(m.name) else format_str(m.name)
        out.append(f"module @{name}{meta} {{")
        g = m.graph
        args = ", ".join(f"{self.define(a, keep_name=True)}: {a.type}" for a in g.inputs)
        res_types = [v.type if v is not None else "none" for v in g.outputs]
        rets = ", ".join(f"{format_str(n) if not SAFE_NAME.match(n) else n}: {t}"
                         for n, t in zip(g.output_names, res_types))
        out.append(f"func @main({args}) -> ({rets}) {{")
        self.block(g.block, "", out, header=False)
        out.append("}")
        out.append("}")
        if self.elided:
            out.append(f"// {self.elided} large tensors elided: module.to_text() prints the whole "
                       "text, which galaxir.parse reads back")
        if self.resources:
            out.append("resources {")
            for key, arr in self.resources.items():
                out.append(f"  {key}: {tensor_hex(arr)}")
            out.append("}")
        return "\n".join(out) + "\n"


def print_module(m: Module, resources: bool = True, names: bool = True) -> str:
    """The module as text; ``resources=False`` elides big tensors (display only)."""
    return Printer(resources=resources, names=names).module(m)


def print_op(op: Operation) -> str:
    """One op as text (operands numbered locally), for error messages and debugging."""
    p = Printer(resources=False)
    for v in op.operands:
        if v is not None and id(v) not in p.names:
            p.define(v)
    out: list[str] = []
    p.op(op, "", out)
    return "\n".join(out)


def structural_key(m: Module) -> str:
    """Text that is equal for two modules exactly when they are structurally equal
    (value name hints aside; graph input and output names included)."""
    return print_module(m, resources=True, names=False)
