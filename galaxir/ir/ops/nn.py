"""Convolution, pooling and image ops: conv, conv_transpose, deform_conv, the pools, resize,
grid_sample, affine_grid, roi_align, non_max_suppression, causal_conv_with_state,
image_decoder.

Window geometry (auto_pad, ceil_mode, output sizes) lives here as plain functions over
ints, so the ONNX importer (which resolves auto_pad into explicit pads when the input's
spatial dims are static), type inference and the kernels of every backend share one
definition of it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..opdef import FLOAT32, FLOATS, INT64, attr, define
from ..traits import LayoutAttr, SizeFromValues
from ..types import UNKNOWN, Dim, DType, TensorType
from .rules import const_value, fail, tensor_operand

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# -- window geometry (shared with importers and kernels) ------------------------------------
def window_span(k: int, d: int) -> int:
    """How many input positions a kernel of ``k`` taps with dilation ``d`` covers."""
    return (k - 1) * d + 1


def same_pads(in_dims: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int], auto_pad: str) -> list[int]:
    """Explicit pads [b0, b1, ..., e0, e1, ...] for auto_pad SAME_UPPER/SAME_LOWER/VALID."""
    n = len(in_dims)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    begin, end = [], []
    for i, k, s, d in zip(in_dims, kernel, strides, dilations):
        out = -(-i // s)
        total = max(0, (out - 1) * s + window_span(k, d) - i)
        small, big = total // 2, total - total // 2
        if auto_pad == "SAME_UPPER":
            begin.append(small)
            end.append(big)
        else:
            begin.append(big)
            end.append(small)
    return begin + end


def window_out_dim(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool = False) -> int:
    """Output length of a sliding window (conv or pool) along one dim.

    With ``ceil_mode`` a last partial window is kept only if it starts inside the input or
    its leading pad (PyTorch's and onnxruntime's rule).  The spec's formula may give 0 (a
    window one position larger than the padded input, or an empty input): an empty result.
    Where it gives less, the window is larger than the padded input: a ValueError.
    """
    span, padded = window_span(k, d), size + pb + pe
    num = padded - span
    if ceil_mode:
        out = -(-num // s) + 1
        if (out - 1) * s >= size + pb:
            out -= 1
    else:
        out = num // s + 1
    if out < 0:
        raise ValueError(f"the window spans {span} positions (kernel {k}, dilation {d}) but the "
                         f"padded input has {padded} ({size} + pads {pb} and {pe})")
    return out


def resolve_window(in_dims: Sequence[int], kernel: Sequence[int], strides=None, dilations=None,
                   pads=None, auto_pad: str = "NOTSET"):
    """(strides, dilations, pads) with defaults filled and auto_pad applied (static dims)."""
    n = len(kernel)
    strides = tuple(strides) if strides else (1,) * n
    dilations = tuple(dilations) if dilations else (1,) * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        pads = tuple(same_pads(in_dims, kernel, strides, dilations, auto_pad))
    else:
        pads = tuple(pads) if pads else (0,) * (2 * n)
    return strides, dilations, pads


def check_window_attrs(op) -> None:
    """The window attributes every backend relies on: a known auto_pad, kernel sizes,
    strides and dilations >= 1, pads >= 0 and group >= 1 (onnxruntime refuses the others)."""
    _check_auto_pad(op)
    for key, low in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("pads", 0),
                     ("output_padding", 0)):
        vals = op.attrs.get(key)
        if vals and any(v < low for v in vals):
            raise fail(op, f"{key} must all be >= {low}, got {list(vals)}")
    g = op.attrs.get("group")
    if g is not None and g < 1:
        raise fail(op, f"group must be >= 1, got {g}")


def _spatial_out(op, x: TensorType, kernel: Sequence[int], ceil_mode: bool = False,
                 pool: bool = False) -> list[Dim]:
    """Spatial output dims of a windowed op; symbols where inputs are symbolic.  A window
    larger than the padded input is an error, and so (for a pool) is a pad as large as the
    window's span: a window wholly in the padding has no value (NaN or -inf)."""
    check_window_attrs(op)
    n = len(kernel)
    spatial = list(x.shape[2:])
    if len(spatial) != n:
        raise fail(op, f"input {x} has {len(spatial)} spatial dims but the kernel has {n}")
    strides = op.attr("strides") or (1,) * n
    dilations = op.attr("dilations") or (1,) * n
    pads = op.attr("pads") or (0,) * (2 * n)
    auto_pad = op.attr("auto_pad") or "NOTSET"
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise fail(op, f"strides {strides}, dilations {dilations} and pads {pads} do not fit a "
                       f"{n}-d kernel")
    if any(k < 1 for k in kernel):
        raise fail(op, f"kernel_shape must all be >= 1, got {list(kernel)}")
    if pool and auto_pad not in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        for i in range(n):
            span = window_span(kernel[i], dilations[i])
            if pads[i] >= span or pads[i + n] >= span:
                raise fail(op, f"spatial dim {i}: pads {pads[i]} and {pads[i + n]} must be smaller "
                               f"than the window's span {span}: a window wholly in the padding "
                               "has no value")
    out: list[Dim] = []
    for i in range(n):
        size = spatial[i]
        if not isinstance(size, int):
            out.append(UNKNOWN)
            continue
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // strides[i]))
            continue
        pb, pe = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + n])
        try:
            out.append(window_out_dim(size, kernel[i], strides[i], dilations[i], pb, pe, ceil_mode))
        except ValueError as e:
            raise fail(op, f"spatial dim {i}: {e}") from None
    return out


def _kernel_shape(op, w: TensorType | None = None) -> tuple[int, ...] | None:
    ks = op.attr("kernel_shape")
    if ks:
        return tuple(ks)
    if w is not None and w.shape is not None and all(isinstance(d, int) for d in w.shape[2:]):
        return tuple(w.shape[2:])
    return None


_WINDOW_ATTRS = {
    "auto_pad": attr("str", "NOTSET"),
    "dilations": attr("ints"),
    "kernel_shape": attr("ints"),
    "pads": attr("ints"),
    "strides": attr("ints"),
}


def _check_auto_pad(op) -> None:
    if (op.attr("auto_pad") or "NOTSET") not in AUTO_PADS:
        raise fail(op, f"auto_pad must be one of {AUTO_PADS}, got {op.attr('auto_pad')!r}")


#: the optional ``layout`` attribute of conv, fused_conv, pools and batch_norm: "NCHW"
#: (channels at axis 1, the ONNX default) or "NHWC" (channels last: x is [N, *spatial, C]
#: and so is the result; weights stay [M, C/group, *K]).  Set by the O3 layout pass.
LAYOUTS = ("NCHW", "NHWC")
LAYOUT_ATTR = {"layout": attr("str", "NCHW")}


def channels_last(op) -> bool:
    lay = op.attr("layout") or "NCHW"
    if lay not in LAYOUTS:
        raise fail(op, f"layout must be one of {LAYOUTS}, got {lay!r}")
    return lay == "NHWC"


def _layout_in(op, i: int = 0) -> TensorType:
    """Operand i's type seen channels-first (moved from last to axis 1 for NHWC ops)."""
    x = tensor_operand(op, i)
    if x.shape is None or len(x.shape) < 2 or not channels_last(op):
        return x
    s = x.shape
    return TensorType(x.dtype, (s[0], s[-1], *s[1:-1]))


def _layout_out(op, t: TensorType) -> TensorType:
    """A channels-first result type moved back to the op's layout."""
    if t.shape is None or len(t.shape) < 2 or not channels_last(op):
        return t
    s = t.shape
    return TensorType(t.dtype, (s[0], *s[2:], s[1]))


# -- conv -----------------------------------------------------------------------------------
def _conv_infer(op):
    x, w = _layout_in(op), tensor_operand(op, 1)
    m = w.shape[0] if w.shape is not None else UNKNOWN
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    ks = _kernel_shape(op, w)
    if ks is None:
        return [_layout_out(op, TensorType(x.dtype, (x.shape[0], m) + (UNKNOWN,) * (rank - 2)))]
    return [_layout_out(op, TensorType(x.dtype, (x.shape[0], m, *_spatial_out(op, x, ks))))]


def _conv_verify(op):
    check_window_attrs(op)
    x, w = _layout_in(op), tensor_operand(op, 1)
    g = op.attr("group")
    if x.shape is not None and w.shape is not None:
        if len(x.shape) != len(w.shape):
            raise fail(op, f"input {x} and weight {w} must have the same rank")
        c, wc = x.shape[1], w.shape[1]
        if isinstance(c, int) and isinstance(wc, int) and c != wc * g:
            raise fail(op, f"input has {c} channels but weight {w} with group={g} expects {wc * g}")
        m = w.shape[0]
        if isinstance(m, int) and m % g:
            raise fail(op, f"weight {w} has {m} output channels, not a multiple of group={g}")


#: conv-like ops: input, weight and bias share one element type
CONV_TYPES = {"x": "T", "w": "T", "b": "T"}

define("conv", traits=[LayoutAttr()],
       operands=["x", "w", "b?"],
       attrs={**_WINDOW_ATTRS, "group": attr("int", 1), **LAYOUT_ATTR},
       infer=_conv_infer, verify=_conv_verify, types=CONV_TYPES,
       doc="N-d convolution (ONNX Conv): x[N,C,*S] * w[M,C/group,*K] + b[M].")


def conv_transpose_geometry(in_dims: Sequence[int], kernel: Sequence[int], strides=None,
                            dilations=None, pads=None, auto_pad="NOTSET", output_padding=None,
                            output_shape=None):
    """(strides, dilations, begin pads, output spatial shape) of a transposed conv.

    Output position ``o`` of the result is position ``o + begin_pad`` of the full
    scatter (length ``(in-1)*s + span + output_padding``).
    """
    n = len(kernel)
    strides = tuple(strides) if strides else (1,) * n
    dilations = tuple(dilations) if dilations else (1,) * n
    opad = tuple(output_padding) if output_padding else (0,) * n
    if output_shape and len(output_shape) > n:
        output_shape = tuple(output_shape)[-n:]
    full = [(i - 1) * s + window_span(k, d) + op for i, k, s, d, op in
            zip(in_dims, kernel, strides, dilations, opad)]
    # As the spec (and onnxruntime) say: a given output_shape overrides pads, and the
    # total padding it implies is split by auto_pad (SAME_UPPER puts the odd one at the end).
    if output_shape or (not pads and auto_pad in ("SAME_UPPER", "SAME_LOWER")):
        out = list(output_shape) if output_shape else [i * s for i, s in zip(in_dims, strides)]
        begin = []
        for f, o in zip(full, out):
            total = f - o
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        return strides, dilations, tuple(begin), tuple(out)
    pads = tuple(pads) if pads else (0,) * (2 * n)
    if output_shape:
        out = tuple(output_shape)
    else:
        out = tuple(f - pads[i] - pads[i + n] for i, f in enumerate(full))
    return strides, dilations, tuple(pads[:n]), out


def _conv_transpose_infer(op):
    check_window_attrs(op)
    x, w = tensor_operand(op, 0), tensor_operand(op, 1)
    g = op.attr("group") or 1
    m = w.shape[1] * g if w.shape is not None and isinstance(w.shape[1], int) else UNKNOWN
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    ks = _kernel_shape(op, w)
    spatial = x.shape[2:]
    if ks is None or not all(isinstance(d, int) for d in spatial):
        os_ = op.attr("output_shape")
        if os_ and len(os_) >= rank - 2:
            return [TensorType(x.dtype, (x.shape[0], m, *tuple(os_)[-(rank - 2):]))]
        return [TensorType(x.dtype, (x.shape[0], m) + (UNKNOWN,) * (rank - 2))]
    _, _, _, out = conv_transpose_geometry(spatial, ks, op.attr("strides"), op.attr("dilations"),
                                           op.attr("pads"), op.attr("auto_pad") or "NOTSET",
                                           op.attr("output_padding"), op.attr("output_shape"))
    return [TensorType(x.dtype, (x.shape[0], m, *out))]


define("conv_transpose", operands=["x", "w", "b?"],
       attrs={**_WINDOW_ATTRS, "group": attr("int", 1), "output_padding": attr("ints"),
              "output_shape": attr("ints")},
       infer=_conv_transpose_infer, verify=check_window_attrs, types=CONV_TYPES,
       doc="Transposed convolution (ONNX ConvTranspose); w is [C, M/group, *K].")


def _deform_infer(op):
    x, w = tensor_operand(op, 0), tensor_operand(op, 1)
    off = tensor_operand(op, 2)
    m = w.shape[0] if w.shape is not None else UNKNOWN
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    if off.shape is not None and len(off.shape) == rank:
        return [TensorType(x.dtype, (x.shape[0], m, *off.shape[2:]))]
    ks = _kernel_shape(op, w)
    if ks is None:
        return [TensorType(x.dtype, (x.shape[0], m) + (UNKNOWN,) * (rank - 2))]
    return [TensorType(x.dtype, (x.shape[0], m, *_spatial_out(op, x, ks)))]


define("deform_conv", operands=["x", "w", "offset", "b?", "mask?"],
       attrs={"dilations": attr("ints"), "group": attr("int", 1), "kernel_shape": attr("ints"),
              "offset_group": attr("int", 1), "pads": attr("ints"), "strides": attr("ints")},
       infer=_deform_infer, verify=check_window_attrs, doc="Deformable convolution (ONNX DeformConv).",
       types={"x": "T", "w": "T", "offset": "T", "b": "T", "mask": "T"})


def _causal_infer(op):
    x = tensor_operand(op, 0)
    w = tensor_operand(op, 1)
    k = w.shape[2] if w.shape is not None and len(w.shape) == 3 else UNKNOWN
    if x.shape is None:
        return [x, TensorType(x.dtype, None)]
    if len(x.shape) != 3:
        raise fail(op, f"input must be rank 3 (batch, channels, length), got {x}")
    state_len = k - 1 if isinstance(k, int) else UNKNOWN
    return [x, TensorType(x.dtype, (x.shape[0], x.shape[1], state_len))]


define("causal_conv_with_state", operands=["x", "w", "b?", "past_state?"], num_results=2,
       attrs={"activation": attr("str", "none")}, infer=_causal_infer,
       types={"x": "T", "w": "T", "b": "T", "past_state": "T"},
       doc="Causal depthwise 1-d conv with carried state (ONNX CausalConvWithState).")


# -- pooling --------------------------------------------------------------------------------
def _pool_infer(op):
    x = _layout_in(op)
    ks = op.attr("kernel_shape")
    if not ks:
        raise fail(op, "needs kernel_shape")
    if x.shape is None:
        shape = None
    else:
        shape = (x.shape[0], x.shape[1], *_spatial_out(op, x, ks, bool(op.attr("ceil_mode")), pool=True))
    out = [_layout_out(op, TensorType(x.dtype, shape))]
    if len(op.results) > 1:
        out.append(_layout_out(op, TensorType(DType.int64, shape)))
    return out


_POOL_ATTRS = {**_WINDOW_ATTRS, "kernel_shape": attr("ints", required=True),
               "ceil_mode": attr("int", 0)}

define("average_pool", traits=[LayoutAttr()],
       operands=["x"], attrs={**_POOL_ATTRS, "count_include_pad": attr("int", 0),
                                             **LAYOUT_ATTR},
       infer=_pool_infer, verify=check_window_attrs)
define("lp_pool", operands=["x"], attrs={**_POOL_ATTRS, "p": attr("int", 2)},
       infer=_pool_infer, verify=check_window_attrs)


def _max_pool_verify(op):
    check_window_attrs(op)
    if len(op.results) not in (1, 2):
        raise fail(op, f"has 1 or 2 results (values, indices), got {len(op.results)}")


define("max_pool", traits=[LayoutAttr()],
       operands=["x"], num_results=None,
       attrs={**_POOL_ATTRS, "storage_order": attr("int", 0), **LAYOUT_ATTR},
       infer=_pool_infer, verify=_max_pool_verify,
       doc="Max pooling; a second result (int64) holds the flat index of each maximum.")


def _global_infer(op):
    x = _layout_in(op) if "layout" in op.attrs else tensor_operand(op, 0)
    if x.shape is None:
        return [x]
    return [_layout_out(op, TensorType(x.dtype, (x.shape[0], x.shape[1]) + (1,) * (len(x.shape) - 2)))]


define("global_average_pool", traits=[LayoutAttr()],
       operands=["x"], attrs=dict(LAYOUT_ATTR), infer=_global_infer)
define("global_max_pool", traits=[LayoutAttr()],
       operands=["x"], attrs=dict(LAYOUT_ATTR), infer=_global_infer)
define("global_lp_pool", operands=["x"], attrs={"p": attr("int", 2)}, infer=_global_infer)


def _max_unpool_infer(op):
    x = tensor_operand(op, 0)
    if x.shape is None:
        return [x]
    n = len(x.shape) - 2
    shape_c = const_value(op, 2) if len(op.operands) > 2 and op.operand(2) is not None else None
    if shape_c is not None:
        return [TensorType(x.dtype, tuple(int(v) for v in np.asarray(shape_c).reshape(-1)))]
    if len(op.operands) > 2 and op.operand(2) is not None:
        return [TensorType(x.dtype, (UNKNOWN,) * len(x.shape))]
    ks = op.attr("kernel_shape")
    strides = op.attr("strides") or (1,) * n
    pads = op.attr("pads") or (0,) * (2 * n)
    out: list[Dim] = [x.shape[0], x.shape[1]]
    for i in range(n):
        d = x.shape[2 + i]
        out.append((d - 1) * strides[i] + ks[i] - pads[i] - pads[i + n] if isinstance(d, int) else UNKNOWN)
    return [TensorType(x.dtype, tuple(out))]


define("max_unpool", operands=["x", "indices", "output_shape?"],
       attrs={"kernel_shape": attr("ints", required=True), "pads": attr("ints"),
              "strides": attr("ints")}, infer=_max_unpool_infer,
       types={"indices": INT64, "output_shape": INT64})


# -- resize and sampling --------------------------------------------------------------------
RESIZE_MODES = ("nearest", "linear", "cubic")
COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def resize_output_shape(in_shape: Sequence[int], scales=None, sizes=None, axes=None,
                        policy: str = "stretch"):
    """(output shape, per-dim scale) of a resize on a static input, as ONNX computes them.

    ``scales``/``sizes`` are per ``axes`` (all dims when axes is None).
    """
    r = len(in_shape)
    axes = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    scale = [1.0] * r
    out = list(in_shape)
    if sizes is not None and len(sizes):
        for a, sz in zip(axes, sizes):
            out[a] = int(sz)
            scale[a] = int(sz) / in_shape[a] if in_shape[a] else 1.0
        if policy in ("not_larger", "not_smaller"):
            pick = min if policy == "not_larger" else max
            s = pick(scale[a] for a in axes)
            for a in axes:
                scale[a] = s
                out[a] = int(s * in_shape[a] + 0.5)
    elif scales is not None:
        for a, sc in zip(axes, scales):
            scale[a] = float(sc)
            out[a] = int(math.floor(float(sc) * in_shape[a]))
    return tuple(out), tuple(scale)


def _resize_infer(op):
    x = tensor_operand(op, 0)
    if x.shape is None:
        return [x]
    r = len(x.shape)
    axes = op.attr("axes")
    scales = const_value(op, 2) if len(op.operands) > 2 else None
    sizes = const_value(op, 3) if len(op.operands) > 3 else None
    has_sizes = len(op.operands) > 3 and op.operand(3) is not None
    has_scales = len(op.operands) > 2 and op.operand(2) is not None
    if has_sizes and sizes is None or (has_scales and not has_sizes and scales is None):
        return [TensorType(x.dtype, (UNKNOWN,) * r)]
    if sizes is not None and sizes.size == 0:
        sizes = None
    if scales is not None and scales.size == 0:
        scales = None
    ax = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    policy = op.attr("keep_aspect_ratio_policy") or "stretch"
    out: list[Dim] = list(x.shape)
    if sizes is not None:
        sizes = [int(v) for v in sizes.reshape(-1)]
        if policy == "stretch":
            for a, s in zip(ax, sizes):
                out[a] = s
            return [TensorType(x.dtype, tuple(out))]
        if not all(isinstance(x.shape[a], int) for a in ax):
            for a in ax:
                out[a] = UNKNOWN
            return [TensorType(x.dtype, tuple(out))]
        shp, _ = resize_output_shape([d if isinstance(d, int) else 1 for d in x.shape], None,
                                     sizes, ax, policy)
        for a in ax:
            out[a] = shp[a]
        return [TensorType(x.dtype, tuple(out))]
    if scales is not None:
        for a, s in zip(ax, [float(v) for v in scales.reshape(-1)]):
            d = x.shape[a]
            if s == 1.0:
                continue
            out[a] = int(math.floor(s * d)) if isinstance(d, int) else UNKNOWN
        return [TensorType(x.dtype, tuple(out))]
    return [TensorType(x.dtype, (UNKNOWN,) * r)]


def _resize_verify(op):
    if op.attr("mode") not in RESIZE_MODES:
        raise fail(op, f"mode must be one of {RESIZE_MODES}, got {op.attr('mode')!r}")
    if op.attr("coordinate_transformation_mode") not in COORD_MODES:
        raise fail(op, f"coordinate_transformation_mode {op.attr('coordinate_transformation_mode')!r} "
                       f"is not one of {COORD_MODES}")
    if op.attr("nearest_mode") not in NEAREST_MODES:
        raise fail(op, f"nearest_mode must be one of {NEAREST_MODES}")


define("resize", traits=[SizeFromValues()],
       operands=["x", "roi?", "scales?", "sizes?"],
       attrs={"antialias": attr("int", 0), "axes": attr("ints"),
              "coordinate_transformation_mode": attr("str", "half_pixel"),
              "cubic_coeff_a": attr("float", -0.75), "exclude_outside": attr("int", 0),
              "extrapolation_value": attr("float", 0.0),
              "keep_aspect_ratio_policy": attr("str", "stretch"), "mode": attr("str", "nearest"),
              "nearest_mode": attr("str", "round_prefer_floor")},
       infer=_resize_infer, verify=_resize_verify,
       types={"roi": FLOATS, "scales": FLOAT32, "sizes": INT64},
       doc="ONNX Resize (opset 19 semantics); Upsample and older Resize import as this.")


def _grid_sample_infer(op):
    x, g = tensor_operand(op, 0), tensor_operand(op, 1)
    if x.shape is None or g.shape is None:
        return [TensorType(x.dtype, None if x.shape is None else (UNKNOWN,) * len(x.shape))]
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *g.shape[1:-1]))]


define("grid_sample", operands=["x", "grid"], types={"grid": FLOATS},
       attrs={"align_corners": attr("int", 0), "mode": attr("str", "linear"),
              "padding_mode": attr("str", "zeros")}, infer=_grid_sample_infer)


def _affine_grid_infer(op):
    theta = tensor_operand(op, 0)
    size = const_value(op, 1)
    if size is None:
        sz = tensor_operand(op, 1)
        n = sz.shape[0] if sz.shape is not None and len(sz.shape) == 1 else None
        if isinstance(n, int):  # size [N, C, *spatial] gives [N, *spatial, len(spatial)]
            return [TensorType(theta.dtype, (UNKNOWN,) * (n - 1) + (n - 2,))]
        return [TensorType(theta.dtype, None)]
    size = [int(v) for v in np.asarray(size).reshape(-1)]
    return [TensorType(theta.dtype, (size[0], *size[2:], len(size) - 2))]


define("affine_grid", operands=["theta", "size"], attrs={"align_corners": attr("int", 0)},
       infer=_affine_grid_infer, types={"theta": FLOATS, "size": INT64})


def _roi_align_infer(op):
    x, rois = tensor_operand(op, 0), tensor_operand(op, 1)
    n = rois.shape[0] if rois.shape is not None else UNKNOWN
    c = x.shape[1] if x.shape is not None else UNKNOWN
    return [TensorType(x.dtype, (n, c, op.attr("output_height"), op.attr("output_width")))]


define("roi_align", operands=["x", "rois", "batch_indices"],
       attrs={"coordinate_transformation_mode": attr("str", "half_pixel"),
              "mode": attr("str", "avg"), "output_height": attr("int", 1),
              "output_width": attr("int", 1), "sampling_ratio": attr("int", 0),
              "spatial_scale": attr("float", 1.0)}, infer=_roi_align_infer,
       types={"x": "T", "rois": "T", "batch_indices": INT64})

define("non_max_suppression",
       operands=["boxes", "scores", "max_output_boxes_per_class?", "iou_threshold?",
                 "score_threshold?"],
       attrs={"center_point_box": attr("int", 0)},
       infer=lambda op: [TensorType(DType.int64, (UNKNOWN, 3))],
       types={"boxes": FLOAT32, "scores": FLOAT32, "max_output_boxes_per_class": INT64,
              "iou_threshold": FLOAT32, "score_threshold": FLOAT32},
       doc="Selected boxes as rows [batch, class, box]; the row count depends on the data.")


def _image_decoder_infer(op):
    fmt = op.attr("pixel_format") or "RGB"
    return [TensorType(DType.uint8, (UNKNOWN, UNKNOWN, 1 if fmt == "Grayscale" else 3))]


define("image_decoder", operands=["encoded"], attrs={"pixel_format": attr("str", "RGB")},
       infer=_image_decoder_infer, doc="Decodes an encoded image (uint8 bytes) to HWC uint8.")
