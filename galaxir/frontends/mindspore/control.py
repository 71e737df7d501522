"""MindSpore's control flow: calls of function graphs, ``Partial``, ``Switch`` and loops.

MindIR keeps a ``construct``'s ``if`` and ``while`` as function graphs (``ModelProto.functions``):
``Partial(g, args...)`` binds a graph's first arguments (a :class:`Closure`),
``Switch(cond, a, b)`` picks one of two closures, and a node whose ``op_type`` is
``REF::<graph or node name>`` calls a graph or a picked closure.  A ``while`` is a header
graph that tests the condition and switches between its body graph, which ends by calling
the header again (tail recursion), and the graph after the loop.

galaxir inlines plain calls, makes a switched call an ``if`` whose regions are the two
branches, and turns a header a body calls back into a ``loop``: values the body passes
back unchanged (weights, bounds) are read from the enclosing scope, the others are carried.
"""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ModelImportError, UnsupportedOpError
from ...ir import Builder, Value
from ...ir.types import DType, TensorType
from .importer import MindContext, converter, short
from .reader import MONAD


@dataclass(frozen=True)
class Closure:
    """A function graph with its first arguments bound (``Partial``)."""

    graph: Any
    bound: tuple


@dataclass(frozen=True)
class SwitchValue:
    """``Switch(cond, on_true, on_false)`` not yet called."""

    cond: Any
    on_true: Any
    on_false: Any


@dataclass(frozen=True)
class TailCall:
    """A loop body's call of its loop header: the next iteration's arguments."""

    args: tuple


@converter("Partial")
def partial(ctx: MindContext):
    f = ctx.inputs[0] if ctx.inputs else None
    if not isinstance(f, Closure):
        raise ctx.unsupported("Partial of something that is not a function graph")
    return Closure(f.graph, f.bound + tuple(ctx.inputs[1:]))


@converter("Switch")
def switch(ctx: MindContext):
    if len(ctx.inputs) != 3:
        raise ctx.unsupported(f"Switch takes 3 inputs, got {len(ctx.inputs)}")
    cond, a, b = ctx.inputs
    if isinstance(a, Closure) or isinstance(b, Closure):
        return SwitchValue(cond, a, b)
    s = ctx.static(cond)
    if s is not None:
        return a if bool(np.asarray(s).reshape(-1)[0]) else b
    return ctx.op("where", _bool_scalar(ctx.b, cond), ctx.value(1), ctx.value(2))


def _bool_scalar(b: Builder, v: Any) -> Value:
    if not isinstance(v, Value):
        v = b.op("constant", value=np.asarray(v))
    if v.type.dtype != DType.bool:
        v = b.op("not", b.op("equal", v, b.op("constant", value=np.zeros((), v.type.dtype.numpy))))
    if v.type.shape != ():
        v = b.op("reshape", v, b.op("constant", value=np.zeros((0,), np.int64)))
    return v


def _static_bool(v: Any) -> bool | None:
    if isinstance(v, Value):
        p = v.producer
        if p is None or p.name != "constant":
            return None
        v = p.attrs["value"]
    if v is None or v is MONAD:
        return None
    return bool(np.asarray(v).reshape(-1)[0])


def call(imp: Any, node: Any, env: dict, b: Builder) -> Any:
    """A node whose op_type is ``REF::<graph>`` or ``REF::<node holding a closure>``."""
    target = node.op_type[5:]
    callee = Closure(imp.graphs[target], ()) if target in imp.graphs else imp.lookup(target, node, env)
    args = tuple(imp.lookup(i, node, env) for i in node.input)
    return apply(imp, callee, args, env, b, node)


def apply(imp: Any, callee: Any, args: tuple, env: dict, b: Builder, node: Any) -> Any:
    if isinstance(callee, SwitchValue):
        c = _static_bool(callee.cond)
        if c is not None:
            return apply(imp, callee.on_true if c else callee.on_false, args, env, b, node)
        return _if(imp, callee, args, env, b, node)
    if not isinstance(callee, Closure):
        raise UnsupportedOpError(f"MindIR node '{short(node.name)}' calls a "
                                 f"{type(callee).__name__}, not a function graph")
    g, full = callee.graph, callee.bound + args
    if len(full) != len(g.input):
        raise ModelImportError(f"MindIR node '{short(node.name)}' calls graph '{short(g.name)}' "
                               f"with {len(full)} arguments; it takes {len(g.input)}")
    if g.name in imp.loops:
        return TailCall(full)
    if _loop_parts(imp, g) is not None:
        return _loop(imp, g, full, env, b, node)
    inner = ChainMap({vi.name: v for vi, v in zip(g.input, full)}, env)
    return imp.convert_graph(g, inner, b.block)


def _flat(b: Builder, v: Any, node: Any) -> list[Value]:
    if isinstance(v, Value):
        return [v]
    if isinstance(v, tuple):
        return [x for e in v for x in _flat(b, e, node)]
    if isinstance(v, (np.ndarray, int, float, bool, np.generic)):
        arr = np.asarray(v)
        return [b.op("constant", value=arr.astype(np.float32) if arr.dtype == np.float64 else arr)]
    raise UnsupportedOpError(f"MindIR node '{short(node.name)}': a branch returns a "
                             f"{type(v).__name__}, which galaxir cannot return from an if")


def _shape_like(template: Any, values: list[Value]) -> Any:
    it = iter(values)

    def rebuild(t):
        return tuple(rebuild(e) for e in t) if isinstance(t, tuple) else next(it)
    return rebuild(template)


def _if(imp, sw: SwitchValue, args: tuple, env: dict, b: Builder, node: Any) -> Any:
    """A data-dependent Switch call: an ``if`` whose regions inline the two branches."""
    shapes = []

    def branch(which):
        def fill(rb):
            out = apply(imp, which, args, env, rb, node)
            shapes.append(out)
            return _flat(rb, out, node)
        return fill
    regions = [b.region((), branch(sw.on_true)), b.region((), branch(sw.on_false))]
    op = b.create("if", _bool_scalar(b, sw.cond), regions=regions)
    return _shape_like(shapes[0], list(op.results))


def _calls(g: Any, name: str) -> bool:
    return any(n.op_type == "REF::" + name for n in g.node)


def _loop_parts(imp, g: Any):
    """(Switch node, index of the body branch, the body's Partial node) when ``g`` is a
    loop header: it switches between a graph that calls ``g`` back and one that does not."""
    by_out = {o: n for n in g.node for o in (list(n.output) or [n.name])}
    for n in g.node:
        t, _ = imp.op_type(n)
        if t != "Switch" or len(n.input) != 3:
            continue
        parts = [by_out.get(i) for i in n.input[1:]]
        if any(p is None or imp.op_type(p)[0] != "Partial" or not p.input for p in parts):
            continue
        bodies = [imp.graphs.get(p.input[0]) for p in parts]
        calls = [bg is not None and _calls(bg, g.name) for bg in bodies]
        if calls.count(True) == 1:
            k = calls.index(True)
            return n, k, parts[k]
    return None


def _header(imp, g: Any, vals: list, env: dict, b: Builder, parts) -> tuple[Value, Closure, Any]:
    """Convert the header's nodes (not its final call) for arguments ``vals``: the loop
    condition, the body closure and the after-loop closure."""
    sw_node, k, _ = parts
    inner = ChainMap({vi.name: v for vi, v in zip(g.input, vals)}, env)
    imp.convert_nodes(g, inner, b.block, skip_calls=True)
    sw = inner.get(sw_node.output[0] if sw_node.output else sw_node.name)
    if not isinstance(sw, SwitchValue):
        raise UnsupportedOpError(f"MindIR loop header '{short(g.name)}' does not switch on a "
                                 "condition computed at run time")
    branches = (sw.on_true, sw.on_false)
    cond = _bool_scalar(b, sw.cond)
    if k == 1:
        cond = b.op("not", cond)
    return cond, branches[k], branches[1 - k]


def _invariant(imp, g: Any, parts) -> set[int]:
    """Header arguments the body passes back unchanged."""
    _, _, partial_node = parts
    body = imp.graphs[partial_node.input[0]]
    bound = list(partial_node.input[1:])  # body input m <- header value bound[m]
    origin = {vi.name: bound[m] for m, vi in enumerate(body.input) if m < len(bound)}
    tail = next(n for n in body.node if n.op_type == "REF::" + g.name)
    return {j for j, a in enumerate(tail.input)
            if j < len(g.input) and origin.get(a) == g.input[j].name}


def _loop(imp, g: Any, args: tuple, env: dict, b: Builder, node: Any) -> Any:
    from ...ir.ops.control import relax_type
    parts = _loop_parts(imp, g)
    invariant = _invariant(imp, g, parts)
    vals = list(args)
    carried = []
    for j, v in enumerate(vals):
        if j in invariant or v is MONAD or v is None or isinstance(v, (Closure, SwitchValue)):
            continue
        if not isinstance(v, Value):
            arr = np.asarray(v)
            vals[j] = b.op("constant", value=arr.astype(np.float32) if arr.dtype == np.float64
                           else arr)
        carried.append(j)
    c0, _, _ = _header(imp, g, vals, env, b, parts)
    scalar = (TensorType(DType.int64, ()), TensorType(DType.bool, ()))

    def body(rb, _i, _c, *cur):
        now = list(vals)
        for j, a in zip(carried, cur):
            now[j] = a
        _, body_closure, _ = _header(imp, g, now, env, rb, parts)
        imp.loops.append(g.name)
        try:
            out = apply(imp, body_closure, (), env, rb, node)
        finally:
            imp.loops.pop()
        if not isinstance(out, TailCall) or len(out.args) != len(vals):
            raise UnsupportedOpError(f"MindIR loop body of '{short(g.name)}' does not end by "
                                     "calling its header")
        nxt = list(now)
        for j in carried:
            nxt[j] = _flat(rb, out.args[j], node)[0]
        c, _, _ = _header(imp, g, nxt, env, rb, parts)
        return [c, *[nxt[j] for j in carried]]

    start = [vals[j] for j in carried]
    try:
        region = b.region((*scalar, *[v.type for v in start]), body)
        op = b.create("loop", None, c0, *start, regions=[region])
    except (ModelImportError, UnsupportedOpError):
        raise
    except Exception:  # a carried value changes type between iterations
        region = b.region((*scalar, *[relax_type(v.type) for v in start]), body)
        op = b.create("loop", None, c0, *start, regions=[region])
    final = list(vals)
    for j, r in zip(carried, op.results):
        final[j] = r
    _, _, after = _header(imp, g, final, env, b, parts)
    return apply(imp, after, (), env, b, node)
