"""Calibration: run the float model over the calibration feeds once each, with every
observed value made an extra output, and feed each value to its observer."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Iterable

import numpy as np

from ..errors import InputValidationError
from ..ir import Module, Value
from .observers import make_observer
from .params import QuantizationError


def progress(items: Iterable, desc: str, enabled: bool = True, total: int | None = None):
    """tqdm over ``items`` when tqdm is installed (a galaxir dependency), else a plain
    counter on stderr."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, desc=desc, total=total, leave=False)
        return
    n = 0
    for n, item in enumerate(items, 1):
        print(f"\r{desc}: {n}" + (f"/{total}" if total else ""), end="", file=sys.stderr, flush=True)
        yield item
    if n:
        print(file=sys.stderr)


def check_feeds(exe, feeds: Any, i: int) -> None:
    """A calibration item must be a dict of the model's inputs (names, dtypes, shapes)."""
    if not isinstance(feeds, Mapping):
        raise InputValidationError(f"calibration item {i} is a {type(feeds).__name__}; expected a "
                                   f"dict of inputs by name ({', '.join(exe.input_names)})")
    try:
        exe.validate(feeds)
    except InputValidationError as e:
        raise InputValidationError(f"calibration item {i}: {e}") from None


class Tapped:
    """``module`` compiled with ``taps`` as extra outputs: ``run(feeds)`` returns (outputs,
    tapped arrays).  The module's own outputs are restored on ``close``."""

    def __init__(self, module: Module, taps: list[Value], target: str = "numpy"):
        from .. import compile as gx_compile
        self.graph = g = module.graph
        self.old, self.names = list(g.outputs), list(g.output_names)
        g.set_outputs(self.old + list(taps), self.names + [f"__tap{i}" for i in range(len(taps))])
        try:
            self.exe = gx_compile(module, target=target, level=0)
        except Exception:
            self.close()
            raise
        self.out_names = list(g.output_names)
        self.n = len(self.old)
        self.i = 0

    def run(self, feeds) -> tuple[list, list]:
        check_feeds(self.exe, feeds, self.i)
        self.i += 1
        out = self.exe.run(feeds)
        vals = [out[k] for k in self.out_names]
        return vals[:self.n], vals[self.n:]

    def close(self) -> None:
        self.graph.set_outputs(self.old, self.names)


def run_with_taps(module: Module, taps: list[Value], feeds_iter: Iterable, on_batch,
                  target: str = "numpy", desc: str = "calibrating", show: bool = True) -> int:
    """Run ``module`` on each feed dict, calling ``on_batch(outputs, tapped)``; returns the
    number of feeds."""
    t = Tapped(module, taps, target)
    try:
        total = len(feeds_iter) if hasattr(feeds_iter, "__len__") else None
        n = 0
        for feeds in progress(feeds_iter, desc, show, total):
            on_batch(*t.run(feeds))
            n += 1
    finally:
        t.close()
    return n


def collect_ranges(module: Module, values: list[Value], calibration: Iterable, method: str,
                   percentile: float = 99.999, show: bool = True,
                   target: str = "numpy") -> dict[int, tuple[float, float]]:
    """id(value) -> (lo, hi) over the calibration set, by ``method``."""
    if calibration is None:
        raise QuantizationError("static quantization needs calibration data (an iterable of feed "
                                "dicts); calibration=None asks for dynamic quantization")
    obs = [make_observer(method, percentile) for _ in values]

    def on_batch(_outs, tapped):
        for o, x in zip(obs, tapped):
            x = np.asarray(x)
            if not np.all(np.isfinite(x)):
                raise QuantizationError(f"calibration produced NaN/inf in {_name(values, tapped, x)}")
            o.update(x)

    n = run_with_taps(module, values, calibration, on_batch, target=target,
                      desc=f"calibrating ({method})", show=show)
    if n == 0:
        raise QuantizationError("the calibration set is empty: give at least one feed dict")
    return {id(v): o.range() for v, o in zip(values, obs)}


def _name(values, tapped, x) -> str:
    for v, t in zip(values, tapped):
        if t is x:
            p = v.producer
            return f"the output of {p.name} '{v.name}'" if p is not None else f"input '{v.name}'"
    return "a tensor"
