"""TF TensorLists (TensorArrays, which Keras RNNs and tf.while_loop accumulators use).

A TensorList whose elements all exist (``TensorListFromTensor``, or a loop's finished
accumulator) is its elements stacked on axis 0, an ordinary tensor: reading an element is
a gather, stacking is nothing.  A ``TensorListReserve`` has no elements yet; it is kept as
a :class:`ReservedList` marker until a ``While`` loop writes it, one element per iteration
(:class:`WrittenItem`), which makes it a scan output of galaxir's ``loop`` (see
``control.while_``).  A reserved list used any other way is unsupported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ....ir import Value
from ..importer import TfContext, converter, gx_dtype


@dataclass
class ReservedList:
    """A TensorListReserve nothing has written yet."""

    node: str
    num_elements: int | None
    dtype: Any


@dataclass
class WrittenItem:
    """``TensorListSetItem`` of a reserved list inside a loop body: the element written."""

    target: ReservedList
    item: Value


def _list(ctx: TfContext, i: int = 0) -> Value:
    v = ctx.inputs[i]
    if isinstance(v, ReservedList):
        raise ctx.unsupported(f"the TensorList '{v.node}' is read before a loop writes it")
    if not isinstance(v, Value):
        raise ctx.unsupported("its TensorList input is not a tensor list galaxir can follow")
    return v


def _scalar_index(ctx: TfContext, i: int) -> Value:
    idx = ctx.int64(ctx.inputs[i])
    if idx.type.shape not in ((), None):
        idx = ctx.op("reshape", idx, ctx.i64([]))
    return idx


@converter("TensorListReserve")
def reserve(ctx: TfContext):
    n = ctx.static(1)
    num = int(n.reshape(-1)[0]) if n is not None and n.size == 1 and int(n.reshape(-1)[0]) >= 0 \
        else None
    return ReservedList(ctx.name, num, gx_dtype(ctx.attr("element_dtype")))


@converter("TensorListFromTensor")
def from_tensor(ctx: TfContext):
    return ctx.inputs[0]


@converter("TensorListGetItem")
def get_item(ctx: TfContext):
    return ctx.op("gather", _list(ctx), _scalar_index(ctx, 1), axis=0)


@converter("TensorListSetItem")
def set_item(ctx: TfContext):
    target, item = ctx.inputs[0], ctx.inputs[2]
    if isinstance(target, ReservedList):
        return WrittenItem(target, item)  # control.while_ checks where it is written
    lst = _list(ctx)
    idx = ctx.op("reshape", _scalar_index(ctx, 1), ctx.i64([1, 1]))
    return ctx.op("scatter_nd", lst, idx, ctx.op("unsqueeze", item, ctx.i64([0])))


@converter("TensorListStack")
def stack(ctx: TfContext):
    return _list(ctx)


@converter("TensorListLength")
def length(ctx: TfContext):
    n = ctx.op("gather", ctx.op("shape", _list(ctx)), ctx.i64(0), axis=0)
    return ctx.op("cast", n, to=ctx.out_dtype())
