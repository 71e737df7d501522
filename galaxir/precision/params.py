"""Quantization parameters: scale and zero point from a range, and the weight arrays
(per tensor, per channel, blockwise) quantized the way ONNX's QuantizeLinear rounds
(half to even, saturating)."""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..errors import GalaxirError

#: name -> (numpy dtype, qmin, qmax) of the integer types the tool writes
QTYPES = {
    "u8": (np.dtype(np.uint8), 0, 255),
    "s8": (np.dtype(np.int8), -128, 127),
    "u4": (np.dtype(ml_dtypes.uint4), 0, 15),
    "s4": (np.dtype(ml_dtypes.int4), -8, 7),
}


class QuantizationError(GalaxirError, ValueError):
    """A quantization setting or parameter that cannot work (bad scale, zero point out of
    the type's range, empty calibration set, unknown method)."""


def qtype(name: str) -> tuple[np.dtype, int, int]:
    if name not in QTYPES:
        raise QuantizationError(f"unknown quantized type '{name}'; expected one of {sorted(QTYPES)}")
    return QTYPES[name]


@dataclass(frozen=True)
class QParams:
    """A scale and zero point (arrays: scalars per tensor, 1-D per channel, N-D blocked)."""
    scale: np.ndarray
    zero_point: np.ndarray


def check_params(scale, zero_point, dtype: np.dtype, where: str) -> None:
    """Scales must be positive and finite, zero points inside the type's range; ``where``
    names the op or tensor for the message."""
    s = np.asarray(scale, dtype=np.float64)
    if s.size == 0:
        raise QuantizationError(f"{where}: empty scale")
    bad = ~np.isfinite(s) | (s <= 0)
    if bad.any():
        raise QuantizationError(f"{where}: scale must be positive and finite, got "
                                f"{s.ravel()[bad.ravel()][:4].tolist()}")
    if zero_point is not None:
        lo, hi = _range(np.dtype(dtype))
        z = np.asarray(zero_point, dtype=np.float64)
        out = (z < lo) | (z > hi) | (z != np.rint(z))
        if out.any():
            raise QuantizationError(f"{where}: zero point {z.ravel()[out.ravel()][:4].tolist()} is "
                                    f"outside the range [{lo}, {hi}] of {np.dtype(dtype).name}")


def _range(dt: np.dtype) -> tuple[int, int]:
    for d, lo, hi in QTYPES.values():
        if d == dt:
            return lo, hi
    info = np.iinfo(dt)
    return int(info.min), int(info.max)


def from_range(lo, hi, name: str, symmetric: bool = False, where: str = "tensor") -> QParams:
    """Scale/zero point covering [lo, hi] (widened to include 0, as ONNX's quantizers do).
    Symmetric ranges use the type's range without its most negative value (s8: -127..127)."""
    dt, qmin, qmax = qtype(name)
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise QuantizationError(f"{where}: the observed range is not finite "
                                f"(NaN or inf reached it during calibration)")
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        if qmin < 0:
            scale = amax / qmax  # s8: -127..127, s4: -7..7
            zp = np.zeros_like(amax)
        else:  # unsigned symmetric: zero in the middle
            scale = 2 * amax / (qmax - qmin)
            zp = np.full_like(amax, (qmax + qmin + 1) // 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.rint(qmin - lo / safe), qmin, qmax)
    tiny = np.finfo(np.float32).tiny
    scale = np.where(scale > tiny, scale, 1.0).astype(np.float32)  # an all-zero tensor: any scale
    return QParams(scale, zp.astype(dt))


def quantize_array(x: np.ndarray, p: QParams, name: str, axis: int | None = None,
                   block: int = 0) -> np.ndarray:
    """x quantized with ``p`` (scalar, per ``axis`` or blocked along ``axis``)."""
    dt, qmin, qmax = qtype(name)
    s, z = expand(p.scale, x.shape, axis, block), expand(p.zero_point, x.shape, axis, block)
    q = np.rint(x.astype(np.float64) / s.astype(np.float64)) + z.astype(np.float64)
    return np.clip(q, qmin, qmax).astype(dt)


def expand(v: np.ndarray, shape: tuple, axis: int | None, block: int) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim == 0 or axis is None:
        return v
    if block:
        rep = np.repeat(v, block, axis=axis)
        return np.take(rep, np.arange(shape[axis]), axis=axis)
    dims = [1] * len(shape)
    dims[axis] = v.shape[0]
    return v.reshape(dims)


def weight_params(w: np.ndarray, name: str, axis: int | None, symmetric: bool = True,
                  block: int = 0, where: str = "weight") -> QParams:
    """Parameters for a constant weight: per tensor (axis None), per channel along ``axis``,
    or per block of ``block`` elements along ``axis``."""
    w = np.asarray(w, np.float64)
    if not np.all(np.isfinite(w)):
        raise QuantizationError(f"{where}: the weight has NaN or inf values")
    if axis is None:
        return from_range(w.min(initial=0.0), w.max(initial=0.0), name, symmetric, where)
    if block:
        n = w.shape[axis]
        nb = -(-n // block)
        pad = nb * block - n
        if pad:
            widths = [(0, 0)] * w.ndim
            widths[axis] = (0, pad)
            w = np.pad(w, widths)
        shape = list(w.shape)
        shape[axis:axis + 1] = [nb, block]
        wb = w.reshape(shape)
        return from_range(wb.min(axis=axis + 1), wb.max(axis=axis + 1), name, symmetric, where)
    red = tuple(i for i in range(w.ndim) if i != axis)
    return from_range(w.min(axis=red), w.max(axis=red), name, symmetric, where)
