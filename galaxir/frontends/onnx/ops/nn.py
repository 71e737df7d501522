"""Converters for convolution, pooling and image ops.

Every opset version the ONNX suite uses maps onto the newest semantics: auto_pad is
resolved into explicit pads when the input's spatial dims are static (kept otherwise),
Upsample and Resize-10 become resize with the coordinate mapping they implied, attributes
that later became inputs become constant operands.
"""
from __future__ import annotations

import numpy as np

from ....ir.ops.nn import conv_transpose_geometry, resolve_window
from ....ir.types import TensorType
from ..importer import converter

def _spatial(v):
    """The static spatial dims of a value of type [N, C, *S], or None."""
    t = v.type
    if not isinstance(t, TensorType) or t.shape is None or len(t.shape) < 3:
        return None
    s = t.shape[2:]
    return tuple(s) if all(isinstance(d, int) for d in s) else None


def _kernel_of(ctx, w_index: int | None = 1):
    ks = ctx.attrs.get("kernel_shape")
    if ks:
        return tuple(ks)
    if w_index is None:
        return None
    w = ctx.input(w_index)
    t = w.type if w is not None else None
    if isinstance(t, TensorType) and t.shape is not None and all(isinstance(d, int) for d in t.shape[2:]):
        return tuple(t.shape[2:])
    return None


def _window_attrs(ctx, kernel, keys=("auto_pad", "dilations", "kernel_shape", "pads", "strides"),
                  w_index: int | None = 1) -> dict:
    """The window attributes, with auto_pad resolved into pads when dims are static."""
    a = {k: ctx.attrs[k] for k in keys if k in ctx.attrs}
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        spatial = _spatial(ctx.inputs[0])
        if spatial is not None and kernel is not None and len(spatial) == len(kernel):
            _, _, pads = resolve_window(spatial, kernel, a.get("strides"), a.get("dilations"),
                                        None, auto_pad)
            a["pads"] = tuple(int(p) for p in pads)
            a.pop("auto_pad")
    elif auto_pad in ("NOTSET", ""):
        a.pop("auto_pad", None)
    return a   # an unknown auto_pad stays: the op's verifier names it


@converter("Conv")
def conv(ctx):
    a = _window_attrs(ctx, _kernel_of(ctx))
    if "group" in ctx.attrs:
        a["group"] = ctx.attrs["group"]
    return [ctx.op("conv", *ctx.inputs[:3], **a)]


@converter("ConvTranspose")
def conv_transpose(ctx):
    keys = ("auto_pad", "dilations", "kernel_shape", "pads", "strides", "group",
            "output_padding", "output_shape")
    a = {k: ctx.attrs[k] for k in keys if k in ctx.attrs}
    auto_pad = a.pop("auto_pad", "NOTSET")
    kernel = _kernel_of(ctx)
    spatial = _spatial(ctx.inputs[0])
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and "pads" not in a:
        if spatial is not None and kernel is not None:
            n = len(kernel)
            strides, dil, begin, out = conv_transpose_geometry(
                spatial, kernel, a.get("strides"), a.get("dilations"), None, auto_pad,
                a.get("output_padding"), a.get("output_shape"))
            opad = a.get("output_padding") or (0,) * n
            full = [(i - 1) * s + (k - 1) * d + 1 + p for i, k, s, d, p in
                    zip(spatial, kernel, strides, dil, opad)]
            end = [f - b - o for f, b, o in zip(full, begin, out)]
            a["pads"] = tuple(int(v) for v in begin) + tuple(int(v) for v in end)
            a.pop("output_shape", None)
        else:
            a["auto_pad"] = auto_pad
    elif auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        a["auto_pad"] = auto_pad   # unknown: the op's verifier names it
    return [ctx.op("conv_transpose", *ctx.inputs[:3], **a)]


@converter("DeformConv")
def deform_conv(ctx):
    keys = ("dilations", "group", "kernel_shape", "offset_group", "pads", "strides")
    a = {k: ctx.attrs[k] for k in keys if k in ctx.attrs}
    ins = list(ctx.inputs) + [None] * (5 - len(ctx.inputs))
    return [ctx.op("deform_conv", *ins[:5], **a)]


@converter("CausalConvWithState")
def causal_conv_with_state(ctx):
    ins = list(ctx.inputs) + [None] * (4 - len(ctx.inputs))
    act = ctx.attrs.get("activation", "none")
    if act not in ("none", "silu", "swish"):
        raise ctx.unsupported(f"activation {act!r} is not one of none, silu, swish")
    out, state = ctx.op("causal_conv_with_state", *ins[:4], num_results=2, activation=act)
    return [out, state]


def _pool(ctx, extra: tuple[str, ...]):
    kernel = ctx.attrs.get("kernel_shape")
    if not kernel:
        raise ctx.unsupported("pooling needs kernel_shape")
    a = _window_attrs(ctx, tuple(kernel), w_index=None)
    for k in ("ceil_mode",) + extra:
        if k in ctx.attrs:
            a[k] = ctx.attrs[k]
    return a


@converter("AveragePool")
def average_pool(ctx):
    return [ctx.op("average_pool", ctx.inputs[0], **_pool(ctx, ("count_include_pad",)))]


@converter("MaxPool")
def max_pool(ctx):
    a = _pool(ctx, ("storage_order",))
    n = 2 if len(ctx.node.output) > 1 and ctx.node.output[1] else 1
    out = ctx.op("max_pool", ctx.inputs[0], num_results=n, **a)
    return list(out) if n == 2 else [out]


@converter("LpPool")
def lp_pool(ctx):
    a = _pool(ctx, ())
    p = ctx.attrs.get("p", 2)
    if isinstance(p, float):  # LpPool-1 declares p as a float
        if not p.is_integer():
            raise ctx.unsupported(f"non-integer p={p} is not supported")
        p = int(p)
    a["p"] = p
    return [ctx.op("lp_pool", ctx.inputs[0], **a)]


@converter("GlobalAveragePool")
def global_average_pool(ctx):
    return [ctx.op("global_average_pool", ctx.inputs[0])]


@converter("GlobalMaxPool")
def global_max_pool(ctx):
    return [ctx.op("global_max_pool", ctx.inputs[0])]


@converter("GlobalLpPool")
def global_lp_pool(ctx):
    p = ctx.attrs.get("p", 2)
    if isinstance(p, float):
        p = int(p)
    return [ctx.op("global_lp_pool", ctx.inputs[0], p=p)]


@converter("MaxUnpool")
def max_unpool(ctx):
    a = {k: ctx.attrs[k] for k in ("kernel_shape", "pads", "strides") if k in ctx.attrs}
    ins = list(ctx.inputs) + [None] * (3 - len(ctx.inputs))
    return [ctx.op("max_unpool", *ins[:3], **a)]


# -- resize --------------------------------------------------------------------------------
_RESIZE_KEYS = ("antialias", "axes", "coordinate_transformation_mode", "cubic_coeff_a",
                "exclude_outside", "extrapolation_value", "keep_aspect_ratio_policy", "mode",
                "nearest_mode")


def _mode(ctx, mode: str) -> str:
    mode = mode.lower()
    if mode in ("bilinear", "trilinear"):
        return "linear"
    if mode == "bicubic":
        return "cubic"
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.unsupported(f"resize mode {mode!r} is not supported")
    return mode


def _legacy_resize(ctx, scales):
    """Upsample and Resize-10: scales only, asymmetric mapping, nearest rounds down."""
    mode = _mode(ctx, ctx.attrs.get("mode", "nearest"))
    return [ctx.op("resize", ctx.inputs[0], None, scales, None, mode=mode,
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")]


@converter("Resize")
def resize(ctx):
    if ctx.opset < 11:
        return _legacy_resize(ctx, ctx.inputs[1])
    ins = list(ctx.inputs) + [None] * (4 - len(ctx.inputs))
    x, roi, scales, sizes = ins[:4]
    a = {k: ctx.attrs[k] for k in _RESIZE_KEYS if k in ctx.attrs}
    if "mode" in a:
        a["mode"] = _mode(ctx, a["mode"])
    if ctx.opset < 13 and "coordinate_transformation_mode" not in a:
        a["coordinate_transformation_mode"] = "half_pixel"
    for i in (2, 3):
        c = ctx.const(i)
        if c is not None and c.size == 0:
            if i == 2:
                scales = None
            else:
                sizes = None
    if a.get("coordinate_transformation_mode") != "tf_crop_and_resize":
        roi = None
    elif roi is not None and ctx.const(1) is not None and ctx.const(1).size == 0:
        roi = None
    if scales is None and sizes is None:
        raise ctx.unsupported("Resize needs scales or sizes")
    return [ctx.op("resize", x, roi, scales, sizes, **a)]


@converter("Upsample")
def upsample(ctx):
    if ctx.opset >= 9:
        return _legacy_resize(ctx, ctx.inputs[1])
    if "scales" in ctx.attrs:
        scales = np.asarray(ctx.attrs["scales"], np.float32)
    else:  # Upsample-1: height_scale / width_scale of an NCHW input
        x = ctx.inputs[0].type
        rank = x.rank if isinstance(x, TensorType) and x.rank is not None else 4
        scales = np.ones(rank, np.float32)
        scales[-2] = ctx.attrs.get("height_scale", 1.0)
        scales[-1] = ctx.attrs.get("width_scale", 1.0)
    return _legacy_resize(ctx, ctx.constant(scales))


@converter("GridSample")
def grid_sample(ctx):
    a = {k: ctx.attrs[k] for k in ("align_corners", "mode", "padding_mode") if k in ctx.attrs}
    if "mode" in a:
        a["mode"] = _mode(ctx, a["mode"])
    return [ctx.op("grid_sample", ctx.inputs[0], ctx.inputs[1], **a)]


@converter("AffineGrid")
def affine_grid(ctx):
    a = {k: ctx.attrs[k] for k in ("align_corners",) if k in ctx.attrs}
    return [ctx.op("affine_grid", ctx.inputs[0], ctx.inputs[1], **a)]


@converter("RoiAlign")
def roi_align(ctx):
    keys = ("coordinate_transformation_mode", "mode", "output_height", "output_width",
            "sampling_ratio", "spatial_scale")
    a = {k: ctx.attrs[k] for k in keys if k in ctx.attrs}
    if ctx.opset < 16:  # RoiAlign-10 did not add the half-pixel offset
        a.setdefault("coordinate_transformation_mode", "output_half_pixel")
    return [ctx.op("roi_align", *ctx.inputs[:3], **a)]


@converter("NonMaxSuppression")
def non_max_suppression(ctx):
    ins = list(ctx.inputs) + [None] * (5 - len(ctx.inputs))
    a = {k: ctx.attrs[k] for k in ("center_point_box",) if k in ctx.attrs}
    return [ctx.op("non_max_suppression", *ins[:5], **a)]


@converter("ImageDecoder")
def image_decoder(ctx):
    fmt = ctx.attrs.get("pixel_format", "RGB")
    if fmt not in ("RGB", "BGR", "Grayscale"):
        raise ctx.unsupported(f"pixel_format {fmt!r} is not one of RGB, BGR, Grayscale")
    return [ctx.op("image_decoder", ctx.inputs[0], pixel_format=fmt)]
