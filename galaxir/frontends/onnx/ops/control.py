"""Converters for Constant, Identity and control flow (If, Loop, Scan)."""
from __future__ import annotations

import numpy as np

from ....ir.types import DType, TensorType
from ..importer import converter, sparse_to_dense


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
    then_r = ctx.subgraph(ctx.attrs["then_branch"])
    else_r = ctx.subgraph(ctx.attrs["else_branch"])
    return list(ctx.b.create("if", ctx.inputs[0], regions=[then_r, else_r]).results)


@converter("Loop")
def loop(ctx):
    carried = ctx.inputs[2:]
    arg_types = [TensorType(DType.int64, ()), TensorType(DType.bool, ())] + [v.type for v in carried]
    body = ctx.subgraph(ctx.attrs["body"], arg_types)
    ops = list(ctx.inputs[:2]) + [None] * (2 - len(ctx.inputs[:2])) + list(carried)
    return list(ctx.b.create("loop", *ops, regions=[body]).results)


@converter("Scan")
def scan(ctx):
    n_in = ctx.attrs["num_scan_inputs"]
    if ctx.opset < 9:  # Scan-8: a leading sequence_lens input and a batch axis
        raise ctx.unsupported("Scan-8 (batched form) is not supported; use opset >= 9")
    attrs = {k: ctx.attrs[k] for k in ("scan_input_axes", "scan_input_directions",
                                       "scan_output_axes", "scan_output_directions") if k in ctx.attrs}
    n_state = len(ctx.inputs) - n_in
    arg_types = [v.type for v in ctx.inputs[:n_state]]
    axes = list(attrs.get("scan_input_axes", [0] * n_in))
    for v, ax in zip(ctx.inputs[n_state:], axes):
        t = v.type
        if isinstance(t, TensorType) and t.shape is not None:
            ax = ax + len(t.shape) if ax < 0 else ax
            arg_types.append(TensorType(t.dtype, t.shape[:ax] + t.shape[ax + 1:]))
        else:
            arg_types.append(t)
    body = ctx.subgraph(ctx.attrs["body"], arg_types)
    return list(ctx.b.create("scan", *ctx.inputs, regions=[body], num_scan_inputs=n_in, **attrs).results)
