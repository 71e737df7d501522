"""Native kernels for sequence models: layer_norm, the recurrent layers (lstm, gru),
scaled dot-product attention and gather with constant indices (lowering rules in
lower_seq.py).

Why these are hand-written rather than decomposed into the core kernels:

* the gates of a recurrent layer and the scores of attention go through exp / sigmoid /
  tanh element by element; ``llvm.exp.f32`` and ``tanhf`` are scalar libm calls, so the
  ``v*`` helpers below evaluate them on ``<8 x float>`` with Cephes-style polynomials
  (about 2 ulp; NaN stays NaN, ``exp(-inf)`` is exactly 0 so masked scores vanish);
* a recurrent layer is one kernel: the input projection of every time step is one product
  (the GemmPacked tile over column blocks of ``W^T`` that stay in L2), the recurrent
  product per step is a register-tiled loop over panels of ``R^T`` packed at lowering time
  (``pack_panels``) so each step streams the weights once, contiguously; the directions
  of a bidirectional layer run as two tasks on the worker pool;
* attention runs per (batch, head) and block of 48 query rows: ``Q K^T``, the masked,
  scaled softmax, ``P V`` (panel loops over K and V packed per head, or sgemm for long
  key sequences) - the scores never leave a scratch block that fits in cache.

Every kernel follows kernels.py: outputs first, then inputs, then scratch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from . import vmath
from .codegen import F32, I8, I32, I64, INT, FnBuilder, Sgemm, f32, i64, is_dynamic_emission, memcpy, memset0
from .kernels import Kernel, _fb, prod
from .shapetrace import select, test, tmax, tmin
from .kernels_gemm import emit_pack_panels, emit_panel_gemm, lanes, panel_floats
from .kernels_panel_rt import emit_pack_panels_rt, emit_panel_gemm_rt

W8 = 8          # vector width (floats)
NBW = 64        # columns per packed panel of the recurrent weights (8 vectors)


# -- vector helpers (w = 1: scalar float, else <w x float>) --------------------------------
def vty(w: int) -> ir.Type:
    return F32 if w == 1 else ir.VectorType(F32, w)


def vconst(w: int, x: float) -> ir.Constant:
    return f32(x) if w == 1 else ir.Constant(vty(w), [float(x)] * w)


def splat(b: ir.IRBuilder, s, w: int):
    """``s`` (any scalar type) broadcast to ``w`` lanes (``s`` itself when w = 1)."""
    if w == 1:
        return s
    vt = ir.VectorType(s.type, w)
    v = b.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(I32, 0))
    return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, w), [0] * w))


def vload(fb: FnBuilder, base, idx, w: int):
    p = fb.ptr(base, idx)
    if w == 1:
        return fb.b.load(p, align=4)
    return fb.b.load(fb.b.bitcast(p, vty(w).as_pointer()), align=4)


def vstore(fb: FnBuilder, v, base, idx, w: int) -> None:
    p = fb.ptr(base, idx)
    if w == 1:
        fb.b.store(v, p, align=4)
    else:
        fb.b.store(v, fb.b.bitcast(p, vty(w).as_pointer()), align=4)


def vintr(fb: FnBuilder, name: str, w: int, args):
    """``llvm.<name>`` on float or <w x float>."""
    suffix = "f32" if w == 1 else f"v{w}f32"
    return fb.intrinsic(f"llvm.{name}.{suffix}", vty(w), args)


def vfma(fb: FnBuilder, a, x, acc, w: int):
    return vintr(fb, "fma", w, [a, x, acc])


def vmax(b, x, y):
    """max ignoring NaN in ``y`` (the running value)."""
    return b.select(b.fcmp_ordered(">", x, y), x, y)


def vclamp(b, x, lo: float, hi: float, w: int):
    """min(max(x, lo), hi) keeping NaN."""
    x = b.select(b.fcmp_ordered("<", x, vconst(w, lo)), vconst(w, lo), x)
    return b.select(b.fcmp_ordered(">", x, vconst(w, hi)), vconst(w, hi), x)


def vexp(fb: FnBuilder, x, w: int):
    """exp(x) on float / <w x float>: vmath's polynomial code (one implementation for
    every kernel)."""
    return vmath.exp(fb, x)


#: below this, a softmax weight e^(x - max) is taken as 0 (e^-87 is the smallest normal float)
SOFTMAX_FLUSH = -87.0


def vexp_softmax(fb: FnBuilder, d, w: int):
    """e^d for d = x - max <= 0, as a softmax weight: d below SOFTMAX_FLUSH (a masked score:
    -1e4, -1e9, -inf) gives exactly 0 without computing a denormal.  vmath.exp would return
    the denormals of [-104, -87] exactly, and every result (or product) in that range costs
    the FPU a slow microcoded step: with half the scores masked, a causal 128-token attention
    ran 15% slower than an unmasked one.  Those weights are below 1e-38 of the row's largest
    (which is 1), so the softmax changes by less than a float's rounding."""
    b = fb.b
    lo = vconst(w, SOFTMAX_FLUSH)
    small = b.fcmp_ordered("<", d, lo)
    e = vmath.exp(fb, b.select(small, lo, d), nonpositive=True)
    return b.select(small, vconst(w, 0.0), e)


def vsigmoid(fb: FnBuilder, x, w: int):
    return vmath.sigmoid(fb, x)


def vtanh(fb: FnBuilder, x, w: int):
    return vmath.tanh(fb, x)


def hsum(b, v, w: int):
    if w == 1:
        return v
    s = b.extract_element(v, ir.Constant(I32, 0))
    for e in range(1, w):
        s = b.fadd(s, b.extract_element(v, ir.Constant(I32, e)))
    return s


def hmax(b, v, w: int):
    if w == 1:
        return v
    s = b.extract_element(v, ir.Constant(I32, 0))
    for e in range(1, w):
        s = vmax(b, b.extract_element(v, ir.Constant(I32, e)), s)
    return s


def vloop(fb: FnBuilder, n: int, body, start=0, width: int = W8, dynamic: bool = False) -> None:
    """``body(j, w)`` over j in [start, start + n): vectors of ``width``, then a scalar tail.
    ``dynamic`` (a shape-dependent ``n`` in a dynamic module): both loops, bounds read at
    run time."""
    if dynamic and is_dynamic_emission():
        b = fb.b
        s = fb.dim(start) if isinstance(start, INT) else start
        mid = b.add(s, fb.dim((n // width) * width))
        with fb.loop(s, mid, width) as j:
            body(j, width)
        with fb.loop(mid, b.add(s, fb.dim(n))) as j:
            body(j, 1)
        return
    nv = (n // width) * width
    if nv:
        with fb.loop(start, start + nv, width) as j:
            body(j, width)
    if n - nv:
        with fb.loop(start + nv, start + n) as j:
            body(j, 1)


#: recurrent-layer activations (ONNX names, lower case) the kernels evaluate natively
RNN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "affine", "leakyrelu", "thresholdedrelu",
                   "scaledtanh", "hardsigmoid", "elu", "softsign", "softplus")


def emit_activation(fb: FnBuilder, spec: tuple, x, w: int):
    """An ONNX recurrent activation ``spec = (name, alpha, beta)`` on float / <w x float>."""
    b = fb.b
    name, a, be = spec
    zero = vconst(w, 0.0)
    if name == "sigmoid":
        return vsigmoid(fb, x, w)
    if name == "tanh":
        return vtanh(fb, x, w)
    if name == "relu":
        return b.select(b.fcmp_ordered("<", x, zero), zero, x)
    if name == "affine":
        return b.fadd(b.fmul(x, vconst(w, a)), vconst(w, be))
    if name == "leakyrelu":
        return b.select(b.fcmp_ordered("<", x, zero), b.fmul(x, vconst(w, a)), x)
    if name == "thresholdedrelu":
        return b.select(b.fcmp_ordered(">", x, vconst(w, a)), x, zero)
    if name == "scaledtanh":
        return b.fmul(vtanh(fb, b.fmul(x, vconst(w, be)), w), vconst(w, a))
    if name == "hardsigmoid":
        return vclamp(b, b.fadd(b.fmul(x, vconst(w, a)), vconst(w, be)), 0.0, 1.0, w)
    if name == "elu":
        neg = b.fmul(b.fsub(vexp(fb, x, w), vconst(w, 1.0)), vconst(w, a))
        return b.select(b.fcmp_ordered("<", x, zero), neg, x)
    if name == "softsign":
        return b.fdiv(x, b.fadd(vconst(w, 1.0), vintr(fb, "fabs", w, [x])))
    if name == "softplus":  # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)
        return vmath.softplus(fb, x)
    raise NotImplementedError(name)


# -- layer_norm ------------------------------------------------------------------------------
LN_ROWS_PER_TASK = 16
LN_PARALLEL_MIN = 1 << 15  # elements


@dataclass
class LayerNorm(Kernel):
    """y = (x - mean) / sqrt(var + eps) * scale + bias over the last ``D`` elements of each
    of ``rows`` rows (two passes for the statistics, as the numpy reference does);
    ``scale``/``bias`` are "vec" ([D]), "scalar", "none" or "chan" (one value per row,
    row ``r`` taking entry ``r % channels``: instance_norm, whose rows are (n, c) pairs)."""

    rows: int
    D: int
    eps: float
    scale: str = "vec"
    bias: str = "none"
    name: str = "layer_norm"
    channels: int = 1

    def key(self):
        return ("layer_norm", self.rows, self.D, self.eps, self.scale, self.bias, self.channels)

    @property
    def n_tasks(self) -> int:
        if not is_dynamic_emission() and self.rows * self.D < LN_PARALLEL_MIN:
            return 1
        return -(-self.rows // LN_ROWS_PER_TASK)

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        if not is_dynamic_emission() and self.n_tasks == 1:  # dynamic: the split is data
            fb = _fb(module, fname, n_args)
            self._rows(fb, fb.args, i64(0), i64(self.rows))
            return fb.finish()

        def task(fb, args, t):
            b = fb.b
            args = [b.bitcast(a, F32.as_pointer()) for a in args]
            lo = b.mul(t, i64(LN_ROWS_PER_TASK))
            hi = b.add(lo, i64(LN_ROWS_PER_TASK))
            rows = fb.dim(self.rows)
            hi = b.select(b.icmp_signed("<", hi, rows), hi, rows)
            self._rows(fb, args, lo, hi)
        return parallel_kernel(module, fname, n_args, self.n_tasks, task)

    def _rows(self, fb, args, lo, hi):
        b = fb.b
        D = self.D
        out, x, sc = args[0], args[1], args[2]
        bias = args[3] if self.bias != "none" else None
        acc = fb.alloca(vty(W8))
        sacc = fb.alloca(F32)
        with fb.loop(lo, hi) as r:
            base = b.mul(r, i64(D))

            def reduce(fn):
                b.store(vconst(W8, 0.0), acc)
                b.store(f32(0.0), sacc)

                def body(j, w):
                    v = fn(vload(fb, x, b.add(base, j), w), w)
                    slot = acc if w > 1 else sacc
                    b.store(b.fadd(b.load(slot), v), slot)
                vloop(fb, D, body)
                return b.fdiv(b.fadd(hsum(b, b.load(acc), W8), b.load(sacc)), f32(D))
            mean = reduce(lambda v, w: v)
            var = reduce(lambda v, w: b.fmul(b.fsub(v, splat(b, mean, w)),
                                              b.fsub(v, splat(b, mean, w))))
            rstd = b.fdiv(f32(1.0), fb.intrinsic("llvm.sqrt.f32", F32, [b.fadd(var, f32(self.eps))]))
            ch = b.srem(r, i64(self.channels)) if "chan" in (self.scale, self.bias) else None

            def param(ptr, kind, j, w):
                if kind == "vec":
                    return vload(fb, ptr, j, w)
                return splat(b, fb.load(ptr, ch if kind == "chan" else 0), w)

            def norm(j, w):
                v = b.fmul(b.fsub(vload(fb, x, b.add(base, j), w), splat(b, mean, w)), splat(b, rstd, w))
                v = b.fmul(v, param(sc, self.scale, j, w))
                if bias is not None:
                    v = b.fadd(v, param(bias, self.bias, j, w))
                vstore(fb, v, out, b.add(base, j), w)
            vloop(fb, D, norm)


# -- recurrent layers -------------------------------------------------------------------------
def pack_panels(rt: np.ndarray) -> np.ndarray:
    """``RT[K, N]`` -> panels of 64 columns, each stored k-major (``[nb, K, 64]``), then the
    remaining columns ``[K, N % 64]``: the layout ``emit_panel_mm`` streams."""
    rt = np.asarray(rt, np.float32)
    Kd, N = rt.shape
    nb = N // NBW
    full = rt[:, :nb * NBW].reshape(Kd, nb, NBW).transpose(1, 0, 2).reshape(-1)
    return np.ascontiguousarray(np.concatenate([full, rt[:, nb * NBW:].reshape(-1)]))


def recurrent_segments(kind: str, hidden: int, linear_before_reset: bool) -> list[tuple[int, int]]:
    """Column ranges of the gate dim packed (and multiplied) separately: GRU without
    linear_before_reset needs r before it can multiply (r * h) by R_h."""
    if kind == "lstm":
        return [(0, 4 * hidden)]
    if linear_before_reset:
        return [(0, 3 * hidden)]
    return [(0, 2 * hidden), (2 * hidden, 3 * hidden)]


def pack_recurrent(R: np.ndarray, segments) -> np.ndarray:
    """R [nd, G, H] -> per direction, per segment, ``pack_panels(R[d, c0:c1].T)``."""
    R = np.asarray(R, np.float32)
    return np.concatenate([pack_panels(R[d, c0:c1].T) for d in range(R.shape[0])
                           for c0, c1 in segments])


def _mm_chunk(fb: FnBuilder, out, orow, ldo: int, a, arow, lda: int, p, pbase, ks: int, Kd: int,
              nr: int, nv: int, ns: int, ocol) -> None:
    """``out[orow + rr*ldo + ocol + c] = sum_k a[arow + rr*lda + k] * p[pbase + k*ks + c]`` for
    rr < nr rows and c < 8*nv + ns columns, accumulated in registers over k."""
    b = fb.b
    V = vty(W8)
    accs = [[fb.alloca(V) for _ in range(nv)] + [fb.alloca(F32) for _ in range(ns)]
            for _ in range(nr)]
    for row in accs:
        for u, slot in enumerate(row):
            b.store(vconst(W8, 0.0) if u < nv else f32(0.0), slot)
    with fb.loop(0, Kd) as k:
        pk = b.add(pbase, b.mul(k, i64(ks)))
        ws = [vload(fb, p, b.add(pk, i64(W8 * u)), W8) for u in range(nv)]
        ws += [fb.load(p, b.add(pk, i64(W8 * nv + c))) for c in range(ns)]
        for rr in range(nr):
            av = fb.load(a, b.add(b.add(arow, i64(rr * lda)), k))
            hv = splat(b, av, W8) if nv else None
            for u, slot in enumerate(accs[rr]):
                if u < nv:
                    b.store(vfma(fb, hv, ws[u], b.load(slot), W8), slot)
                else:
                    b.store(vfma(fb, av, ws[u], b.load(slot), 1), slot)
    for rr in range(nr):
        ob = b.add(b.add(orow, i64(rr * ldo)), ocol)
        for u, slot in enumerate(accs[rr]):
            if u < nv:
                vstore(fb, b.load(slot), out, b.add(ob, i64(W8 * u)), W8)
            else:
                fb.store(b.load(slot), out, b.add(ob, i64(W8 * nv + u - nv)))


MM_ROWS = 4   # rows per register tile when there are that many (16 columns x 4 rows)


def emit_panel_mm(fb: FnBuilder, out, out_off, ldo: int, a, lda: int, p, p_off, rows: int,
                  Kd: int, N: int) -> None:
    """``out[out_off + r*ldo + c] = sum_k a[r*lda + k] * RT[k, c]`` for r < rows, c < N, with
    RT packed by ``pack_panels`` at ``p + p_off``.  A single row keeps 64 columns in 8
    vector accumulators; groups of 4 rows share each weight load over 16 columns (so the
    panels stream from cache a quarter as often)."""
    b = fb.b
    nb, rem = N // NBW, N % NBW
    r16 = rem // 16 * 16
    rbase = b.add(p_off, i64(nb * Kd * NBW))

    def block(r0, nr):
        arow = b.mul(r0, i64(lda))
        orow = b.add(out_off, b.mul(r0, i64(ldo)))
        if nb:
            with fb.loop(0, nb) as jb:
                pb = b.add(p_off, b.mul(jb, i64(Kd * NBW)))
                oc = b.mul(jb, i64(NBW))
                if nr == 1:
                    _mm_chunk(fb, out, orow, ldo, a, arow, lda, p, pb, NBW, Kd, 1, NBW // W8, 0, oc)
                else:
                    for sub in range(NBW // 16):
                        _mm_chunk(fb, out, orow, ldo, a, arow, lda, p, b.add(pb, i64(16 * sub)),
                                  NBW, Kd, nr, 2, 0, b.add(oc, i64(16 * sub)))
        if not rem:
            return
        if nr == 1:
            _mm_chunk(fb, out, orow, ldo, a, arow, lda, p, rbase, rem, Kd, 1, rem // W8, rem % W8,
                      i64(nb * NBW))
            return
        for c in range(0, r16, 16):
            _mm_chunk(fb, out, orow, ldo, a, arow, lda, p, b.add(rbase, i64(c)), rem, Kd, nr, 2, 0,
                      i64(nb * NBW + c))
        tail = rem - r16
        if tail:
            for rr in range(nr):
                _mm_chunk(fb, out, b.add(orow, i64(rr * ldo)), ldo, a, b.add(arow, i64(rr * lda)),
                          lda, p, b.add(rbase, i64(r16)), rem, Kd, 1, tail // W8, tail % W8,
                          i64(nb * NBW + r16))

    n4 = rows // MM_ROWS * MM_ROWS if rows >= MM_ROWS else 0
    if n4:
        with fb.loop(0, n4, MM_ROWS) as r0:
            block(r0, MM_ROWS)
    if rows - n4:
        with fb.loop(n4, rows) as r:
            block(r, 1)


def emit_pack(fb: FnBuilder, dst, dst_off: int, src, src_off, Kd: int, N: int, sk: int,
              sc: int) -> None:
    """In-kernel ``pack_panels`` of the [Kd, N] matrix whose (k, c) element is at
    ``src[src_off + k*sk + c*sc]`` (R^T of a runtime R: sk = 1, sc = row length; K or V of
    attention: their own strides)."""
    b = fb.b
    nb, rem = N // NBW, N % NBW
    soff = i64(src_off) if isinstance(src_off, INT) else src_off
    if nb:
        with fb.loop(0, nb) as jb:
            with fb.loop(0, Kd) as k:
                d0 = b.add(i64(dst_off), b.add(b.mul(jb, i64(Kd * NBW)), b.mul(k, i64(NBW))))
                s0 = b.add(soff, b.add(b.mul(k, i64(sk)), b.mul(jb, i64(NBW * sc))))
                with fb.loop(0, NBW) as u:
                    fb.store(fb.load(src, b.add(s0, b.mul(u, i64(sc)))), dst, b.add(d0, u))
    if rem:
        with fb.loop(0, Kd) as k:
            d0 = b.add(i64(dst_off + nb * Kd * NBW), b.mul(k, i64(rem)))
            s0 = b.add(soff, b.add(b.mul(k, i64(sk)), i64(nb * NBW * sc)))
            with fb.loop(0, rem) as u:
                fb.store(fb.load(src, b.add(s0, b.mul(u, i64(sc)))), dst, b.add(d0, u))


def _align16(n: int) -> int:
    return -(-n // 16) * 16


#: packed W^T per column block of the input projection (the block stays in L2 while the
#: 6-row tiles of every time step sweep it)
PROJ_BLOCK_BYTES = 256 * 1024
#: multiply-adds of a one-direction input projection from which it is split over the pool
PROJ_PARALLEL_MIN = 1 << 20
PROJ_TASKS = 8


@dataclass
class Recurrent(Kernel):
    """ONNX LSTM / GRU (no sequence_lens) for every direction, one time loop each.

    Per direction: ``xp = X @ W^T`` for all steps on the GemmPacked tile
    (``emit_panel_gemm`` over column blocks of W^T packed by ``kernels_gemm.pack_b``);
    then per step ``g = h @ R^T`` (``emit_panel_mm``) and the gate math (biases added
    there) on vectors of hidden units.

    Work split: the two directions of a bidirectional layer are independent, so they are
    two tasks of one pool job (each with its own scratch: projection, recurrence and final
    states), one per core; a single direction splits its projection into column blocks
    over the pool and then runs its recurrence on the calling thread.  On one thread the
    tasks run inline one after the other, as before.

    Outputs: Y, Y_h (and Y_c for lstm); inputs: X, W (panels when ``packed_w``), R (panels
    when ``packed_r``), then the optional B, initial_h, initial_c, P; then scratch.
    Runtime weights are packed into each direction's scratch."""

    kind: str                 # "lstm" | "gru"
    seq: int
    batch: int
    input_size: int
    hidden: int
    reverse: tuple            # per direction: runs backwards in time
    acts: tuple               # per direction: activation specs (name, alpha, beta)
    clip: float | None = None
    layout: int = 0
    has_bias: bool = False
    has_h0: bool = False
    has_c0: bool = False
    has_p: bool = False
    input_forget: bool = False
    linear_before_reset: bool = False
    packed_r: bool = True
    packed_w: bool = True
    wide: bool = False        # projection tile 6 x 32 (AVX-512) or 6 x 16, as pack_b
    name: str = "recurrent"

    def key(self):
        return ("recurrent", self.kind, self.seq, self.batch, self.input_size, self.hidden,
                self.reverse, self.acts, self.clip, self.layout, self.has_bias, self.has_h0,
                self.has_c0, self.has_p, self.input_forget, self.linear_before_reset,
                self.packed_r, self.packed_w, self.wide)

    @property
    def n_results(self) -> int:
        return 3 if self.kind == "lstm" else 2

    @property
    def gates(self) -> int:
        return 4 if self.kind == "lstm" else 3

    @property
    def n_dirs(self) -> int:
        return len(self.reverse)

    def proj_blocks(self) -> tuple[int, int]:
        """(columns per block, blocks) of the projection: a block's packed W^T fits
        PROJ_BLOCK_BYTES; a single direction worth splitting gets at least PROJ_TASKS
        blocks where it has that many panels."""
        nw = 2 * lanes(self.wide)
        G, I = self.gates * self.hidden, self.input_size
        panels = -(-G // nw)
        per = max(1, min(panels, PROJ_BLOCK_BYTES // (I * nw * 4)))
        if self.n_dirs == 1 and self.seq * self.batch * I * G >= PROJ_PARALLEL_MIN:
            per = min(per, -(-panels // PROJ_TASKS))
        return per * nw, -(-panels // per)

    def _scratch_layout(self) -> dict[str, int]:
        """Offsets (floats) inside one direction's scratch, and its size ("_dir")."""
        H, B, G = self.hidden, self.batch, self.gates * self.hidden
        sizes = [("xp", self.seq * B * G), ("g", B * G), ("h", B * H), ("c", B * H),
                 ("rh", B * H), ("bx", G), ("rbh", H)]
        if not self.packed_r:
            sizes.append(("rp", G * H))
        if not self.packed_w:
            sizes.append(("wp", panel_floats(self.input_size, G, self.wide)))
        off, lay = 0, {}
        for k, n in sizes:
            lay[k] = off
            off += _align16(n)
        lay["_dir"] = off
        return lay

    @property
    def scratch_bytes(self) -> int:
        return self.n_dirs * self._scratch_layout()["_dir"] * 4

    # -- structure ------------------------------------------------------------------------
    def emit(self, module, fname, n_args):
        from .parallel import emit_parallel
        fb = _fb(module, fname, n_args)
        b = fb.b
        if self.n_dirs == 2:
            def task(tb, args, t):
                args = [tb.b.bitcast(a, F32.as_pointer()) for a in args]
                first, second, done = tb.block("dir0"), tb.block("dir1"), tb.block("dirs")
                tb.b.cbranch(tb.b.icmp_signed("==", t, i64(0)), first, second)
                for d, blk in ((0, first), (1, second)):
                    tb.b.position_at_end(blk)
                    self._direction(tb, args, d, parallel_proj=False)
                    tb.b.branch(done)
                tb.b.position_at_end(done)
            emit_parallel(fb, fname + "_dirs", list(fb.args), 2, task)
            return fb.finish()
        cols, nblk = self.proj_blocks()
        if nblk == 1:
            self._direction(fb, list(fb.args), 0, parallel_proj=False)
            return fb.finish()
        args = list(fb.args)
        wp = self._pack_w(fb, args, 0)

        def task(tb, targs, t):
            targs = [tb.b.bitcast(a, F32.as_pointer()) for a in targs]
            self._project_block(tb, targs[0], targs[1], targs[2], t)
        ins = args[self.n_results:]
        emit_parallel(fb, fname + "_proj", [ins[0], wp, self._sp(fb, args, 0, "xp")], nblk, task)
        self._direction(fb, args, 0, parallel_proj=True)
        return fb.finish()

    def _sp(self, fb, args, d, name):
        lay = self._scratch_layout()
        return fb.ptr(args[-1], d * lay["_dir"] + lay[name])

    def _pack_w(self, fb, args, d):
        """W^T of direction d as GemmPacked panels (packed into scratch when W is a runtime
        input)."""
        I, G = self.input_size, self.gates * self.hidden
        W = args[self.n_results + 1]
        if self.packed_w:
            return fb.ptr(W, d * panel_floats(I, G, self.wide))
        wp = self._sp(fb, args, d, "wp")
        emit_pack_panels(fb, wp, 0, W, d * G * I, I, G, 1, I, self.wide)
        return wp

    def _project_block(self, fb, X, wp, xp, blk):
        """xp[:, block blk] = X @ W^T[:, block blk] (blk: an i64 value)."""
        b = fb.b
        cols, nblk = self.proj_blocks()
        G, I, rows = self.gates * self.hidden, self.input_size, self.seq * self.batch
        last = G - (nblk - 1) * cols

        def block(n):
            emit_panel_gemm(fb, xp, b.mul(blk, i64(cols)), G, X, 0, I,
                            fb.ptr(wp, b.mul(blk, i64(cols * I))), 0, rows, I, n, self.wide)
        if last == cols:
            block(cols)
            return
        full, tail, done = fb.block("pfull"), fb.block("ptail"), fb.block("pdone")
        b.cbranch(b.icmp_signed("<", blk, i64(nblk - 1)), full, tail)
        b.position_at_end(full)
        block(cols)
        b.branch(done)
        b.position_at_end(tail)
        block(last)
        b.branch(done)
        b.position_at_end(done)

    def _direction(self, fb, args, d, parallel_proj: bool):
        """Everything of direction d: weights, projection (unless ``parallel_proj``: done
        by the pool before), biases, initial state, the time loop, the final states."""
        b = fb.b
        nr = self.n_results
        Y, Yh = args[0], args[1]
        Yc = args[2] if self.kind == "lstm" else None
        ins = args[nr:]
        X, R = ins[0], ins[2]
        k = 3
        Bv = h0 = c0 = P = None
        if self.has_bias:
            Bv, k = ins[k], k + 1
        if self.has_h0:
            h0, k = ins[k], k + 1
        if self.has_c0:
            c0, k = ins[k], k + 1
        if self.has_p:
            P, k = ins[k], k + 1
        H, Bn, T = self.hidden, self.batch, self.seq
        G = self.gates * H
        nd = self.n_dirs
        segs = recurrent_segments(self.kind, H, self.linear_before_reset)

        def sp(name):
            return self._sp(fb, args, d, name)

        xp, gbuf, hs, cs, rh, bx, rbh = (sp(n) for n in ("xp", "g", "h", "c", "rh", "bx", "rbh"))

        def state_off(bi):
            """offset of (direction d, batch bi) in initial_h / Y_h ([nd,B,H] or [B,nd,H])"""
            if self.layout:
                return b.mul(b.add(b.mul(bi, i64(nd)), i64(d)), i64(H))
            return b.mul(b.add(i64(d * Bn), bi), i64(H))

        # recurrent weights, packed
        if self.packed_r:
            rp, rp_off = R, d * G * H
        else:
            rp, rp_off = sp("rp"), 0
            for c0_, c1_ in segs:  # R[d, c0:c1].T
                emit_pack(fb, rp, c0_ * H, R, d * G * H + c0_ * H, H, c1_ - c0_, 1, H)
        if not parallel_proj:
            wp = self._pack_w(fb, args, d)
            _, nblk = self.proj_blocks()
            with fb.loop(0, nblk) as blk:
                self._project_block(fb, X, wp, xp, blk)
        if self.has_bias:   # added to the projection as each step reads it
            with fb.loop(0, G) as c:
                wb = fb.load(Bv, b.add(i64(d * 2 * G), c))
                rb = fb.load(Bv, b.add(i64(d * 2 * G + G), c))
                if self.kind == "gru":
                    rb = b.select(b.icmp_signed("<", c, i64(2 * H)), rb, f32(0.0))
                fb.store(b.fadd(wb, rb), bx, c)
            if self.kind == "gru":
                with fb.loop(0, H) as j:
                    fb.store(fb.load(Bv, b.add(i64(d * 2 * G + G + 2 * H), j)), rbh, j)
        # initial state
        states = [(h0, hs)] + ([(c0, cs)] if self.kind == "lstm" else [])
        for src, dst in states:
            if src is None:
                memset0(fb, dst, Bn * H * 4)
                continue
            with fb.loop(0, Bn) as bi:
                memcpy(fb, fb.ptr(dst, b.mul(bi, i64(H))), fb.ptr(src, state_off(bi)), H * 4)
        # the time loop
        with fb.loop(0, T) as s:
            tt = b.sub(i64(T - 1), s) if self.reverse[d] else s
            self._step(fb, d, nd, tt, self.acts[d], xp, gbuf, hs, cs, rh, bx, rbh, rp, rp_off,
                       segs, Y, P)
        # final states
        with fb.loop(0, Bn) as bi:
            memcpy(fb, fb.ptr(Yh, state_off(bi)), fb.ptr(hs, b.mul(bi, i64(H))), H * 4)
            if Yc is not None:
                memcpy(fb, fb.ptr(Yc, state_off(bi)), fb.ptr(cs, b.mul(bi, i64(H))), H * 4)

    def _step(self, fb, d, nd, tt, acts, xp, gbuf, hs, cs, rh, bx, rbh, rp, rp_off, segs, Y, P):
        b = fb.b
        H, Bn, T = self.hidden, self.batch, self.seq
        G = self.gates * H
        cl = self.clip

        def clip(v, w):
            return vclamp(b, v, -cl, cl, w) if cl is not None else v

        def xrow(bi):
            """offset of (tt, bi)'s row in xp"""
            if self.layout:
                return b.mul(b.add(b.mul(bi, i64(T)), tt), i64(G))
            return b.mul(b.add(b.mul(tt, i64(Bn)), bi), i64(G))

        def yoff(bi):
            if self.layout:
                return b.mul(b.add(b.mul(b.add(b.mul(bi, i64(T)), tt), i64(nd)), i64(d)), i64(H))
            return b.mul(b.add(b.mul(b.add(b.mul(tt, i64(nd)), i64(d)), i64(Bn)), bi), i64(H))

        def rp_at(c0):
            return b.add(i64(rp_off), i64(c0 * H)) if isinstance(rp_off, INT) else rp_off

        def xin(bi, j, w, k):
            """the input projection of gate k at hidden unit j, with its bias"""
            off = b.add(j, i64(k * H))
            v = vload(fb, xp, b.add(xrow(bi), off), w)
            return b.fadd(v, vload(fb, bx, off, w)) if self.has_bias else v

        def gate(bi, j, w, k):
            """x-projection + recurrent product of gate k at hidden unit j"""
            off = b.add(j, i64(k * H))
            return b.fadd(xin(bi, j, w, k), vload(fb, gbuf, b.add(b.mul(bi, i64(G)), off), w))

        f0 = acts[0]
        f1 = acts[1]
        if self.kind == "lstm":
            f2 = acts[2]
            emit_panel_mm(fb, gbuf, i64(0), G, hs, H, rp, rp_at(0), Bn, H, G)
            with fb.loop(0, Bn) as bi:
                hb = b.mul(bi, i64(H))
                yo = yoff(bi)

                def cell(j, w):
                    gi, go, gf, gc = (gate(bi, j, w, k) for k in range(4))
                    c = vload(fb, cs, b.add(hb, j), w)
                    if P is not None:
                        pi = vload(fb, P, b.add(i64(d * 3 * H), j), w)
                        pf = vload(fb, P, b.add(i64(d * 3 * H + 2 * H), j), w)
                        gi = b.fadd(gi, b.fmul(pi, c))
                        gf = b.fadd(gf, b.fmul(pf, c))
                    i = emit_activation(fb, f0, clip(gi, w), w)
                    if self.input_forget:
                        f = b.fsub(vconst(w, 1.0), i)
                    else:
                        f = emit_activation(fb, f0, clip(gf, w), w)
                    cn = b.fadd(b.fmul(f, c), b.fmul(i, emit_activation(fb, f1, clip(gc, w), w)))
                    if P is not None:
                        po = vload(fb, P, b.add(i64(d * 3 * H + H), j), w)
                        go = b.fadd(go, b.fmul(po, cn))
                    o = emit_activation(fb, f0, clip(go, w), w)
                    hn = b.fmul(o, emit_activation(fb, f2, cn, w))
                    vstore(fb, cn, cs, b.add(hb, j), w)
                    vstore(fb, hn, hs, b.add(hb, j), w)
                    vstore(fb, hn, Y, b.add(yo, j), w)
                vloop(fb, H, cell)
            return
        # gru
        if self.linear_before_reset:
            emit_panel_mm(fb, gbuf, i64(0), G, hs, H, rp, rp_at(0), Bn, H, G)
        else:
            emit_panel_mm(fb, gbuf, i64(0), G, hs, H, rp, rp_at(0), Bn, H, 2 * H)
            with fb.loop(0, Bn) as bi:
                hb = b.mul(bi, i64(H))

                def reset(j, w):
                    z = emit_activation(fb, f0, clip(gate(bi, j, w, 0), w), w)
                    r = emit_activation(fb, f0, clip(gate(bi, j, w, 1), w), w)
                    vstore(fb, z, gbuf, b.add(b.mul(bi, i64(G)), j), w)  # z replaces its gate
                    vstore(fb, b.fmul(r, vload(fb, hs, b.add(hb, j), w)), rh, b.add(hb, j), w)
                vloop(fb, H, reset)
            emit_panel_mm(fb, gbuf, i64(2 * H), G, rh, H, rp, rp_at(2 * H), Bn, H, H)
        with fb.loop(0, Bn) as bi:
            hb = b.mul(bi, i64(H))
            gr = b.mul(bi, i64(G))
            yo = yoff(bi)

            def cell(j, w):
                h = vload(fb, hs, b.add(hb, j), w)
                rb = vload(fb, rbh, j, w) if self.has_bias else None
                if self.linear_before_reset:
                    z = emit_activation(fb, f0, clip(gate(bi, j, w, 0), w), w)
                    r = emit_activation(fb, f0, clip(gate(bi, j, w, 1), w), w)
                    rec = vload(fb, gbuf, b.add(gr, b.add(j, i64(2 * H))), w)
                    if rb is not None:
                        rec = b.fadd(rec, rb)
                    xh = xin(bi, j, w, 2)
                    pre = b.fadd(xh, b.fmul(r, rec))
                else:
                    z = vload(fb, gbuf, b.add(gr, j), w)
                    pre = gate(bi, j, w, 2)
                    if rb is not None:
                        pre = b.fadd(pre, rb)
                hh = emit_activation(fb, f1, clip(pre, w), w)
                hn = b.fadd(b.fmul(b.fsub(vconst(w, 1.0), z), hh), b.fmul(z, h))
                vstore(fb, hn, hs, b.add(hb, j), w)
                vstore(fb, hn, Y, b.add(yo, j), w)
            vloop(fb, H, cell)


# -- attention -------------------------------------------------------------------------------
#: query rows per scores block: a multiple of both tile heights (12 and 6 rows,
#: kernels_gemm.tile_rows), so only a sequence's last block has a partial tile (64 rows
#: left a 4-row tile in every block); 48 ran 1-3% faster than 64 at 128-256 tokens
ATT_ROWS = 48
ATT_SMALL = 16384  # floats of K (or V) per head up to which the panel loops replace sgemm
ATT_PARALLEL_MIN = 1 << 18  # multiply-adds below which one thread does it all
ATT_MAX_TASKS = 8


@dataclass
class Attention(Kernel):
    """``Y = softmax(scale * Q K^T [softcap] + mask [causal]) V`` for every element of a
    batch loop (``batch`` sizes with per-operand element strides ``q_st``, ``k_st``, ...;
    a head group of GQA is a dim with k/v stride 0).  Rows of Q/K/V/Y are ``ld*`` apart,
    features contiguous; ``kt``: K arrives transposed ([D, Skv], sdpa).  ``mask``: "none",
    "f32" (additive) or "bool" (true = attend), read at ``m_row``/``m_col`` strides.  A row
    with nothing to attend to gives zeros (as the numpy reference)."""

    Sq: int
    Skv: int
    D: int
    Dv: int
    batch: tuple
    q_st: tuple
    k_st: tuple
    v_st: tuple
    m_st: tuple
    y_st: tuple
    ldq: int
    ldk: int
    ldv: int
    ldy: int
    scale: float
    kt: bool = False
    causal: bool = False
    softcap: float = 0.0
    mask: str = "none"
    m_row: int = 0
    m_col: int = 1
    wide: bool = False      # the products' tile: 6 x 32 (AVX-512) or 6 x 16 (kernels_gemm)
    name: str = "attention"

    def key(self):
        return ("attention", self.Sq, self.Skv, self.D, self.Dv, self.batch, self.q_st,
                self.k_st, self.v_st, self.m_st, self.y_st, self.ldq, self.ldk, self.ldv,
                self.ldy, self.scale, self.kt, self.causal, self.softcap, self.mask, self.m_row,
                self.m_col, self.wide)

    @property
    def small(self) -> bool:
        """K and V (packed per head) fit in L1/L2: the panel loops beat sgemm's per-call
        cost (about 8 us for a 64x64x32 product) several times over."""
        # dynamic module: a guard on the lengths (kernels_panel_rt reads them at run time);
        # a longer sequence is a second variant, on the sgemm path
        return bool(self.Skv * tmax(self.D, self.Dv) <= ATT_SMALL)

    def _scratch(self) -> tuple[int, int, int, int]:
        """(offset of packed K, of packed V, of the row normalizers, total) in floats after
        the scores block at 0"""
        from .kernels_gemm import panel_floats
        sc = _align16(tmin(self.Sq, ATT_ROWS) * self.Skv)
        kp = _align16(panel_floats(self.D, self.Skv, self.wide)) if self.small else 0
        vp = _align16(panel_floats(self.Skv, self.Dv, self.wide)) if self.small else 0
        return sc, sc + kp, sc + kp + vp, sc + kp + vp + ATT_ROWS

    @property
    def n_tasks(self) -> int:
        """Batch elements are split over the pool in the panel path (sgemm is called from
        one thread only); each task has its own scratch slice."""
        total = prod(self.batch)
        work = total * self.Sq * self.Skv * (self.D + self.Dv)
        if not self.small:
            return 1
        if is_dynamic_emission():  # the split is run-time data: no guard on the sizes
            return select(test(work, ">=", ATT_PARALLEL_MIN), tmin(total, ATT_MAX_TASKS), 1)
        if work < ATT_PARALLEL_MIN:
            return 1
        return min(total, ATT_MAX_TASKS)

    @property
    def scratch_bytes(self) -> int:
        return self._scratch()[3] * 4 * self.n_tasks

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        if (self.small and is_dynamic_emission()) or self.n_tasks > 1:
            return parallel_kernel(module, fname, n_args, self.n_tasks, self._task)
        fb = _fb(module, fname, n_args)
        self._task(fb, list(fb.args), i64(0))
        return fb.finish()

    def _task(self, fb, args, t):
        """Batch elements [t*chunk, (t+1)*chunk), scratch slice t."""
        b = fb.b
        args = [b.bitcast(a, F32.as_pointer()) for a in args]
        out, q, k, v = args[0], args[1], args[2], args[3]
        m = args[4] if self.mask != "none" else None
        total = prod(self.batch)
        chunk = -(-total // self.n_tasks)
        s = fb.ptr(args[-1], b.mul(t, fb.dim(self._scratch()[3])))
        gemm = Sgemm(fb)
        lo = b.mul(t, fb.dim(chunk))
        hi = b.add(lo, fb.dim(chunk))
        hi = b.select(b.icmp_signed("<", hi, fb.dim(total)), hi, fb.dim(total))
        with fb.loop(lo, hi) as e:
            idx, rest = [], e
            for size in reversed(self.batch):
                idx.append(b.urem(rest, fb.dim(size)))
                rest = b.udiv(rest, fb.dim(size))
            idx.reverse()

            def offs(st):
                return fb.mul_add(list(zip(idx, st)))
            qo, ko, vo, yo = offs(self.q_st), offs(self.k_st), offs(self.v_st), offs(self.y_st)
            mo = offs(self.m_st) if m is not None else None
            if self.small:  # K^T and V as panels for emit_panel_gemm
                ko_, vo_, _, _ = self._scratch()
                pack = emit_pack_panels_rt if is_dynamic_emission() else emit_pack_panels
                pack(fb, s, ko_, k, ko, self.D, self.Skv,
                     *((self.ldk, 1) if self.kt else (1, self.ldk)), self.wide)
                pack(fb, s, vo_, v, vo, self.Skv, self.Dv, self.ldv, 1, self.wide)
            nfull = self.Sq // ATT_ROWS
            if is_dynamic_emission():  # one block loop, the last block's rows at run time
                with fb.loop(0, -(-self.Sq // ATT_ROWS)) as blk:
                    i0 = b.mul(blk, i64(ATT_ROWS))
                    rest = b.sub(fb.dim(self.Sq), i0)
                    rows = b.select(b.icmp_signed("<", rest, i64(ATT_ROWS)), rest, i64(ATT_ROWS))
                    self._block(fb, gemm, i0, rows, out, q, k, v, m, s, qo, ko, vo, yo, mo)
                return
            if nfull:
                with fb.loop(0, nfull) as blk:
                    self._block(fb, gemm, b.mul(blk, i64(ATT_ROWS)), ATT_ROWS, out, q, k, v, m, s,
                                qo, ko, vo, yo, mo)
            if self.Sq % ATT_ROWS:
                self._block(fb, gemm, i64(nfull * ATT_ROWS), self.Sq % ATT_ROWS, out, q, k, v, m,
                            s, qo, ko, vo, yo, mo)

    def _block(self, fb, gemm, i0, rows, out, q, k, v, m, s, qo, ko, vo, yo, mo):
        b = fb.b
        Skv = self.Skv
        qp = fb.ptr(q, b.add(qo, b.mul(i0, fb.dim(self.ldq))))
        kpo, vpo, invo, _ = self._scratch()
        # no mask, cap or causal frontier: the scale goes into the exponent, scores stay raw
        plain = not (self.softcap > 0 or m is not None or self.causal) and self.scale > 0
        panel_gemm = emit_panel_gemm_rt if is_dynamic_emission() else emit_panel_gemm
        if self.small:
            panel_gemm(fb, s, 0, Skv, qp, 0, self.ldq, s, kpo, rows, self.D, Skv, self.wide)
        else:
            gemm.call(rows, Skv, self.D, qp, self.ldq, False, fb.ptr(k, ko), self.ldk, not self.kt,
                      s, Skv, 1.0, 0.0)
        W = 16 if self.wide else 8      # the softmax passes' vector width
        mx = fb.alloca(vty(W))
        smx = fb.alloca(F32)
        sm = fb.alloca(vty(W))
        ssm = fb.alloca(F32)
        ninf = -math.inf
        with fb.loop(0, rows) as r:
            i = b.add(i0, r)
            srow = b.mul(r, fb.dim(Skv))
            mrow = b.add(mo, b.mul(i, fb.dim(self.m_row))) if m is not None else None
            b.store(vconst(W, ninf), mx)
            b.store(f32(ninf), smx)

            def scores(j, w):
                x = vload(fb, s, b.add(srow, j), w)
                if plain:
                    slot = mx if w > 1 else smx
                    b.store(vmax(b, x, b.load(slot)), slot)
                    return
                x = b.fmul(x, vconst(w, self.scale))
                if self.softcap > 0:
                    x = b.fmul(vtanh(fb, b.fmul(x, vconst(w, 1.0 / self.softcap)), w),
                               vconst(w, self.softcap))
                if m is not None:
                    x = b.fadd(x, self._mask_val(fb, m, mrow, j, w)) if self.mask == "f32" else \
                        b.select(self._mask_val(fb, m, mrow, j, w), x, vconst(w, ninf))
                if self.causal:
                    jv = j if w == 1 else b.add(splat(b, j, w),
                                                ir.Constant(ir.VectorType(I64, w), list(range(w))))
                    x = b.select(b.icmp_signed(">", jv, splat(b, i, w)), vconst(w, ninf), x)
                vstore(fb, x, s, b.add(srow, j), w)
                slot = mx if w > 1 else smx
                b.store(vmax(b, x, b.load(slot)), slot)
            vloop(fb, Skv, scores, width=W, dynamic=True)
            mval = vmax(b, hmax(b, b.load(mx), W), b.load(smx))
            mval = b.select(b.fcmp_ordered("==", mval, f32(ninf)), f32(0.0), mval)
            b.store(vconst(W, 0.0), sm)
            b.store(f32(0.0), ssm)

            def expo(j, w):
                d = b.fsub(vload(fb, s, b.add(srow, j), w), splat(b, mval, w))
                e = vexp_softmax(fb, b.fmul(d, vconst(w, self.scale)) if plain else d, w)
                vstore(fb, e, s, b.add(srow, j), w)
                slot = sm if w > 1 else ssm
                b.store(b.fadd(b.load(slot), e), slot)
            vloop(fb, Skv, expo, width=W, dynamic=True)
            tot = b.fadd(hsum(b, b.load(sm), W), b.load(ssm))
            inv = b.select(b.fcmp_ordered("==", tot, f32(0.0)), f32(0.0), b.fdiv(f32(1.0), tot))
            fb.store(inv, s, b.add(fb.dim(invo), r))
        yp = fb.ptr(out, b.add(yo, b.mul(i0, fb.dim(self.ldy))))
        if self.small:
            panel_gemm(fb, yp, 0, self.ldy, s, 0, Skv, s, vpo, rows, Skv, self.Dv, self.wide)
        else:
            gemm.call(rows, self.Dv, Skv, s, Skv, False, fb.ptr(v, vo), self.ldv, False, yp,
                      self.ldy, 1.0, 0.0)
        with fb.loop(0, rows) as r:  # normalize the (shorter) output rows, not the scores
            inv = splat(b, fb.load(s, b.add(fb.dim(invo), r)), W)
            yrow = b.mul(r, fb.dim(self.ldy))

            def normalize(j, w):
                iv = inv if w > 1 else b.extract_element(inv, ir.Constant(I32, 0))
                vstore(fb, b.fmul(vload(fb, yp, b.add(yrow, j), w), iv), yp, b.add(yrow, j), w)
            vloop(fb, self.Dv, normalize, width=W)

    def _mask_val(self, fb, m, mrow, j, w):
        b = fb.b
        if self.mask == "f32":
            if self.m_col == 0:
                return splat(b, fb.load(m, mrow), w)
            return vload(fb, m, b.add(mrow, j), w)
        # bool: true = attend
        if self.m_col == 0:
            return splat(b, b.icmp_signed("!=", fb.load(m, mrow, I8), ir.Constant(I8, 0)), w)
        p = fb.ptr(m, b.add(mrow, j), I8)
        if w == 1:
            return b.icmp_signed("!=", b.load(p, align=1), ir.Constant(I8, 0))
        vt = ir.VectorType(I8, w)
        return b.icmp_signed("!=", b.load(b.bitcast(p, vt.as_pointer()), align=1),
                             ir.Constant(vt, [0] * w))


# -- gather with constant indices -----------------------------------------------------------------
@dataclass
class TakeConst(Kernel):
    """out = take(data, indices, axis) for indices known at compile time: one block copy of
    ``inner_bytes`` per (outer, index)."""

    outer: int
    axis_dim: int
    inner_bytes: int
    indices: tuple
    name: str = "gather"

    def key(self):
        return ("take", self.outer, self.axis_dim, self.inner_bytes, self.indices)

    def emit(self, module, fname, n_args):
        from .library import param_block
        fb = FnBuilder(module, fname, [I8.as_pointer()] * n_args)
        b = fb.b
        out, x = fb.args[0], fb.args[1]
        n = len(self.indices)
        if not n or not self.outer or not self.inner_bytes:
            return fb.finish()
        ib = self.inner_bytes
        if n == 1:
            with fb.loop(0, self.outer) as o:
                src = b.add(b.mul(o, fb.dim(self.axis_dim * ib)), fb.dim(self.indices[0] * ib))
                memcpy(fb, fb.ptr(out, b.mul(o, fb.dim(ib)), I8), fb.ptr(x, src, I8), ib)
            return fb.finish()
        pp = b.bitcast(param_block(module, self.indices, "take"), I64.as_pointer())
        with fb.loop(0, self.outer) as o:
            with fb.loop(0, n) as kk:
                ix = b.load(b.gep(pp, [kk], inbounds=True))
                src = b.add(b.mul(o, fb.dim(self.axis_dim * ib)), b.mul(ix, fb.dim(ib)))
                dst = b.mul(b.add(b.mul(o, fb.dim(n)), kk), fb.dim(ib))
                memcpy(fb, fb.ptr(out, dst, I8), fb.ptr(x, src, I8), ib)
        return fb.finish()


@dataclass
class Take(Kernel):
    """out = take(data, indices, axis) for indices known only at run time (an embedding
    lookup): every index is checked against the axis first (negative ones count from its
    end), and one out of range stops the segment before anything is read: the executable
    raises ExecutionError.  Then one block copy of ``inner_bytes`` per (outer, index)."""

    outer: int
    axis_dim: int
    inner_bytes: int
    n_indices: int
    index_bytes: int  # int32 or int64 indices
    name: str = "gather"
    fallible = True

    def key(self):
        return ("take_runtime", self.outer, self.axis_dim, self.inner_bytes, self.n_indices,
                self.index_bytes)

    def failure(self) -> str:
        return f"an index is out of range [{-self.axis_dim}, {self.axis_dim - 1}]"

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8.as_pointer()] * n_args, ret=I64)
        b = fb.b
        out, x, idx = fb.args[0], fb.args[1], fb.args[2]
        d, ib, n = self.axis_dim, self.inner_bytes, self.n_indices

        def index(j):
            k = fb.load(idx, j, I32 if self.index_bytes == 4 else I64)
            k = b.sext(k, I64) if self.index_bytes == 4 else k
            return b.select(b.icmp_signed("<", k, i64(0)), b.add(k, i64(d)), k)
        with fb.loop(0, n) as j:  # unsigned: a negative one left after the shift fails too
            fb.fail_if(b.icmp_unsigned(">=", index(j), i64(d)))
        if self.outer and ib:
            with fb.loop(0, self.outer) as o:
                with fb.loop(0, n) as j:
                    src = b.add(b.mul(o, fb.dim(d * ib)), b.mul(index(j), fb.dim(ib)))
                    dst = b.mul(b.add(b.mul(o, fb.dim(n)), j), fb.dim(ib))
                    memcpy(fb, fb.ptr(out, dst, I8), fb.ptr(x, src, I8), ib)
        return fb.finish()


__all__ = ["RNN_ACTIVATIONS", "Attention", "LayerNorm", "Recurrent", "Take", "TakeConst",
           "emit_activation", "pack_panels", "pack_recurrent", "recurrent_segments", "vexp",
           "vsigmoid", "vtanh"]
