"""Channels-last convolutions and pools shared by the TensorFlow and TFLite frontends.

Both formats store images NHWC; galaxir's conv/pool ops take ``layout="NHWC"`` for that, so
an imported graph needs no transposes.  galaxir conv weights are always [M, C/group, kh, kw],
so the frameworks' filters (TF: HWIO, TFLite: OHWI, depthwise: [1, kh, kw, C*mult] or
[kh, kw, C, mult]) are permuted here, once, as constants.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UnsupportedOpError
from ..ir import Builder, Value
from ..ir.ops.nn import same_pads
from ..ir.types import TensorType


def spatial_dims(x: Value) -> list | None:
    """The static H, W (... ) of an NHWC value, or None when any is unknown."""
    t = x.type
    if not isinstance(t, TensorType) or t.shape is None or len(t.shape) < 3:
        return None
    dims = list(t.shape[1:-1])
    return dims if all(isinstance(d, int) for d in dims) else None


def window_attrs(x: Value, kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int], padding: str,
                 explicit: Sequence[int] | None = None) -> dict:
    """galaxir window attributes (pads or auto_pad) for TF's SAME / VALID / EXPLICIT padding.

    TF's SAME puts the odd extra pad at the end (ONNX's SAME_UPPER)."""
    n = len(kernel)
    attrs = {"kernel_shape": [int(k) for k in kernel], "strides": [int(s) for s in strides],
             "dilations": [int(d) for d in dilations]}
    padding = padding.upper()
    if padding == "VALID":
        attrs["pads"] = [0] * (2 * n)
    elif padding == "EXPLICIT":
        e = list(explicit or [])
        if len(e) != 2 * (n + 2):
            raise UnsupportedOpError(f"explicit paddings {e} do not match a rank-{n + 2} input")
        sp = [e[2 * i: 2 * i + 2] for i in range(1, n + 1)]  # NHWC: skip N, stop before C
        attrs["pads"] = [int(p[0]) for p in sp] + [int(p[1]) for p in sp]
    elif padding == "SAME":
        dims = spatial_dims(x)
        if dims is None:
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            attrs["pads"] = same_pads(dims, attrs["kernel_shape"], attrs["strides"],
                                      attrs["dilations"], "SAME_UPPER")
    else:
        raise UnsupportedOpError(f"padding {padding!r} is not SAME, VALID or EXPLICIT")
    return attrs


def _const(v: Value | None) -> np.ndarray | None:
    p = v.producer if v is not None else None
    return np.asarray(p.attrs["value"]) if p is not None and p.name == "constant" else None


def _non_negative(v: Value) -> bool:
    """Whether ``v`` is a relu / relu6-style clip output (so a zero pad cannot win a max)."""
    p = v.producer
    if p is None:
        return False
    if p.name == "relu":
        return True
    lo = _const(p.operand(1)) if p.name == "clip" and len(p.operands) > 1 else None
    return lo is not None and lo.size == 1 and float(lo.reshape(-1)[0]) >= 0


def absorb_zero_pad(x: Value, attrs: dict, for_max: bool = False) -> Value:
    """Keras' ZeroPadding2D (an explicit ``pad`` of H and W) before a conv or pool with
    explicit pads: the pad joins the window's pads, so no padded copy of the image is made.
    A max pool takes it only when its input cannot be negative.  Returns the window's input;
    ``attrs["pads"]`` is updated in place."""
    p = x.producer
    if p is None or p.name != "pad" or (p.attr("mode") or "constant") != "constant" or \
            "pads" not in attrs or (len(p.operands) > 3 and p.operand(3) is not None):
        return x
    pads, value = _const(p.operand(1)), p.operand(2) if len(p.operands) > 2 else None
    src = p.operand(0)
    rank = len(src.type.shape) if isinstance(src.type, TensorType) and src.type.shape else None
    if pads is None or rank is None or pads.size != 2 * rank or (pads < 0).any():
        return x
    if value is not None:
        cv = _const(value)
        if cv is None or cv.size != 1 or float(cv.reshape(-1)[0]) != 0.0:
            return x
    begin, end = pads[:rank], pads[rank:]
    if begin[0] or end[0] or begin[-1] or end[-1] or (for_max and not _non_negative(src)):
        return x
    n = rank - 2
    old = list(attrs["pads"])
    attrs["pads"] = [int(old[i] + begin[1 + i]) for i in range(n)] + \
        [int(old[n + i] + end[1 + i]) for i in range(n)]
    return src


def conv_nhwc(b: Builder, x: Value, w_mckk: np.ndarray, bias: np.ndarray | Value | None,
              strides: Sequence[int], dilations: Sequence[int], padding: str, group: int = 1,
              explicit: Sequence[int] | None = None) -> Value:
    """conv(layout="NHWC") of ``x`` with constant weights already in galaxir's [M, C/g, kh, kw]."""
    w_mckk = np.ascontiguousarray(w_mckk)
    attrs = window_attrs(x, w_mckk.shape[2:], strides, dilations, padding, explicit)
    x = absorb_zero_pad(x, attrs)
    w = b.op("constant", value=w_mckk)
    if isinstance(bias, np.ndarray):
        bias = b.op("constant", value=np.ascontiguousarray(bias.astype(w_mckk.dtype).reshape(-1)))
    return b.op("conv", x, w, bias, group=int(group), layout="NHWC", **attrs)


def hwio_to_mckk(w: np.ndarray) -> np.ndarray:
    """TF Conv2D filter [kh, kw, C, M] -> [M, C, kh, kw]."""
    return np.transpose(w, (3, 2, 0, 1))


def ohwi_to_mckk(w: np.ndarray) -> np.ndarray:
    """TFLite CONV_2D filter [M, kh, kw, C] -> [M, C, kh, kw]."""
    return np.transpose(w, (0, 3, 1, 2))


def depthwise_to_mckk(w: np.ndarray, channels: int) -> np.ndarray:
    """A depthwise filter whose last dims are [kh, kw, ...] with C*mult channels in TF's
    order (channel c, multiplier k -> output c*mult + k) -> [C*mult, 1, kh, kw]."""
    kh, kw = w.shape[-4], w.shape[-3]  # TF [kh, kw, C, mult]
    return np.transpose(w.reshape(kh, kw, -1), (2, 0, 1))[:, None]


def pool_nhwc(b: Builder, kind: str, x: Value, ksize: Sequence[int], strides: Sequence[int],
              padding: str) -> Value:
    """max_pool / average_pool(layout="NHWC"); TF's average excludes the padding."""
    attrs = window_attrs(x, ksize, strides, [1] * len(ksize), padding)
    attrs.pop("dilations")
    if kind == "max":
        x = absorb_zero_pad(x, attrs, for_max=True)
        return b.op("max_pool", x, num_results=1, layout="NHWC", **attrs)
    return b.op("average_pool", x, layout="NHWC", count_include_pad=0, **attrs)
