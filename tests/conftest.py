"""Helpers shared by the test modules (imported as ``from conftest import ...``)."""
from __future__ import annotations

import galaxir as gx
from galaxir.ir import GraphBuilder
from galaxir.ir.types import DType, tensor


def run_op(name, *arrays, num_results=None, target="numpy", **attrs):
    """Run one op on ``arrays`` through a one-op module; ``None`` leaves an optional operand out.

    Returns the single result, or a list when the op has several."""
    gb = GraphBuilder()
    xs = [None if a is None else gb.input(f"x{i}", tensor(DType.from_numpy(a.dtype), *a.shape))
          for i, a in enumerate(arrays)]
    out = gb.op(name, *xs, num_results=num_results, **attrs)
    outs = out if isinstance(out, tuple) else (out,)
    for i, o in enumerate(outs):
        gb.output(o, f"y{i}")
    res = gx.compile(gb.module(), target=target, level=0)(*[a for a in arrays if a is not None])
    return res if isinstance(out, tuple) else res[0]


def native_kernels(exe):
    """Class names of the native kernels the last run of a cpu executable used, in order."""
    return [type(s.kernel).__name__ for s in exe.last.steps if s.kind == "native"]
