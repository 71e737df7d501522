"""Converters for DFT, STFT, the window functions and MelWeightMatrix."""
from __future__ import annotations

import numpy as np

from ....ir.types import DType
from ..importer import converter


def _dtype(ctx, name: str, default: int = 1) -> DType:
    code = int(ctx.attr(name, default))
    try:
        return DType.from_onnx(code)
    except ValueError:
        raise ctx.unsupported(f"attribute {name}={code} is not a known element type") from None


@converter("DFT")
def dft(ctx):
    x = ctx.inputs[0]
    n = ctx.input(1)
    kw = {k: ctx.attrs[k] for k in ("inverse", "onesided") if k in ctx.attrs}
    if ctx.opset < 20:  # axis was an attribute (default 1) until opset 20
        axis = ctx.constant(np.array(int(ctx.attr("axis", 1)), np.int64))
    else:
        axis = ctx.input(2)
    return [ctx.op("dft", x, n, axis, **kw)]


@converter("STFT")
def stft(ctx):
    kw = {"onesided": ctx.attrs["onesided"]} if "onesided" in ctx.attrs else {}
    return [ctx.op("stft", *ctx.inputs, **kw)]


def _window(gx_name: str):
    def convert(ctx):
        kw = {"periodic": ctx.attrs["periodic"]} if "periodic" in ctx.attrs else {}
        return [ctx.op(gx_name, ctx.inputs[0], output_datatype=_dtype(ctx, "output_datatype"), **kw)]
    return convert


converter("BlackmanWindow")(_window("blackman_window"))
converter("HammingWindow")(_window("hamming_window"))
converter("HannWindow")(_window("hann_window"))


@converter("MelWeightMatrix")
def mel_weight_matrix(ctx):
    return [ctx.op("mel_weight_matrix", *ctx.inputs, output_datatype=_dtype(ctx, "output_datatype"))]
