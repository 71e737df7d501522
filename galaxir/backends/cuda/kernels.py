"""CUDA C kernel generators.  Each returns a ``Kernel``: the source of one ``extern "C"``
function (shapes, strides and attributes baked in as constants: the index arithmetic
divides by constants), its launch configuration and the order of its pointer parameters.

Generation needs no device: a kernel is plain text until the runtime loads it.  The name
is a hash of the body, so identical kernels (the same op on the same shapes) share one
compiled function."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ...ir.types import DType
from .source import compute_type, ctype, load, store

BLOCK = 256
MAX_GRID = 1 << 20  # grid-stride loops cover the rest


@dataclass
class Kernel:
    """One generated ``__global__`` function.  ``params``: what each pointer parameter is
    ("in", i) / ("out", i) / ("scratch", i) / ("err", 0); ``grid``/``block`` the launch."""

    kind: str
    body: str                       # uses KNAME for its own name
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    params: list[tuple[str, int]] = field(default_factory=list)
    shared: int = 0                 # dynamic shared memory bytes
    name: str = ""

    def __post_init__(self):
        if not self.name:
            self.name = "gx_" + hashlib.sha1(self.body.encode()).hexdigest()[:20]

    @property
    def source(self) -> str:
        return self.body.replace("KNAME", self.name)


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def strides_of(shape: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def index_type(*counts: int) -> str:
    return "long long" if max(counts, default=0) >= 2 ** 31 - 1 else "int"


def grid_1d(n: int, block: int = BLOCK) -> tuple[int, int, int]:
    return (max(1, min(-(-n // block), MAX_GRID)), 1, 1)


def _decompose(var: str, shape: Sequence[int], prefix: str, it: str) -> list[str]:
    """Statements splitting flat index ``var`` into coordinates ``prefix``0.. of ``shape``."""
    lines = [f"{it} {prefix}r = {var};"]
    for d in range(len(shape) - 1, -1, -1):
        if d == 0:
            lines.append(f"{it} {prefix}{d} = {prefix}r;")
        else:
            lines.append(f"{it} {prefix}{d} = {prefix}r % {int(shape[d])}; {prefix}r /= {int(shape[d])};")
    return lines


def broadcast_strides(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Strides (in elements) that read ``in_shape`` broadcast to ``out_shape`` (0 where it
    broadcasts), aligned to out_shape's dims."""
    in_shape = [int(d) for d in in_shape]
    pad = len(out_shape) - len(in_shape)
    st = strides_of(in_shape)
    res = []
    for i in range(len(out_shape)):
        j = i - pad
        if j < 0 or in_shape[j] == 1:
            res.append(0)
        else:
            res.append(st[j])
    return res


def _offset_expr(strides: Sequence[int], prefix: str) -> str:
    terms = [f"{prefix}{d} * {s}" for d, s in enumerate(strides) if s]
    return " + ".join(terms) if terms else "0"


def _signature(params: list[str]) -> str:
    return "extern \"C\" __global__ void KNAME(" + ", ".join(params) + ")"


# -- elementwise ---------------------------------------------------------------------------------
@dataclass
class EwInput:
    shape: tuple
    dtype: DType
    literal: str | None = None   # a scalar constant baked into the kernel


def elementwise(out_shape, out_dtype: DType, inputs: Sequence[EwInput],
                body: Callable[[list[str]], tuple[list[str], str]], kind: str = "elementwise") -> Kernel:
    """out[i] = f(inputs broadcast to out_shape at i); ``body(vars)`` gives (statements,
    result expression) in compute type from the loaded input variables."""
    out_shape = tuple(int(d) for d in out_shape)
    n = numel(out_shape)
    it = index_type(n)
    params, roles, loads = [], [], []
    need_coords = False
    offsets = []
    for i, x in enumerate(inputs):
        if x.literal is not None:
            offsets.append(None)
            continue
        params.append(f"const {ctype(x.dtype)}* in{i}")
        roles.append(("in", i))
        if numel(x.shape) == 1:
            offsets.append("0")
        elif tuple(int(d) for d in x.shape) == out_shape:
            offsets.append("i")
        else:
            offsets.append(_offset_expr(broadcast_strides(x.shape, out_shape), "c"))
            need_coords = True
    params.append(f"{ctype(out_dtype)}* out0")
    roles.append(("out", 0))
    vars_ = []
    for i, x in enumerate(inputs):
        v = f"v{i}"
        vars_.append(v)
        ct = compute_type(x.dtype)
        if x.literal is not None:
            loads.append(f"const {ct} {v} = {x.literal};")
        else:
            loads.append(f"const {ct} {v} = {load(x.dtype, f'in{i}[{offsets[i]}]')};")
    stmts, result = body(vars_)
    lines = [_signature(params) + " {",
             f"  for ({it} i = ({it})blockIdx.x * blockDim.x + threadIdx.x; i < {n}; "
             f"i += ({it})gridDim.x * blockDim.x) {{"]
    if need_coords:
        lines += ["    " + s for s in _decompose("i", out_shape, "c", it)]
    lines += ["    " + s for s in loads + stmts]
    lines.append(f"    out0[i] = {store(out_dtype, result)};")
    lines += ["  }", "}"]
    return Kernel(kind, "\n".join(lines), grid_1d(n), (BLOCK, 1, 1), roles)


# -- data movement -----------------------------------------------------------------------------
def index_map(kind: str, out_shape, dtype: DType, n_in: int, src: Callable[[str], list[str]],
              extra_params: Sequence[str] = (), extra_roles=(), dtypes=None) -> Kernel:
    """out[i] = in_k[off] where ``src(it)`` gives statements setting ``int k`` (which input)
    and ``off`` from the output coordinates c0..; one thread per output element."""
    out_shape = tuple(int(d) for d in out_shape)
    n = numel(out_shape)
    it = "long long"  # inputs may be larger than the output (gather/slice): stay safe
    ct = ctype(dtype)
    params = [f"const {ct}* in{i}" for i in range(n_in)] + list(extra_params) + [f"{ct}* out0"]
    roles = [("in", i) for i in range(n_in)] + list(extra_roles) + [("out", 0)]
    lines = [_signature(params) + " {",
             f"  for ({it} i = ({it})blockIdx.x * blockDim.x + threadIdx.x; i < {n}; "
             f"i += ({it})gridDim.x * blockDim.x) {{"]
    lines += ["    " + s for s in _decompose("i", out_shape, "c", it)]
    lines += ["    " + s for s in src(it)]
    lines += ["  }", "}"]
    return Kernel(kind, "\n".join(lines), grid_1d(n), (BLOCK, 1, 1), roles)


def transpose(in_shape, perm, dtype: DType) -> Kernel:
    in_shape = [int(d) for d in in_shape]
    out_shape = [in_shape[p] for p in perm]
    st = strides_of(in_shape)
    off = " + ".join(f"c{d} * {st[p]}" for d, p in enumerate(perm)) or "0"
    return index_map("transpose", out_shape, dtype, 1,
                     lambda it: [f"out0[i] = in0[{off}];"])


def concat(in_shapes, axis: int, dtype: DType) -> Kernel:
    out_shape = list(in_shapes[0])
    out_shape[axis] = sum(int(s[axis]) for s in in_shapes)

    def src(it):
        lines = []
        start = 0
        for k, s in enumerate(in_shapes):
            size = int(s[axis])
            st = strides_of(s)
            terms = [f"c{d} * {st[d]}" if d != axis else f"(c{d} - {start}) * {st[d]}"
                     for d in range(len(s))]
            cond = "if" if k == 0 else "else if"
            last = k == len(in_shapes) - 1
            lines.append(("else {" if last and k else f"{cond} (c{axis} < {start + size}) {{") +
                         f" out0[i] = in{k}[{' + '.join(terms) or '0'}]; }}")
            start += size
        return lines
    return index_map("concat", out_shape, dtype, len(in_shapes), src)


def slice_(in_shape, starts, steps, out_shape, dtype: DType) -> Kernel:
    st = strides_of(in_shape)
    off = " + ".join(f"({int(starts[d])} + c{d} * {int(steps[d])}) * {st[d]}"
                     for d in range(len(in_shape))) or "0"
    return index_map("slice", out_shape, dtype, 1, lambda it: [f"out0[i] = in0[{off}];"])


def gather(in_shape, idx_shape, axis: int, dtype: DType, idx_dtype: DType) -> Kernel:
    """out[pre, j..., post] = data[pre, idx[j...], post]; an index outside [-dim, dim) sets
    the error flag (the runtime raises) and reads element 0."""
    in_shape = [int(d) for d in in_shape]
    out_shape = in_shape[:axis] + [int(d) for d in idx_shape] + in_shape[axis + 1:]
    st = strides_of(in_shape)
    ist = strides_of(idx_shape)
    q = len(idx_shape)
    dim = in_shape[axis]

    def src(it):
        ioff = " + ".join(f"c{axis + j} * {ist[j]}" for j in range(q)) or "0"
        lines = [f"long long k = (long long)idx[{ioff}];",
                 f"if (k < 0) k += {dim};",
                 f"if (k < 0 || k >= {dim}) {{ err[0] = 1; k = 0; }}"]
        terms = [f"c{d} * {st[d]}" for d in range(axis)]
        terms.append(f"k * {st[axis]}")
        terms += [f"c{axis + q + d - axis - 1} * {st[d]}" for d in range(axis + 1, len(in_shape))]
        lines.append(f"out0[i] = in0[{' + '.join(terms)}];")
        return lines
    return index_map("gather", out_shape, dtype, 1, src,
                     extra_params=[f"const {ctype(idx_dtype)}* idx", "int* err"],
                     extra_roles=[("in", 1), ("err", 0)])


# -- reductions ----------------------------------------------------------------------------------
REDUCE_KINDS = {
    # name: (init, combine(acc, v), finalize(acc, K))
    "reduce_sum": ("0", "{acc} + {v}", "{acc}"),
    "reduce_mean": ("0", "{acc} + {v}", "{acc} / ({T}){K}"),
    "reduce_max": ("LOW", "gx_max({acc}, {v})", "{acc}"),
    "reduce_min": ("HIGH", "gx_min({acc}, {v})", "{acc}"),
    "reduce_prod": ("1", "{acc} * {v}", "{acc}"),
    "reduce_l1": ("0", "{acc} + ({v} < 0 ? -{v} : {v})", "{acc}"),
    "reduce_l2": ("0", "{acc} + {v} * {v}", "sqrt{F}({acc})"),
    "reduce_sum_square": ("0", "{acc} + {v} * {v}", "{acc}"),
    "reduce_log_sum": ("0", "{acc} + {v}", "log{F}({acc})"),
    "global_average_pool": ("0", "{acc} + {v}", "{acc} / ({T}){K}"),
    "global_max_pool": ("LOW", "gx_max({acc}, {v})", "{acc}"),
}


def _extreme(ct: str, high: bool) -> str:
    if ct in ("float", "double"):
        return f"({ct})GX_INF" if high else f"-({ct})GX_INF"
    lim = {"long long": ("(-9223372036854775807LL - 1)", "9223372036854775807LL"),
           "int": ("(-2147483647 - 1)", "2147483647"), "short": ("-32768", "32767"),
           "signed char": ("-128", "127"), "unsigned char": ("0", "255"),
           "unsigned short": ("0", "65535"), "unsigned int": ("0u", "4294967295u"),
           "unsigned long long": ("0ull", "18446744073709551615ull")}[ct]
    return lim[1] if high else lim[0]


def _reduce_geometry(in_shape, axes):
    """(kept dims, reduced dims, kept strides, reduced strides, contiguous tail?)"""
    st = strides_of(in_shape)
    kept = [d for d in range(len(in_shape)) if d not in axes]
    red = [d for d in range(len(in_shape)) if d in axes]
    tail = red == list(range(len(in_shape) - len(red), len(in_shape)))
    return ([in_shape[d] for d in kept], [in_shape[d] for d in red],
            [st[d] for d in kept], [st[d] for d in red], tail)


def reduce(kind: str, in_shape, axes, in_dtype: DType, out_dtype: DType) -> Kernel:
    """A reduction over ``axes``: one thread per output when the reduced count is small,
    one block per output (warp shuffles) when it is large."""
    in_shape = [int(d) for d in in_shape]
    axes = sorted({a % len(in_shape) for a in axes}) if in_shape else []
    kshape, rshape, kst, rst, tail = _reduce_geometry(in_shape, axes)
    m, k = numel(kshape), numel(rshape)
    it = index_type(numel(in_shape))
    ct = compute_type(in_dtype)
    if kind == "reduce_mean" and ct not in ("float", "double"):
        ct = "double"
    init, comb, fin = REDUCE_KINDS[kind]
    init = {"LOW": _extreme(ct, False), "HIGH": _extreme(ct, True)}.get(init, f"({ct}){init}")
    fmt = dict(T=ct, K=k, F="f" if ct == "float" else "")
    base = _offset_expr(kst, "c") if kshape else "0"
    roff = "j" if tail else None
    block_mode = k >= 256 and ct == "float"
    lines = [_signature([f"const {ctype(in_dtype)}* in0", f"{ctype(out_dtype)}* out0"]) + " {"]
    if block_mode:
        lines += ["  __shared__ float sh[32];",
                  f"  for ({it} o = blockIdx.x; o < {m}; o += gridDim.x) {{"]
        idx = "threadIdx.x"
        step = "blockDim.x"
    else:
        lines.append(f"  for ({it} o = ({it})blockIdx.x * blockDim.x + threadIdx.x; o < {m}; "
                     f"o += ({it})gridDim.x * blockDim.x) {{")
        idx, step = "0", "1"
    lines += ["    " + s for s in _decompose("o", kshape, "c", it)] if kshape else []
    lines.append(f"    const {it} base = {base};")
    lines.append(f"    {ct} acc = {init};")
    lines.append(f"    for ({it} j = {idx}; j < {k}; j += {step}) {{")
    if roff is None:
        lines += ["      " + s for s in _decompose("j", rshape, "r", it)]
        roff = _offset_expr(rst, "r")
    lines.append(f"      const {ct} v = ({ct}){load(in_dtype, f'in0[base + {roff}]')};")
    lines.append("      acc = " + comb.format(acc="acc", v="v") + ";")
    lines.append("    }")
    if block_mode:
        red = "gx_block_max" if "max" in kind else ("gx_block_sum" if "min" not in kind
                                                       and kind != "reduce_prod" else None)
        if red is None:  # min / prod: through shared memory, thread 0 combines
            return _reduce_block_generic(kind, in_shape, axes, in_dtype, out_dtype)
        lines.append(f"    acc = {red}(acc, sh);")
        lines.append("    if (threadIdx.x == 0) out0[o] = " +
                     store(out_dtype, fin.format(acc="acc", **fmt)) + ";")
        lines += ["  }", "}"]
        return Kernel("reduce", "\n".join(lines), (max(1, min(m, MAX_GRID)), 1, 1), (BLOCK, 1, 1),
                      [("in", 0), ("out", 0)])
    lines.append("    out0[o] = " + store(out_dtype, fin.format(acc="acc", **fmt)) + ";")
    lines += ["  }", "}"]
    return Kernel("reduce", "\n".join(lines), grid_1d(m), (BLOCK, 1, 1), [("in", 0), ("out", 0)])


def _reduce_block_generic(kind, in_shape, axes, in_dtype, out_dtype) -> Kernel:
    """min/prod over many elements: each thread folds a strided part, thread 0 folds the
    256 partial results from shared memory."""
    kshape, rshape, kst, rst, tail = _reduce_geometry(in_shape, axes)
    m, k = numel(kshape), numel(rshape)
    it = index_type(numel(in_shape))
    ct = "float"
    init, comb, fin = REDUCE_KINDS[kind]
    init = {"LOW": _extreme(ct, False), "HIGH": _extreme(ct, True)}.get(init, f"({ct}){init}")
    lines = [_signature([f"const {ctype(in_dtype)}* in0", f"{ctype(out_dtype)}* out0"]) + " {",
             f"  __shared__ float part[{BLOCK}];",
             f"  for ({it} o = blockIdx.x; o < {m}; o += gridDim.x) {{"]
    lines += ["    " + s for s in _decompose("o", kshape, "c", it)] if kshape else []
    lines.append(f"    const {it} base = {_offset_expr(kst, 'c') if kshape else '0'};")
    lines.append(f"    float acc = {init};")
    lines.append(f"    for ({it} j = threadIdx.x; j < {k}; j += blockDim.x) {{")
    if tail:
        roff = "j"
    else:
        lines += ["      " + s for s in _decompose("j", rshape, "r", it)]
        roff = _offset_expr(rst, "r")
    lines.append(f"      const float v = {load(in_dtype, f'in0[base + {roff}]')};")
    lines.append("      acc = " + comb.format(acc="acc", v="v") + ";")
    lines += ["    }", "    part[threadIdx.x] = acc;", "    __syncthreads();",
              "    if (threadIdx.x == 0) {",
              f"      for (int t = 1; t < {BLOCK}; ++t) acc = " + comb.format(acc="acc", v="part[t]") + ";",
              "      out0[o] = " + store(out_dtype, fin.format(acc="acc", T=ct, K=k, F="f")) + ";",
              "    }", "    __syncthreads();", "  }", "}"]
    return Kernel("reduce", "\n".join(lines), (max(1, min(m, MAX_GRID)), 1, 1), (BLOCK, 1, 1),
                  [("in", 0), ("out", 0)])


def arg_reduce(in_shape, axis: int, want_max: bool, last: bool, in_dtype: DType, keep_out) -> Kernel:
    """argmax/argmin along ``axis`` (first or last extreme), int64 result; NaN counts as
    the extreme (numpy's rule)."""
    in_shape = [int(d) for d in in_shape]
    kshape, rshape, kst, rst, _ = _reduce_geometry(in_shape, [axis])
    m, k = numel(kshape), rshape[0]
    it = index_type(numel(in_shape))
    ct = compute_type(in_dtype)
    better = ">" if want_max else "<"
    eq = f"{better}=" if last else better
    nan = "(v != v && best == best) || " if ct in ("float", "double") else ""
    lines = [_signature([f"const {ctype(in_dtype)}* in0", "long long* out0"]) + " {",
             f"  for ({it} o = ({it})blockIdx.x * blockDim.x + threadIdx.x; o < {m}; "
             f"o += ({it})gridDim.x * blockDim.x) {{"]
    lines += ["    " + s for s in _decompose("o", kshape, "c", it)] if kshape else []
    lines += [f"    const {it} base = {_offset_expr(kst, 'c') if kshape else '0'};",
              f"    {ct} best = {load(in_dtype, 'in0[base]')}; long long bi = 0;",
              f"    for ({it} j = 1; j < {k}; ++j) {{",
              f"      const {ct} v = {load(in_dtype, f'in0[base + j * {rst[0]}]')};",
              f"      if (best == best && ({nan}v {eq} best)) {{ best = v; bi = j; }}",
              "    }", "    out0[o] = bi;", "  }", "}"]
    return Kernel("arg_reduce", "\n".join(lines), grid_1d(m), (BLOCK, 1, 1), [("in", 0), ("out", 0)])


# -- softmax / layer_norm: one block per row ------------------------------------------------------
def _rows(in_shape, axis):
    outer = numel(in_shape[:axis])
    length = int(in_shape[axis])
    inner = numel(in_shape[axis + 1:])
    return outer, length, inner


def softmax(in_shape, axis: int, dtype: DType, log: bool = False) -> Kernel:
    """softmax / log_softmax along ``axis``: a block per row, max and sum by block
    reductions, exponentials recomputed rather than stored (rows of any length)."""
    in_shape = [int(d) for d in in_shape]
    outer, length, inner = _rows(in_shape, axis)
    rows = outer * inner
    it = index_type(numel(in_shape))
    ld = lambda j: load(dtype, f"in0[base + ({it})({j}) * {inner}]")  # noqa: E731
    fin = "(x - mx) - logf(s)" if log else "expf(x - mx) / s"
    lines = [_signature([f"const {ctype(dtype)}* in0", f"{ctype(dtype)}* out0"]) + " {",
             "  __shared__ float sh[32];",
             f"  for ({it} row = blockIdx.x; row < {rows}; row += gridDim.x) {{",
             f"    const {it} base = (row / {inner}) * {length * inner} + row % {inner};",
             "    float mx = -GX_INF;",
             f"    for (int j = threadIdx.x; j < {length}; j += blockDim.x) mx = gx_max(mx, {ld('j')});",
             "    mx = gx_block_max(mx, sh);",
             "    float s = 0.f;",
             f"    for (int j = threadIdx.x; j < {length}; j += blockDim.x) s += expf({ld('j')} - mx);",
             "    s = gx_block_sum(s, sh);",
             f"    for (int j = threadIdx.x; j < {length}; j += blockDim.x) {{",
             f"      const float x = {ld('j')};",
             f"      out0[base + ({it})j * {inner}] = {store(dtype, fin)};",
             "    }", "  }", "}"]
    block = 128 if length <= 1024 else BLOCK
    return Kernel("softmax", "\n".join(lines), (max(1, min(rows, MAX_GRID)), 1, 1), (block, 1, 1),
                  [("in", 0), ("out", 0)])


def layer_norm(in_shape, axis: int, eps: float, dtype: DType, has_bias: bool,
               stats: Sequence[DType | None] = ()) -> Kernel:
    """(x - mean) / sqrt(var + eps) * scale + bias over dims ``axis``..; a block per row;
    the optional mean and inv_std_dev results are written when ``stats`` names them."""
    in_shape = [int(d) for d in in_shape]
    rows, k = numel(in_shape[:axis]), numel(in_shape[axis:])
    it = index_type(numel(in_shape))
    params = [f"const {ctype(dtype)}* in0", f"const {ctype(dtype)}* in1"]
    roles = [("in", 0), ("in", 1)]
    if has_bias:
        params.append(f"const {ctype(dtype)}* in2")
        roles.append(("in", 2))
    params.append(f"{ctype(dtype)}* out0")
    roles.append(("out", 0))
    for i, sd in enumerate(stats):
        if sd is not None:
            params.append(f"{ctype(sd)}* out{i + 1}")
            roles.append(("out", i + 1))
    bias = f" + {load(dtype, 'in2[j]')}" if has_bias else ""
    xj = load(dtype, "in0[base + j]")
    norm = f"({xj} - mean) * rstd * {load(dtype, 'in1[j]')}{bias}"
    lines = [_signature(params) + " {", "  __shared__ float sh[32];",
             f"  for ({it} row = blockIdx.x; row < {rows}; row += gridDim.x) {{",
             f"    const {it} base = row * {k};",
             "    float s = 0.f;",
             f"    for (int j = threadIdx.x; j < {k}; j += blockDim.x) s += {load(dtype, 'in0[base + j]')};",
             f"    const float mean = gx_block_sum(s, sh) / {k}.f;",
             "    float q = 0.f;",
             f"    for (int j = threadIdx.x; j < {k}; j += blockDim.x) {{ const float d = "
             f"{load(dtype, 'in0[base + j]')} - mean; q += d * d; }}",
             f"    const float rstd = rsqrtf(gx_block_sum(q, sh) / {k}.f + {float(eps)!r}f);",
             f"    for (int j = threadIdx.x; j < {k}; j += blockDim.x)",
             f"      out0[base + j] = {store(dtype, norm)};"]
    if len(stats) > 0 and stats[0] is not None:
        lines.append(f"    if (threadIdx.x == 0) out1[row] = {store(stats[0], 'mean')};")
    if len(stats) > 1 and stats[1] is not None:
        lines.append(f"    if (threadIdx.x == 0) out2[row] = {store(stats[1], 'rstd')};")
    lines += ["  }", "}"]
    return Kernel("layer_norm", "\n".join(lines), (max(1, min(rows, MAX_GRID)), 1, 1),
                  (BLOCK, 1, 1), roles)


# -- attention: softmax(q @ kt * scale + mask) @ v in one kernel --------------------------------------
MAX_ATTN_KEYS = 8192  # scores of one query row live in shared memory (32 KiB)


def sdpa(out_batch, q_shape, kt_shape, v_shape, mask_shape, scale: float, dtype: DType,
         mask_dtype: DType | None, k_transposed: bool = True, causal: bool = False) -> Kernel:
    """One block per (batch, query row): scores in shared memory, block max/sum, then each
    thread accumulates output features over the keys.  Batch dims broadcast.  ``kt_shape``
    is K^T [..., D, Skv] (the sdpa op), or K [..., Skv, D] with ``k_transposed=False`` (the
    attention op); ``causal`` masks keys after the query's position."""
    sq, d = int(q_shape[-2]), int(q_shape[-1])
    skv = int(kt_shape[-1]) if k_transposed else int(kt_shape[-2])
    dv = int(v_shape[-1])
    out_batch = [int(x) for x in out_batch]
    nb = numel(out_batch)
    qb = broadcast_strides(q_shape[:-2], out_batch)
    kb = broadcast_strides(kt_shape[:-2], out_batch)
    vb = broadcast_strides(v_shape[:-2], out_batch)
    it = "long long"
    params = [f"const {ctype(dtype)}* in0", f"const {ctype(dtype)}* in1", f"const {ctype(dtype)}* in2"]
    roles = [("in", 0), ("in", 1), ("in", 2)]
    mask_off = None
    if mask_shape is not None:
        params.append(f"const {ctype(mask_dtype)}* in3")
        roles.append(("in", 3))
        full = out_batch + [sq, skv]
        ms = broadcast_strides(mask_shape, full)
        mask_off = " + ".join([f"c{i} * {s}" for i, s in enumerate(ms[:-2]) if s] +
                              ([f"qi * {ms[-2]}"] if ms[-2] else []) +
                              ([f"j * {ms[-1]}"] if ms[-1] else [])) or "0"
    params.append(f"{ctype(dtype)}* out0")
    roles.append(("out", 0))
    kidx = f"in1[ko + ({it})t * {skv} + j]" if k_transposed else f"in1[ko + ({it})j * {d} + t]"
    lines = [_signature(params) + " {", "  extern __shared__ float sc[];",
             "  __shared__ float sh[32];",
             f"  float* qrow = sc + {skv};",
             f"  for ({it} blk = blockIdx.x; blk < {nb * sq}; blk += gridDim.x) {{",
             f"    const {it} qi = blk % {sq};"]
    lines += ["    " + s for s in _decompose(f"(blk / {sq})", out_batch, "c", it)] if out_batch else []
    lines += [f"    const {it} qo = ({_offset_expr([s * sq * d for s in qb], 'c')}) + qi * {d};",
              f"    const {it} ko = {_offset_expr([s * d * skv for s in kb], 'c')};",
              f"    const {it} vo = {_offset_expr([s * skv * dv for s in vb], 'c')};",
              "    __syncthreads();",
              f"    for (int t = threadIdx.x; t < {d}; t += blockDim.x) qrow[t] = {load(dtype, 'in0[qo + t]')};",
              "    __syncthreads();",
              "    float mx = -GX_INF;",
              f"    for (int j = threadIdx.x; j < {skv}; j += blockDim.x) {{",
              "      float s = 0.f;",
              f"      for (int t = 0; t < {d}; ++t) s += qrow[t] * {load(dtype, kidx)};",
              f"      s *= {float(scale)!r}f;"]
    if causal:
        lines.append("      if (j > qi) s = -GX_INF;")
    if mask_off is not None:
        if mask_dtype is DType.bool:
            lines.append(f"      if (!in3[{mask_off}]) s = -GX_INF;")
        else:
            lines.append(f"      s += {load(mask_dtype, f'in3[{mask_off}]')};")
    lines += ["      sc[j] = s; mx = gx_max(mx, s);", "    }",
              "    mx = gx_block_max(mx, sh);",
              "    float sum = 0.f;",
              f"    for (int j = threadIdx.x; j < {skv}; j += blockDim.x) {{ const float e = "
              f"(mx == -GX_INF) ? 0.f : expf(sc[j] - mx); sc[j] = e; sum += e; }}",
              "    sum = gx_block_sum(sum, sh);",
              "    const float inv = 1.f / sum;",
              f"    for (int t = threadIdx.x; t < {dv}; t += blockDim.x) {{",
              "      float acc = 0.f;",
              f"      for (int j = 0; j < {skv}; ++j) acc += sc[j] * {load(dtype, f'in2[vo + ({it})j * {dv} + t]')};",
              f"      out0[(blk / {sq}) * {sq * dv} + qi * {dv} + t] = {store(dtype, 'acc * inv')};",
              "    }", "  }", "}"]
    return Kernel("sdpa", "\n".join(lines), (max(1, min(nb * sq, MAX_GRID)), 1, 1), (128, 1, 1),
                  roles, shared=4 * (skv + d))


# -- pooling -----------------------------------------------------------------------------------
def pool(kind: str, in_shape, out_shape, kernel, strides, dilations, pads, dtype: DType,
         count_include_pad: bool = False) -> Kernel:
    """max_pool / average_pool over the spatial dims of NC<spatial>: a thread per output."""
    in_shape, out_shape = [int(d) for d in in_shape], [int(d) for d in out_shape]
    n = len(kernel)
    sp_in = in_shape[2:]
    ist = strides_of(in_shape)
    it = "long long"
    is_max = kind == "max_pool"

    def src(_):
        lines = [f"const {it} base = c0 * {ist[0]} + c1 * {ist[1]};",
                 "float acc = " + ("-GX_INF" if is_max else "0.f") + "; int cnt = 0;"]
        ind = ""
        for d in range(n):
            lines.append(f"{ind}for (int k{d} = 0; k{d} < {int(kernel[d])}; ++k{d}) {{")
            ind += "  "
            lines.append(f"{ind}const int p{d} = (int)c{d + 2} * {int(strides[d])} - {int(pads[d])} "
                         f"+ k{d} * {int(dilations[d])};")
            if count_include_pad and not is_max:
                lines.append(f"{ind}if (p{d} < -{int(pads[d])} || p{d} >= {sp_in[d] + int(pads[n + d])}) continue;")
        if count_include_pad and not is_max:
            lines.append(f"{ind}++cnt;")
        inside = " && ".join(f"p{d} >= 0 && p{d} < {sp_in[d]}" for d in range(n))
        off = " + ".join(f"({it})p{d} * {ist[d + 2]}" for d in range(n))
        v = load(dtype, f"in0[base + {off}]")
        if is_max:
            lines.append(f"{ind}if ({inside}) acc = gx_max(acc, (float){v});")
        elif count_include_pad:
            lines.append(f"{ind}if ({inside}) acc += {v};")
        else:
            lines.append(f"{ind}if ({inside}) {{ acc += {v}; ++cnt; }}")
        for d in range(n):
            ind = ind[:-2]
            lines.append(f"{ind}}}")
        res = "acc" if is_max else "acc / (float)cnt"
        lines.append(f"out0[i] = {store(dtype, res)};")
        return lines
    return index_map(kind, out_shape, dtype, 1, src)


# -- convolution and matrix products -------------------------------------------------------------
def _epilogue_code(act: str, params, dtype: DType, bias: str | None, resid: str | None,
                   x: str = "acc") -> str:
    from .source import activation
    if bias:
        x = f"({x} + {bias})"
    if resid:
        x = f"({x} + {resid})"
    return activation(act, params, "float", x)


def conv_direct(x_shape, w_shape, out_shape, strides, dilations, pads, group: int, dtype: DType,
                has_bias: bool, has_resid: bool, act: str = "none", act_params=()) -> Kernel:
    """Direct N-d convolution, NC<spatial>: a thread per output element, fp32 accumulation,
    bias / residual / activation epilogue fused."""
    x_shape, w_shape, out_shape = ([int(d) for d in s] for s in (x_shape, w_shape, out_shape))
    n = len(x_shape) - 2
    cg, m = w_shape[1], w_shape[0]
    mg = m // group
    ks = w_shape[2:]
    xst, wst = strides_of(x_shape), strides_of(w_shape)
    it = "long long"
    params = [f"const {ctype(dtype)}* in0", f"const {ctype(dtype)}* in1"]
    roles = [("in", 0), ("in", 1)]
    if has_bias:
        params.append(f"const {ctype(dtype)}* in2")
        roles.append(("in", 2))
    if has_resid:
        params.append(f"const {ctype(dtype)}* in3")
        roles.append(("in", 3))
    params.append(f"{ctype(dtype)}* out0")
    roles.append(("out", 0))
    total = numel(out_shape)
    lines = [_signature(params) + " {",
             f"  for ({it} i = ({it})blockIdx.x * blockDim.x + threadIdx.x; i < {total}; "
             f"i += ({it})gridDim.x * blockDim.x) {{"]
    lines += ["    " + s for s in _decompose("i", out_shape, "c", it)]
    lines += [f"    const int g = (int)(c1 / {mg});",
              f"    const {it} xb = c0 * {xst[0]} + ({it})g * {cg} * {xst[1]};",
              f"    const {it} wb = c1 * {wst[0]};",
              "    float acc = 0.f;",
              f"    for (int ci = 0; ci < {cg}; ++ci) {{"]
    ind = "      "
    for d in range(n):
        lines.append(f"{ind}for (int k{d} = 0; k{d} < {ks[d]}; ++k{d}) {{")
        ind += "  "
        lines.append(f"{ind}const int p{d} = (int)c{d + 2} * {int(strides[d])} - {int(pads[d])} + "
                     f"k{d} * {int(dilations[d])};")
        lines.append(f"{ind}if (p{d} < 0 || p{d} >= {x_shape[d + 2]}) continue;")
    xoff = " + ".join([f"({it})ci * {xst[1]}"] + [f"({it})p{d} * {xst[d + 2]}" for d in range(n)])
    woff = " + ".join([f"ci * {wst[1]}"] + [f"k{d} * {wst[d + 2]}" for d in range(n)])
    lines.append(f"{ind}acc += {load(dtype, f'in0[xb + {xoff}]')} * {load(dtype, f'in1[wb + {woff}]')};")
    for d in range(n):
        ind = ind[:-2]
        lines.append(f"{ind}}}")
    lines.append("    }")
    res = _epilogue_code(act, act_params, dtype, load(dtype, "in2[c1]") if has_bias else None,
                         load(dtype, "in3[i]") if has_resid else None)
    lines += [f"    out0[i] = {store(dtype, res)};", "  }", "}"]
    return Kernel("conv", "\n".join(lines), grid_1d(total), (BLOCK, 1, 1), roles)


def im2col(x_shape, w_shape, out_shape, strides, dilations, pads, dtype: DType) -> Kernel:
    """col[n, c*K + k, o] = x[n, c, o*stride - pad + k*dil] (0 outside): the conv becomes a
    batched GEMM w[M, C*K] @ col[n] (cuBLAS) per image and group."""
    x_shape, w_shape, out_shape = ([int(d) for d in s] for s in (x_shape, w_shape, out_shape))
    n = len(x_shape) - 2
    c = x_shape[1]
    ks = w_shape[2:]
    osp = out_shape[2:]
    col_shape = [x_shape[0], c] + ks + osp
    xst = strides_of(x_shape)
    it = "long long"

    def src(_):
        lines = []
        conds = []
        for d in range(n):
            lines.append(f"const int p{d} = (int)c{2 + n + d} * {int(strides[d])} - {int(pads[d])} + "
                         f"(int)c{2 + d} * {int(dilations[d])};")
            conds.append(f"p{d} >= 0 && p{d} < {x_shape[2 + d]}")
        off = " + ".join([f"c0 * {xst[0]}", f"c1 * {xst[1]}"] + [f"({it})p{d} * {xst[2 + d]}" for d in range(n)])
        zero = store(dtype, "0.f") if dtype in (DType.float16, DType.bfloat16) else f"({ctype(dtype)})0"
        lines.append(f"out0[i] = ({' && '.join(conds)}) ? in0[{off}] : {zero};")
        return lines
    return index_map("im2col", col_shape, dtype, 1, src)


def epilogue(out_shape, dtype: DType, alpha: float = 1.0, bias_shape=None, bias_dtype=None,
             beta: float = 1.0, resid: bool = False, act: str = "none", act_params=(),
             bias_axis: int | None = None) -> Kernel:
    """y = act(alpha * acc + beta * bias (broadcast, or per channel along ``bias_axis``)
    + residual), in place over the GEMM result (in0 == out0 allowed)."""
    out_shape = [int(d) for d in out_shape]
    n = numel(out_shape)
    it = index_type(n)
    params = [f"const {ctype(dtype)}* in0"]
    roles = [("in", 0)]
    need = False
    b = None
    if bias_shape is not None:
        params.append(f"const {ctype(bias_dtype or dtype)}* in1")
        roles.append(("in", 1))
        if bias_axis is not None:
            inner = numel(out_shape[bias_axis + 1:])
            bo = f"(i / {inner}) % {out_shape[bias_axis]}"
        elif numel(bias_shape) == 1:
            bo = "0"
        elif tuple(int(d) for d in bias_shape) == tuple(out_shape):
            bo = "i"
        else:
            bo = _offset_expr(broadcast_strides(bias_shape, out_shape), "c")
            need = True
        b = load(bias_dtype or dtype, f"in1[{bo}]")
        if beta != 1.0:
            b = f"{float(beta)!r}f * {b}"
    r = None
    if resid:
        params.append(f"const {ctype(dtype)}* in2")
        roles.append(("in", 2))
        r = load(dtype, "in2[i]")
    params.append(f"{ctype(dtype)}* out0")
    roles.append(("out", 0))
    acc = load(dtype, "in0[i]")
    if alpha != 1.0:
        acc = f"({float(alpha)!r}f * {acc})"
    lines = [_signature(params) + " {",
             f"  for ({it} i = ({it})blockIdx.x * blockDim.x + threadIdx.x; i < {n}; "
             f"i += ({it})gridDim.x * blockDim.x) {{"]
    if need:
        lines += ["    " + s for s in _decompose("i", out_shape, "c", it)]
    lines += [f"    out0[i] = {store(dtype, _epilogue_code(act, act_params, dtype, b, r, acc))};",
              "  }", "}"]
    return Kernel("epilogue", "\n".join(lines), grid_1d(n), (BLOCK, 1, 1), roles)


TILE = 16


def gemm_tiled(batch, m: int, n: int, k: int, a_strides, b_strides, dtype: DType,
               alpha: float = 1.0, bias=None, beta: float = 1.0, act: str = "none",
               act_params=()) -> Kernel:
    """C[b] = act(alpha * A[b] @ B[b] + beta * bias) with 16x16 shared-memory tiles and fp32
    accumulation: the path for dtypes cuBLAS does not take through cupy (bfloat16, ints
    excluded) and small products.  ``a_strides``/``b_strides``: (batch strides..., row, col)
    in elements, so transposed and broadcast operands need no copy.  ``bias``: (shape,
    dtype) broadcast to [*batch, m, n]."""
    batch = [int(x) for x in batch]
    nb = numel(batch)
    it = "long long"
    params = [f"const {ctype(dtype)}* in0", f"const {ctype(dtype)}* in1"]
    roles = [("in", 0), ("in", 1)]
    boff = None
    if bias is not None:
        bshape, bdt = bias
        params.append(f"const {ctype(bdt)}* in2")
        roles.append(("in", 2))
        bs = broadcast_strides(bshape, batch + [m, n])
        boff = " + ".join([f"c{i} * {s}" for i, s in enumerate(bs[:-2]) if s] +
                          ([f"({it})row * {bs[-2]}"] if bs[-2] else []) +
                          ([f"({it})col * {bs[-1]}"] if bs[-1] else [])) or "0"
    params.append(f"{ctype(dtype)}* out0")
    roles.append(("out", 0))
    ab, (ar, ac) = a_strides[:-2], a_strides[-2:]
    bb, (br, bc) = b_strides[:-2], b_strides[-2:]
    zero = "0.f"
    lines = [_signature(params) + " {",
             f"  __shared__ float As[{TILE}][{TILE}];",
             f"  __shared__ float Bs[{TILE}][{TILE}+1];",
             f"  const {it} bz = blockIdx.z;"]
    lines += ["  " + s for s in _decompose("bz", batch, "c", it)] if batch else []
    lines += [f"  const {it} ao = {_offset_expr(ab, 'c') if batch else '0'};",
              f"  const {it} bo = {_offset_expr(bb, 'c') if batch else '0'};",
              f"  const int row = blockIdx.y * {TILE} + threadIdx.y;",
              f"  const int col = blockIdx.x * {TILE} + threadIdx.x;",
              "  float acc = 0.f;",
              f"  for (int t = 0; t < {k}; t += {TILE}) {{",
              "    const int ka = t + threadIdx.x, kb = t + threadIdx.y;",
              f"    As[threadIdx.y][threadIdx.x] = (row < {m} && ka < {k}) ? "
              f"(float){load(dtype, f'in0[ao + ({it})row * {ar} + ({it})ka * {ac}]')} : {zero};",
              f"    Bs[threadIdx.y][threadIdx.x] = (kb < {k} && col < {n}) ? "
              f"(float){load(dtype, f'in1[bo + ({it})kb * {br} + ({it})col * {bc}]')} : {zero};",
              "    __syncthreads();",
              "    #pragma unroll",
              f"    for (int q = 0; q < {TILE}; ++q) acc += As[threadIdx.y][q] * Bs[q][threadIdx.x];",
              "    __syncthreads();", "  }",
              f"  if (row < {m} && col < {n}) {{"]
    x = "acc" if alpha == 1.0 else f"({float(alpha)!r}f * acc)"
    if boff is not None:
        bv = load(bias[1], f"in2[{boff}]")
        x = f"({x} + {bv})" if beta == 1.0 else f"({x} + {float(beta)!r}f * {bv})"
    from .source import activation
    x = activation(act, act_params, "float", x)
    lines += [f"    out0[bz * {m * n} + ({it})row * {n} + col] = {store(dtype, x)};", "  }", "}"]
    grid = (-(-n // TILE), -(-m // TILE), max(1, nb))
    return Kernel("gemm", "\n".join(lines), grid, (TILE, TILE, 1), roles)


def lrn(in_shape, size: int, alpha: float, beta: float, bias: float, dtype: DType) -> Kernel:
    """Local response normalization across channels (axis 1) of NC...: a thread per
    element sums the squares over its channel window."""
    in_shape = [int(d) for d in in_shape]
    c = in_shape[1]
    inner = numel(in_shape[2:])
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2

    def src(_):
        return [f"const long long ch = (i / {inner}) % {c};",
                f"const long long base = i - ch * {inner};",
                "float s = 0.f;",
                f"for (long long q = (ch - {lo} < 0 ? 0 : ch - {lo}); q <= ch + {hi} && q < {c}; ++q) {{",
                f"  const float v = {load(dtype, f'in0[base + q * {inner}]')}; s += v * v; }}",
                f"const float x = {load(dtype, 'in0[i]')};",
                f"out0[i] = {store(dtype, f'x / powf({float(bias)!r}f + {float(alpha / size)!r}f * s, {float(beta)!r}f)')};"]
    return index_map("lrn", in_shape, dtype, 1, src)
