"""Range observers for calibration: min/max, and a histogram that gives a percentile or an
entropy (KL divergence) threshold.  Each sees every batch once."""
from __future__ import annotations

import numpy as np

from .params import QuantizationError

METHODS = ("minmax", "percentile", "entropy")


class MinMax:
    """The smallest and largest value seen."""

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf

    def update(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(np.min(x)))
            self.hi = max(self.hi, float(np.max(x)))

    def range(self) -> tuple[float, float]:
        if self.lo > self.hi:
            return 0.0, 0.0
        return self.lo, self.hi


class Histogram(MinMax):
    """A histogram of |x| over [0, R] (R grows as larger values arrive: old counts are
    re-binned), plus the signed min/max."""

    def __init__(self, bins: int = 2048, percentile: float = 99.999, method: str = "percentile"):
        super().__init__()
        self.bins, self.percentile, self.method = bins, percentile, method
        self.counts = np.zeros(bins, np.float64)
        self.top = 0.0

    def update(self, x: np.ndarray) -> None:
        if not x.size:
            return
        super().update(x)
        a = np.abs(x.astype(np.float32, copy=False)).ravel()
        m = float(a.max())
        if m > self.top:
            if self.top > 0:  # re-bin the old counts into the wider range
                edges = np.linspace(0, self.top, self.bins + 1)
                centers = (edges[:-1] + edges[1:]) / 2
                idx = np.minimum((centers / (m / self.bins)).astype(np.int64), self.bins - 1)
                self.counts = np.bincount(idx, self.counts, self.bins).astype(np.float64)
            self.top = m
        if self.top == 0:
            self.counts[0] += a.size
            return
        h, _ = np.histogram(a, self.bins, (0.0, self.top))
        self.counts += h

    def range(self) -> tuple[float, float]:
        lo, hi = super().range()
        if self.top == 0:
            return lo, hi
        t = self._percentile() if self.method == "percentile" else self._entropy()
        return max(lo, -t), min(hi, t)

    def _percentile(self) -> float:
        cdf = np.cumsum(self.counts)
        k = int(np.searchsorted(cdf, cdf[-1] * self.percentile / 100.0))
        return (min(k, self.bins - 1) + 1) * self.top / self.bins

    def _entropy(self, levels: int = 128) -> float:
        """The threshold whose 128-level quantized histogram is closest (KL) to the clipped
        one, as TensorRT's calibrator picks it."""
        p_all = self.counts
        best, best_t = np.inf, self.top
        for i in range(levels, self.bins + 1, 16):
            p = p_all[:i].copy()
            p[-1] += p_all[i:].sum()   # the reference: clipped values land in the last bin
            nz = p > 0
            # the candidate: the unclipped bins merged into `levels` groups, each group's
            # mass spread over its nonzero bins
            group = (np.arange(i) * levels) // i
            mass = np.bincount(group, p_all[:i], levels)
            cnt = np.bincount(group, nz.astype(np.float64), levels)
            q = np.where(nz, mass[group] / np.maximum(cnt[group], 1), 0.0)
            ps, qs = p.sum(), q.sum()
            if ps == 0 or qs == 0:
                continue
            pn, qn = p[nz] / ps, q[nz] / qs
            kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-12))))
            if kl < best:
                best, best_t = kl, i * self.top / self.bins
        return best_t


def make_observer(method: str, percentile: float = 99.999):
    if method == "minmax":
        return MinMax()
    if method in ("percentile", "entropy"):
        return Histogram(percentile=percentile, method=method)
    raise QuantizationError(f"unknown calibration method '{method}'; expected one of {list(METHODS)}")
