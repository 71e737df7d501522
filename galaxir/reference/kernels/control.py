"""Kernels for structural ops: constant and control flow (if, loop, scan).

Regions run in the interpreter with the enclosing environment visible, so bodies read
outer-scope values directly.  Carried values may be tensors, sequences (lists) or
optionals (None or the value)."""
from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ...ir.opdef import describe
from ...ir.types import TensorType
from ..registry import kernel


@kernel("constant")
def constant(ctx):
    return ctx.op.attrs["value"]


def _truth(ctx, x, what: str) -> bool:
    a = np.asarray(x)
    if a.size != 1:
        raise ExecutionError(f"{describe(ctx.op)}: {what} must hold one element, got shape {list(a.shape)}")
    return bool(a.reshape(-1)[0])


@kernel("if")
def if_(ctx, cond):
    taken = _truth(ctx, cond, "the condition")
    return tuple(ctx.run_region(0 if taken else 1, []))


def _empty_stack(t, n: int = 0) -> np.ndarray:
    """``n`` stacked items of type ``t`` when no item was produced (zero iterations)."""
    dtype = t.dtype.numpy if isinstance(t, TensorType) else np.float32
    shape = t.shape if isinstance(t, TensorType) and t.shape is not None else (0,)
    return np.zeros(tuple(d if isinstance(d, int) else 0 for d in shape), dtype=dtype)


def _stack(ctx, items: list, what: str) -> np.ndarray:
    arrays = [np.asarray(x) for x in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ExecutionError(f"{describe(ctx.op)}: {what} has different shapes across "
                             f"iterations: {sorted(shapes)}")
    return np.stack(arrays)


@kernel("unreachable")
def unreachable(ctx):
    raise ExecutionError(f"{describe(ctx.op)}: {ctx.attr('message')}")


@kernel("loop")
def loop(ctx, max_trip, cond, *carried):
    """ONNX Loop: run while (i < max_trip) and cond; stack the scan outputs."""
    n_carried = len(carried)
    n_scan = len(ctx.op.results) - n_carried
    trip = None if max_trip is None else int(np.asarray(max_trip).reshape(-1)[0])
    keep_going = True if cond is None else _truth(ctx, cond, "the initial condition")
    state = list(carried)
    scans: list[list] = [[] for _ in range(n_scan)]
    i = 0
    while keep_going and (trip is None or i < trip):
        out = ctx.run_region(0, [np.array(i, dtype=np.int64), np.array(keep_going)] + state)
        keep_going = _truth(ctx, out[0], "the body's condition")
        state = list(out[1:1 + n_carried])
        for j, v in enumerate(out[1 + n_carried:]):
            scans[j].append(v)
        i += 1
    results = list(state)
    for j, items in enumerate(scans):
        if items:
            results.append(_stack(ctx, items, f"scan output {j}"))
        else:
            results.append(_empty_stack(ctx.op.results[n_carried + j].type))
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
    xs = [np.moveaxis(np.asarray(x), a, 0) for x, a in zip(xs, in_axes)]
    lengths = {x.shape[0] for x in xs}
    if len(lengths) > 1:
        raise ExecutionError(f"{describe(ctx.op)}: scan inputs have different lengths {sorted(lengths)}")
    length = xs[0].shape[0] if xs else 0
    collected: list[list] = [[] for _ in range(n_out)]
    for t in range(length):
        slices = [x[length - 1 - t] if d else x[t] for x, d in zip(xs, in_dirs)]
        out = ctx.run_region(0, state + slices)
        state = list(out[:n_state])
        for j, v in enumerate(out[n_state:]):
            collected[j].append(v)
    results = list(state)
    for j, items in enumerate(collected):
        if out_dirs[j]:
            items = items[::-1]
        if items:
            stacked = _stack(ctx, items, f"scan output {j}")
        else:
            body_t = ctx.op.regions[0].block.results[n_state + j].type
            stacked = _empty_stack(body_t)[None][:0]
        rank = stacked.ndim
        axis = out_axes[j] + rank if out_axes[j] < 0 else out_axes[j]
        results.append(np.moveaxis(stacked, 0, axis))
    return tuple(results)
