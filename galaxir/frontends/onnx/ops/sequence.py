"""Converters for the sequence ops (SequenceEmpty ... SequenceMap) and the optional ops."""
from __future__ import annotations

from ....ir.types import DType, SequenceType
from ..importer import converter


@converter("SequenceEmpty")
def sequence_empty(ctx):
    dtype = DType.from_onnx(ctx.attr("dtype", 1))
    return [ctx.op("sequence_empty", dtype=dtype)]


@converter("SequenceConstruct")
def sequence_construct(ctx):
    return [ctx.op("sequence_construct", *ctx.inputs)]


@converter("SequenceInsert")
def sequence_insert(ctx):
    return [ctx.op("sequence_insert", *ctx.inputs[:3])]


@converter("SequenceErase")
def sequence_erase(ctx):
    return [ctx.op("sequence_erase", *ctx.inputs[:2])]


@converter("SequenceAt")
def sequence_at(ctx):
    return [ctx.op("sequence_at", ctx.inputs[0], ctx.inputs[1])]


@converter("SequenceLength")
def sequence_length(ctx):
    return [ctx.op("sequence_length", ctx.inputs[0])]


@converter("SplitToSequence")
def split_to_sequence(ctx):
    attrs = {k: ctx.attrs[k] for k in ("axis", "keepdims") if k in ctx.attrs}
    return [ctx.op("split_to_sequence", ctx.input(0), ctx.input(1), **attrs)]


@converter("ConcatFromSequence")
def concat_from_sequence(ctx):
    if "axis" not in ctx.attrs:
        raise ctx.unsupported("ConcatFromSequence needs the 'axis' attribute")
    return [ctx.op("concat_from_sequence", ctx.inputs[0], axis=ctx.attrs["axis"],
                   new_axis=ctx.attr("new_axis", 0))]


@converter("SequenceMap")
def sequence_map(ctx):
    arg_types = []
    for v in ctx.inputs:
        t = v.type
        arg_types.append(t.elem if isinstance(t, SequenceType) else t)
    body = ctx.subgraph(ctx.attrs["body"], arg_types)
    return list(ctx.b.create("sequence_map", *ctx.inputs, regions=[body]).results)


@converter("Optional")
def optional(ctx):
    x = ctx.input(0)
    if x is not None:
        return [ctx.op("optional", x)]
    t = ctx.attr("type")
    if t is None:
        raise ctx.unsupported("Optional with neither an input nor a 'type' attribute")
    return [ctx.op("optional", type=t)]


@converter("OptionalGetElement")
def optional_get_element(ctx):
    return [ctx.op("optional_get_element", ctx.inputs[0])]


@converter("OptionalHasElement")
def optional_has_element(ctx):
    return [ctx.op("optional_has_element", ctx.input(0))]
