"""Sub-byte element types in .gxm weights: numpy (ml_dtypes) holds int4 / uint4 /
float4e2m1 / int2 / uint2 one element per byte (the value's bits in the low bits, the rest
zero); the file stores them packed, 8 / bits elements per byte, the first element in the
low bits, as ONNX does.  So a blockwise-int4 weight takes half a byte per value on disk."""
from __future__ import annotations

import numpy as np

from ..ir.types import DType

#: bits per element of the dtypes stored packed
PACKED_BITS = {DType.int4: 4, DType.uint4: 4, DType.float4e2m1: 4, DType.int2: 2, DType.uint2: 2}


def packed_nbytes(numel: int, bits: int) -> int:
    return (numel * bits + 7) // 8


def pack(arr: np.ndarray, bits: int) -> np.ndarray:
    """The elements of ``arr`` (one per byte) packed ``8 // bits`` to a byte (uint8)."""
    per = 8 // bits
    b = np.ascontiguousarray(arr).reshape(-1).view(np.uint8) & np.uint8((1 << bits) - 1)
    pad = (-b.size) % per
    if pad:
        b = np.concatenate([b, np.zeros(pad, np.uint8)])
    b = b.reshape(-1, per)
    out = np.zeros(b.shape[0], np.uint8)
    for i in range(per):
        out |= b[:, i] << np.uint8(i * bits)
    return out


def unpack(raw: np.ndarray, bits: int, numel: int, dtype: np.dtype) -> np.ndarray:
    """``numel`` elements of ``dtype`` (one per byte) from the packed bytes ``raw``."""
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((raw.size, per), np.uint8)
    for i in range(per):
        out[:, i] = (raw >> np.uint8(i * bits)) & mask
    return out.reshape(-1)[:numel].view(dtype)
