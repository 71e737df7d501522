"""Native int8 kernels: integer GEMM for quantized conv / matmul, QuantizeLinear and
DequantizeLinear.

One GEMM computes ``C[m, n] = sum_k S[m, k] * U[k, n]`` in int32, ``S`` broadcast (one
row's 4 or 2 k-values splat to every lane) and ``U`` loaded as vectors over ``n``:

* **VNNI** (``vpdpbusd``): ``U`` is uint8 and ``S`` int8, packed in groups of 4 k's
  (``U[k/4][n][k%4]``).  An operand of the other signedness is flipped (``v ^ 0x80``),
  which shifts its value and zero point by 128; the zero points are applied afterwards
  from row / column sums that the GEMM computes itself (a row of ones in the constant
  ``S`` or a column of ones in the constant ``U``)::

      sum (s - zs)(u - zu) = sum s*u - zu * sum s - zs * sum u + K * zs * zu

* **AVX2** (``vpmaddwd``): both operands are widened to int16 with their zero points
  already subtracted, packed in pairs of k's; no correction is needed.  (``vpmaddubsw``
  would saturate its int16 pair sums for u8 x s8 products; widening keeps it exact.)

Both are exact integer arithmetic: the int32 results, hence the requantized outputs, are
bit-equal.  A conv is ``S`` = the weights (constant, packed at lowering) and ``U`` = its
im2col columns over the output pixels (packed per image at run time), so the tile store
writes NCHW rows; a matmul is ``S`` = the activation rows (packed at run time) and ``U``
= the weights.  The store requantizes ``y = clamp(rint(acc * multiplier) + zy, lo, hi)``
(in float64, as the numpy reference does) or stores the int32 accumulator
(MatMulInteger / ConvInteger).

``GALAXIR_CPU_VNNI=0/1`` forces the AVX2 or the VNNI path (1 only where the host has
VNNI), ``GALAXIR_CPU_WIDE=0/1`` 8 or 16 lanes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from . import jit
from .codegen import F32, F64, I8, I8P, I32, I64, FnBuilder, i64
from .kernels import Kernel, prod
from .window import Window2d

I16 = ir.IntType(16)
R_TILE = 4      # rows of the register tile
R_WIDE = 8      # rows of the matmul's register tile with 16 lanes (32 vector registers)
DIRECT_R = 8    # rows (output channels) of the direct conv's register tile
V_TILE = 2      # vectors (of ``lanes`` int32) per tile row
TASKS = 16      # most tasks one conv (per image and group) or matmul is split into
GROUP_ROWS = 16  # grouped convs with fewer output channels per group run "groups" mode
SLOTS = 8       # scratch slots (tasks) of the "groups" mode


def host_vnni(lanes: int) -> bool:
    if lanes == 16:
        return jit.has_feature("avx512vnni")
    return jit.has_feature("avxvnni") or (jit.has_feature("avx512vnni")
                                          and jit.has_feature("avx512vl"))


def use_vnni(lanes: int) -> bool:
    """The VNNI path where the host has it; ``GALAXIR_CPU_VNNI=0`` forces the AVX2 path
    (``=1`` cannot give a host an instruction it lacks)."""
    forced = os.environ.get("GALAXIR_CPU_VNNI")
    if forced == "0":
        return False
    return host_vnni(lanes)


def int8_lanes() -> int:
    from .kernels_nhwc import wide_tiles
    if wide_tiles() and jit.has_feature("avx512bw"):
        return 16
    return 8


# -- constant packing (lowering time) ----------------------------------------------------------
def _flip(a: np.ndarray) -> np.ndarray:
    """uint8 <-> int8 by flipping the top bit: the value shifts by 128."""
    return (a.view(np.uint8) ^ 0x80).view(np.int8 if a.dtype == np.uint8 else np.uint8)


def as_u8(a: np.ndarray, zp) -> tuple[np.ndarray, np.ndarray]:
    """(values as uint8, zero point in that domain) for the VNNI unsigned side."""
    zp = np.asarray(zp, np.int64)
    if a.dtype == np.int8:
        return _flip(a), zp + 128
    return a.astype(np.uint8), zp


def as_s8(a: np.ndarray, zp) -> tuple[np.ndarray, np.ndarray]:
    zp = np.asarray(zp, np.int64)
    if a.dtype == np.uint8:
        return _flip(a), zp - 128
    return a.astype(np.int8), zp


def group_of(vnni: bool) -> int:
    return 4 if vnni else 2


def pack_s_const(w: np.ndarray, zw: np.ndarray, bias: np.ndarray | None, zu: int,
                 vnni: bool, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights ``w[M, Kd]`` (one group) as the broadcast side.  Returns (packed bytes
    ``[M(+1)][KG*g]`` of int8 (VNNI, plus a row of ones) or int16 pairs, and the int32
    corrections ``[2][M]``: rc (added), rz (times the column sums, subtracted)).
    ``order[pos]`` is the column of ``w`` at packed position ``pos`` (-1: padding, zero);
    default: the columns in order, padded to a multiple of the group."""
    M, Kd = w.shape
    g = group_of(vnni)
    if order is None:
        kp = -(-Kd // g) * g
        order = np.concatenate([np.arange(Kd), -np.ones(kp - Kd, np.int64)])
    kp = order.size
    real = order >= 0
    src = np.where(real, order, 0)
    zw = np.broadcast_to(np.asarray(zw, np.int64).reshape(-1), (M,))
    b = np.zeros(M, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(M)
    if vnni:
        s, zs = as_s8(w, zw)
        out = np.zeros((M + 1, kp), np.int8)
        out[:M] = np.where(real, s[:, src], 0)
        out[M] = real.astype(np.int8)
        ssum = s.astype(np.int64).sum(axis=1)
        rc = -zu * ssum + Kd * zs * zu + b
        corr = np.stack([rc, zs]).astype(np.int64)
        return out.reshape(-1).view(np.uint8), _wrap32(corr)
    out = np.where(real, w.astype(np.int64)[:, src] - zw.reshape(M, 1), 0).astype(np.int16)
    corr = np.stack([b, np.zeros(M, np.int64)])
    return out.reshape(-1).view(np.uint8), _wrap32(corr)


def direct_order(cg: int, kh: int, kw: int, g: int) -> np.ndarray:
    """Packed k order of the direct conv: (channel group, kernel row, kernel col, channel
    in group) -> the im2col column c*kh*kw + i*kw + j (-1 for the padding channels)."""
    cq = -(-cg // g)
    q, i, j, r = np.meshgrid(np.arange(cq), np.arange(kh), np.arange(kw), np.arange(g),
                             indexing="ij")
    c = q * g + r
    return np.where(c < cg, (c * kh + i) * kw + j, -1).reshape(-1)


def pack_u_const(w: np.ndarray, zw: np.ndarray, bias: np.ndarray | None, zs: int, vnni: bool,
                 npad: int) -> tuple[np.ndarray, np.ndarray]:
    """Matmul weights ``w[K, N]`` as the vector side: packed ``[KG][npad][g]`` (uint8 with
    a column of ones at ``N`` for VNNI, else int16) and the corrections ``[2][N]``: cc
    (added), cz (times the row sums, subtracted)."""
    K, N = w.shape
    g = group_of(vnni)
    kg = -(-K // g)
    zw = np.broadcast_to(np.asarray(zw, np.int64).reshape(-1), (N,))
    b = np.zeros(N, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(N)
    if vnni:
        u, zu = as_u8(w, zw)
        full = np.zeros((kg * g, npad), np.uint8)
        full[:K, :N] = u
        full[:K, N] = 1
        packed = full.reshape(kg, g, npad).transpose(0, 2, 1).copy()
        usum = u.astype(np.int64).sum(axis=0)
        cc = -zs * usum + K * zs * zu + b
        return packed.reshape(-1), _wrap32(np.stack([cc, zu]))
    full = np.zeros((kg * g, npad), np.int16)
    full[:K, :N] = w.astype(np.int64) - zw.reshape(1, N)
    packed = full.reshape(kg, g, npad).transpose(0, 2, 1).copy()
    return packed.reshape(-1).view(np.uint8), _wrap32(np.stack([b, np.zeros(N, np.int64)]))


def _wrap32(a: np.ndarray) -> np.ndarray:
    """int64 -> int32 with two's-complement wrap (the int32 accumulator's arithmetic)."""
    return np.ascontiguousarray(a.astype(np.int64).astype(np.uint64).astype(np.uint32)
                                .view(np.int32))


def npad_of(n: int, lanes: int, extra: int = 0) -> int:
    step = lanes * V_TILE
    return -(-(n + extra) // step) * step


# -- the kernel --------------------------------------------------------------------------------
@dataclass
class QGemm(Kernel):
    """Quantized conv (``kind="conv"``, NCHW, 2-d) or matmul (``kind="matmul"``: rows
    ``M`` of x times constant ``[K, N]`` weights).  Buffers: out, x, packed constant,
    corrections (int32), multipliers (float64, per row for conv, per column for matmul,
    absent for int32 output), scratch."""

    kind: str
    vnni: bool
    lanes: int
    x_signed: bool          # x is int8 (else uint8)
    zx: int                 # x's zero point
    out: str                # "u8" | "s8" | "i32"
    zy: int = 0
    lo: int = 0
    hi: int = 0
    # matmul: M rows, K, N; conv: batch, C, H, W, M, OH, OW, kh, kw, strides, dil, pads, group
    M: int = 0
    K: int = 0
    N: int = 0
    batch: int = 1
    C: int = 0
    H: int = 0
    W: int = 0
    OH: int = 0
    OW: int = 0
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    dh: int = 1
    dw: int = 1
    pt: int = 0
    pl: int = 0
    group: int = 1
    direct: bool = False    # conv without im2col (see _pack_direct_row)
    colsum: bool = True     # conv, VNNI: a weight zero point needs the column sums
    fuse: bool = True       # direct conv: requantize in the GEMM's tile (see ``fused``)
    name: str = "qgemm"

    def key(self):
        return ("qgemm",) + tuple(getattr(self, f) for f in self.__dataclass_fields__)

    # geometry -------------------------------------------------------------------------------
    @property
    def g(self) -> int:
        return group_of(self.vnni)

    @property
    def kd(self) -> int:
        return self.K if self.kind == "matmul" else (self.C // self.group) * self.kh * self.kw

    @property
    def kg(self) -> int:
        if self.direct:
            return self.cq * self.kh * self.kw
        return -(-self.kd // self.g)

    @property
    def cq(self) -> int:
        return -(-(self.C // self.group) // self.g)

    @property
    def owpad(self) -> int:
        return -(-self.OW // self.lanes) * self.lanes

    @property
    def hp(self) -> int:
        return (self.OH - 1) * self.sh + (self.kh - 1) * self.dh + 1

    @property
    def wp(self) -> int:
        return (self.owpad - 1) * self.sw + (self.kw - 1) * self.dw + 1

    @property
    def wpp(self) -> int:
        """Columns per phase of the direct conv's packed input."""
        return -(-self.wp // self.sw)

    @property
    def rows(self) -> int:
        """Rows of the GEMM: conv: out channels per group (+ the ones row); matmul: M."""
        if self.kind == "conv":
            return self.M // self.group + (1 if self.vnni else 0)
        return self.M

    @property
    def cols(self) -> int:
        return self.OH * self.OW if self.kind == "conv" else self.N

    @property
    def npad(self) -> int:
        if self.direct:
            return self.OH * self.owpad
        extra = 1 if (self.kind == "matmul" and self.vnni) else 0
        return npad_of(self.cols, self.lanes, extra)

    @property
    def elem(self) -> int:
        return 1 if self.vnni else 2

    # scratch and tasks -----------------------------------------------------------------------
    @property
    def s_rows(self) -> int:
        """Rows of the packed constant S per group (conv, VNNI: plus the row of ones)."""
        return self.rows

    @property
    def gemm_rows(self) -> int:
        """Rows the conv GEMM computes: the ones row only where a weight zero point needs
        the column sums."""
        if self.kind == "conv" and self.vnni and not self.colsum:
            return self.rows - 1
        return self.rows

    @property
    def packed_bytes(self) -> int:
        if self.direct:
            return self.sw * self.cq * self.hp * self.wpp * self.g * self.elem
        if self.kind == "conv":
            return self.kg * self.npad * self.g * self.elem
        return self.rows * self.kg * self.g * self.elem

    @property
    def slot_bytes(self) -> int:
        return _round64(self.packed_bytes) + _round64(self.rows * self.npad * 4)

    @property
    def mode(self) -> str:
        """How the work is split over the thread pool: "matmul" (row chunks: pack, GEMM
        and store each), "groups" (grouped convs with few channels per group, depthwise:
        one scratch slot per task, a task runs whole (image, group) pairs), "phased"
        (per image and group: the packing split by input row / channel, then the GEMM and
        store by output-channel chunk and output-row chunk)."""
        if self.kind == "matmul":
            return "matmul"
        if self.group > 1 and self.M // self.group < GROUP_ROWS:
            return "groups"
        return "phased"

    @property
    def slots(self) -> int:
        return min(self.batch * self.group, SLOTS) if self.mode == "groups" else 1

    @property
    def scratch_bytes(self) -> int:
        return self.slots * self.slot_bytes

    @property
    def r_tile(self) -> int:
        """Rows of the GEMM's register tile: a matmul with 16 lanes keeps 8 rows x V_TILE
        accumulators in its 32 vector registers; 8 lanes (16 registers) and convs 4."""
        return R_WIDE if self.kind == "matmul" and self.lanes == 16 else R_TILE

    def _chunks(self, rows: int, tile: int) -> tuple[int, int]:
        """(rows per task, number of tasks) for ``rows`` split in multiples of ``tile``."""
        tiles = -(-rows // tile)
        n = max(1, min(tiles, TASKS))
        per = tile * -(-tiles // n)
        return per, -(-rows // per)

    def _oh_chunks(self, row_tasks: int) -> tuple[int, int]:
        if not self.direct or row_tasks >= TASKS // 2:
            return self.OH, 1
        want = min(self.OH, -(-TASKS // row_tasks))
        per = -(-self.OH // want)
        return per, -(-self.OH // per)

    def n_tasks(self) -> int:
        """Tasks of the main parallel loop (tests read it)."""
        if self.mode == "matmul":
            return self._chunks(self.M, self.r_tile)[1]
        if self.mode == "groups":
            return self.slots
        _, rt = self._chunks(self.M // self.group, DIRECT_R if self.direct else R_TILE)
        return rt * self._oh_chunks(rt)[1]

    # code -----------------------------------------------------------------------------------
    def emit(self, module, fname, n_args):
        from .parallel import define_parallel_for
        pfor = define_parallel_for(module)
        fb = FnBuilder(module, fname, [I8.as_pointer()] * n_args)
        b = fb.b
        with b.goto_block(fb.entry):
            arr = b.alloca(I8P, size=i64(n_args + 2))
        for k, a in enumerate(fb.args):
            b.store(b.bitcast(a, I8P), b.gep(arr, [i64(k)], inbounds=True))

        def run(task, n, *extra):
            for k, v in enumerate(extra):
                b.store(b.inttoptr(v, I8P), b.gep(arr, [i64(n_args + k)], inbounds=True))
            b.call(pfor, [task, arr, i64(n)])

        mode = self.mode
        if mode == "matmul":
            run(self._task(module, fname + "_rows", n_args, 0, self._matmul_task), self.n_tasks())
        elif mode == "groups":
            run(self._task(module, fname + "_groups", n_args, 0, self._groups_task), self.slots)
        else:
            pack = self._task(module, fname + "_pack", n_args, 2, self._pack_task)
            gemm = self._task(module, fname + "_gemm", n_args, 2, self._gemm_task)
            ones = (self._task(module, fname + "_ones", n_args, 2, self._ones_task)
                    if self.gemm_rows > self.M // self.group else None)
            n_pack = self.hp if self.direct else self.C // self.group + 1
            with fb.loop(0, self.batch) as n, fb.loop(0, self.group) as gi:
                run(pack, n_pack, n, gi)
                if ones is not None:
                    run(ones, 1, n, gi)
                run(gemm, self.n_tasks(), n, gi)
        return fb.finish()

    @staticmethod
    def _task(module, name, n_args, n_extra, body):
        """``name(ctx, t)``: the kernel's arguments (and ``n_extra`` integers) from ctx."""
        tb = FnBuilder(module, name, [I8P.as_pointer(), I64], noalias=False)
        b = tb.b
        ctx, t = tb.args
        vals = [b.load(b.gep(ctx, [i64(k)], inbounds=True)) for k in range(n_args + n_extra)]
        body(tb, vals[:n_args], [b.ptrtoint(v, I64) for v in vals[n_args:]], t)
        fn = tb.finish()
        fn.attributes.add("noinline")
        return fn

    def _bufs(self, fb, args, slot=None):
        """(out, x, packed constant, corrections, multipliers, run-time packed, C)."""
        b = fb.b
        out, x, pk, corr = args[0], args[1], args[2], args[3]
        mult = args[4] if self.out != "i32" else None
        scratch = args[-1]
        if slot is not None:
            scratch = b.gep(scratch, [b.mul(slot, i64(self.slot_bytes))])
        cbuf = b.gep(scratch, [i64(_round64(self.packed_bytes))])
        return out, x, pk, corr, mult, scratch, cbuf

    def _matmul_task(self, fb, args, extra, t):
        b = fb.b
        out, x, pk, corr, mult, packed, cbuf = self._bufs(fb, args)
        per, _ = self._chunks(self.M, self.r_tile)
        m_lo = b.mul(t, i64(per))
        m_hi = _smin(b, b.add(m_lo, i64(per)), i64(self.M))
        self._pack_rows(fb, x, packed, m_lo, m_hi)
        self._gemm(fb, packed, pk, cbuf, m_lo, m_hi)
        self._store(fb, out, cbuf, corr, mult, i64(0), i64(0), m_lo, m_hi, i64(0), i64(1))

    def _image(self, fb, x, pk, n, gi):
        """(x of image n and group gi, its packed weights)."""
        b = fb.b
        cg = self.C // self.group
        xin = b.gep(x, [fb.mul_add([(n, self.C * self.H * self.W), (gi, cg * self.H * self.W)])])
        sbytes = self.s_rows * self.kg * self.g * self.elem
        return xin, b.gep(pk, [b.mul(gi, i64(sbytes))])

    def _obase(self, fb, n, gi):
        mg = self.M // self.group
        return fb.mul_add([(n, self.M * self.cols), (gi, mg * self.cols)])

    def _pack_task(self, fb, args, extra, t):
        n, gi = extra
        _, x, pk, _, _, packed, _ = self._bufs(fb, args)
        xin, _ = self._image(fb, x, pk, n, gi)
        if self.direct:
            self._pack_direct_row(fb, xin, packed, t)
        else:
            self._pack_cols_part(fb, xin, packed, t)

    def _ones_task(self, fb, args, extra, t):
        n, gi = extra
        _, x, pk, _, _, packed, cbuf = self._bufs(fb, args)
        _, sg = self._image(fb, x, pk, n, gi)
        mg = self.M // self.group
        self._conv_gemm(fb, sg, packed, cbuf, i64(mg), i64(mg + 1), i64(0), i64(self.OH))

    def _gemm_task(self, fb, args, extra, t):
        b = fb.b
        n, gi = extra
        out, x, pk, corr, mult, packed, cbuf = self._bufs(fb, args)
        _, sg = self._image(fb, x, pk, n, gi)
        mg = self.M // self.group
        per, rt = self._chunks(mg, DIRECT_R if self.direct else R_TILE)
        ohc, n_oh = self._oh_chunks(rt)
        rc, oc = b.sdiv(t, i64(n_oh)), b.srem(t, i64(n_oh))
        m_lo = b.mul(rc, i64(per))
        m_hi = _smin(b, b.add(m_lo, i64(per)), i64(mg))
        oh_lo = b.mul(oc, i64(ohc))
        oh_hi = _smin(b, b.add(oh_lo, i64(ohc)), i64(self.OH))
        if self.fused:
            fuse = (out, corr, mult, self._obase(fb, n, gi), gi)
            self._conv_gemm(fb, sg, packed, cbuf, m_lo, m_hi, oh_lo, oh_hi, fuse)
            return
        self._conv_gemm(fb, sg, packed, cbuf, m_lo, m_hi, oh_lo, oh_hi)
        if not self.direct:
            oh_lo, oh_hi = i64(0), i64(1)
        self._store(fb, out, cbuf, corr, mult, self._obase(fb, n, gi), gi, m_lo, m_hi,
                    oh_lo, oh_hi)

    def _groups_task(self, fb, args, extra, t):
        """Whole (image, group) pairs t, t + slots, ... in scratch slot t."""
        b = fb.b
        out, x, pk, corr, mult, packed, cbuf = self._bufs(fb, args, slot=t)
        mg = self.M // self.group
        with fb.loop(t, self.batch * self.group, self.slots) as p:
            n, gi = b.sdiv(p, i64(self.group)), b.srem(p, i64(self.group))
            xin, sg = self._image(fb, x, pk, n, gi)
            if self.direct:
                with fb.loop(0, self.hp) as r:
                    self._pack_direct_row(fb, xin, packed, r)
            else:
                with fb.loop(0, self.C // self.group + 1) as c:
                    self._pack_cols_part(fb, xin, packed, c)
            self._conv_gemm(fb, sg, packed, cbuf, i64(0), i64(self.gemm_rows), i64(0),
                            i64(self.OH))
            oh_hi = self.OH if self.direct else 1
            self._store(fb, out, cbuf, corr, mult, self._obase(fb, n, gi), gi, i64(0), i64(mg),
                        i64(0), i64(oh_hi))

    def _conv_gemm(self, fb, s, u, c, m_lo, m_hi, oh_lo, oh_hi, fuse=None):
        if self.direct:
            self._gemm_direct(fb, s, u, c, m_lo, m_hi, oh_lo, oh_hi, fuse)
        else:
            self._gemm(fb, s, u, c, m_lo, m_hi)

    def _xval(self, fb, v8):
        """A loaded x byte transformed for its side: VNNI conv -> uint8 (flip if int8),
        VNNI matmul -> int8 (flip if uint8), AVX2 -> int16 ``x - zx``."""
        b = fb.b
        if self.vnni:
            want_signed = self.kind == "matmul"
            return b.xor(v8, ir.Constant(I8, 0x80)) if want_signed != self.x_signed else v8
        w = b.sext(v8, I16) if self.x_signed else b.zext(v8, I16)
        return b.sub(w, ir.Constant(I16, self.zx))

    def _pad_val(self):
        if not self.vnni:
            return ir.Constant(I16, 0)
        z = self.zx & 0xFF
        return ir.Constant(I8, z ^ 0x80 if self.x_signed else z)

    def _elt_ty(self):
        return I8 if self.vnni else I16

    def _pack_rows(self, fb, x, dst, m_lo, m_hi):
        """matmul: rows [m_lo, m_hi) of x [M, K] -> [M][KG*g] in the S domain (pad k left
        as is: the constant U is zero there)."""
        ty = self._elt_ty()
        kp = self.kg * self.g
        with fb.loop(m_lo, m_hi) as m:
            with fb.loop(0, self.K) as k:
                v = fb.load(x, fb.mul_add([(m, self.K), (k, 1)]), I8)
                fb.store(self._xval(fb, v), dst, fb.mul_add([(m, kp), (k, 1)]), ty)
            if kp > self.K:
                zero = ir.Constant(ty, 0)
                with fb.loop(self.K, kp) as k:
                    fb.store(zero, dst, fb.mul_add([(m, kp), (k, 1)]), ty)

    def _pack_cols_part(self, fb, x, dst, c):
        """conv: im2col of input channel ``c`` of one image and group into [KG][npad][g]
        (U domain); padding pixels get x's zero point.  ``c == C/group`` fills the k
        positions past the last (the constant S is zero there: any value, but defined)."""
        b, ty = fb.b, self._elt_ty()
        g, npad, P = self.g, self.npad, self.cols
        pad = self._pad_val()
        kd = self.kd
        kp = self.kg * g
        cg = self.C // self.group
        real, tail, end = fb.block("chan"), fb.block("tail"), fb.block("packed")
        b.cbranch(b.icmp_signed("<", c, i64(cg)), real, tail)
        b.position_at_end(real)
        with fb.loop(0, self.kh) as i:
            with fb.loop(0, self.kw) as j:
                k = fb.mul_add([(c, self.kh * self.kw), (i, self.kw), (j, 1)])
                kq = b.sdiv(k, i64(g))
                kr = b.srem(k, i64(g))
                base = b.add(b.mul(kq, i64(npad * g)), kr)
                with fb.loop(0, self.OH) as oh:
                    ih = b.add(b.mul(oh, i64(self.sh)), b.sub(b.mul(i, i64(self.dh)), i64(self.pt)))
                    row_ok = b.and_(b.icmp_signed(">=", ih, i64(0)),
                                    b.icmp_signed("<", ih, i64(self.H)))
                    with fb.loop(0, self.OW) as ow:
                        iw = b.add(b.mul(ow, i64(self.sw)),
                                   b.sub(b.mul(j, i64(self.dw)), i64(self.pl)))
                        ok = b.and_(row_ok, b.and_(b.icmp_signed(">=", iw, i64(0)),
                                                   b.icmp_signed("<", iw, i64(self.W))))
                        src = fb.mul_add([(c, self.H * self.W), (ih, self.W), (iw, 1)])
                        src = b.select(ok, src, i64(0))
                        v = self._xval(fb, fb.load(x, src, I8))
                        v = b.select(ok, v, pad)
                        p = fb.mul_add([(oh, self.OW), (ow, 1)])
                        fb.store(v, dst, b.add(base, b.mul(p, i64(g))), ty)
        b.branch(end)
        b.position_at_end(tail)
        if kp > kd:
            zero = ir.Constant(ty, 0)
            with fb.loop(kd, kp) as k:
                kq = b.sdiv(k, i64(g))
                kr = b.srem(k, i64(g))
                with fb.loop(0, P) as p:
                    fb.store(zero, dst, b.add(b.mul(kq, i64(npad * g)),
                                              b.add(b.mul(p, i64(g)), kr)), ty)
        b.branch(end)
        b.position_at_end(end)

    def _pack_direct_row(self, fb, x, dst, r):
        """conv, direct: padded input row ``r`` of one image and group -> ``[sw][cq][hp]
        [wpp][g]`` (U domain): the padded input with ``g`` channels interleaved and its
        columns split into ``sw`` phases (column ``w`` at phase ``w % sw``, index
        ``w // sw``), so that the ``g`` k-values of one (channel group, kernel tap) for
        ``lanes`` consecutive output columns are one contiguous vector whatever the stride.
        Padding pixels get x's zero point; the channels past the last (whose weights are
        zero) repeat it."""
        b, ty = fb.b, self._elt_ty()
        g, hp, wp, wpp, sw = self.g, self.hp, self.wp, self.wpp, self.sw
        cq = self.cq
        cg = self.C // self.group
        pad = self._pad_val()
        lo_w = min(max(self.pl, 0), wp)
        hi_w = max(lo_w, min(self.pl + self.W, wp))

        def dst_index(q, w, k):
            if sw == 1:
                ph, col = i64(0), w
            else:
                ph, col = b.srem(w, i64(sw)), b.sdiv(w, i64(sw))
            return b.add(fb.mul_add([(ph, cq * hp * wpp * g), (q, hp * wpp * g), (r, wpp * g),
                                     (col, g)]), i64(k))

        ih = b.sub(r, i64(self.pt))
        ok = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(self.H)))
        then, other, end = fb.block("in"), fb.block("pad"), fb.block("rowend")
        b.cbranch(ok, then, other)
        b.position_at_end(other)
        with fb.loop(0, cq) as q, fb.loop(0, wp) as w:
            for k in range(g):
                fb.store(pad, dst, dst_index(q, w, k), ty)
        b.branch(end)
        b.position_at_end(then)
        with fb.loop(0, cq) as q:
            for lo, hi in ((0, lo_w), (hi_w, wp)):
                if hi > lo:
                    with fb.loop(lo, hi) as w:
                        for k in range(g):
                            fb.store(pad, dst, dst_index(q, w, k), ty)
            if hi_w > lo_w:
                planes = []
                for k in range(g):
                    c = b.add(b.mul(q, i64(g)), i64(k))
                    c = b.select(b.icmp_signed("<", c, i64(cg)), c, i64(cg - 1))
                    planes.append(fb.mul_add([(c, self.H * self.W), (ih, self.W)], -self.pl))
                with fb.loop(lo_w, hi_w) as w:
                    for k in range(g):
                        v = self._xval(fb, fb.load(x, b.add(planes[k], w), I8))
                        fb.store(v, dst, dst_index(q, w, k), ty)
        b.branch(end)
        b.position_at_end(end)

    def _gemm_direct(self, fb, s, u, c, m_lo, m_hi, oh_lo, oh_hi, fuse=None):
        """C[m_lo:m_hi][oh_lo*owpad:oh_hi*owpad] = S rows x the padded input read at each
        kernel tap: vectors of ``lanes`` output columns of one output row.  With ``fuse``
        (out, corr, mult, obase, gi) the tile is requantized in registers and written to
        out instead (``_store_tile``)."""
        b = fb.b
        L = self.lanes
        vty = ir.VectorType(I32, L)
        s32 = b.bitcast(s, I32.as_pointer())
        u32 = b.bitcast(u, I32.as_pointer())
        c32 = b.bitcast(c, I32.as_pointer())
        vptr = vty.as_pointer()
        kg, npad, hp, wpp = self.kg, self.npad, self.hp, self.wpp
        dot = self._dot(fb, vty)

        V = 2 if L == 16 else 1    # 16 accumulators need AVX-512's 32 registers
        full = self.owpad // (V * L) * (V * L)

        def tile_at(m0, R, oh, ow0, V):
            accs = [[fb.alloca(vty) for _ in range(V)] for _ in range(R)]
            for row in accs:
                for a in row:
                    b.store(ir.Constant(vty, None), a)
            with fb.loop(0, self.cq) as q, fb.loop(0, self.kh) as i:
                ih = b.add(b.mul(oh, i64(self.sh)), b.mul(i, i64(self.dh)))
                rowbase = b.add(fb.mul_add([(q, hp * wpp), (ih, wpp)]), ow0)
                kbase = fb.mul_add([(q, self.kh * self.kw), (i, self.kw)])
                for j in range(self.kw):
                    ph, off = (j * self.dw) % self.sw, (j * self.dw) // self.sw
                    at = b.add(rowbase, i64(ph * self.cq * hp * wpp + off))
                    uvs = [b.load(b.bitcast(b.gep(u32, [b.add(at, i64(v * L))]), vptr), align=4)
                           for v in range(V)]
                    for r in range(R):
                        sidx = b.add(b.mul(b.add(m0, i64(r)), i64(kg)), b.add(kbase, i64(j)))
                        sv = _splat(b, b.load(b.gep(s32, [sidx]), align=4), L)
                        for v in range(V):
                            b.store(dot(b.load(accs[r][v]), uvs[v], sv), accs[r][v])
            if fuse is not None:
                self._store_tile(fb, fuse, c32, accs, m0, R, oh, ow0, V)
                return
            for r in range(R):
                for v in range(V):
                    cidx = b.add(b.mul(b.add(m0, i64(r)), i64(npad)),
                                 b.add(b.mul(oh, i64(self.owpad)), b.add(ow0, i64(v * L))))
                    b.store(b.load(accs[r][v]), b.bitcast(b.gep(c32, [cidx]), vptr), align=4)

        def tile(m0, R):
            with fb.loop(oh_lo, oh_hi) as oh:
                if full:
                    with fb.loop(0, full, V * L) as ow0:
                        tile_at(m0, R, oh, ow0, V)
                if self.owpad > full:
                    with fb.loop(full, self.owpad, L) as ow0:
                        tile_at(m0, R, oh, ow0, 1)

        _row_tiles(fb, m_lo, m_hi, DIRECT_R, tile)

    @property
    def fused(self) -> bool:
        """The direct conv's "phased" GEMM requantizes its register tile and writes the
        8-bit output itself: no int32 round trip through C and no scalar store pass (for
        convs with few input channels, e.g. MobileNetV2's pointwise expansions, that pass
        cost more than the GEMM).  ``GALAXIR_CPU_INT8_FUSED=0`` (read at lowering) keeps
        the separate store."""
        return self.fuse and self.direct and self.out != "i32" and self.mode == "phased"

    def _store_tile(self, fb, fuse, c32, accs, m0, R, oh, ow0, V):
        """Requantize the R x V vectors of a direct-conv tile (output row oh, columns
        ow0...) as ``_store`` does, in float64 vectors, and store the valid columns (< OW)
        as bytes: full vectors at once, a row's last partial vector through a stack
        buffer."""
        b, L = fb.b, self.lanes
        out, corr, mult, obase, gi = fuse
        mg = self.M // self.group
        vty, dty = ir.VectorType(I32, L), ir.VectorType(F64, L)
        oty = ir.VectorType(I8, L)
        cr = b.bitcast(corr, I32.as_pointer())
        lo = ir.Constant(dty, [float(self.lo - self.zy)] * L)
        hi = ir.Constant(dty, [float(self.hi - self.zy)] * L)
        zy = ir.Constant(vty, [self.zy] * L)
        tmp = fb.alloca(oty)
        css = []
        if self.vnni and self.colsum:
            for v in range(V):
                at = b.add(i64(mg * self.npad), b.add(b.mul(oh, i64(self.owpad)),
                                                      b.add(ow0, i64(v * L))))
                css.append(b.load(b.bitcast(b.gep(c32, [at]), vty.as_pointer()), align=4))
        for r in range(R):
            m = b.add(m0, i64(r))
            cidx = b.add(b.mul(gi, i64(2 * mg)), m)
            rc = _splat(b, b.load(b.gep(cr, [cidx])), L)
            rz = _splat(b, b.load(b.gep(cr, [b.add(cidx, i64(mg))])), L)
            mv = fb.load(mult, b.add(b.mul(gi, i64(mg)), m), F64)
            mvv = b.shuffle_vector(b.insert_element(ir.Constant(dty, None), mv, ir.Constant(I32, 0)),
                                   ir.Constant(dty, None), ir.Constant(vty, [0] * L))
            row = b.add(obase, fb.mul_add([(m, self.cols), (oh, self.OW)]))
            for v in range(V):
                acc = b.add(b.load(accs[r][v]), rc)
                if css:
                    acc = b.sub(acc, b.mul(rz, css[v]))
                # clamp(rint(d) + zy, lo, hi) == rint(clamp(d, lo - zy, hi - zy)) + zy (integer
                # bounds, rint monotone); lrint rounds and converts in one instruction
                d = b.fmul(b.sitofp(acc, dty), mvv)
                d = b.select(b.fcmp_ordered("<", d, lo), lo, d)
                d = b.select(b.fcmp_ordered(">", d, hi), hi, d)
                q = fb.intrinsic(f"llvm.lrint.v{L}i32.v{L}f64", vty, [d])
                q = b.trunc(b.add(q, zy), oty)
                col = b.add(ow0, i64(v * L))
                dst = b.gep(b.bitcast(out, I8P), [b.add(row, col)])
                full = b.icmp_signed("<=", b.add(col, i64(L)), i64(self.OW))
                whole, part, done = fb.block("qfull"), fb.block("qpart"), fb.block("qdone")
                b.cbranch(full, whole, part)
                b.position_at_end(whole)
                b.store(q, b.bitcast(dst, oty.as_pointer()), align=1)
                b.branch(done)
                b.position_at_end(part)
                b.store(q, tmp)
                t8 = b.bitcast(tmp, I8P)
                with fb.loop(0, b.sub(i64(self.OW), col)) as k:
                    b.store(b.load(b.gep(t8, [k])), b.gep(dst, [k]))
                b.branch(done)
                b.position_at_end(done)

    def _dot(self, fb, vty):
        b, L = fb.b, vty.count

        def dot(acc, uv, sv):
            if self.vnni:
                name = "llvm.x86.avx512.vpdpbusd.512" if L == 16 else "llvm.x86.avx512.vpdpbusd.256"
                return fb.intrinsic(name, vty, [acc, uv, sv])
            wty = ir.VectorType(I16, 2 * L)
            name = "llvm.x86.avx512.pmaddw.d.512" if L == 16 else "llvm.x86.avx2.pmadd.wd"
            return b.add(acc, fb.intrinsic(name, vty, [b.bitcast(uv, wty), b.bitcast(sv, wty)]))
        return dot

    def _gemm(self, fb, s, u, c, m_lo, m_hi):
        """C[m_lo:m_hi][npad] (int32) = S rows (4 bytes / 2 int16 per group, splat) x
        U[KG][npad] (vectors of ``lanes`` int32 groups)."""
        b = fb.b
        L, V = self.lanes, V_TILE
        vty = ir.VectorType(I32, L)
        s32 = b.bitcast(s, I32.as_pointer())
        u32 = b.bitcast(u, I32.as_pointer())
        c32 = b.bitcast(c, I32.as_pointer())
        vptr = vty.as_pointer()
        kg, npad = self.kg, self.npad
        dot = self._dot(fb, vty)

        def tile(m0, R):
            with fb.loop(0, npad, L * V) as n0:
                accs = [[fb.alloca(vty) for _ in range(V)] for _ in range(R)]
                zero = ir.Constant(vty, None)
                for r in range(R):
                    for v in range(V):
                        b.store(zero, accs[r][v])
                with fb.loop(0, kg) as k:
                    ubase = b.add(b.mul(k, i64(npad)), n0)
                    uvs = [b.load(b.bitcast(b.gep(u32, [b.add(ubase, i64(v * L))]), vptr), align=4)
                           for v in range(V)]
                    for r in range(R):
                        sidx = b.add(b.mul(b.add(m0, i64(r)), i64(kg)), k)
                        splat = _splat(b, b.load(b.gep(s32, [sidx]), align=4), L)
                        for v in range(V):
                            b.store(dot(b.load(accs[r][v]), uvs[v], splat), accs[r][v])
                for r in range(R):
                    for v in range(V):
                        cidx = b.add(b.mul(b.add(m0, i64(r)), i64(npad)), b.add(n0, i64(v * L)))
                        b.store(b.load(accs[r][v]), b.bitcast(b.gep(c32, [cidx]), vptr), align=4)

        _row_tiles(fb, m_lo, m_hi, self.r_tile, tile)

    def _store(self, fb, out, c, corr, mult, obase, gi, m_lo, m_hi, oh_lo, oh_hi):
        """out[obase + m*cols + n] = requantize / store of the corrected accumulator, rows
        [m_lo, m_hi) and (direct conv) output rows [oh_lo, oh_hi)."""
        b = fb.b
        npad, cols = self.npad, self.cols
        c32 = b.bitcast(c, I32.as_pointer())
        cr = b.bitcast(corr, I32.as_pointer())
        conv = self.kind == "conv"
        mg = self.M // self.group if conv else self.M
        otype = I32 if self.out == "i32" else I8
        if self.direct:
            ow_n, crow = self.OW, self.owpad
        else:
            ow_n, crow = cols, cols
        with fb.loop(m_lo, m_hi) as m:
            if conv:
                cidx = b.add(b.mul(gi, i64(2 * mg)), m)
                rc = b.load(b.gep(cr, [cidx]))
                rz = b.load(b.gep(cr, [b.add(cidx, i64(mg))]))
                if mult is not None:
                    mrow = fb.load(mult, b.add(b.mul(gi, i64(mg)), m), F64)
            with fb.loop(oh_lo, oh_hi) as oh, fb.loop(0, ow_n) as ow:
                n = fb.mul_add([(oh, ow_n), (ow, 1)])        # output column
                cn = fb.mul_add([(oh, crow), (ow, 1)])       # column in C
                acc = b.load(b.gep(c32, [b.add(b.mul(m, i64(npad)), cn)]))
                if conv:
                    acc = b.add(acc, rc)
                    if self.vnni and self.colsum:
                        cs = b.load(b.gep(c32, [b.add(i64(mg * npad), cn)]))
                        acc = b.sub(acc, b.mul(rz, cs))
                    mv = mrow if mult is not None else None
                else:
                    acc = b.add(acc, b.load(b.gep(cr, [n])))
                    if self.vnni:
                        cz = b.load(b.gep(cr, [b.add(n, i64(self.N))]))
                        rs = b.load(b.gep(c32, [b.add(b.mul(m, i64(npad)), i64(self.N))]))
                        acc = b.sub(acc, b.mul(cz, rs))
                    mv = fb.load(mult, n, F64) if mult is not None else None
                oidx = b.add(fb.mul_add([(m, cols), (n, 1)]), obase)
                if self.out == "i32":
                    fb.store(acc, out, oidx, I32)
                else:
                    d = b.fmul(b.sitofp(acc, F64), mv)
                    d = fb.intrinsic("llvm.rint.f64", F64, [d])
                    d = b.fadd(d, ir.Constant(F64, float(self.zy)))
                    d = _clamp_f(b, d, float(self.lo), float(self.hi))
                    fb.store(b.trunc(b.fptosi(d, I32), otype), out, oidx, otype)


def _smin(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _row_tiles(fb, m_lo, m_hi, R: int, tile) -> None:
    """``tile(m0, R)`` over [m_lo, m_hi) in steps of R, then ``tile(m0, 1)`` for the rest."""
    b = fb.b
    full_end = b.add(m_lo, b.mul(b.sdiv(b.sub(m_hi, m_lo), i64(R)), i64(R)))
    with fb.loop(m_lo, full_end, R) as m0:
        tile(m0, R)
    with fb.loop(full_end, m_hi) as m0:
        tile(m0, 1)


def _round64(n: int) -> int:
    return -(-n // 64) * 64


def _splat(b, s, lanes):
    vty = ir.VectorType(I32, lanes)
    v = b.insert_element(ir.Constant(vty, None), s, ir.Constant(I32, 0))
    return b.shuffle_vector(v, ir.Constant(vty, None), ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def _clamp_f(b, d, lo, hi):
    d = b.select(b.fcmp_ordered("<", d, ir.Constant(d.type, lo)), ir.Constant(d.type, lo), d)
    return b.select(b.fcmp_ordered(">", d, ir.Constant(d.type, hi)), ir.Constant(d.type, hi), d)


# -- QuantizeLinear / DequantizeLinear ---------------------------------------------------------
@dataclass
class Quantize(Kernel):
    """y[o, c, i] = clamp(rint(x / scale[c]) + zp[c]) over ``[outer, C, inner]`` (C = 1
    per tensor); x float32 -> uint8/int8.  Buffers: out, x, scale (f32 [C]), zp (int32
    [C])."""

    outer: int
    C: int
    inner: int
    signed: bool
    zp_kind: str = "i32"    # the zero-point buffer's type: i32 / u8 / s8
    name: str = "quantize"

    def key(self):
        return ("quantize", self.outer, self.C, self.inner, self.signed, self.zp_kind)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8.as_pointer()] * n_args)
        out, x, sc, zp = fb.args[:4]
        b = fb.b
        lo, hi = (-128.0, 127.0) if self.signed else (0.0, 255.0)

        def body(idx, s, z):
            q = b.fdiv(fb.load(x, idx, F32), s)
            q = fb.intrinsic("llvm.rint.f32", F32, [q])
            q = b.fadd(q, z)
            q = _clamp_f(b, q, lo, hi)
            # NaN: the reference's clip keeps NaN and the cast gives 0 (x86 cvt)
            q = b.select(b.fcmp_unordered("uno", q, q), ir.Constant(F32, 0.0), q)
            fb.store(b.trunc(b.fptosi(q, I32), I8), out, idx, I8)
        _per_channel(fb, self, sc, zp, body)
        return fb.finish()


@dataclass
class Dequantize(Kernel):
    """y = (float(x) - float(zp[c])) * scale[c] in float32; x uint8/int8/int32."""

    outer: int
    C: int
    inner: int
    in_dtype: str           # "u8" | "s8" | "i32"
    zp_kind: str = "i32"
    name: str = "dequantize"

    def key(self):
        return ("dequantize", self.outer, self.C, self.inner, self.in_dtype, self.zp_kind)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8.as_pointer()] * n_args)
        out, x, sc, zp = fb.args[:4]
        b = fb.b
        ity = I32 if self.in_dtype == "i32" else I8

        def body(idx, s, z):
            v = fb.load(x, idx, ity)
            f = b.uitofp(v, F32) if self.in_dtype == "u8" else b.sitofp(v, F32)
            fb.store(b.fmul(b.fsub(f, z), s), out, idx, F32)
        _per_channel(fb, self, sc, zp, body)
        return fb.finish()


def _per_channel(fb, k, sc, zp, body) -> None:
    """The loop nest over ``[k.outer, k.C, k.inner]`` with channel c's scale and zero point
    (as float32) loaded once per c: ``body(flat index, scale, zero point)``."""
    b = fb.b
    with fb.loop(0, k.outer) as o:
        with fb.loop(0, k.C) as c:
            s = fb.load(sc, c, F32)
            z = b.sitofp(_load_zp(fb, zp, c, k.zp_kind), F32)
            with fb.loop(0, k.inner) as i:
                body(fb.mul_add([(o, k.C * k.inner), (c, k.inner), (i, 1)]), s, z)


def _load_zp(fb, zp, c, kind):
    if kind == "i32":
        return fb.load(zp, c, I32)
    v = fb.load(zp, c, I8)
    return fb.b.zext(v, I32) if kind == "u8" else fb.b.sext(v, I32)


def split_axis(shape, axis: int, per_axis: bool) -> tuple[int, int, int]:
    if not per_axis:
        return 1, 1, prod(shape)
    axis = axis + len(shape) if axis < 0 else axis
    return prod(shape[:axis]), int(shape[axis]), prod(shape[axis + 1:])


# -- int8 ops between the quantized convs ------------------------------------------------------
ADD_CHUNK = 1 << 15   # elements per task of QAdd


@dataclass
class QAdd(Kernel):
    """int8_add on equal shapes, ``n`` elements: the float32 QDQ arithmetic of the
    reference (dequantize both, add, divide by the output scale, round, add the zero
    point, clamp) in one pass over the 8-bit tensors; split into chunks over the pool."""

    n: int
    a_signed: bool
    b_signed: bool
    y_signed: bool
    sa: float
    za: int
    sb: float
    zb: int
    sy: float
    zy: int
    lo: int
    hi: int
    name: str = "qadd"

    def key(self):
        return ("qadd",) + tuple(getattr(self, f) for f in self.__dataclass_fields__)

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        tasks = -(-self.n // ADD_CHUNK)
        return parallel_kernel(module, fname, n_args, tasks, self._task)

    def _task(self, fb, args, t):
        b = fb.b
        out, x, y = args[0], args[1], args[2]
        f = lambda v: ir.Constant(F32, float(np.float32(v)))  # noqa: E731
        lo_i = b.mul(t, i64(ADD_CHUNK))
        hi_i = _smin(b, b.add(lo_i, i64(ADD_CHUNK)), i64(self.n))

        def deq(ptr, i, signed, s, z):
            v = fb.load(ptr, i, I8)
            v = b.sitofp(v, F32) if signed else b.uitofp(v, F32)
            return b.fmul(b.fsub(v, f(z)), f(s))

        with fb.loop(lo_i, hi_i) as i:
            s = b.fadd(deq(x, i, self.a_signed, self.sa, self.za),
                       deq(y, i, self.b_signed, self.sb, self.zb))
            q = fb.intrinsic("llvm.rint.f32", F32, [b.fdiv(s, f(self.sy))])
            q = b.fadd(q, f(self.zy))
            q = _clamp_f(b, q, float(self.lo), float(self.hi))
            fb.store(b.trunc(b.fptosi(q, I32), I8), out, i, I8)


@dataclass
class MaxPool8(Window2d, Kernel):
    """2-d max pooling of uint8 / int8 NCHW planes: per output row, one pass per kernel
    tap over the output columns whose input column is inside the image (ranges fixed at
    compile time, no per-element bounds checks, so the loop vectorizes); rows outside the
    image are skipped.  Planes are split over the pool."""

    planes: int
    signed: bool
    name: str = "maxpool8"

    def key(self):
        return ("maxpool8", self.planes) + self.window_key() + (self.signed, self.name)

    @property
    def per_task(self) -> int:
        return max(1, -(-self.planes // TASKS))

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        return parallel_kernel(module, fname, n_args, -(-self.planes // self.per_task), self._task)

    def _task(self, fb, args, t):
        b = fb.b
        out, x = args[0], args[1]
        lowest = ir.Constant(I8, -128 if self.signed else 0)
        cmp = ">" if self.signed else None
        p_lo = b.mul(t, i64(self.per_task))
        p_hi = _smin(b, b.add(p_lo, i64(self.per_task)), i64(self.planes))

        def vmax(u, v):
            c = b.icmp_signed(">", u, v) if cmp else b.icmp_unsigned(">", u, v)
            return b.select(c, u, v)

        with fb.loop(p_lo, p_hi) as p, fb.loop(0, self.OH) as oh:
            orow = fb.mul_add([(p, self.OH * self.OW), (oh, self.OW)])
            with fb.loop(0, self.OW) as ow:
                fb.store(lowest, out, b.add(orow, ow), I8)
            for i in range(self.kh):
                ih = b.add(b.mul(oh, i64(self.sh)), i64(i * self.dh - self.pt))
                ok = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(self.H)))
                with fb.if_(ok):
                    irow = fb.mul_add([(p, self.H * self.W), (ih, self.W)])
                    for j in range(self.kw):
                        lo, hi = self.tap_cols(j)
                        if hi <= lo:
                            continue
                        with fb.loop(lo, hi) as ow:
                            src = b.add(irow, b.add(b.mul(ow, i64(self.sw)),
                                                    i64(j * self.dw - self.pl)))
                            at = b.add(orow, ow)
                            fb.store(vmax(fb.load(out, at, I8), fb.load(x, src, I8)), out, at, I8)
