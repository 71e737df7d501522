"""Dynamic quantization (as onnxruntime's quantize_dynamic): int8 weights, activations
quantized at run time by DynamicQuantizeLinear, integer matmul/conv, then one float
rescale by x_scale * w_scale and the float bias."""
from __future__ import annotations

import numpy as np

from ..ir import Module
from ..ir.types import DType
from .params import quantize_array, weight_params
from .rewrite import Inserter
from .targets import Target

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def quantize_dynamic(module: Module, targets: list[Target], weight_type: str,
                     per_channel: bool) -> list[str]:
    """Rewrite each target in place; returns the labels of those rewritten."""
    done = []
    for t in targets:
        op = t.op
        if op.name == "conv" and op.attr("layout") not in (None, "NCHW"):
            continue
        if op.name == "gemm" and (op.attr("alpha", 1.0) != 1.0 or op.attr("beta", 1.0) != 1.0):
            continue
        ins = Inserter(module.graph.block, op)
        w = op.operand(t.weight).constant_value()
        if op.name == "gemm" and op.attr("transB"):
            w = w.T
        axis = None
        sym = weight_type.startswith("s")
        # ConvInteger takes a per-tensor weight zero point only: asymmetric conv weights
        # are quantized per tensor
        if per_channel and (sym or op.name != "conv"):
            axis = 0 if op.name == "conv" else w.ndim - 1
        p = weight_params(w, weight_type, axis, symmetric=sym,
                          where=f"{op.name} '{t.label}' weight")
        wq = quantize_array(w, p, weight_type, axis)
        xq, xs, xz = ins.op("dynamic_quantize_linear", op.operand(0), num_results=3)
        wzp = () if sym else (ins.const(p.zero_point),)  # symmetric: zero, the default
        if op.name == "conv":
            acc = ins.op("conv_integer", xq, ins.const(wq), xz, *wzp,
                         **{k: op.attr(k) for k in _CONV_ATTRS if op.attr(k) is not None})
            ws = p.scale.reshape((-1,) + (1,) * (w.ndim - 2)) if p.scale.ndim else p.scale
        else:
            acc = ins.op("matmul_integer", xq, ins.const(wq), xz, *wzp)
            ws = p.scale
        scale = ins.op("mul", xs, ins.const(ws.astype(np.float32)))
        y = ins.op("mul", ins.op("cast", acc, to=DType.float32), scale)
        bias = op.operand(2) if len(op.operands) > 2 else None
        if bias is not None:
            if op.name == "conv":
                b = bias.constant_value()
                bias = ins.const(b.reshape((-1,) + (1,) * (w.ndim - 2))) if b is not None else \
                    ins.op("reshape", bias, ins.const(np.array([-1] + [1] * (w.ndim - 2), np.int64)))
            y = ins.op("add", y, bias)
        op.replace_with([y])
        y.name = t.label  # the report pairs it with the float op by this name
        done.append(t.label)
    return done
