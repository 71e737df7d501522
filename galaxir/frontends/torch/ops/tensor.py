"""Shape, indexing, creation and reduction ATen ops.

Sizes in dynamic graphs arrive as lists mixing ints and symbolic-int Values.  Where it
can, a converter still emits a constant shape (ONNX's 0 = "copy this dim", -1 = "infer
it", 1 = "keep" for expand), so shapes stay foldable; else it builds the shape tensor.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ....ir import Value
from ....ir.types import UNKNOWN, DType
from ..importer import TorchContext, converter

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _dim_list(v: Any) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


# -- symbolic sizes --------------------------------------------------------------------------------
@converter("sym_size")
def sym_size(ctx: TorchContext):
    d = int(ctx.args["dim"])
    r = ctx.rank("self")
    d = _norm(d, r)
    s = ctx.op("shape", ctx.args["self"], start=d, end=d + 1)
    return ctx.op("squeeze", s, ctx.i64([0]))


@converter("sym_numel")
def sym_numel(ctx: TorchContext):
    return ctx.op("size", ctx.args["self"])


# -- views -----------------------------------------------------------------------------------------
@converter("view", "_unsafe_view", "reshape", "view_copy")
def view(ctx: TorchContext):
    x = ctx.args["self"]
    sizes = list(ctx.args.get("size", ctx.args.get("shape")))
    if all(not isinstance(s, Value) for s in sizes):
        allowzero = int(any(int(s) == 0 for s in sizes))
        return ctx.op("reshape", x, ctx.i64([int(s) for s in sizes]), allowzero=allowzero)
    in_shape = ctx.shape_of("self")
    out_dims = ctx.importer.dims(ctx.out_meta.shape)
    spec: list[Any] = []
    free = 0
    for i, s in enumerate(sizes):
        if isinstance(s, Value):
            d = out_dims[i]
            if isinstance(d, str) and d != UNKNOWN and i < len(in_shape) and in_shape[i] == d:
                spec.append(0)  # copy the input's dim
            else:
                spec.append(s)
                free += 1
        else:
            spec.append(int(s))
    literal = [s for s in spec if not isinstance(s, Value)]
    if free <= 1 and -1 not in literal and all(s != 0 for s in sizes if not isinstance(s, Value)):
        return ctx.op("reshape", x, ctx.i64([-1 if isinstance(s, Value) else s for s in spec]))
    return ctx.op("reshape", x, ctx.shape_value(sizes), allowzero=1 if 0 in literal else 0)


@converter("expand", "expand_copy")
def expand(ctx: TorchContext):
    x = ctx.args["self"]
    sizes = list(ctx.args["size"])
    in_shape = ctx.shape_of("self")
    out_dims = ctx.importer.dims(ctx.out_meta.shape)
    lead = len(sizes) - len(in_shape)
    spec: list[Any] = []
    for i, s in enumerate(sizes):
        j = i - lead
        if not isinstance(s, Value):
            spec.append(1 if int(s) == -1 else int(s))
        elif j >= 0 and isinstance(out_dims[i], str) and out_dims[i] != UNKNOWN and \
                in_shape[j] == out_dims[i]:
            spec.append(1)  # same symbol: the input's dim is kept
        else:
            spec.append(s)
    if all(not isinstance(s, Value) for s in spec) and list(in_shape) == list(spec[lead:]) and lead == 0:
        return x
    return ctx.op("expand", x, ctx.shape_value(spec))


@converter("permute", "permute_copy")
def permute(ctx: TorchContext):
    r = ctx.rank("self")
    perm = [_norm(int(d), r) for d in ctx.args["dims"]]
    if perm == list(range(r)):
        return ctx.args["self"]
    return ctx.op("transpose", ctx.args["self"], perm=perm)


@converter("transpose", "transpose_copy")
def transpose(ctx: TorchContext):
    r = ctx.rank("self")
    a, b = _norm(int(ctx.args["dim0"]), r), _norm(int(ctx.args["dim1"]), r)
    perm = list(range(r))
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.op("transpose", ctx.args["self"], perm=perm) if a != b else ctx.args["self"]


@converter("t")
def t(ctx: TorchContext):
    if ctx.rank("self") < 2:
        return ctx.args["self"]
    return ctx.op("transpose", ctx.args["self"], perm=[1, 0])


@converter("squeeze", "squeeze_copy")
def squeeze(ctx: TorchContext):
    shape = ctx.shape_of("self")
    r = len(shape)
    if "dims" in ctx.args:
        dims = _dim_list(ctx.args["dims"])
    elif "dim" in ctx.args:
        dims = _dim_list(ctx.args["dim"])
    else:
        dims = list(range(r))
    axes = sorted({_norm(d, r) for d in dims if shape[_norm(d, r)] == 1}) if r else []
    if not axes:
        return ctx.args["self"]
    return ctx.op("squeeze", ctx.args["self"], ctx.i64(axes))


@converter("unsqueeze", "unsqueeze_copy")
def unsqueeze(ctx: TorchContext):
    d = int(ctx.args["dim"])
    d = d + ctx.rank("self") + 1 if d < 0 else d
    return ctx.op("unsqueeze", ctx.args["self"], ctx.i64([d]))


def _index_value(ctx: TorchContext, v: Any) -> Value:
    return ctx.shape_value([v])


@converter("slice", "slice_copy")
def slice_(ctx: TorchContext):
    x = ctx.args["self"]
    shape = ctx.shape_of("self")
    dim = _norm(int(ctx.arg("dim", 0)), len(shape))
    start = ctx.args.get("start")
    end = ctx.args.get("end")
    step = ctx.arg("step", 1)
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    if not isinstance(end, Value) and end > INT64_MAX:
        end = INT64_MAX
    size = shape[dim]
    if isinstance(start, int) and isinstance(end, int) and step == 1 and start == 0 and \
            (end == INT64_MAX or (isinstance(size, int) and end >= size)):
        return x
    return ctx.op("slice", x, _index_value(ctx, start), _index_value(ctx, end), ctx.i64([dim]),
                  _index_value(ctx, step))


@converter("select", "select_copy")
def select(ctx: TorchContext):
    r = ctx.rank("self")
    idx = ctx.args["index"]
    idx = ctx.tensor(idx, DType.int64) if isinstance(idx, Value) else ctx.i64(int(idx))
    return ctx.op("gather", ctx.args["self"], idx, axis=_norm(int(ctx.args["dim"]), r))


@converter("cat", "concat")
def cat(ctx: TorchContext):
    dt = ctx.out_dtype
    metas = ctx.meta("tensors")
    out_rank = ctx.out_meta.dim()
    parts = [ctx.tensor(v, dt) for v, m in zip(ctx.args["tensors"], metas)
             if not (m.dim() == 1 and m.shape[0] == 0 and out_rank != 1)]  # legacy empty inputs
    if len(parts) == 1:
        return parts[0]
    return ctx.op("concat", *parts, axis=_norm(int(ctx.arg("dim", 0)), out_rank))


@converter("stack")
def stack(ctx: TorchContext):
    dt = ctx.out_dtype
    r = ctx.out_meta.dim()
    d = _norm(int(ctx.arg("dim", 0)), r)
    parts = [ctx.op("unsqueeze", ctx.tensor(v, dt), ctx.i64([d])) for v in ctx.args["tensors"]]
    return parts[0] if len(parts) == 1 else ctx.op("concat", *parts, axis=d)


def _split_sizes(ctx: TorchContext, sizes: Sequence[int], dim: int):
    x = ctx.args["self"]
    if len(sizes) == 1:
        return [x]
    outs = ctx.op("split", x, ctx.i64(list(sizes)), axis=dim, num_results=len(sizes))
    return list(outs) if isinstance(outs, tuple) else [outs]


@converter("split_with_sizes", "split_with_sizes_copy")
def split_with_sizes(ctx: TorchContext):
    r = ctx.rank("self")
    sizes = ctx.args["split_sizes"]
    if any(isinstance(s, Value) for s in sizes):
        raise ctx.unsupported("split sizes that depend on the input's shape")
    return _split_sizes(ctx, [int(s) for s in sizes], _norm(int(ctx.arg("dim", 0)), r))


@converter("split.Tensor", "split_copy.Tensor")
def split(ctx: TorchContext):
    shape = ctx.shape_of("self")
    dim = _norm(int(ctx.arg("dim", 0)), len(shape))
    n, s = shape[dim], ctx.args["split_size"]
    if not isinstance(n, int) or isinstance(s, Value):
        raise ctx.unsupported("split of a dim whose size is not static")
    sizes = [s] * (n // s) + ([n % s] if n % s else [])
    return _split_sizes(ctx, sizes, dim)


@converter("unbind", "unbind_copy")
def unbind(ctx: TorchContext):
    shape = ctx.shape_of("self")
    dim = _norm(int(ctx.arg("dim", 0)), len(shape))
    n = shape[dim]
    if not isinstance(n, int):
        raise ctx.unsupported("unbind of a dim whose size is not static")
    axes = ctx.i64([dim])
    return [ctx.op("squeeze", p, axes) for p in _split_sizes(ctx, [1] * n, dim)]


@converter("flip")
def flip(ctx: TorchContext):
    r = ctx.rank("self")
    dims = [_norm(int(d), r) for d in ctx.args["dims"]]
    if not dims:
        return ctx.args["self"]
    k = len(dims)
    return ctx.op("slice", ctx.args["self"], ctx.i64([-1] * k), ctx.i64([INT64_MIN] * k),
                  ctx.i64(dims), ctx.i64([-1] * k))


@converter("repeat")
def repeat(ctx: TorchContext):
    x = ctx.args["self"]
    reps = list(ctx.args["repeats"])
    extra = len(reps) - ctx.rank("self")
    if extra > 0:
        x = ctx.op("unsqueeze", x, ctx.i64(list(range(extra))))
    return ctx.op("tile", x, ctx.shape_value(reps))


@converter("tril", "triu")
def trilu(ctx: TorchContext):
    upper = int("triu" in ctx.op_name)
    return ctx.op("trilu", ctx.args["self"], ctx.i64(int(ctx.arg("diagonal", 0))), upper=upper)


# -- indexing ---------------------------------------------------------------------------------------
@converter("gather")
def gather(ctx: TorchContext):
    r = ctx.rank("self")
    return ctx.op("gather_elements", ctx.args["self"], ctx.args["index"],
                  axis=_norm(int(ctx.args["dim"]), r))


@converter("index_select")
def index_select(ctx: TorchContext):
    r = ctx.rank("self")
    return ctx.op("gather", ctx.args["self"], ctx.args["index"], axis=_norm(int(ctx.args["dim"]), r))


@converter("index.Tensor", "_unsafe_index.Tensor")
def index(ctx: TorchContext):
    x = ctx.args["self"]
    idx = list(ctx.args["indices"])
    pos = [i for i, v in enumerate(idx) if v is not None]
    if not pos:
        return x
    if any(idx[i].type.dtype == DType.bool for i in pos):
        raise ctx.unsupported("boolean mask indexing (its result shape depends on the data)")
    if pos != list(range(pos[0], pos[0] + len(pos))):
        raise ctx.unsupported("advanced indexing with non-adjacent index tensors")
    r = ctx.rank("self")
    k, m = pos[0], len(pos)
    if m == 1:
        return ctx.op("gather", x, idx[k], axis=k)
    ids = [ctx.tensor(idx[i], DType.int64) for i in pos]
    zero = ids[0]
    zero = ctx.op("mul", zero, ctx.i64(0))
    for v in ids[1:]:
        zero = ctx.op("add", zero, ctx.op("mul", v, ctx.i64(0)))
    minus1 = ctx.i64([-1])
    stacked = ctx.op("concat", *[ctx.op("unsqueeze", ctx.op("add", v, zero), minus1) for v in ids],
                     axis=-1)
    if k:
        perm = list(range(k, k + m)) + list(range(k)) + list(range(k + m, r))
        x = ctx.op("transpose", x, perm=perm)
    y = ctx.op("gather_nd", x, stacked)
    if k:
        p = ctx.out_meta.dim() - (r - m)  # rank of the broadcast index shape
        out_r = ctx.out_meta.dim()
        perm = list(range(p, p + k)) + list(range(p)) + list(range(p + k, out_r))
        y = ctx.op("transpose", y, perm=perm)
    return y


@converter("cumsum")
def cumsum(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    r = ctx.rank("self")
    return ctx.op("cumsum", x, ctx.i64(_norm(int(ctx.args["dim"]), max(r, 1))))


@converter("topk")
def topk(ctx: TorchContext):
    r = ctx.rank("self")
    k = ctx.args["k"]
    return ctx.op("top_k", ctx.args["self"], ctx.shape_value([k]),
                  axis=_norm(int(ctx.arg("dim", -1)), r), largest=int(bool(ctx.arg("largest", True))),
                  sorted=1)


@converter("sort")
def sort(ctx: TorchContext):
    shape = ctx.shape_of("self")
    dim = _norm(int(ctx.arg("dim", -1)), len(shape))
    n = shape[dim]
    if not isinstance(n, int):
        raise ctx.unsupported("sort along a dim whose size is not static")
    return ctx.op("top_k", ctx.args["self"], ctx.i64([n]), axis=dim,
                  largest=int(bool(ctx.arg("descending", False))), sorted=1)


@converter("nonzero")
def nonzero(ctx: TorchContext):
    return ctx.op("transpose", ctx.op("non_zero", ctx.args["self"]), perm=[1, 0])


# -- creation -----------------------------------------------------------------------------------------
def _filled(ctx: TorchContext, sizes: Sequence[Any], value: Any, dt: DType) -> Value:
    if all(not isinstance(s, Value) for s in sizes):
        return ctx.constant(np.full([int(s) for s in sizes], value, dt.numpy))
    return ctx.op("constant_of_shape", ctx.shape_value(sizes),
                  value=np.asarray([value], dt.numpy))


@converter("full", "empty.memory_format", "zeros", "ones")
def full(ctx: TorchContext):
    name = ctx.op_name
    value = ctx.args.get("fill_value", 1 if ".ones" in name else 0)
    return _filled(ctx, list(ctx.args["size"]), value, ctx.out_dtype)


@converter("full_like", "zeros_like", "ones_like", "empty_like")
def full_like(ctx: TorchContext):
    name = ctx.op_name
    value = ctx.args.get("fill_value", 1 if "ones_like" in name else 0)
    dt = ctx.out_dtype
    shape = ctx.shape_of("self")
    if all(isinstance(d, int) for d in shape):
        return ctx.constant(np.full(shape, value, dt.numpy))
    return ctx.op("constant_of_shape", ctx.op("shape", ctx.args["self"]),
                  value=np.asarray([value], dt.numpy))


@converter("new_full", "new_zeros", "new_ones", "new_empty")
def new_full(ctx: TorchContext):
    name = ctx.op_name
    value = ctx.args.get("fill_value", 1 if "new_ones" in name else 0)
    return _filled(ctx, list(ctx.args["size"]), value, ctx.out_dtype)


@converter("scalar_tensor")
def scalar_tensor(ctx: TorchContext):
    return ctx.constant(np.asarray(ctx.args["s"], ctx.out_dtype.numpy))


@converter("arange")
def arange(ctx: TorchContext):
    dt = ctx.out_dtype
    start = ctx.args.get("start", 0)
    end = ctx.args["end"]
    step = ctx.args.get("step", 1)
    start, step = (0 if start is None else start), (1 if step is None else step)
    if not any(isinstance(v, Value) for v in (start, end, step)):
        return ctx.constant(np.arange(start, end, step).astype(dt.numpy))
    return ctx.op("range", ctx.tensor(start, dt), ctx.tensor(end, dt), ctx.tensor(step, dt))


def _torch_pads(ctx: TorchContext, pad: Sequence[Any], rank: int) -> Value:
    begins, ends = [0] * rank, [0] * rank
    for k in range(len(pad) // 2):
        d = rank - 1 - k
        begins[d], ends[d] = pad[2 * k], pad[2 * k + 1]
    return ctx.shape_value(begins + ends)


@converter("constant_pad_nd")
def constant_pad_nd(ctx: TorchContext):
    x = ctx.args["self"]
    pads = _torch_pads(ctx, list(ctx.args["pad"]), ctx.rank("self"))
    value = ctx.tensor(ctx.arg("value", 0), x.type.dtype)
    return ctx.op("pad", x, pads, value, mode="constant")


@converter("reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
           "replication_pad1d", "replication_pad2d", "replication_pad3d")
def mode_pad(ctx: TorchContext):
    x = ctx.args["self"]
    pads = _torch_pads(ctx, list(ctx.args["padding"]), ctx.rank("self"))
    return ctx.op("pad", x, pads, mode="reflect" if "reflection" in ctx.op_name else "edge")


# -- reductions ----------------------------------------------------------------------------------------
def _axes(ctx: TorchContext, key: str = "dim") -> list[int] | None:
    """Normalized reduction axes; None means every axis."""
    dims = ctx.args.get(key)
    if dims is None:
        return None
    dims = _dim_list(dims)
    if not dims:
        return None
    r = max(ctx.rank("self"), 1)
    return sorted({_norm(d, r) for d in dims})


def _reduce(ctx: TorchContext, gx_name: str, x: Value, axes: list[int] | None, keep: bool) -> Value:
    if ctx.rank("self") == 0:
        return x
    ax = ctx.i64(axes) if axes is not None else None
    return ctx.op(gx_name, x, ax, keepdims=int(keep))


def _reduction(gx_name: str, cast_to_out: bool = True):
    def convert(ctx: TorchContext):
        x = ctx.args["self"]
        if cast_to_out:
            x = ctx.tensor(x, ctx.out_dtype)
        return _reduce(ctx, gx_name, x, _axes(ctx), bool(ctx.args.get("keepdim")))
    return convert


converter("mean")(_reduction("reduce_mean"))
converter("sum")(_reduction("reduce_sum"))
converter("amax")(_reduction("reduce_max", False))
converter("amin")(_reduction("reduce_min", False))
converter("max.default")(_reduction("reduce_max", False))
converter("min.default")(_reduction("reduce_min", False))


@converter("prod")
def prod(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    return _reduce(ctx, "reduce_prod", x, _axes(ctx), bool(ctx.args.get("keepdim")))


def _any_all(gx_name: str):
    def convert(ctx: TorchContext):
        x = ctx.tensor(ctx.tensor(ctx.args["self"], DType.bool), DType.int32)
        y = _reduce(ctx, gx_name, x, _axes(ctx), bool(ctx.args.get("keepdim")))
        return ctx.tensor(y, DType.bool)
    return convert


converter("any")(_any_all("reduce_max"))
converter("all")(_any_all("reduce_min"))


def _minmax_dim(gx_reduce: str, gx_arg: str):
    def convert(ctx: TorchContext):
        x = ctx.args["self"]
        r = max(ctx.rank("self"), 1)
        d = _norm(int(ctx.args["dim"]), r)
        keep = int(bool(ctx.args.get("keepdim")))
        return (ctx.op(gx_reduce, x, ctx.i64([d]), keepdims=keep),
                ctx.op(gx_arg, x, axis=d, keepdims=keep))
    return convert


converter("max.dim")(_minmax_dim("reduce_max", "argmax"))
converter("min.dim")(_minmax_dim("reduce_min", "argmin"))


def _arg(gx_name: str):
    def convert(ctx: TorchContext):
        x = ctx.args["self"]
        keep = int(bool(ctx.args.get("keepdim")))
        if ctx.args.get("dim") is None:
            y = ctx.op(gx_name, ctx.op("reshape", x, ctx.i64([-1])), axis=0, keepdims=0)
            if keep:
                y = ctx.op("reshape", y, ctx.i64([1] * ctx.rank("self")))
            return y
        return ctx.op(gx_name, x, axis=_norm(int(ctx.args["dim"]), max(ctx.rank("self"), 1)),
                      keepdims=keep)
    return convert


converter("argmax")(_arg("argmax"))
converter("argmin")(_arg("argmin"))


def _var(ctx: TorchContext) -> Value:
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    axes = _axes(ctx)
    shape = ctx.shape_of("self")
    n_axes = axes if axes is not None else list(range(len(shape)))
    sizes = [shape[a] for a in n_axes]
    if not all(isinstance(s, int) for s in sizes):
        raise ctx.unsupported("variance over dims whose sizes are not static")
    n = int(np.prod(sizes)) if sizes else 1
    corr = ctx.args.get("correction")
    corr = 1 if corr is None else float(corr)
    mean = _reduce(ctx, "reduce_mean", x, axes, True)
    dev = ctx.op("sub", x, mean)
    sq = _reduce(ctx, "reduce_sum", ctx.op("mul", dev, dev), axes, bool(ctx.args.get("keepdim")))
    return ctx.op("div", sq, ctx.tensor(max(n - corr, 0), x.type.dtype))


@converter("var.correction", "var.dim")
def var(ctx: TorchContext):
    return _var(ctx)


@converter("std.correction", "std.dim")
def std(ctx: TorchContext):
    return ctx.op("sqrt", _var(ctx))

