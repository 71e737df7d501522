"""Lowering: decide for each op of a shape-specialized module whether it runs natively
(and as which kernel) or on the numpy reference, and give every native op its kernel
object.  Produces a list of steps in schedule order, one per op: lowering fuses nothing
(a fused_elementwise, made by the generic fusion or the cpu's own ``cpu-fuse-elementwise``
rule, galaxir/backends/cpu/rules.py, becomes one elementwise loop)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...ir import Module, Operation, Value
from ...ir.traits import View, ops_with
from ...ir.types import DType, TensorType
from . import kernels as K
from . import kernels_depthwise as KD
from . import kernels_nhwc as KN
from . import kernels_gemm as KG
from .codegen import is_dynamic_emission
from .jit import has_blas

F32 = DType.float32

#: ops whose result is the operand's buffer reinterpreted (no data movement): the ops
#: declared ``View`` (galaxir/ir/traits.py; ``alias_source`` checks dropout's conditions)
ALIAS_OPS = ops_with(View)
#: the elementwise ops emit_expr generates code for: the backend's capability, not a trait
#: (each is declared ``Elementwise``; tests/test_traits.py checks that)
ELEMENTWISE = {"add", "sub", "mul", "div", "neg", "relu", "max", "min", "sum", "mean", "abs",
               "sqrt", "reciprocal", "exp", "log", "sigmoid", "tanh", "leaky_relu", "clip",
               "floor", "ceil", "erf", "softplus", "hard_sigmoid", "hard_swish", "gelu", "swish",
               "mish"}


def static_shape(t) -> tuple[int, ...] | None:
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    if not all(isinstance(d, int) and d >= 0 for d in t.shape):
        return None
    return tuple(t.shape)


def is_static(v: Value | None) -> bool:
    return v is not None and static_shape(v.type) is not None


def is_f32(v: Value | None) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.dtype is F32


def nbytes_of(v: Value) -> int:
    shape = static_shape(v.type)
    return K.prod(shape) * v.type.dtype.numpy.itemsize


def const_of(v: Value | None):
    if v is None or v.producer is None or v.producer.name != "constant":
        return None
    return v.producer.attrs.get("value")


class ConstArray:
    """A constant made by lowering (e.g. pre-packed weights) that native code reads."""

    def __init__(self, array: np.ndarray, name: str = ""):
        self.array = np.ascontiguousarray(array)
        self.name = name


@dataclass
class NativeStep:
    kernel: K.Kernel
    outputs: list[Value]
    inputs: list[Value]
    ops: list[Operation]            # the IR ops this step implements (for the report)

    @property
    def kind(self) -> str:
        return "native"


@dataclass
class AliasStep:
    op: Operation
    source: Value
    result: Value

    @property
    def kind(self) -> str:
        return "alias"


@dataclass
class FallbackStep:
    op: Operation
    reason: str

    @property
    def kind(self) -> str:
        return "fallback"


# -- per-op lowering rules -----------------------------------------------------------------
Rule = Callable[[Operation], "tuple[K.Kernel, list[Value]] | str"]
RULES: dict[str, Rule] = {}


def rule(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return deco


def _all_static_f32(op: Operation) -> str | None:
    for v in list(op.operands) + list(op.results):
        if v is None:
            continue
        if not is_f32(v):
            return f"dtype {getattr(v.type, 'dtype', v.type)} (native kernels are float32)"
        if not is_static(v):
            return "shape not static"
    return None


def _window(op, x_shape, kernel):
    from ...ir.ops.nn import resolve_window
    n = len(kernel)
    strides, dil, pads = resolve_window(list(x_shape[2:]), list(kernel), op.attr("strides"),
                                        op.attr("dilations"), op.attr("pads"),
                                        op.attr("auto_pad") or "NOTSET")
    return list(strides), list(dil), list(pads[:n]), list(pads[n:])


#: fused ops (galaxir/ir/ops/fused.py) the cpu backend compiles natively
FUSED_NATIVE = ("fused_conv", "linear", "fused_gemm", "fused_add", "fused_elementwise")


def activation_of(op) -> tuple[str, tuple]:
    """(activation, params) of a fused op's epilogue ("none" for plain ops)."""
    if "activation" not in op.attrs and op.name not in FUSED_NATIVE:
        return "none", ()
    return (op.attr("activation") or "none",
            tuple(float(p) for p in (op.attr("activation_params") or ())))


@rule("conv", "fused_conv")
def lower_conv(op):
    why = _all_static_f32(op)
    if why:
        return why
    if (op.attr("layout") or "NCHW") == "NHWC":
        return _lower_conv_nhwc(op)
    if not has_blas():
        return "no BLAS available"
    x, w, b = op.operands[0], op.operands[1], op.operand(2)
    z = op.operand(3) if op.name == "fused_conv" else None
    act, act_params = activation_of(op)
    xs, ws, ys = static_shape(x.type), static_shape(w.type), static_shape(op.results[0].type)
    if z is not None and static_shape(z.type) != ys:
        return "residual z does not have the conv result's shape"
    extra = ([b] if b is not None else []) + ([z] if z is not None else [])
    if len(xs) not in (3, 4):
        return "only 1-d and 2-d convolutions are native"
    if K.prod(ys) == 0 or K.prod(xs) == 0 or K.prod(ws) == 0:
        return "zero-size tensor"
    kernel = op.attr("kernel_shape") or ws[2:]
    st, dl, pb, pe = _window(op, xs, kernel)
    if len(xs) == 3:
        # a 1-d conv is a 2-d one over a unit height: [N, C, L] and [N, C, 1, L] are the
        # same bytes, so the 2-d kernels run it on the buffers as they are
        xs, ws, ys = (xs[0], xs[1], 1, xs[2]), (ws[0], ws[1], 1, ws[2]), (ys[0], ys[1], 1, ys[2])
        kernel, st, dl, pb, pe = (1, kernel[0]), [1] + st, [1] + dl, [0] + pb, [0] + pe
    g = op.attr("group") or 1
    wc = const_of(w)
    cg, mg = xs[1] // g, ws[0] // g
    if wc is not None and KD.nchw_depthwise_ok(xs[1], ws[0], g):
        kern = KD.DepthwiseNchw(N=xs[0], C=xs[1], H=xs[2], W=xs[3], OH=ys[2], OW=ys[3],
                                kh=kernel[0], kw=kernel[1], sh=st[0], sw=st[1], dh=dl[0],
                                dw=dl[1], pt=pb[0], pl=pb[1], has_bias=b is not None,
                                activation=act, act_params=act_params, has_z=z is not None)
        if kern.fits_stack():
            return kern, [x, w] + extra
    direct = cg * kernel[0] * kernel[1] <= 16 and mg <= 4 and g > 1
    if wc is not None and not direct:
        kd = cg * kernel[0] * kernel[1]
        wk = np.asarray(wc, np.float32).reshape(g, mg, kd)
        packed = np.concatenate([K.pack_a(wk[i]).reshape(-1) for i in range(g)])
        P = ys[2] * ys[3]
        src = ("conv", cg, xs[2], xs[3], ys[3], kernel[0], kernel[1], st[0], st[1], dl[0], dl[1],
               pb[0], pb[1])
        kern = K.PackedGemm(M=mg, N=P, K=kd, source=src, has_bias=b is not None,
                            batch=xs[0] * g, b_step=cg * xs[2] * xs[3], c_step=mg * P,
                            a_step=packed.size // g, groups=g, activation=act,
                            act_params=act_params, has_z=z is not None)
        return kern, [x, ConstArray(packed, (w.name or "w") + ".packed")] + extra
    kern = K.Conv2d(N=xs[0], C=xs[1], H=xs[2], W=xs[3], M=ws[0], OH=ys[2], OW=ys[3],
                    kh=kernel[0], kw=kernel[1], sh=st[0], sw=st[1], dh=dl[0], dw=dl[1],
                    pt=pb[0], pl=pb[1], group=g, has_bias=b is not None, relu=False,
                    activation=act, act_params=act_params, has_z=z is not None)
    return kern, [x, w] + extra


def _nchw_shape(nhwc: tuple) -> tuple:
    return (nhwc[0], nhwc[-1]) + tuple(nhwc[1:-1])


def _lower_conv_nhwc(op):
    """A channels-last conv (made by the O3 layout pass): a plain GEMM for a pointwise conv,
    the direct kernel for depthwise and narrow-group convs, else the indirect-GEMM kernel."""
    x, w, b = op.operands[0], op.operands[1], op.operand(2)
    z = op.operand(3) if op.name == "fused_conv" else None
    act, act_params = activation_of(op)
    xs, ws, ys = static_shape(x.type), static_shape(w.type), static_shape(op.results[0].type)
    if len(xs) not in (3, 4):
        return "only 1-d and 2-d convolutions are native"
    if K.prod(ys) == 0 or K.prod(xs) == 0 or K.prod(ws) == 0:
        return "zero-size tensor"
    if z is not None and static_shape(z.type) != ys:
        return "residual z does not have the conv result's shape"
    wc = const_of(w)
    if wc is None:
        return "NHWC conv needs constant weights"
    kernel = op.attr("kernel_shape") or ws[2:]
    st, dl, pb, pe = _window(op, _nchw_shape(xs), kernel)
    if len(xs) == 3:
        # [N, L, C] is [N, 1, L, C]: a unit height, as in the NCHW path
        xs, ws, ys = (xs[0], 1, xs[1], xs[2]), (ws[0], ws[1], 1, ws[2]), (ys[0], 1, ys[1], ys[2])
        kernel, st, dl, pb, pe = (1, kernel[0]), [1] + st, [1] + dl, [0] + pb, [0] + pe
        wc = np.asarray(wc, np.float32).reshape(ws)
    g = op.attr("group") or 1
    extra = ([b] if b is not None else []) + ([z] if z is not None else [])
    geo = dict(N=xs[0], H=xs[1], W=xs[2], C=xs[3], OH=ys[1], OW=ys[2], kh=kernel[0],
               kw=kernel[1], sh=st[0], sw=st[1], dh=dl[0], dw=dl[1], pt=pb[0], pl=pb[1],
               has_bias=b is not None, activation=act, act_params=act_params,
               has_z=z is not None)
    if (g == 1 and tuple(kernel) == (1, 1) and tuple(st) == (1, 1) and not any(pb)
            and not any(pe)):
        # a pointwise conv in NHWC is one GEMM: [N*H*W, C] @ W^T [C, M], the skip
        # connection added in the epilogue
        wide = KN.wide_tiles()
        wt = np.asarray(wc, np.float32).reshape(ws[0], xs[3]).T
        kern = KG.GemmPacked(M=xs[0] * xs[1] * xs[2], N=ws[0], K=xs[3], wide=wide,
                             has_bias=b is not None, activation=act, act_params=act_params,
                             has_z=z is not None)
        return kern, [x, ConstArray(KG.pack_b(wt, wide), (w.name or "w") + f".panels{32 if wide else 16}")] + extra
    if KD.direct_group_ok(xs[3], ws[0], g):
        packed = KD.pack_depthwise_nhwc(wc)
        return (KD.DepthwiseNhwc(cg=xs[3] // g, **geo),
                [x, ConstArray(packed, (w.name or "w") + ".hwc")] + extra)
    nr = KN.conv_panel_width(ws[0] // g, KN.wide_tiles())
    packed = KN.pack_weights_nhwc(np.asarray(wc, np.float32), g, nr)
    return (KN.ConvNhwc(M=ws[0], group=g, nr=nr, **geo),
            [x, ConstArray(packed, (w.name or "w") + f".nhwc{nr}")] + extra)


lower_conv.layouts = ("NCHW", "NHWC")


@rule("matmul", "linear")
def lower_matmul(op):
    why = _all_static_f32(op)
    if why:
        return why
    if not has_blas():
        return "no BLAS available"
    a, bm = op.operands[0], op.operands[1]
    bias = op.operand(2) if op.name == "linear" else None
    act, act_params = activation_of(op)
    as_, bs = static_shape(a.type), static_shape(bm.type)
    if len(as_) == 0 or len(bs) == 0:
        return "scalar operand"
    A = as_ if len(as_) >= 2 else (1,) + as_
    B = bs if len(bs) >= 2 else bs + (1,)
    M, Ka = A[-2], A[-1]
    Kb, N = B[-2], B[-1]
    if Ka != Kb:
        return "inner dims differ"
    ab, bb = A[:-2], B[:-2]
    r = max(len(ab), len(bb))
    batch = []
    abp = (1,) * (r - len(ab)) + tuple(ab)
    bbp = (1,) * (r - len(bb)) + tuple(bb)
    for x, y in zip(abp, bbp):
        if x != y and x != 1 and y != 1:
            return "batch dims do not broadcast"
        batch.append(x if y == 1 else y)  # a size-0 dim broadcast against 1 stays 0
    a_st = [s * M * Ka for s in K.broadcast_strides(abp, batch)]
    b_st = [s * Kb * N for s in K.broadcast_strides(bbp, batch)]
    # batch dims of size 1 index nothing: dropped, so that [1, S, S, C] @ [C, N] is seen
    # as one shared B (packed at compile time, rows folded into one product)
    keep = [i for i, d in enumerate(batch) if d != 1]
    batch = [batch[i] for i in keep]
    a_st = [a_st[i] for i in keep]
    b_st = [b_st[i] for i in keep]
    bs_ = static_shape(bias.type) if bias is not None else None
    ep = dict(activation=act, act_params=act_params, beta=1.0)
    if Ka == 0 and (bias is not None or act != "none"):
        return "empty inner dimension with an epilogue"
    rows = M * K.prod(batch)
    bc = const_of(bm)
    if is_dynamic_emission():
        # a dynamic module: the kernel choice must not depend on the shapes (one compile
        # for all of them): constant 2-d weights fold every batch dim into the rows and
        # take the packed GEMM whatever the size (kernels_gemm reads them at run time)
        if bc is not None and len(bs) == 2 and all(s == 0 for s in b_st) and N >= 16 \
                and Ka > 0 and rows > 0 and (bs_ is None or (len(bs_) == 1 and bs_[0] == N)):
            packed = _lower_matmul_packed(rows, N, Ka, [], [], [], bc, bs_, ep, a, bm, bias,
                                          force=True)
            if packed is not None:
                return packed
    elif (bc is not None and len(bs) == 2 and rows <= 4 and Ka > 0 and len(as_) >= 2
            and (bs_ is None or (len(bs_) == 1 and bs_[0] == N))
            and all(s == 0 for s in b_st)):
        # fully connected at small batch: the vectorized dot-product kernel
        kern = K.Gemv(M=rows, N=N, K=Ka, has_bias=bias is not None, **ep)
        wt = np.ascontiguousarray(np.asarray(bc, np.float32).T)
        return kern, [a, ConstArray(wt, (bm.name or "w") + ".nk")] + ([bias] if bias is not None else [])
    extra = [bias] if bias is not None else []
    packed = _lower_matmul_packed(M, N, Ka, batch, a_st, b_st, bc, bs_, ep, a, bm, bias,
                                  _swapped_source(bm))
    if packed is not None:
        return packed
    if batch and all(s == 0 for s in b_st) and all(
            st == cs * M * Ka for st, cs in zip(a_st, K.contiguous_strides(batch))) and (
            bs_ is None or len(bs_) <= 1):
        # B shared by every batch: fold the batch into M
        kern = K.MatMul(M=M * K.prod(batch), N=N, K=Ka, c_shape=bs_, **ep)
    else:
        kern = K.MatMul(M=M, N=N, K=Ka, batch=tuple(batch), a_batch_strides=tuple(a_st),
                        b_batch_strides=tuple(b_st), c_shape=bs_, **ep)
    return kern, [a, bm] + extra


#: products with at least this many multiply-adds run on galaxir's own GEMM over both
#: threads (kernels_gemm.GemmPacked / BatchedGemm); smaller ones call single-threaded sgemm
PACKED_MIN_MACS = 1 << 21

#: products of two activations with a depth up to this take the taller tile of
#: kernels_gemm.tile_rows (attention's Q K^T and P V: the tile's fixed cost per k step
#: and per store is spread over twice the rows)
SMALL_DEPTH = 256


_PACKED: dict[tuple[int, bool], tuple] = {}


def _packed(bc, wide: bool) -> np.ndarray:
    """``KG.pack_b(bc, wide)``, packed once per weight array: every specialization of a
    model (each new input shape) lowers the same constant again.  Keyed by the array's id,
    checked through a weak reference (a freed array's entry is dropped with it)."""
    import weakref
    if not isinstance(bc, np.ndarray):
        return KG.pack_b(bc, wide)
    key = (id(bc), wide)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is bc:
        return hit[1]
    panels = KG.pack_b(bc, wide)
    try:
        ref = weakref.ref(bc, lambda _r, key=key: _PACKED.pop(key, None))
    except TypeError:
        return panels
    _PACKED[key] = (ref, panels)
    return panels


def _swapped_source(v: Value) -> Value | None:
    """x when ``v = transpose(x)`` swaps only the last two axes (a K^T): the product packs
    B from x in place and the transpose step is dropped when nothing else reads it."""
    t = v.producer
    if t is None or t.name != "transpose" or not is_static(t.operand(0)) or not is_f32(v):
        return None
    r = len(static_shape(v.type))
    perm = t.attr("perm")
    perm = list(range(r))[::-1] if perm is None else [int(p) % r for p in perm]
    return t.operand(0) if r >= 2 and perm == list(range(r - 2)) + [r - 1, r - 2] else None


def _lower_matmul_packed(M, N, Ka, batch, a_st, b_st, bc, bias_shape, ep, a, bm, bias,
                         b_swapped=None, force: bool = False):
    rows = M * K.prod(batch)
    if (rows * N * Ka < PACKED_MIN_MACS and not force) or N < 16 or Ka == 0 or M == 0:
        return None
    if bias_shape is not None and (tuple(bias_shape)[-1:] != (N,) or K.prod(bias_shape) != N):
        return None     # the bias must be one value per column
    shared_b = all(s == 0 for s in b_st)
    if shared_b and all(st == cs * M * Ka for st, cs in zip(a_st, K.contiguous_strides(batch))):
        M, batch, a_st, b_st = rows, [], [], []     # one product over the folded rows
    extra = [bias] if bias is not None else []
    kw = dict(M=M, N=N, K=Ka, batch=tuple(batch), a_batch_strides=tuple(a_st),
              b_batch_strides=tuple(b_st), has_bias=bias is not None,
              activation=ep["activation"], act_params=ep["act_params"])
    if bc is not None and shared_b and np.ndim(bc) == 2 and not batch:
        # constant weights: the dense GEMM with a 12-accumulator tile (kernels_gemm)
        wide = KN.wide_tiles()
        panels = ConstArray(_packed(bc, wide), (bm.name or "b") + f".panels{32 if wide else 16}")
        kw = {k: v for k, v in kw.items() if k not in ("batch", "a_batch_strides", "b_batch_strides")}
        return KG.GemmPacked(wide=wide, **kw), [a, panels] + extra
    if bc is not None and shared_b and np.ndim(bc) == 2:
        panels = ConstArray(KN.pack_b_panels(bc), (bm.name or "b") + ".panels")
        return KN.MatMulPacked(b_packed=True, **kw), [a, panels] + extra
    # B known only at run time: packed per product into the GemmPacked panels
    if b_swapped is not None:
        wide = KN.wide_tiles()
        mr = KG.tile_rows(wide) if kw["K"] <= SMALL_DEPTH else 0
        return KG.BatchedGemm(wide=wide, trans_b=True, mr=mr, **kw), [a, b_swapped] + extra
    wide = KN.wide_tiles()
    mr = KG.tile_rows(wide) if kw["K"] <= SMALL_DEPTH else 0
    return KG.BatchedGemm(wide=wide, mr=mr, **kw), [a, bm] + extra


@rule("gemm", "fused_gemm")
def lower_gemm(op):
    why = _all_static_f32(op)
    if why:
        return why
    if not has_blas():
        return "no BLAS available"
    a, bm, c = op.operands[0], op.operands[1], op.operand(2)
    as_, bs = static_shape(a.type), static_shape(bm.type)
    if len(as_) != 2 or len(bs) != 2:
        return "gemm operands must be 2-d"
    ta, tb = bool(op.attr("transA")), bool(op.attr("transB"))
    M, Ka = (as_[1], as_[0]) if ta else as_
    Kb, N = (bs[1], bs[0]) if tb else bs
    if Ka != Kb:
        return "inner dims differ"
    alpha = float(op.attr("alpha") if op.attr("alpha") is not None else 1.0)
    beta = float(op.attr("beta") if op.attr("beta") is not None else 1.0)
    bc = const_of(bm)
    cs = static_shape(c.type) if c is not None else None
    if bc is not None and M <= 4 and not ta and (cs is None or (K.prod(cs) == N and cs[-1:] == (N,))):
        wt = np.asarray(bc, np.float32)
        wt = wt if tb else wt.T
        act, act_params = activation_of(op)
        kern = K.Gemv(M=M, N=N, K=Ka, has_bias=c is not None, alpha=alpha, beta=beta,
                      activation=act, act_params=act_params)
        return kern, [a, ConstArray(wt, (bm.name or "w") + ".nk")] + ([c] if c is not None else [])
    act, act_params = activation_of(op)
    if Ka == 0 and act != "none":
        return "empty inner dimension with an activation"
    if not ta and alpha == 1.0 and (c is None or beta == 1.0) and (bc is not None or not tb):
        b_kn = None if bc is None else (np.asarray(bc).T if tb else bc)
        ep = dict(activation=act, act_params=act_params)
        packed = _lower_matmul_packed(M, N, Ka, [], [], [], b_kn, cs, ep, a, bm, c)
        if packed is not None:
            return packed
    kern = K.MatMul(M=M, N=N, K=Ka, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta,
                    c_shape=static_shape(c.type) if c is not None else None,
                    activation=act, act_params=act_params)
    return kern, [a, bm] + ([c] if c is not None else [])


def _pool(op, kind):
    why = _all_static_f32(op)
    if why:
        return why
    if len(op.results) > 1 and op.results[1].uses:
        return "max_pool indices are used"
    x = op.operands[0]
    xs, ys = static_shape(x.type), static_shape(op.results[0].type)
    if len(xs) != 4:
        return "only 2-d pooling is native"
    if K.prod(ys) == 0 or K.prod(xs) == 0:
        return "zero-size tensor"
    kernel = op.attr("kernel_shape")
    if (op.attr("layout") or "NCHW") == "NHWC":
        st, dl, pb, pe = _window(op, _nchw_shape(xs), kernel)
        return KN.PoolNhwc(kind=kind, N=xs[0], H=xs[1], W=xs[2], C=xs[3], OH=ys[1], OW=ys[2],
                           kh=kernel[0], kw=kernel[1], sh=st[0], sw=st[1], dh=dl[0], dw=dl[1],
                           pt=pb[0], pl=pb[1], pb=pe[0], pr=pe[1],
                           count_include_pad=bool(op.attr("count_include_pad"))), [x]
    st, dl, pb, pe = _window(op, xs, kernel)
    kern = K.Pool2d(kind=kind, planes=xs[0] * xs[1], H=xs[2], W=xs[3], OH=ys[2], OW=ys[3],
                    kh=kernel[0], kw=kernel[1], sh=st[0], sw=st[1], dh=dl[0], dw=dl[1],
                    pt=pb[0], pl=pb[1], pb=pe[0], pr=pe[1],
                    count_include_pad=bool(op.attr("count_include_pad")))
    return kern, [x]


@rule("max_pool")
def lower_max_pool(op):
    return _pool(op, "max")


@rule("average_pool")
def lower_avg_pool(op):
    return _pool(op, "avg")


lower_max_pool.layouts = lower_avg_pool.layouts = ("NCHW", "NHWC")


@rule("global_average_pool", "global_max_pool")
def lower_global_pool(op):
    why = _all_static_f32(op)
    if why:
        return why
    xs = static_shape(op.operands[0].type)
    if len(xs) < 3:
        return "rank below 3"
    if (op.attr("layout") or "NCHW") == "NHWC":
        return KN.GlobalPoolNhwc(kind="avg" if op.name == "global_average_pool" else "max",
                                 N=xs[0], size=K.prod(xs[1:-1]), C=xs[-1]), [op.operands[0]]
    return K.GlobalPool(kind="avg" if op.name == "global_average_pool" else "max",
                        planes=xs[0] * xs[1], size=K.prod(xs[2:])), [op.operands[0]]


lower_global_pool.layouts = ("NCHW", "NHWC")


@rule("softmax", "log_softmax")
def lower_softmax(op):
    why = _all_static_f32(op)
    if why:
        return why
    xs = static_shape(op.operands[0].type)
    if len(xs) == 0:
        return "scalar"
    ax = op.attr("axis")
    ax = ax + len(xs) if ax < 0 else ax
    return K.Softmax(outer=K.prod(xs[:ax]), D=xs[ax], inner=K.prod(xs[ax + 1:]),
                     log=op.name == "log_softmax"), [op.operands[0]]


@rule("lrn")
def lower_lrn(op):
    why = _all_static_f32(op)
    if why:
        return why
    xs = static_shape(op.operands[0].type)
    if len(xs) < 2:
        return "rank below 2"
    last = (op.attr("layout") or "NCHW") == "NHWC"
    return K.LRN(N=xs[0], C=xs[-1] if last else xs[1], plane=K.prod(xs[1:-1] if last else xs[2:]),
                 size=int(op.attr("size")), alpha=float(op.attr("alpha")), beta=float(op.attr("beta")),
                 bias=float(op.attr("bias")), channels_last=last), [op.operands[0]]


lower_lrn.layouts = ("NCHW", "NHWC")


@rule("concat")
def lower_concat(op):
    ys = static_shape(op.results[0].type)
    if ys is None or any(not is_static(v) for v in op.operands):
        return "shape not static"
    item = op.results[0].type.dtype.numpy.itemsize
    if op.results[0].type.dtype is DType.string:
        return "string tensor"
    ax = op.attr("axis")
    ax = ax + len(ys) if ax < 0 else ax
    outer = K.prod(ys[:ax])
    chunks = tuple(K.prod(static_shape(v.type)[ax:]) * item for v in op.operands)
    return K.Concat(outer=outer, chunks=chunks), list(op.operands)


@rule("transpose")
def lower_transpose(op):
    x = op.operands[0]
    xs = static_shape(x.type)
    if xs is None or not is_static(op.results[0]):
        return "shape not static"
    item = x.type.dtype.numpy.itemsize
    if x.type.dtype is DType.string or item not in K.INT_OF_SIZE:
        return f"dtype {x.type.dtype.name}"
    perm = op.attr("perm") or tuple(reversed(range(len(xs))))
    return K.Transpose(in_shape=xs, perm=tuple(perm), itemsize=item), [x]


def alias_source(op: Operation) -> Value | None:
    """The operand whose buffer ``op``'s first result reuses, when it is a pure view."""
    if op.name not in ALIAS_OPS or not op.results:
        return None
    x = op.operands[0]
    r = op.results[0]
    if x is None or not isinstance(x.type, TensorType) or not isinstance(r.type, TensorType):
        return None
    if not is_static(x) or not is_static(r) or x.type.dtype != r.type.dtype:
        return None
    if x.type.dtype is DType.string or nbytes_of(x) != nbytes_of(r):
        return None
    if op.name == "dropout":
        if len(op.results) > 1 and op.results[1].uses:
            return None
        tm = op.operand(2)
        if tm is not None and (const_of(tm) is None or bool(np.asarray(const_of(tm)))):
            return None
    return x


# -- elementwise loops ---------------------------------------------------------------------
#: ops emit_expr implements that may appear inside a fused_elementwise region
REGION_OPS = ELEMENTWISE | {"fused_add", "identity"}
#: the deepest expression one elementwise kernel evaluates (expressions are nested tuples
#: that the code here and emit_expr walk recursively; depth is bounded instead of the
#: Python stack being outgrown): cpu-fuse-elementwise makes groups of at most this many
#: ops, and a deeper region runs on the numpy reference
MAX_EXPR_DEPTH = 128
_LEAVES = ("in", "arg", "const", "none")


def expr_depth(expr) -> int:
    """Operation levels of an expression (leaves 0), iteratively, each shared sub-tuple once."""
    depth: dict[int, int] = {}
    stack = [(expr, False)]
    while stack:
        e, done = stack.pop()
        if e[0] in _LEAVES:
            depth[id(e)] = 0
            continue
        if id(e) in depth:
            continue
        if done:
            depth[id(e)] = 1 + max((depth[id(c)] for c in e[1]), default=0)
            continue
        stack.append((e, True))
        stack.extend((c, False) for c in e[1] if id(c) not in depth)
    return depth[id(expr)]


def native_elementwise(op: Operation) -> bool:
    """Does the elementwise loop run ``op`` (float32 tensors; shapes may still be symbolic)?
    What ``cpu-fuse-elementwise`` groups; lowering also wants static shapes."""
    if op.name == "fused_elementwise":
        return _region_expr(op) is not None
    if (op.name not in ELEMENTWISE and op.name != "fused_add") or len(op.results) != 1 \
            or op.regions:
        return False
    if op.name != "clip" and any(v is None for v in op.operands):
        return False
    return all(is_f32(v) for v in [*op.operands, *op.results] if v is not None)


def _ew_native(op: Operation) -> bool:
    return native_elementwise(op) and _all_static_f32(op) is None


def _op_expr(op: Operation, children: tuple):
    """The expression of one elementwise op over already-built child expressions."""
    name = op.name
    if name == "fused_add":
        act, params = activation_of(op)
        return _remap_in0(K.activation_expr(act, params), ("add", children, ()))
    attrs = ()
    if name == "leaky_relu":
        attrs = (("alpha", float(op.attr("alpha") if op.attr("alpha") is not None else 0.01)),)
    elif name == "hard_sigmoid":
        attrs = (("alpha", float(op.attr("alpha"))), ("beta", float(op.attr("beta"))))
    elif name == "swish":
        alpha = op.attr("alpha")
        attrs = (("alpha", 1.0 if alpha is None else float(alpha)),)
    elif name == "gelu":
        if (op.attr("approximate") or "none") == "tanh":
            return ("gelu_tanh", children, ())
    return (name, children, attrs)


def _remap_in0(expr, sub):
    if expr[0] == "in":
        return sub
    if expr[0] in ("const", "none"):
        return expr
    return (expr[0], tuple(_remap_in0(c, sub) for c in expr[1]), expr[2])


def _region_expr(op: Operation):
    """The expression of a fused_elementwise region over ("arg", k) leaves, or None when
    its body has an op, dtype or constant the native elementwise loop cannot do."""
    cached = op.__dict__.get("_gx_region_expr", False)
    if cached is not False:
        return cached
    expr = None
    try:
        block = op.regions[0].block
        env = {id(a): ("arg", k) for k, a in enumerate(block.args)}
        for inner in block:
            if inner.is_terminator:
                continue
            if inner.name == "constant":
                c = inner.attrs.get("value")
                if c is None or c.size != 1 or not np.isfinite(c).all():
                    raise ValueError("non-scalar constant")
                env[id(inner.results[0])] = ("const", float(np.asarray(c).reshape(-1)[0]))
                continue
            if inner.name not in REGION_OPS or len(inner.results) != 1 or inner.regions:
                raise ValueError(inner.name)
            if inner.name != "clip" and any(v is None for v in inner.operands):
                raise ValueError("missing operand")
            for v in list(inner.operands) + list(inner.results):
                if v is not None and not is_f32(v):
                    raise ValueError("dtype")
            kids = tuple(("none",) if v is None else env[id(v)] for v in inner.operands)
            env[id(inner.results[0])] = _op_expr(inner, kids)
        res = block.results[0]
        expr = env[id(res)]
        if expr_depth(expr) > MAX_EXPR_DEPTH:  # runs on the numpy reference instead
            expr = None
    except (ValueError, KeyError, IndexError, TypeError):
        expr = None
    op.__dict__["_gx_region_expr"] = expr
    return expr


def _subst_args(expr, children):
    if expr[0] == "arg":
        return children[expr[1]]
    if expr[0] in ("const", "none", "in"):
        return expr
    return (expr[0], tuple(_subst_args(c, children) for c in expr[1]), expr[2])


def _lower_elementwise(op: Operation) -> NativeStep:
    """One elementwise loop for ``op`` (a fused_elementwise's whole region); finite scalar
    constant operands become literals of the expression."""
    inputs: list[Value] = []
    children = []
    for v in op.operands:
        if v is None:
            children.append(("none",))
            continue
        c = const_of(v)
        if c is not None and c.size == 1 and np.isfinite(c).all():
            children.append(("const", float(np.asarray(c).reshape(-1)[0])))
            continue
        if not any(u is v for u in inputs):
            inputs.append(v)
        children.append(("in", next(k for k, u in enumerate(inputs) if u is v)))
    if op.name == "fused_elementwise":
        expr = _subst_args(_region_expr(op), children)
    else:
        expr = _op_expr(op, tuple(children))
    out = op.results[0]
    kern = K.Elementwise(out_shape=static_shape(out.type),
                         in_shapes=[static_shape(v.type) for v in inputs], expr=expr)
    return NativeStep(kern, [out], inputs, [op])


def lower_module(module: Module, report_reasons: dict | None = None) -> list:
    """Steps for the top-level block of a specialized module."""
    from .lower_quant import check_module
    from .lower_f16 import widen_half
    check_module(module)   # bad quantization scales: a CompileError naming the op
    widen_half(module)     # f16 / bf16 ops: float32 kernels between 16-bit tensors
    outputs = {id(v) for v in module.graph.outputs if v is not None}
    steps: list = []
    for op in module.graph.block:
        if op.is_terminator or op.name == "constant":
            continue
        if _ew_native(op):
            steps.append(_lower_elementwise(op))
            continue
        src = alias_source(op)
        if src is not None:
            steps.append(AliasStep(op, src, op.results[0]))
            continue
        fn = RULES.get(op.name)
        if fn is not None and op.attrs.get("layout", "NCHW") not in getattr(
                fn, "layouts", ("NCHW",)):  # native rules are NCHW unless they say otherwise
            steps.append(FallbackStep(op, f"layout {op.attrs['layout']} has no native kernel"))
            continue
        if fn is None:
            steps.append(FallbackStep(op, "no native kernel"))
            continue
        try:
            res = fn(op)
        except Exception as e:  # a lowering rule that cannot handle this op: run it on numpy
            res = f"lowering failed: {type(e).__name__}: {e}"
        if isinstance(res, str):
            steps.append(FallbackStep(op, res))
            continue
        kern, ins = res
        step = NativeStep(kern, list(op.results[:getattr(kern, "n_results", 1)]), ins, [op])
        steps.append(step)
    _stream_large_outputs(steps, outputs)
    return _drop_unread_transposes(steps, outputs)


def stream_min_bytes() -> int:
    """Graph outputs from this size on are written with streaming stores: the host's L2
    cache size per core (``GALAXIR_CPU_STREAM_MIN`` overrides; 0 turns streaming off).
    Measured on a 4 MiB-L2 Xeon: Exp over 4.8 MB 35% faster, over 1.2 MB (in and out fit
    L2) 20% slower."""
    forced = os.environ.get("GALAXIR_CPU_STREAM_MIN")
    if forced is not None:
        return int(forced) or -1
    return _l2_bytes() or 2 << 20


def _l2_bytes() -> int:
    """The L2 cache size of cpu0 from sysfs (Linux), 0 when unknown."""
    import glob
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(d, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        try:
            return int(text.rstrip("KM")) * scale
        except ValueError:
            return 0
    return 0


def _stream_large_outputs(steps: list, outputs: set) -> None:
    """Mark the elementwise steps whose result is a graph output (or viewed as one) of at
    least ``stream_min_bytes``: nothing in the call reads it again, so its stores need not
    pass through the cache."""
    limit = stream_min_bytes()
    if limit < 0 or is_dynamic_emission():  # one compile for every shape: no size test
        return
    final = set(outputs)
    for step in reversed(steps):
        if isinstance(step, AliasStep) and id(step.result) in final:
            final.add(id(step.source))
    for k, step in enumerate(steps):
        if isinstance(step, NativeStep) and type(step.kernel) is K.Elementwise \
                and len(step.outputs) == 1 and id(step.outputs[0]) in final \
                and nbytes_of(step.outputs[0]) >= limit:
            steps[k] = NativeStep(dataclasses.replace(step.kernel, stream=True), step.outputs,
                                  step.inputs, step.ops)


def _drop_unread_transposes(steps: list, outputs: set) -> list:
    """Drop the transpose steps whose results no later step reads (a matmul reads the
    transpose's source in place, see _swapped_source)."""
    read = set(outputs)
    keep = []
    for step in reversed(steps):
        if isinstance(step, NativeStep) and all(op.name == "transpose" for op in step.ops) \
                and not any(id(o) in read for o in step.outputs):
            continue
        keep.append(step)
        if isinstance(step, NativeStep):
            read.update(id(v) for v in step.inputs)
        elif isinstance(step, AliasStep):
            read.add(id(step.source))
        else:
            read.update(id(v) for v in step.op.read_values())
    return keep[::-1]


from . import lower_seq  # noqa: E402,F401  (sequence-model rules register into RULES)
from . import lower_reduce  # noqa: E402,F401  (reductions)
from . import lower_data  # noqa: E402,F401  (slice, pad, ...)
from . import lower_resize  # noqa: E402,F401  (resize / upsample)
from . import lower_conv_transpose  # noqa: E402,F401  (conv_transpose)
from . import lower_typed  # noqa: E402,F401  (comparisons, logic, cast, integer ops, range, ...)
from . import lower_quant  # noqa: E402,F401  (int8 conv / matmul, quantize / dequantize)
from . import lower_quant_dw  # noqa: E402,F401  (int8 depthwise conv; after lower_quant)
from . import lower_quant_pool  # noqa: E402,F401  (int8 global average pooling)
from . import lower_f16  # noqa: E402,F401  (f16 / bf16 <-> f32 casts; other casts: lower_typed's rule)
from . import lower_qnodes  # noqa: E402,F401  (other quantized types, run-time quantized operands)
