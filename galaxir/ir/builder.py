"""Writing graphs in Python: ops are created at an insertion point and their result types
are inferred as you go.

    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 16))
    w = gb.constant(np.ones((16, 4), np.float32))
    y = gb.relu(gb.matmul(x, w))
    gb.output(y, "y")
    module = gb.module()
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UnsupportedOpError, VerificationError
from .core import Block, Graph, Module, Operation, Region, Value
from .opdef import describe, lookup
from .types import AnyType, Type


def check_signature(op: Operation) -> None:
    """Operand count, attribute names/kinds/required, region count: the op's declared shape."""
    od = lookup(op.name)
    if od is None:
        raise UnknownOpError(f"{describe(op)}: unknown op '{op.name}' (not in the op registry; "
                             "define it with galaxir.ir.opdef.define)")
    n = len(op.operands)
    if n < od.min_operands or (od.max_operands is not None and n > od.max_operands):
        want = f"{od.min_operands}" if od.max_operands == od.min_operands else \
            f"{od.min_operands}..{od.max_operands if od.max_operands is not None else 'any'}"
        raise VerificationError(f"{describe(op)}: takes {want} operands "
                                f"({', '.join(od.operands)}), got {n}")
    for i, (name, v) in enumerate(zip(od.operands, op.operands)):
        if v is None and not name.endswith(("?", "*")):
            raise VerificationError(f"{describe(op)}: operand {i} ({name}) is required but missing")
    for key, value in op.attrs.items():
        spec = od.attrs.get(key)
        if spec is None:
            raise VerificationError(f"{describe(op)}: unknown attribute '{key}'; "
                                    f"expected one of {sorted(od.attrs) or 'none'}")
        if not spec.check(value):
            raise VerificationError(f"{describe(op)}: attribute '{key}' must be {spec.kind}, "
                                    f"got {type(value).__name__} {_short(value)}")
    for key, spec in od.attrs.items():
        if spec.required and key not in op.attrs:
            raise VerificationError(f"{describe(op)}: required attribute '{key}' ({spec.kind}) is missing")
    if len(op.regions) != od.regions:
        raise VerificationError(f"{describe(op)}: has {len(op.regions)} regions, expected {od.regions}")


class UnknownOpError(VerificationError, UnsupportedOpError):
    """An op name that no definition is registered for."""


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 60 else s[:57] + "..."


def create_op(name: str, operands: Sequence[Value | None] = (), attrs: dict | None = None,
              regions: Sequence[Region] = (), num_results: int | None = None,
              result_types: Sequence[Type] | None = None, provenance: Sequence[str] = (),
              created_by: str | None = None) -> Operation:
    """Make a detached op, checking its signature and inferring result types."""
    attrs = {k: v for k, v in (attrs or {}).items() if v is not None}
    od = lookup(name)
    if result_types is None:
        n = num_results if num_results is not None else (od.num_results if od else None)
        if n is None and od is not None and od.infer is not None and regions:
            n = -1  # decided by inference over the regions
        if n is None:
            raise VerificationError(f"op '{name}' needs num_results= (its result count varies)")
        op = Operation(name, operands, [AnyType()] * max(n, 0), attrs, regions,
                       provenance=provenance, created_by=created_by)
        check_signature(op)
        types = od.infer_types(op)
        if types is None:
            types = [AnyType()] * max(n, 0)
        if n == -1:
            op.results = [Value(t, op, i) for i, t in enumerate(types)]
        else:
            if len(types) != n:
                raise VerificationError(f"{describe(op)}: inference gave {len(types)} result types for {n} results")
            for r, t in zip(op.results, types):
                r.type = t
        return op
    op = Operation(name, operands, result_types, attrs, regions, provenance=provenance,
                   created_by=created_by)
    check_signature(op)
    return op


class Builder:
    """Creates ops at an insertion point in a block: ``b.add(x, y)`` or ``b.op("add", x, y)``."""

    def __init__(self, block: Block, before: Operation | None = None,
                 provenance: Sequence[str] = (), created_by: str | None = None):
        self.block = block
        self.before = before
        self.provenance = tuple(provenance)
        self.created_by = created_by

    def insert(self, op: Operation) -> Operation:
        if self.before is not None:
            self.block.insert_before(self.before, op)
        elif self.block.terminator is not None:
            self.block.insert_before(self.block.terminator, op)
        else:
            self.block.append(op)
        return op

    def create(self, name: str, *operands: Value | None, num_results: int | None = None,
               regions: Sequence[Region] = (), result_types: Sequence[Type] | None = None,
               **attrs: Any) -> Operation:
        op = create_op(name, operands, attrs, regions, num_results, result_types,
                       self.provenance, self.created_by)
        return self.insert(op)

    def op(self, name: str, *operands: Value | None, num_results: int | None = None,
           regions: Sequence[Region] = (), **attrs: Any) -> Value | tuple[Value, ...]:
        """Create an op and return its result (or a tuple when it has several)."""
        op = self.create(name, *operands, num_results=num_results, regions=regions, **attrs)
        return op.results[0] if len(op.results) == 1 else tuple(op.results)

    def constant(self, value: Any, dtype: Any = None) -> Value:
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64 and dtype is None and not isinstance(value, np.ndarray):
            arr = arr.astype(np.float32)
        return self.op("constant", value=arr)

    def region(self, arg_types: Sequence[Type] = (), body: Callable | None = None,
               arg_names: Sequence[str] | None = None) -> Region:
        """A new region; ``body(builder, *args)`` fills it and returns the values to return."""
        region = Region(Block(arg_types, arg_names))
        if body is not None:
            rb = Builder(region.block, provenance=self.provenance, created_by=self.created_by)
            out = body(rb, *region.block.args)
            out = [out] if isinstance(out, Value) else list(out or [])
            rb.ret(*out)
        return region

    def ret(self, *values: Value | None) -> Operation:
        return self.insert(Operation("return", values))

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if lookup(name) is None:
            raise AttributeError(f"no op named {name!r} (and no Builder method)")
        return lambda *operands, **kw: self.op(name, *operands, **kw)


class GraphBuilder(Builder):
    """A Builder over a new top-level graph, with named inputs and outputs."""

    def __init__(self, name: str = "main"):
        self.graph = Graph()
        self.name = name
        self._outputs: list[tuple[Value, str]] = []
        super().__init__(self.graph.block)

    def input(self, name: str, type: Type) -> Value:
        return self.graph.add_input(name, type)

    def output(self, value: Value, name: str | None = None) -> None:
        self._outputs.append((value, name or value.name or f"output_{len(self._outputs)}"))

    def module(self, metadata: dict | None = None) -> Module:
        self.graph.set_outputs([v for v, _ in self._outputs], [n for _, n in self._outputs])
        return Module(self.graph, self.name, metadata)
