"""Converters for Constant, Identity and control flow (If, Loop, Scan in every opset form).

Subgraphs become regions; they may read values of enclosing graphs directly (the IR
allows uses of values from enclosing scopes).  Loop-carried values may change shape from
one iteration to the next, so the body is typed by a small fixed point: import it with the
initial types, and when the body returns something the arguments cannot hold, import it
again with the merged (less precise) types.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ....errors import ShapeInferenceError
from ....ir import Region
from ....ir.ops.control import merge_types, relax_type
from ....ir.types import AnyType, DType, TensorType, Type, types_compatible
from ..importer import converter


@converter("Constant")
def constant(ctx):
    a = ctx.attrs
    if "value" in a:
        val = a["value"]
    elif "sparse_value" in a:
        val = a["sparse_value"]
    elif "value_float" in a:
        val = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        val = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        val = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        val = np.array(a["value_ints"], np.int64)
    elif "value_string" in a:
        val = np.array(a["value_string"], dtype=object)
    elif "value_strings" in a:
        val = np.array(list(a["value_strings"]), dtype=object)
    else:
        raise ctx.unsupported("Constant without a value attribute")
    return [ctx.op("constant", value=np.asarray(val))]


@converter("Identity")
def identity(ctx):
    return [ctx.op("identity", ctx.inputs[0])]


@converter("If")
def if_(ctx):
    known = static_value(ctx.inputs[0])
    if known is not None and np.asarray(known).size == 1:
        taken = "then_branch" if bool(np.asarray(known).reshape(-1)[0]) else "else_branch"
        return _inline(ctx, ctx.subgraph(ctx.attrs[taken]))
    branches, errors = [], []
    for key in ("then_branch", "else_branch"):
        snapshot = [(v, len(v.uses)) for v in _scope_values(ctx)]
        try:
            branches.append(ctx.subgraph(ctx.attrs[key]))
            errors.append(None)
        except ShapeInferenceError as e:  # this branch cannot run on these types
            _drop_new_uses(snapshot)
            branches.append(None)
            errors.append(f"the If's {key} cannot run on these types: {e}")
    if all(b is None for b in branches):
        raise ShapeInferenceError(errors[0])
    good = next(b for b in branches if b is not None)
    types = [v.type if v is not None else AnyType() for v in good.block.results]
    for i, b in enumerate(branches):
        if b is None:
            branches[i] = ctx.b.region((), lambda rb, msg=errors[i]: list(rb.create(
                "unreachable", result_types=types, message=msg).results))
    return list(ctx.b.create("if", ctx.inputs[0], regions=branches).results)


def _scope_values(ctx) -> list:
    vals, imp = [], ctx.importer
    while imp is not None:
        vals.extend(imp.scope.values())
        imp = imp.parent
    return vals


def _drop_new_uses(snapshot: list) -> None:
    """A subgraph whose import failed half-way left ops that use outer values: drop the
    uses added since ``snapshot`` (value, use count) so use lists stay exact."""
    for v, n in snapshot:
        for op, _ in list(v.uses)[n:]:
            op.drop_operands()


def _inline(ctx, region: Region) -> list:
    """Move a branch's ops in front of the insertion point; its results are the node's."""
    results = list(region.block.results)
    for op in list(region.block):
        region.block.remove(op)
        if op.is_terminator:
            op.drop_operands()
        else:
            ctx.b.insert(op)
    return results


#: Ops ``static_value`` evaluates (small, exact, on known values) to decide an If early.
_STATIC_BINARY = {"equal": np.equal, "less": np.less, "greater": np.greater,
                  "less_or_equal": np.less_equal, "greater_or_equal": np.greater_equal,
                  "and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}


def static_value(v, depth: int = 0):
    """The value of ``v`` when import-time facts decide it (constants, shapes and sizes of
    statically shaped values, comparisons and logic over those), else None."""
    p = v.producer if v is not None else None
    if p is None or depth > 16 or p.regions:
        return None
    if p.name == "constant":
        return p.attrs["value"]
    if p.name in ("shape", "size"):
        t = p.operands[0].type
        if not (isinstance(t, TensorType) and t.is_static):
            return None
        if p.name == "size":
            return np.array(t.numel, np.int64)
        dims = np.array(t.shape, np.int64)
        end = p.attr("end")
        return dims[p.attr("start", 0):end]
    if p.name in ("identity", "not", "cast") and p.operands[0] is not None:
        x = static_value(p.operands[0], depth + 1)
        if x is None:
            return None
        if p.name == "not":
            return np.logical_not(x)
        if p.name == "cast":
            to = p.attr("to")
            return None if to is None or to.numpy.kind not in "biuf" else np.asarray(x).astype(to.numpy)
        return x
    if p.name in _STATIC_BINARY and len(p.operands) == 2:
        a = static_value(p.operands[0], depth + 1)
        b = static_value(p.operands[1], depth + 1) if a is not None else None
        if a is None or b is None:
            return None
        return _STATIC_BINARY[p.name](a, b)
    return None


def _discard(region: Region) -> None:
    """Drop a region built speculatively: its ops must not keep uses of outer values."""
    for op in list(region.walk()):
        op.drop_operands()


def _typed_body(ctx, graph, fixed: Sequence[Type], carried: Sequence[Type],
                out_offset: int) -> Region:
    """Import ``graph`` with arguments ``fixed + carried``; carried value ``i`` comes back as
    body result ``out_offset + i``.  Re-import with merged types until they are stable."""
    types = list(carried)
    for attempt in range(3):
        body = ctx.subgraph(graph, list(fixed) + types)
        args = body.block.args[len(fixed):]
        outs = body.block.results[out_offset:out_offset + len(types)]
        new = []
        for a, v in zip(args, outs):
            bt = v.type if v is not None else AnyType()
            new.append(a.type if types_compatible(a.type, bt) else merge_types(a.type, bt))
        if all(types_compatible(a.type, t) for a, t in zip(args, new)):
            return body
        _discard(body)
        types = new if attempt == 0 else [relax_type(t) for t in new]
    return ctx.subgraph(graph, list(fixed) + [AnyType()] * len(types))


@converter("Loop")
def loop(ctx):
    carried = ctx.inputs[2:]
    fixed = [TensorType(DType.int64, ()), TensorType(DType.bool, ())]
    body = _typed_body(ctx, ctx.attrs["body"], fixed, [v.type for v in carried], out_offset=1)
    ops = list(ctx.inputs[:2]) + [None] * (2 - len(ctx.inputs[:2])) + list(carried)
    return list(ctx.b.create("loop", *ops, regions=[body]).results)


def _slice_type(t: Type, axis: int) -> Type:
    if isinstance(t, TensorType) and t.shape is not None and t.shape:
        ax = axis + len(t.shape) if axis < 0 else axis
        if 0 <= ax < len(t.shape):
            return TensorType(t.dtype, t.shape[:ax] + t.shape[ax + 1:])
    if isinstance(t, TensorType):
        return TensorType(t.dtype, None)
    return t


@converter("Scan")
def scan(ctx):
    n_in = ctx.attrs["num_scan_inputs"]
    if ctx.opset < 9:
        return _scan8(ctx, n_in)
    attrs = {k: tuple(ctx.attrs[k]) for k in ("scan_input_axes", "scan_input_directions",
                                              "scan_output_axes", "scan_output_directions")
             if k in ctx.attrs}
    n_state = len(ctx.inputs) - n_in
    axes = list(attrs.get("scan_input_axes", [0] * n_in))
    slices = [_slice_type(v.type, ax) for v, ax in zip(ctx.inputs[n_state:], axes)]
    states = [v.type for v in ctx.inputs[:n_state]]
    body = ctx.subgraph(ctx.attrs["body"], states + slices)  # states keep their type
    return list(ctx.b.create("scan", *ctx.inputs, regions=[body], num_scan_inputs=n_in,
                             **attrs).results)


def _scan8(ctx, n_in: int):
    """Scan-8: input 0 is sequence_lens (optional), every other input has a batch axis 0 and
    scan inputs iterate over axis 1.  Without sequence_lens (or with full lengths) this is an
    outer scan over the batch whose body runs the opset-9 scan over the sequence axis."""
    seq_lens, rest = ctx.input(0), list(ctx.inputs[1:])
    if seq_lens is not None:
        lens = ctx.const(0)
        if lens is None:
            raise ctx.unsupported("Scan-8 with a non-constant sequence_lens input is not supported")
        full = [v.type.shape[1] for v in rest[len(rest) - n_in:]
                if isinstance(v.type, TensorType) and v.type.shape is not None
                and len(v.type.shape) > 1]
        if not full or not isinstance(full[0], int) or not (np.asarray(lens) == full[0]).all():
            raise ctx.unsupported("Scan-8 with sequence_lens shorter than the sequence axis "
                                  "is not supported")
    n_state = len(rest) - n_in
    dirs = tuple(ctx.attr("directions", (0,) * n_in))
    batch_states = [_slice_type(v.type, 0) for v in rest[:n_state]]
    batch_inputs = [_slice_type(v.type, 0) for v in rest[n_state:]]
    slices = [_slice_type(t, 0) for t in batch_inputs]
    body = ctx.subgraph(ctx.attrs["body"], batch_states + slices)

    def outer_body(b, *args):
        inner = b.create("scan", *args, regions=[body], num_scan_inputs=n_in,
                         scan_input_directions=dirs)
        return list(inner.results)

    outer = ctx.b.region(batch_states + batch_inputs, outer_body)
    return list(ctx.b.create("scan", *rest, regions=[outer], num_scan_inputs=len(rest)).results)
