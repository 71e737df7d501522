"""Lowering a shape-specialized module to CUDA actions: kernel launches (generated CUDA C),
cuBLAS products (cupy.matmul over arena views), views (no work) and ops left to the numpy
reference.  Runs without a device: the runtime (runtime.py) only executes the result, and
the compile tests check every kernel it generates with NVRTC.

``lower_module(m)`` returns a ``Lowered``: the actions in order, each buffer's byte size,
and where each op went (``placement``, for ``exe.report()``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...ir import Module, Operation, Value
from ...ir.ops.nn import resolve_window
from ...ir.types import DType, TensorType
from . import kernels as K
from .source import CTYPE, FLOATS, elementwise_expr, literal

#: element types a kernel may read or write
KERNEL_DTYPES = set(CTYPE)
#: dtypes cuBLAS takes through cupy.matmul; bfloat16 uses the generated tiled GEMM
BLAS_DTYPES = {DType.float32, DType.float16, DType.float64}
VIEW_OPS = {"reshape", "flatten", "squeeze", "unsqueeze", "identity", "dropout"}
REDUCE_OPS = set(K.REDUCE_KINDS) - {"global_average_pool", "global_max_pool"}
#: what the backend generates kernels for (everything else runs on the numpy reference)
CAPABILITIES = frozenset({
    "fused_elementwise", "fused_add", "cast", "where", "clip", "sum", "mean", "max", "min",
    *K.REDUCE_KINDS, "argmax", "argmin", "softmax", "log_softmax", "layer_norm", "sdpa",
    "max_pool", "average_pool", "concat", "transpose", "gather", "slice", "expand",
    "conv", "fused_conv", "matmul", "linear", "gemm", "fused_gemm", "lrn", "batch_norm", "attention",
    *VIEW_OPS,
    "neg", "abs", "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "reciprocal", "erf", "sin",
    "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "floor",
    "ceil", "round", "sign", "softplus", "softsign", "mish", "hard_swish", "leaky_relu", "elu",
    "celu", "selu", "thresholded_relu", "hard_sigmoid", "gelu", "swish", "shrink", "add", "sub",
    "mul", "div", "pow", "prelu", "mod", "equal", "less", "greater", "less_or_equal",
    "greater_or_equal", "and", "or", "xor", "not",
})

#: conv problems at least this big (multiply-adds) go through im2col + cuBLAS
CONV_GEMM_MIN_MACS = 1 << 22


@dataclass(frozen=True)
class Buf:
    """A tensor the runtime addresses: ``key`` names its storage (an IR value's id, a
    constant, or a temporary)."""

    key: Any
    shape: tuple
    dtype: DType

    @property
    def nbytes(self) -> int:
        return K.numel(self.shape) * self.dtype.numpy.itemsize


@dataclass
class Launch:
    kernel: K.Kernel
    args: list          # Buf per pointer parameter, in order ("err" for the error flag)
    op: Operation | None = None


@dataclass
class Blas:
    """out = a @ b (numpy matmul semantics, broadcasting) with cupy.matmul (cuBLAS)."""

    a: Buf
    b: Buf
    out: Buf
    a_view: tuple       # (shape, strides in elements) the product reads
    b_view: tuple
    out_view: tuple
    op: Operation | None = None


@dataclass
class Alias:
    src: Any
    dst: Any


@dataclass
class Fallback:
    op: Operation
    why: str


@dataclass
class Lowered:
    module: Module | None = None                    # the specialized module lowered
    actions: list = field(default_factory=list)
    consts: dict = field(default_factory=dict)      # key -> np.ndarray (uploaded once)
    temps: dict = field(default_factory=dict)       # key -> bytes of temporaries
    placement: list = field(default_factory=list)   # (op, "cuda" | "numpy", detail)

    def kernels(self) -> list[K.Kernel]:
        """Each distinct kernel once (by name)."""
        seen: dict[str, K.Kernel] = {}
        for a in self.actions:
            if isinstance(a, Launch):
                seen.setdefault(a.kernel.name, a.kernel)
        return list(seen.values())


class _NoKernel(Exception):
    """This op (with these types) has no CUDA kernel: it runs on the numpy reference."""


def static(v: Value | None) -> TensorType:
    if v is None or not isinstance(v.type, TensorType) or v.type.shape is None or \
            not all(isinstance(d, int) for d in v.type.shape):
        raise _NoKernel("not a tensor of static shape")
    if v.type.dtype not in KERNEL_DTYPES:
        raise _NoKernel(f"dtype {v.type.dtype.name}")
    return v.type


def _const(v: Value | None):
    if v is None:
        return None
    c = v.constant_value()
    return None if c is None else np.asarray(c)


class Lowerer:
    def __init__(self, module: Module):
        self.module = module
        self.out = Lowered(module)

    # -- buffers -----------------------------------------------------------------------------
    def buf(self, v: Value) -> Buf:
        t = static(v)
        c = _const(v)
        if c is not None:
            key = ("const", id(v))
            self.out.consts.setdefault(key, np.ascontiguousarray(c, dtype=t.dtype.numpy))
            return Buf(key, tuple(c.shape), t.dtype)
        return Buf(("val", id(v)), tuple(t.shape), t.dtype)

    def temp(self, name: str, shape, dtype: DType) -> Buf:
        key = ("tmp", len(self.out.temps), name)
        b = Buf(key, tuple(int(d) for d in shape), dtype)
        self.out.temps[key] = b.nbytes
        return b

    def launch(self, op, kernel: K.Kernel, ins: list, outs: list, extra: dict | None = None):
        args = []
        for role, i in kernel.params:
            if role == "in":
                args.append(ins[i])
            elif role == "out":
                args.append(outs[i])
            else:
                args.append("err")
        self.out.actions.append(Launch(kernel, args, op))

    # -- driver ------------------------------------------------------------------------------
    def run(self) -> Lowered:
        for op in self.module.graph.block:
            if op.is_terminator or op.name == "constant":
                continue
            mark = len(self.out.actions)
            try:
                if op.regions and op.name != "fused_elementwise":
                    raise _NoKernel("has regions")
                for r in op.results:
                    if isinstance(r.type, TensorType) and r.type.shape is not None and \
                            all(isinstance(d, int) for d in r.type.shape) and K.numel(r.type.shape) == 0:
                        raise _NoKernel("empty result")
                detail = self.lower(op)
                self.out.placement.append((op, "cuda", detail))
            except _NoKernel as e:
                del self.out.actions[mark:]
                self.out.actions.append(Fallback(op, str(e)))
                self.out.placement.append((op, "numpy", str(e)))
        return self.out

    def lower(self, op: Operation) -> str:
        name = op.name
        if name in VIEW_OPS:
            x, r = op.operands[0], op.results[0]
            tx, tr = static(x), static(r)
            if tx.dtype != tr.dtype or K.numel(tx.shape) != K.numel(tr.shape) or _const(x) is not None:
                raise _NoKernel("view of a constant or a different size")
            if len(op.results) > 1:
                raise _NoKernel("dropout mask output")
            self.out.actions.append(Alias(("val", id(x)), ("val", id(r))))
            return "view"
        method = getattr(self, "lower_" + name, None)
        if method is not None:
            return method(op)
        if name == "fused_elementwise":
            return self.lower_fused_elementwise(op)
        if name in REDUCE_OPS:
            return self.lower_reduce(op)
        return self.lower_elementwise(op)

    # -- elementwise -------------------------------------------------------------------------
    def _ew_inputs(self, operands):
        """(specs, bufs): an EwInput per operand (None where absent; scalar constants baked
        in as literals) and the buffer of each (None where absent or baked)."""
        specs, bufs = [], []
        for v in operands:
            if v is None:
                specs.append(None)
                bufs.append(None)
                continue
            t = static(v)
            c = _const(v)
            if c is not None and c.size == 1:
                specs.append(K.EwInput(tuple(t.shape), t.dtype, literal(c.reshape(-1)[0], t.dtype)))
                bufs.append(None)
            else:
                specs.append(K.EwInput(tuple(t.shape), t.dtype))
                bufs.append(self.buf(v))
        return specs, bufs

    def _ew_kernel(self, op, out: Value, specs, bufs, body) -> str:
        tr = static(out)
        live = [i for i, s in enumerate(specs) if s is not None]
        for i in live:
            if len(specs[i].shape) > len(tr.shape):
                raise _NoKernel("input of higher rank than the result")
        k = K.elementwise(tr.shape, tr.dtype, [specs[i] for i in live], body)
        self.launch(op, k, [bufs[i] for i in live], [self.buf(out)])
        return "elementwise"

    def lower_elementwise(self, op: Operation) -> str:
        if len(op.results) != 1 or not op.operands:
            raise _NoKernel("not a one-result elementwise op")
        if op.name != "clip" and any(v is None for v in op.operands):
            raise _NoKernel("an absent operand")
        specs, bufs = self._ew_inputs(op.operands)
        tr = static(op.results[0])
        live = [s for s in specs if s is not None]
        pos = {i: j for j, i in enumerate(i for i, s in enumerate(specs) if s is not None)}

        def body(vars_):
            args = [vars_[pos[i]] if s is not None else None for i, s in enumerate(specs)]
            e = elementwise_expr(op, args, [s.dtype for s in live], tr.dtype)
            if e is None:
                raise _NoKernel(f"no kernel for {op.name} on {', '.join(s.dtype.name for s in live)}")
            return [], e
        return self._ew_kernel(op, op.results[0], specs, bufs, body)

    def lower_fused_add(self, op: Operation) -> str:
        specs, bufs = self._ew_inputs(op.operands)
        tr = static(op.results[0])
        if tr.dtype not in FLOATS or any(s.dtype != tr.dtype for s in specs):
            raise _NoKernel("fused_add on a non-float dtype")
        from .source import activation, compute_type
        ct = compute_type(tr.dtype)
        act, params = op.attr("activation"), op.attr("activation_params") or ()
        return self._ew_kernel(op, op.results[0], specs, bufs,
                               lambda v: ([], activation(act, params, ct, f"({v[0]} + {v[1]})")))

    def lower_fused_elementwise(self, op: Operation) -> str:
        block = op.regions[0].block
        specs, bufs = self._ew_inputs(op.operands)
        if any(s is None for s in specs):
            raise _NoKernel("absent operand")
        from .source import compute_type

        def body(vars_):
            env = {id(a): (v, s.dtype) for a, v, s in zip(block.args, vars_, specs)}
            stmts = []
            for n, inner in enumerate(block):
                if inner.is_terminator:
                    continue
                if inner.name == "constant":
                    c = _const(inner.results[0])
                    t = inner.results[0].type
                    if c is None or c.size != 1 or not isinstance(t, TensorType) or t.dtype not in CTYPE:
                        raise _NoKernel("a non-scalar constant inside the fused chain")
                    env[id(inner.results[0])] = (literal(c.reshape(-1)[0], t.dtype), t.dtype)
                    continue
                if len(inner.results) != 1:
                    raise _NoKernel(f"{inner.name} inside the chain has several results")
                args, dts = [], []
                for v in inner.operands:
                    if v is None:
                        args.append(None)
                        continue
                    if id(v) not in env:
                        raise _NoKernel("the chain reads a value from outside its region")
                    args.append(env[id(v)][0])
                    dts.append(env[id(v)][1])
                rt = inner.results[0].type
                if not isinstance(rt, TensorType) or rt.dtype not in CTYPE:
                    raise _NoKernel(f"{inner.name} result type")
                if inner.name == "fused_add":
                    from .source import activation
                    e = activation(inner.attr("activation"), inner.attr("activation_params") or (),
                                   compute_type(rt.dtype), f"({args[0]} + {args[1]})")
                else:
                    e = elementwise_expr(inner, args, dts, rt.dtype)
                if e is None:
                    raise _NoKernel(f"no kernel for {inner.name} on "
                                    f"{', '.join(d.name for d in dts)} inside the chain")
                var = f"t{n}"
                stmts.append(f"const {compute_type(rt.dtype)} {var} = {e};")
                env[id(inner.results[0])] = (var, rt.dtype)
            res = block.results[0]
            if id(res) not in env:
                raise _NoKernel("the chain returns an outside value")
            return stmts, env[id(res)][0]
        return self._ew_kernel(op, op.results[0], specs, bufs, body)

    def lower_expand(self, op: Operation) -> str:
        x = op.operands[0]
        specs, bufs = self._ew_inputs([x])
        return self._ew_kernel(op, op.results[0], specs, bufs, lambda v: ([], v[0]))

    # -- reductions ----------------------------------------------------------------------------
    def _axes(self, op, x_rank: int, default_all: bool = True):
        axes = None
        if len(op.operands) > 1 and op.operands[1] is not None:
            c = _const(op.operands[1])
            if c is None:
                raise _NoKernel("axes are not a constant")
            axes = [int(a) for a in c.reshape(-1)]
        elif op.attr("axes") is not None:
            axes = list(op.attr("axes"))
        if not axes:
            if op.attr("noop_with_empty_axes"):
                raise _NoKernel("noop_with_empty_axes")
            axes = list(range(x_rank))
        return sorted({a % x_rank for a in axes}) if x_rank else []

    def lower_reduce(self, op: Operation) -> str:
        x = op.operands[0]
        tx, tr = static(x), static(op.results[0])
        if tx.dtype is DType.bool or (tx.dtype not in FLOATS and
                                      op.name not in ("reduce_sum", "reduce_max", "reduce_min")):
            raise _NoKernel(f"{op.name} on {tx.dtype.name}")
        if len(tx.shape) == 0:
            raise _NoKernel("a scalar input")
        axes = self._axes(op, len(tx.shape))
        k = K.reduce(op.name, tx.shape, axes, tx.dtype, tr.dtype)
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return "reduce"

    def lower_reduce_log_sum_exp(self, op: Operation) -> str:
        raise _NoKernel("reduce_log_sum_exp has no kernel yet")

    def lower_global_average_pool(self, op):
        return self._global(op, "global_average_pool")

    def lower_global_max_pool(self, op):
        return self._global(op, "global_max_pool")

    def _global(self, op, kind):
        x = op.operands[0]
        tx, tr = static(x), static(op.results[0])
        if (op.attr("layout") or "NCHW") != "NCHW" or tx.dtype not in FLOATS:
            raise _NoKernel("channels-last or non-float")
        k = K.reduce(kind, tx.shape, list(range(2, len(tx.shape))), tx.dtype, tr.dtype)
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return "reduce"

    def _arg(self, op, want_max):
        x = op.operands[0]
        tx = static(x)
        static(op.results[0])
        if len(tx.shape) == 0 or tx.dtype is DType.bool:
            raise _NoKernel("scalar or bool input")
        axis = int(op.attr("axis") or 0) % len(tx.shape)
        k = K.arg_reduce(tx.shape, axis, want_max, bool(op.attr("select_last_index")), tx.dtype,
                         bool(op.attr("keepdims")))
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return "arg_reduce"

    def lower_argmax(self, op):
        return self._arg(op, True)

    def lower_argmin(self, op):
        return self._arg(op, False)

    def lower_softmax(self, op, log=False):
        x = op.operands[0]
        tx = static(x)
        if tx.dtype not in (DType.float32, DType.float16, DType.bfloat16) or not tx.shape:
            raise _NoKernel(f"softmax on {tx.dtype.name}")
        axis = int(op.attr("axis") if op.attr("axis") is not None else -1) % len(tx.shape)
        k = K.softmax(tx.shape, axis, tx.dtype, log)
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return "softmax"

    def lower_log_softmax(self, op):
        return self.lower_softmax(op, log=True)

    def lower_layer_norm(self, op):
        x, scale, bias = op.operand(0), op.operand(1), op.operand(2)
        tx = static(x)
        if tx.dtype not in (DType.float32, DType.float16, DType.bfloat16) or not tx.shape:
            raise _NoKernel(f"layer_norm on {tx.dtype.name}")
        axis = int(op.attr("axis") if op.attr("axis") is not None else -1) % len(tx.shape)
        kn = K.numel(tx.shape[axis:])
        ins = [self.buf(x)]
        for p in (scale, bias):
            if p is None:
                continue
            tp = static(p)
            if tp.dtype != tx.dtype:
                raise _NoKernel("scale/bias dtype differs")
            if K.numel(tp.shape) != kn:
                # broadcast scale/bias (rare): expand them to the normalized shape first
                raise _NoKernel("scale/bias smaller than the normalized dims")
            ins.append(self.buf(p))
        stats = []
        outs = [self.buf(op.results[0])]
        for r in op.results[1:]:
            used = bool(r.uses) or any(o is r for o in self.module.graph.outputs)
            if used:
                tr = static(r)
                stats.append(tr.dtype)
                outs.append(self.buf(r))
            else:
                stats.append(None)
                outs.append(None)
        k = K.layer_norm(tx.shape, axis, float(op.attr("epsilon") or 1e-5), tx.dtype,
                         bias is not None, stats)
        self.launch(op, k, ins, outs)
        return "layer_norm"

    def lower_sdpa(self, op):
        q, kt, v, mask = (op.operand(i) for i in range(4))
        tq, tk, tv = static(q), static(kt), static(v)
        tr = static(op.results[0])
        if tq.dtype not in (DType.float32, DType.float16, DType.bfloat16) or \
                len({tq.dtype, tk.dtype, tv.dtype}) != 1 or min(len(tq.shape), len(tk.shape), len(tv.shape)) < 2:
            raise _NoKernel("sdpa needs float q/kt/v of rank >= 2 and one dtype")
        if tk.shape[-1] > K.MAX_ATTN_KEYS:
            raise _NoKernel(f"more than {K.MAX_ATTN_KEYS} keys")
        tm = static(mask) if mask is not None else None
        ins = [self.buf(q), self.buf(kt), self.buf(v)]
        if tm is not None:
            if tm.dtype not in (tq.dtype, DType.bool) or len(tm.shape) > len(tr.shape):
                raise _NoKernel("mask dtype or rank")
            ins.append(self.buf(mask))
        k = K.sdpa(tr.shape[:-2], tq.shape, tk.shape, tv.shape, tm.shape if tm else None,
                   float(op.attr("scale")), tq.dtype, tm.dtype if tm else None)
        self.launch(op, k, ins, [self.buf(op.results[0])])
        return "sdpa (fused)"

    def lower_lrn(self, op):
        x = op.operands[0]
        tx = static(x)
        if (op.attr("layout") or "NCHW") != "NCHW" or tx.dtype not in (DType.float32, DType.float16, DType.bfloat16) \
                or len(tx.shape) < 2:
            raise _NoKernel("channels-last or non-float lrn")
        k = K.lrn(tx.shape, int(op.attr("size")), float(op.attr("alpha")), float(op.attr("beta")),
                  float(op.attr("bias")), tx.dtype)
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return "lrn"

    def lower_batch_norm(self, op):
        """Inference batch norm not folded into a conv: one elementwise kernel, the four
        per-channel vectors read along axis 1."""
        x = op.operands[0]
        tx = static(x)
        if len(op.results) != 1 or (op.attr("layout") or "NCHW") != "NCHW" or len(tx.shape) < 2 \
                or tx.dtype not in (DType.float32, DType.float16, DType.bfloat16):
            raise _NoKernel("training outputs, channels-last or non-float batch_norm")
        c = tx.shape[1]
        chan = (c,) + (1,) * (len(tx.shape) - 2)
        specs, bufs = [K.EwInput(tuple(tx.shape), tx.dtype)], [self.buf(x)]
        for v in op.operands[1:5]:
            tv = static(v)
            if tv.dtype != tx.dtype or K.numel(tv.shape) != c:
                raise _NoKernel("per-channel parameters of another dtype or size")
            specs.append(K.EwInput(chan, tv.dtype))
            bufs.append(self.buf(v))
        eps = float(op.attr("epsilon") or 1e-5)
        return self._ew_kernel(op, op.results[0], specs, bufs, lambda v: (
            [], f"(({v[0]} - {v[3]}) * rsqrtf({v[4]} + {eps!r}f) * {v[1]} + {v[2]})"))

    def lower_attention(self, op):
        """The ONNX Attention op (what torch's scaled_dot_product_attention imports as) in
        its common form: 4-D Q/K/V, as many K/V heads as Q heads (or one), no KV cache,
        softcap or window, only Y used; the same fused kernel as sdpa."""
        q, k, v, mask = (op.operand(i) for i in range(4))
        if any(op.operand(i) is not None for i in (4, 5, 6)):
            raise _NoKernel("KV cache or nonpad_kv_seqlen")
        if op.attr("softcap") or op.attr("qk_matmul_output_mode") or \
                op.attr("left_window_size") not in (None, -1) or op.attr("right_window_size") not in (None, -1):
            raise _NoKernel("softcap, window or qk output mode")
        outs = self.module.graph.outputs
        if any(r.uses or any(o is r for o in outs) for r in op.results[1:]):
            raise _NoKernel("present_key/present_value/qk outputs are used")
        tq, tk, tv = static(q), static(k), static(v)
        tr = static(op.results[0])
        if len(tq.shape) != 4 or len(tk.shape) != 4 or len(tv.shape) != 4 or \
                tq.dtype not in (DType.float32, DType.float16, DType.bfloat16) or \
                len({tq.dtype, tk.dtype, tv.dtype}) != 1:
            raise _NoKernel("needs 4-D float Q/K/V of one dtype")
        if tk.shape[1] not in (tq.shape[1], 1) or tv.shape[1] != tk.shape[1]:
            raise _NoKernel("grouped-query heads")
        sq, skv, d = tq.shape[2], tk.shape[2], tq.shape[3]
        causal = bool(op.attr("is_causal"))
        if causal and sq != skv:
            raise _NoKernel("causal attention with different query and key lengths")
        if skv > K.MAX_ATTN_KEYS:
            raise _NoKernel(f"more than {K.MAX_ATTN_KEYS} keys")
        ins = [self.buf(q), self.buf(k), self.buf(v)]
        tm = None
        if mask is not None:
            tm = static(mask)
            if tm.dtype not in (tq.dtype, DType.bool) or len(tm.shape) > 4 or tm.shape[-1] != skv:
                raise _NoKernel("mask dtype, rank or key length")
            ins.append(self.buf(mask))
        scale = op.attr("scale")
        scale = 1.0 / float(np.sqrt(d)) if scale is None else float(scale)
        kern = K.sdpa(tr.shape[:-2], tq.shape, tk.shape, tv.shape, tm.shape if tm else None, scale,
                      tq.dtype, tm.dtype if tm else None, k_transposed=False, causal=causal)
        self.launch(op, kern, ins, [self.buf(op.results[0])])
        return "attention (fused)"

    # -- pooling ---------------------------------------------------------------------------------
    def _window(self, op, tx, kernel):
        return resolve_window(tx.shape[2:], kernel, op.attr("strides"), op.attr("dilations"),
                              op.attr("pads"), op.attr("auto_pad") or "NOTSET")

    def _pool(self, op, kind):
        x = op.operands[0]
        tx = static(x)
        tr = static(op.results[0])
        if len(op.results) > 1 or (op.attr("layout") or "NCHW") != "NCHW" or \
                tx.dtype not in (DType.float32, DType.float16, DType.bfloat16) or len(tx.shape) < 3:
            raise _NoKernel("indices output, channels-last or non-float")
        kernel = list(op.attr("kernel_shape"))
        strides, dil, pads = self._window(op, tx, kernel)
        k = K.pool(kind, tx.shape, tr.shape, kernel, strides, dil, pads, tx.dtype,
                   bool(op.attr("count_include_pad")))
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return kind

    def lower_max_pool(self, op):
        return self._pool(op, "max_pool")

    def lower_average_pool(self, op):
        return self._pool(op, "average_pool")

    # -- data movement -------------------------------------------------------------------------
    def lower_transpose(self, op):
        x = op.operands[0]
        tx = static(x)
        perm = op.attr("perm") or list(range(len(tx.shape)))[::-1]
        k = K.transpose(tx.shape, [int(p) % max(1, len(tx.shape)) for p in perm], tx.dtype)
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return "transpose"

    def lower_concat(self, op):
        ts = [static(v) for v in op.operands]
        tr = static(op.results[0])
        axis = int(op.attr("axis")) % len(tr.shape)
        live = [(v, t) for v, t in zip(op.operands, ts) if K.numel(t.shape) > 0]
        if not live or len(live) > 64:
            raise _NoKernel("no (or too many) non-empty inputs")
        k = K.concat([t.shape for _, t in live], axis, tr.dtype)
        self.launch(op, k, [self.buf(v) for v, _ in live], [self.buf(op.results[0])])
        return "concat"

    def lower_gather(self, op):
        x, idx = op.operands
        tx, ti = static(x), static(idx)
        static(op.results[0])
        if not tx.shape or K.numel(tx.shape) == 0:
            raise _NoKernel("scalar or empty data")
        axis = int(op.attr("axis") or 0) % len(tx.shape)
        c = _const(idx)
        if c is not None:
            dim = tx.shape[axis]
            if c.size and (c.min() < -dim or c.max() >= dim):
                from ...errors import CompileError
                raise CompileError(f"gather {op.results[0].name or ''}: a constant index is "
                                   f"outside [-{dim}, {dim})")
        k = K.gather(tx.shape, ti.shape, axis, tx.dtype, ti.dtype)
        self.launch(op, k, [self.buf(x), self.buf(idx)], [self.buf(op.results[0])])
        return "gather"

    def lower_slice(self, op):
        x = op.operand(0)
        tx, tr = static(x), static(op.results[0])
        vals = [_const(op.operand(i)) for i in range(1, 5)]
        if any(v is None and op.operand(i + 1) is not None for i, v in enumerate(vals)):
            raise _NoKernel("starts/ends/axes/steps are not constants")
        starts, ends, axes, steps = vals
        rank = len(tx.shape)
        axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes.reshape(-1)]
        steps = [1] * len(axes) if steps is None else [int(s) for s in steps.reshape(-1)]
        st = [0] * rank
        sp = [1] * rank
        for a, s0, e0, s in zip(axes, starts.reshape(-1), ends.reshape(-1), steps):
            dim = tx.shape[a]
            start, _, _ = slice(int(s0), int(e0), s).indices(dim)
            st[a], sp[a] = start, s
        k = K.slice_(tx.shape, st, sp, tr.shape, tx.dtype)
        self.launch(op, k, [self.buf(x)], [self.buf(op.results[0])])
        return "slice"

    # -- convolution --------------------------------------------------------------------------
    def lower_conv(self, op):
        return self._conv(op)

    def lower_fused_conv(self, op):
        return self._conv(op)

    def _conv(self, op):
        x, w, b = op.operand(0), op.operand(1), op.operand(2)
        z = op.operand(3) if op.name == "fused_conv" else None
        tx, tw, tr = static(x), static(w), static(op.results[0])
        if (op.attr("layout") or "NCHW") != "NCHW" or tx.dtype not in (DType.float32, DType.float16, DType.bfloat16) \
                or len({tx.dtype, tw.dtype}) != 1 or len(tx.shape) < 3:
            raise _NoKernel("channels-last, non-float or mixed dtypes")
        group = int(op.attr("group") or 1)
        kernel = list(tw.shape[2:])
        strides, dil, pads = self._window(op, tx, kernel)
        act = op.attr("activation") or "none"
        params = op.attr("activation_params") or ()
        ins = [self.buf(x), self.buf(w)]
        if b is not None:
            ins.append(self.buf(b))
        macs = K.numel(tr.shape) * K.numel(tw.shape[1:])
        if macs >= CONV_GEMM_MIN_MACS and tx.dtype in BLAS_DTYPES:
            return self._conv_gemm(op, tx, tw, tr, strides, dil, pads, group, ins, b, z, act, params)
        cins = [ins[0], ins[1], self.buf(b) if b is not None else None,
                self.buf(z) if z is not None else None]
        k = K.conv_direct(tx.shape, tw.shape, tr.shape, strides, dil, pads, group, tx.dtype,
                          b is not None, z is not None, act, params)
        self.launch(op, k, cins, [self.buf(op.results[0])])
        return "conv (direct)"

    def _conv_gemm(self, op, tx, tw, tr, strides, dil, pads, group, ins, b, z, act, params):
        """im2col (skipped for 1x1 stride-1 unpadded convs) + one batched cuBLAS product
        w[g, Mg, Cg*K] @ col[n, g, Cg*K, P] + the bias/residual/activation epilogue."""
        n, c = tx.shape[0], tx.shape[1]
        m = tw.shape[0]
        kk = K.numel(tw.shape[2:])
        p = K.numel(tr.shape[2:])
        cg, mg = c // group, m // group
        pointwise = kk == 1 and all(s == 1 for s in strides) and not any(pads) and \
            tuple(tr.shape[2:]) == tuple(tx.shape[2:])
        xb = ins[0]
        if pointwise:
            col = xb
        else:
            col = self.temp("im2col", (n, c * kk, p), tx.dtype)
            self.launch(op, K.im2col(tx.shape, tw.shape, tr.shape, strides, dil, pads, tx.dtype),
                        [xb], [col])
        out = self.buf(op.results[0])
        a_view = ((group, mg, cg * kk), (mg * cg * kk, cg * kk, 1))
        b_view = ((n, group, cg * kk, p), (c * kk * p, cg * kk * p, p, 1))
        o_view = ((n, group, mg, p), (m * p, mg * p, p, 1))
        self.out.actions.append(Blas(ins[1], col, out, a_view, b_view, o_view, op))
        if b is not None or z is not None or act != "none":
            eins = [out]
            bias_shape = None
            if b is not None:
                eins.append(ins[2])
                bias_shape = (m,)
            else:
                eins.append(None)
            if z is not None:
                eins.append(self.buf(z))
            k = K.epilogue(tr.shape, tr.dtype, bias_shape=bias_shape, resid=z is not None,
                           act=act, act_params=params, bias_axis=1 if b is not None else None)
            self.launch(op, k, eins, [out])
        return "conv (im2col + cuBLAS)" if not pointwise else "conv (cuBLAS)"

    # -- matrix products --------------------------------------------------------------------------
    def lower_matmul(self, op):
        return self._matmul(op, op.operand(0), op.operand(1), None, 1.0, 1.0, False, False)

    def lower_linear(self, op):
        return self._matmul(op, op.operand(0), op.operand(1), op.operand(2), 1.0, 1.0, False, False,
                            op.attr("activation"), op.attr("activation_params") or ())

    def lower_gemm(self, op):
        return self._matmul(op, op.operand(0), op.operand(1), op.operand(2),
                            float(op.attr("alpha")), float(op.attr("beta")),
                            bool(op.attr("transA")), bool(op.attr("transB")))

    def lower_fused_gemm(self, op):
        return self._matmul(op, op.operand(0), op.operand(1), op.operand(2),
                            float(op.attr("alpha")), float(op.attr("beta")),
                            bool(op.attr("transA")), bool(op.attr("transB")),
                            op.attr("activation"), op.attr("activation_params") or ())

    def _matmul(self, op, a, b, c, alpha, beta, ta, tb, act="none", params=()):
        t_a, t_b, tr = static(a), static(b), static(op.results[0])
        if t_a.dtype not in (DType.float32, DType.float16, DType.bfloat16, DType.float64) or \
                t_a.dtype != t_b.dtype:
            raise _NoKernel(f"matmul on {t_a.dtype.name}/{t_b.dtype.name}")
        if len(t_a.shape) < 2 or len(t_b.shape) < 2:
            raise _NoKernel("1-D matmul operand")
        if len(tr.shape) != max(len(t_a.shape), len(t_b.shape)):
            raise _NoKernel("result rank")
        sa, sb = list(t_a.shape), list(t_b.shape)
        ast, bst = K.strides_of(sa), K.strides_of(sb)
        if ta:
            sa[-2:], ast[-2:] = sa[-1:-3:-1], ast[-1:-3:-1]
        if tb:
            sb[-2:], bst[-2:] = sb[-1:-3:-1], bst[-1:-3:-1]
        m, kdim, n = sa[-2], sa[-1], sb[-1]
        batch = list(tr.shape[:-2])
        bias = None
        if c is not None:
            tc = static(c)
            if tc.dtype != t_a.dtype:
                raise _NoKernel("bias dtype")
            bias = (tuple(tc.shape), tc.dtype)
        ins = [self.buf(a), self.buf(b)] + ([self.buf(c)] if c is not None else [])
        out = self.buf(op.results[0])
        if t_a.dtype in BLAS_DTYPES:
            self.out.actions.append(Blas(ins[0], ins[1], out, (tuple(sa), tuple(ast)),
                                         (tuple(sb), tuple(bst)),
                                         (tuple(tr.shape), tuple(K.strides_of(tr.shape))), op))
            if c is not None or alpha != 1.0 or act != "none":
                k = K.epilogue(tr.shape, tr.dtype, alpha=alpha,
                               bias_shape=bias[0] if bias else None, bias_dtype=t_a.dtype,
                               beta=beta, act=act, act_params=params)
                self.launch(op, k, [out] + ins[2:], [out])
            return "cuBLAS" + (" + epilogue" if len(self.out.actions) and isinstance(
                self.out.actions[-1], Launch) else "")
        nb = K.numel(batch)
        if nb > 65535 or -(-m // K.TILE) > 65535:
            raise _NoKernel("grid too large for the tiled GEMM")
        ab = _batch_strides(sa, ast, batch)
        bb = _batch_strides(sb, bst, batch)
        k = K.gemm_tiled(batch, m, n, kdim, ab + ast[-2:], bb + bst[-2:], t_a.dtype, alpha, bias,
                         beta, act, params)
        self.launch(op, k, ins, [out])
        return "gemm (tiled)"


def _batch_strides(shape, strides, batch):
    """Element strides of ``shape``'s leading (batch) dims broadcast to ``batch``."""
    pad = len(batch) - (len(shape) - 2)
    out = []
    for i in range(len(batch)):
        j = i - pad
        out.append(0 if j < 0 or shape[j] == 1 else strides[j])
    return out


def lower_module(module: Module) -> Lowered:
    """The CUDA actions for a module whose input shapes are concrete."""
    return Lowerer(module).run()


def specialize(module: Module, shapes) -> Module:
    """A copy of ``module`` with concrete input ``shapes`` ({name: shape}): the shared
    specialization (``passes.memory.specialize_types``, the one the cpu backend uses), then
    the shape arithmetic it makes constant folded on the host (``fold_static``)."""
    from ...passes.memory import specialize_types
    m = specialize_types(module, shapes)
    fold_static(m)
    return m


#: the largest result (elements) folding computes on the host at specialization
FOLD_MAX_ELEMENTS = 1 << 12


def fold_static(m: Module) -> int:
    """With concrete shapes, ``shape``/``size`` of a static tensor and small pure ops whose
    operands are all constants become constants (the index arithmetic around reshapes in
    exported models), so no op runs on the host per call and the run can be graph-captured."""
    from ...ir import Builder
    from ..numpy import Interpreter
    interp = Interpreter(m)
    n = 0
    for op in list(m.graph.block):
        if op.is_terminator or op.name == "constant" or op.regions or not op.results:
            continue
        od = op.opdef
        if od is None or not od.pure or not all(isinstance(r.type, TensorType) for r in op.results):
            continue
        env = {}
        if op.name in ("shape", "size"):
            t = op.operands[0].type
            if not isinstance(t, TensorType) or t.shape is None or \
                    not all(isinstance(d, int) for d in t.shape):
                continue
            # the values are never read: a zero-stride stand-in of the right shape
            env[id(op.operands[0])] = np.broadcast_to(np.zeros((), t.dtype.numpy), t.shape)
        else:
            vals = [_const(v) for v in op.operands]
            if not op.operands or any(c is None and v is not None for c, v in zip(vals, op.operands)):
                continue
            if any(c is not None and c.size > FOLD_MAX_ELEMENTS for c in vals):
                continue
            env = {id(v): c for v, c in zip(op.operands, vals) if v is not None}
        try:
            interp.run_op(op, env)
        except Exception:
            continue
        outs = [env.get(id(r)) for r in op.results]
        if any(not isinstance(x, np.ndarray) or x.dtype == object or x.size > FOLD_MAX_ELEMENTS
               for x in outs):
            continue
        b = Builder(op.parent, before=op, provenance=op.provenance, created_by="cuda.fold_static")
        op.replace_with([b.constant(np.ascontiguousarray(x).astype(r.type.dtype.numpy, copy=False))
                         for x, r in zip(outs, op.results)])
        n += 1
    return n


def lower_for_shapes(module: Module, shapes) -> Lowered:
    """Specialize ``module`` to concrete input ``shapes`` ({name: shape}) and lower it."""
    return lower_module(specialize(module, shapes))
