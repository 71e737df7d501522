"""Lowering of conv_transpose (2-d, NCHW, constant weights) to kernels_conv_transpose."""
from __future__ import annotations

from ...ir.ops.nn import conv_transpose_geometry
from . import kernels as K
from .kernels_conv_transpose import (ConvTranspose2d, pack_conv_transpose_weights,
                                     pack_swapped_weights)
from .kernels_nhwc import wide_tiles
from .lower import ConstArray, _all_static_f32, const_of, rule, static_shape

#: the GEMM's result (one row per output channel and tap) lives in scratch; beyond this
#: the op runs on the numpy reference rather than reserve that much arena
MAX_SCRATCH_BYTES = 256 << 20


@rule("conv_transpose")
def lower_conv_transpose(op):
    why = _all_static_f32(op)
    if why:
        return why
    x, w, b = op.operands[0], op.operands[1], op.operand(2)
    xs, ws, ys = static_shape(x.type), static_shape(w.type), static_shape(op.results[0].type)
    if len(xs) != 4 or len(ws) != 4:
        return "only 2-d transposed convolutions are native"
    if K.prod(ys) == 0 or K.prod(xs) == 0 or K.prod(ws) == 0:
        return "zero-size tensor"
    wc = const_of(w)
    if wc is None:
        return "conv_transpose needs constant weights"
    g = op.attr("group") or 1
    if xs[1] != ws[0] or xs[1] % g or ys[1] != ws[1] * g:
        return "channels do not match the weights and groups"
    kernel = tuple(op.attr("kernel_shape") or ws[2:])
    if kernel != tuple(ws[2:]):
        return "kernel_shape differs from the weights"
    strides, dil, begin, out = conv_transpose_geometry(
        xs[2:], kernel, op.attr("strides"), op.attr("dilations"), op.attr("pads"),
        op.attr("auto_pad") or "NOTSET", op.attr("output_padding"), op.attr("output_shape"))
    if tuple(out) != tuple(ys[2:]):
        return "output shape does not match the geometry"
    packed = pack_conv_transpose_weights(wc, g)
    kern = ConvTranspose2d(N=xs[0], C=xs[1], H=xs[2], W=xs[3], M=ys[1], OH=ys[2], OW=ys[3],
                           kh=kernel[0], kw=kernel[1], sh=strides[0], sw=strides[1],
                           dh=dil[0], dw=dil[1], pt=begin[0], pl=begin[1], group=g,
                           has_bias=b is not None, wide=wide_tiles())
    if kern.scratch_bytes > MAX_SCRATCH_BYTES:
        return f"its GEMM result would need {kern.scratch_bytes >> 20} MiB of scratch"
    if kern.swapped:
        packed = pack_swapped_weights(wc, kern.wide)
        ins = [x, ConstArray(packed, (w.name or "w") + f".panels{32 if kern.wide else 16}")]
    else:
        ins = [x, ConstArray(packed, (w.name or "w") + ".T")]
    return kern, ins + ([b] if b is not None else [])
