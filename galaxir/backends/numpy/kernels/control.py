"""Kernels for structural ops: constant and control flow (if, loop, scan)."""
from __future__ import annotations

import numpy as np

from ..registry import kernel


@kernel("constant")
def constant(ctx):
    return ctx.op.attrs["value"]


@kernel("if")
def if_(ctx, cond):
    taken = bool(np.asarray(cond).reshape(-1)[0])
    return tuple(ctx.run_region(0 if taken else 1, []))


@kernel("loop")
def loop(ctx, max_trip, cond, *carried):
    """ONNX Loop: run while (i < max_trip) and cond; stack the scan outputs."""
    n_carried = len(carried)
    n_scan = len(ctx.op.results) - n_carried
    trip = None if max_trip is None else int(np.asarray(max_trip).reshape(-1)[0])
    keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    state = list(carried)
    scans: list[list] = [[] for _ in range(n_scan)]
    i = 0
    while keep_going and (trip is None or i < trip):
        out = ctx.run_region(0, [np.array(i, dtype=np.int64), np.array(keep_going)] + state)
        keep_going = bool(np.asarray(out[0]).reshape(-1)[0])
        state = list(out[1:1 + n_carried])
        for j, v in enumerate(out[1 + n_carried:]):
            scans[j].append(v)
        i += 1
    results = list(state)
    for j, items in enumerate(scans):
        t = ctx.op.results[n_carried + j].type
        if items:
            results.append(np.stack([np.asarray(x) for x in items]))
        else:
            dtype = getattr(getattr(t, "dtype", None), "numpy", np.float32)
            shape = getattr(t, "shape", None)
            tail = tuple(d if isinstance(d, int) else 0 for d in shape[1:]) if shape else ()
            results.append(np.zeros((0,) + tail, dtype=dtype))
    return tuple(results)


@kernel("scan")
def scan(ctx, *inputs):
    n_in = ctx.attr("num_scan_inputs")
    n_state = len(inputs) - n_in
    state = list(inputs[:n_state])
    xs = inputs[n_state:]
    in_axes = list(ctx.attr("scan_input_axes") or [0] * n_in)
    in_dirs = list(ctx.attr("scan_input_directions") or [0] * n_in)
    n_out = len(ctx.op.results) - n_state
    out_axes = list(ctx.attr("scan_output_axes") or [0] * n_out)
    out_dirs = list(ctx.attr("scan_output_directions") or [0] * n_out)
    xs = [np.moveaxis(x, a, 0) for x, a in zip(xs, in_axes)]
    length = xs[0].shape[0] if xs else 0
    collected: list[list] = [[] for _ in range(n_out)]
    for t in range(length):
        slices = [x[length - 1 - t] if d else x[t] for x, d in zip(xs, in_dirs)]
        out = ctx.run_region(0, state + slices)
        state = list(out[:n_state])
        for j, v in enumerate(out[n_state:]):
            collected[j].append(np.asarray(v))
    results = list(state)
    for j, items in enumerate(collected):
        if out_dirs[j]:
            items = items[::-1]
        stacked = np.stack(items)
        rank = stacked.ndim
        axis = out_axes[j] + rank if out_axes[j] < 0 else out_axes[j]
        results.append(np.moveaxis(stacked, 0, axis))
    return tuple(results)
