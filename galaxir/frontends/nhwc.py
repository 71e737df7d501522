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


def conv_nhwc(b: Builder, x: Value, w_mckk: np.ndarray, bias: np.ndarray | Value | None,
              strides: Sequence[int], dilations: Sequence[int], padding: str, group: int = 1,
              explicit: Sequence[int] | None = None) -> Value:
    """conv(layout="NHWC") of ``x`` with constant weights already in galaxir's [M, C/g, kh, kw]."""
    w_mckk = np.ascontiguousarray(w_mckk)
    attrs = window_attrs(x, w_mckk.shape[2:], strides, dilations, padding, explicit)
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
        return b.op("max_pool", x, num_results=1, layout="NHWC", **attrs)
    return b.op("average_pool", x, layout="NHWC", count_include_pad=0, **attrs)
