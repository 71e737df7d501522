"""Kernels for DFT, STFT, window functions and the mel filter bank."""
from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ..registry import kernel


def _scalar(v) -> float | int:
    return np.asarray(v).reshape(-1)[0].item()


def _work(x: np.ndarray):
    """FFT precision: single for float32 and narrower (numpy's pocketfft runs it natively),
    double for float64, so results round like the ONNX reference."""
    return np.float64 if x.dtype == np.float64 else np.float32


def _to_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1|2] real tensor -> [...] complex tensor in the working precision."""
    w = _work(x)
    if x.shape[-1] == 1:
        return x[..., 0].astype(w)
    if x.shape[-1] == 2:
        return x[..., 0].astype(w) + 1j * x[..., 1].astype(w)
    raise ExecutionError(f"the last dim of a signal must be 1 (real) or 2 (complex), got {x.shape[-1]}")


def _from_complex(z: np.ndarray, dtype) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


@kernel("dft")
def dft(ctx, x, dft_length=None, axis=None):
    rank = x.ndim
    ax = -2 if axis is None else int(_scalar(axis))
    ax = ax + rank if ax < 0 else ax
    if not 0 <= ax < rank - 1:
        raise ExecutionError(f"dft: axis {ax} is out of range for a signal of rank {rank}")
    inverse, onesided = ctx.attr("inverse"), ctx.attr("onesided")
    if dft_length is not None:
        n = int(_scalar(dft_length))
    elif inverse and onesided:
        n = 2 * (x.shape[ax] - 1)
    else:
        n = x.shape[ax]
    z = _to_complex(x)
    if inverse:
        if onesided:
            return np.fft.irfft(z, n=n, axis=ax)[..., None].astype(x.dtype)
        return _from_complex(np.fft.ifft(z, n=n, axis=ax), x.dtype)
    f = np.fft.fft(z, n=n, axis=ax)
    if onesided:
        f = np.take(f, np.arange(n // 2 + 1), axis=ax)
    return _from_complex(f, x.dtype)


@kernel("stft")
def stft(ctx, signal, frame_step, window=None, frame_length=None):
    step = int(_scalar(frame_step))
    if frame_length is not None:
        flen = int(_scalar(frame_length))
    elif window is not None:
        flen = window.shape[0]
    else:
        flen = signal.shape[1]
    if window is None:
        window = np.ones(flen, dtype=signal.dtype)
    if window.shape[0] != flen:
        raise ExecutionError(f"stft: window has {window.shape[0]} samples, frame_length is {flen}")
    if step <= 0:
        raise ExecutionError(f"stft: frame_step must be positive, got {step}")
    z = _to_complex(signal)  # [B, L]
    nframes = 1 + (z.shape[1] - flen) // step
    idx = np.arange(nframes)[:, None] * step + np.arange(flen)[None, :]
    frames = z[:, idx] * window.astype(_work(signal))  # [B, F, flen]
    f = np.fft.fft(frames, n=flen, axis=-1)
    if ctx.attr("onesided"):
        f = f[..., :flen // 2 + 1]
    return _from_complex(f, signal.dtype)


def _cosine_window(coeffs):
    def k(ctx, size):
        n = int(_scalar(size))
        denom = n if ctx.attr("periodic") else n - 1
        i = np.arange(n, dtype=np.float64)
        w = np.zeros(n, dtype=np.float64)
        for j, a in enumerate(coeffs):
            w += a * np.cos(2 * np.pi * j * i / denom) if j else a
        return w.astype(ctx.result_dtype(0))
    return k


kernel("hann_window")(_cosine_window([0.5, -0.5]))
kernel("hamming_window")(_cosine_window([25 / 46, -(1 - 25 / 46)]))
kernel("blackman_window")(_cosine_window([0.42, -0.5, 0.08]))


@kernel("mel_weight_matrix")
def mel_weight_matrix(ctx, num_mel_bins, dft_length, sample_rate, lower, upper):
    bins, n, rate = int(_scalar(num_mel_bins)), int(_scalar(dft_length)), _scalar(sample_rate)
    lo, hi = float(_scalar(lower)), float(_scalar(upper))

    def to_mel(hz):
        return 2595 * np.log1p(hz / 700) / np.log(10)

    mel_lo, mel_hi = to_mel(lo), to_mel(hi)
    points = np.arange(bins + 2) * ((mel_hi - mel_lo) / (bins + 2)) + mel_lo
    hz = 700 * np.expm1(points / 2595 * np.log(10))
    edges = (((n + 1) * hz) // rate).astype(np.int64)
    nspec = n // 2 + 1
    out = np.zeros((nspec, bins), dtype=np.float64)
    j = np.arange(nspec)
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            if 0 <= center < nspec:
                out[center, i] = 1.0
        else:
            m = (j >= left) & (j <= center)
            out[m, i] = (j[m] - left) / (center - left)
        if right > center:
            m = (j >= center) & (j < right)
            out[m, i] = (right - j[m]) / (right - center)
    return out.astype(ctx.result_dtype(0))
