"""Signal-processing ops: DFT, STFT, window functions and the mel filter bank.

Complex tensors are real tensors whose last dim is 2 (real, imaginary), as in ONNX; a
real signal has last dim 1.
"""
from __future__ import annotations

import numpy as np

from ..opdef import INDEX, INT64, attr, define
from ..types import UNKNOWN, DType, TensorType
from .rules import const_value, fail, normalize_axis, tensor_operand


def _const_int(op, i: int) -> int | None:
    v = const_value(op, i)
    return None if v is None else int(np.asarray(v).reshape(-1)[0])


def _dft(op):
    x = tensor_operand(op, 0)
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    if rank < 2:
        raise fail(op, f"input must have rank >= 2 (signal dims then a complex dim), got {x}")
    axis = -2 if op.operand(2) is None else _const_int(op, 2)
    n = None if op.operand(1) is None else _const_int(op, 1)
    shape = list(x.shape)
    if axis is None:  # data-dependent axis: every dim but the batch could change
        return [TensorType(x.dtype, (shape[0],) + (UNKNOWN,) * (rank - 2) + (UNKNOWN,))]
    ax = normalize_axis(op, axis, rank)
    if ax == rank - 1:
        raise fail(op, "axis cannot be the last (complex) dim")
    d = shape[ax]
    inverse, onesided = op.attr("inverse"), op.attr("onesided")
    if op.operand(1) is not None and n is None:
        length = UNKNOWN
    elif n is not None:
        length = n
    elif inverse and onesided:
        length = 2 * (d - 1) if isinstance(d, int) else UNKNOWN
    else:
        length = d
    if onesided and not inverse:
        length = length // 2 + 1 if isinstance(length, int) else UNKNOWN
    shape[ax] = length
    shape[-1] = 1 if (inverse and onesided) else 2
    return [TensorType(x.dtype, tuple(shape))]


define("dft", operands=["input", "dft_length?", "axis?"],
       attrs={"inverse": attr("int", 0), "onesided": attr("int", 0)}, infer=_dft,
       types={"dft_length": INDEX, "axis": INT64},
       doc="Discrete Fourier transform along `axis` (default -2); output is complex (last dim "
           "2), or real (last dim 1) for an inverse one-sided transform.")


def _stft(op):
    x = tensor_operand(op, 0)
    if x.shape is not None and len(x.shape) != 3:
        raise fail(op, f"signal must be [batch, length, 1|2], got {x}")
    step = _const_int(op, 1)
    flen = _const_int(op, 3) if op.operand(3) is not None else None
    if flen is None and op.operand(2) is not None:
        w = tensor_operand(op, 2)
        if w.shape is not None and len(w.shape) == 1 and isinstance(w.shape[0], int):
            flen = w.shape[0]
    batch = x.shape[0] if x.shape is not None else UNKNOWN
    length = x.shape[1] if x.shape is not None else UNKNOWN
    if op.operand(2) is None and op.operand(3) is None:
        flen = length if isinstance(length, int) else None
    frames = (1 + (length - flen) // step) if (isinstance(length, int) and flen is not None
                                               and step) else UNKNOWN
    bins = UNKNOWN
    if flen is not None:
        bins = flen // 2 + 1 if op.attr("onesided") else flen
    return [TensorType(x.dtype, (batch, frames, bins, 2))]


define("stft", operands=["signal", "frame_step", "window?", "frame_length?"],
       attrs={"onesided": attr("int", 1)}, infer=_stft,
       types={"signal": "T1", "window": "T1", "frame_step": ("T2", INDEX),
              "frame_length": ("T2", INDEX)},
       doc="Short-time Fourier transform: [batch, frames, bins, 2].")


def _window(op):
    n = _const_int(op, 0)
    return [TensorType(op.attr("output_datatype"), (n if n is not None else UNKNOWN,))]


for _name in ("blackman_window", "hamming_window", "hann_window"):
    define(_name, operands=["size"],
           attrs={"output_datatype": attr("dtype", DType.float32), "periodic": attr("int", 1)},
           infer=_window, types={"size": INDEX})


def _mel(op):
    bins = _const_int(op, 0)
    n = _const_int(op, 1)
    return [TensorType(op.attr("output_datatype"),
                       (n // 2 + 1 if n is not None else UNKNOWN, bins if bins is not None else UNKNOWN))]


define("mel_weight_matrix",
       operands=["num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz"],
       attrs={"output_datatype": attr("dtype", DType.float32)}, infer=_mel,
       types={"num_mel_bins": ("T1", INDEX), "dft_length": ("T1", INDEX),
              "sample_rate": ("T1", INDEX), "lower_edge_hertz": "T2",
              "upper_edge_hertz": "T2"},
       doc="[dft_length/2+1, num_mel_bins] triangular mel filter bank.")
