"""Lowering rules for sequence-model ops (kernels in kernels_seq.py): layer_norm, lstm,
gru, attention (the op the torch frontend makes of nn.MultiheadAttention and
scaled_dot_product_attention) and gather with constant indices (torch's ``select`` of
the packed q/k/v projection), so a transformer layer or an LSTM stack runs as one native
segment instead of bouncing to the numpy reference between kernels.

Imported at the end of lower.py: the ``rule`` decorator registers into lower.RULES.
Anything a rule cannot handle returns a reason and the op runs on the numpy reference.
"""
from __future__ import annotations

import math

import numpy as np

from .codegen import is_dynamic_emission
from ...ir.types import DType
from . import kernels as K
from . import kernels_gemm as KG
from . import kernels_seq as KS
from .jit import has_blas
from .kernels_nhwc import wide_tiles
from .lower import (
    ConstArray,
    _all_static_f32,
    const_of,
    is_f32,
    is_static,
    rule,
    static_shape,
)


def _strip_ones(shape) -> tuple:
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _param_kind(v, norm: tuple) -> str | None:
    """"vec" when ``v`` holds one value per normalized element, "scalar" for one value."""
    shp = static_shape(v.type)
    if K.prod(shp) == 1:
        return "scalar"
    if _strip_ones(shp) == _strip_ones(norm):
        return "vec"
    return None


@rule("layer_norm")
def lower_layer_norm(op):
    why = _all_static_f32(op)
    if why:
        return why
    x, scale, bias = op.operands[0], op.operand(1), op.operand(2)
    xs = static_shape(x.type)
    if len(xs) == 0:
        return "scalar input"
    ax = op.attr("axis")
    ax = ax + len(xs) if ax < 0 else ax
    norm = xs[ax:]
    rows, D = K.prod(xs[:ax]), K.prod(norm)
    if rows == 0 or D == 0:
        return "zero-size tensor"
    sk = _param_kind(scale, norm)
    bk = _param_kind(bias, norm) if bias is not None else "none"
    if sk is None or bk is None:
        return "scale/bias broadcast over part of the normalized dims"
    kern = KS.LayerNorm(rows=rows, D=D, eps=float(op.attr("epsilon")), scale=sk, bias=bk)
    return kern, [x, scale] + ([bias] if bias is not None else [])


@rule("instance_norm")
def lower_instance_norm(op):
    """Each (n, c) plane normalized over its spatial elements: the layer_norm kernel over
    N*C rows with a per-channel scale and bias (torch's GroupNorm with one channel per
    group, style-transfer and audio front ends)."""
    why = _all_static_f32(op)
    if why:
        return why
    x, scale, bias = op.operands
    xs = static_shape(x.type)
    C, D = xs[1], K.prod(xs[2:])
    if K.prod(xs[:2]) == 0 or D == 0:
        return "zero-size tensor"
    if K.prod(static_shape(scale.type)) != C or K.prod(static_shape(bias.type)) != C:
        return "scale/bias do not hold one value per channel"
    kern = KS.LayerNorm(rows=xs[0] * C, D=D, eps=float(op.attr("epsilon")), scale="chan",
                        bias="chan", channels=C)
    return kern, [x, scale, bias]


# -- recurrent layers ---------------------------------------------------------------------------
_NEEDS_ALPHA = {"affine": 1.0, "leakyrelu": 0.01, "thresholdedrelu": 1.0, "scaledtanh": 1.0,
                "hardsigmoid": 0.2, "elu": 1.0}
_NEEDS_BETA = {"affine": 0.0, "scaledtanh": 1.0, "hardsigmoid": 0.5}
_DEFAULT_ACTS = {"gru": ["Sigmoid", "Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"]}


def recurrent_activations(op, nd: int) -> tuple | str:
    """Per direction, the activation specs (name, alpha, beta), with alpha/beta consumed in
    order by the activations that take them (as the numpy reference and onnxruntime do)."""
    defaults = _DEFAULT_ACTS[op.name]
    per = len(defaults)
    names = list(op.attr("activations") or [])
    if not names:
        names = defaults * nd
    elif len(names) == per and nd == 2:
        names = names * 2
    if len(names) != per * nd:
        return f"expected {per * nd} activations, got {len(names)}"
    alphas = list(op.attr("activation_alpha") or [])
    betas = list(op.attr("activation_beta") or [])
    specs = []
    for n in names:
        low = n.lower()
        if low not in KS.RNN_ACTIVATIONS:
            return f"activation {n!r} has no native kernel"
        a = alphas.pop(0) if low in _NEEDS_ALPHA and alphas else _NEEDS_ALPHA.get(low, 0.0)
        be = betas.pop(0) if low in _NEEDS_BETA and betas else _NEEDS_BETA.get(low, 0.0)
        specs.append((low, float(a), float(be)))
    return tuple(tuple(specs[i * per:(i + 1) * per]) for i in range(nd))


@rule("lstm", "gru")
def lower_recurrent(op):
    kind = op.name
    gates = 4 if kind == "lstm" else 3
    for k, v in enumerate(op.operands):
        if v is None or k == 4:  # sequence_lens is checked below
            continue
        if not is_f32(v):
            return f"dtype {getattr(v.type, 'dtype', v.type)} (native kernels are float32)"
        if not is_static(v):
            return "shape not static"
    for r in op.results:
        if not is_f32(r) or not is_static(r):
            return "result not a static float32 tensor"
    X, W, R = op.operands[0], op.operands[1], op.operands[2]
    B = op.operand(3)
    h0 = op.operand(5)
    c0 = op.operand(6) if kind == "lstm" else None
    P = op.operand(7) if kind == "lstm" else None
    layout = int(op.attr("layout") or 0)
    xs = static_shape(X.type)
    seq, batch, isz = (xs[1], xs[0], xs[2]) if layout else xs
    if seq == 0 or batch == 0:
        return "zero-size tensor"
    lens = op.operand(4)
    if lens is not None:
        lc = const_of(lens)
        if lc is None or not np.all(np.asarray(lc).reshape(-1) == seq):
            return "sequence_lens other than the full length"
    direction = op.attr("direction") or "forward"
    nd = 2 if direction == "bidirectional" else 1
    ws, rs = static_shape(W.type), static_shape(R.type)
    H = ws[1] // gates
    if op.attr("hidden_size") is not None and op.attr("hidden_size") != H:
        return "hidden_size does not match W"
    if H == 0 or ws != (nd, gates * H, isz) or rs != (nd, gates * H, H):
        return f"W {ws} / R {rs} do not fit {nd} direction(s) of hidden size {H}"
    state = (batch, nd, H) if layout else (nd, batch, H)
    if B is not None and static_shape(B.type) != (nd, 2 * gates * H):
        return "B shape"
    for s in (h0, c0):
        if s is not None and static_shape(s.type) != state:
            return "initial state shape"
    if P is not None and static_shape(P.type) != (nd, 3 * H):
        return "P shape"
    acts = recurrent_activations(op, nd)
    if isinstance(acts, str):
        return acts
    clip = op.attr("clip")
    lbr = bool(op.attr("linear_before_reset")) if kind == "gru" else False
    rc, wc = const_of(R), const_of(W)
    segs = KS.recurrent_segments(kind, H, lbr)
    r_in = R if rc is None else ConstArray(KS.pack_recurrent(rc, segs), (R.name or "R") + ".panels")
    wide = wide_tiles()
    w_in = W
    if wc is not None:  # W^T per direction as the GemmPacked panels of the projection
        w_in = ConstArray(np.concatenate([KG.pack_b(np.asarray(wc, np.float32)[d].T, wide).reshape(-1)
                                          for d in range(nd)]),
                          (W.name or "W") + f".panels{32 if wide else 16}")
    reverse = (True,) if direction == "reverse" else (False, True)[:nd]
    kern = KS.Recurrent(kind=kind, seq=seq, batch=batch, input_size=isz, hidden=H,
                        reverse=reverse, acts=acts,
                        clip=float(clip) if clip is not None else None, layout=layout,
                        has_bias=B is not None, has_h0=h0 is not None, has_c0=c0 is not None,
                        has_p=P is not None,
                        input_forget=bool(op.attr("input_forget")) if kind == "lstm" else False,
                        linear_before_reset=lbr, packed_r=rc is not None,
                        packed_w=wc is not None, wide=wide, name=kind)
    ins = [X, w_in, r_in] + [v for v in (B, h0, c0, P) if v is not None]
    return kern, ins


# the recurrent ``layout`` attribute is ONNX's batch-first flag, not a tensor layout
lower_recurrent.layouts = ("NCHW", 0, 1)


# -- attention ----------------------------------------------------------------------------------
def _mask_layout(mask, full: tuple) -> tuple | str:
    """(kind, batch strides over full[:-2], row stride, col stride) of a mask broadcast to
    ``full`` = (..., Sq, Skv)."""
    if mask is None:
        return "none", (0,) * (len(full) - 2), 0, 1
    dt = mask.type.dtype
    if dt is DType.bool:
        kind = "bool"
    elif dt is DType.float32:
        kind = "f32"
    else:
        return f"mask dtype {dt.name}"
    ms = static_shape(mask.type)
    if ms is None:
        return "mask shape not static"
    if len(ms) > len(full) or any(a != b and a != 1 for a, b in zip(ms[::-1], full[::-1])):
        return "mask does not broadcast to the scores"
    st = K.broadcast_strides(ms, full)
    return kind, tuple(st[:-2]), st[-2], st[-1]


@rule("attention")
def lower_attention(op):
    if any(r.uses for r in op.results[1:]):
        return "present_key/present_value/qk output used"
    for k in (4, 5, 6):
        if op.operand(k) is not None:
            return "KV cache (past_key/past_value/nonpad_kv_seqlen)"
    q, k, v, mask = op.operands[0], op.operands[1], op.operands[2], op.operand(3)
    for x in (q, k, v, op.results[0]):
        if not is_f32(x) or not is_static(x):
            return "Q/K/V not static float32"
    if (op.attr("left_window_size") or -1) >= 0 or (op.attr("right_window_size") or -1) >= 0:
        return "sliding window"
    prec = op.attr("softmax_precision")
    if prec is not None and prec is not DType.float32:
        return f"softmax_precision {prec}"
    qs, ks, vs = static_shape(q.type), static_shape(k.type), static_shape(v.type)
    rank = len(qs)
    if rank == 4:
        Bn, Hq, Sq, D = qs
        _, Hkv, Skv, _ = ks
        Dv = vs[3]
        qh, kh, vh = Sq * D, Skv * D, Skv * Dv          # head strides
        qb, kb, vb = Hq * qh, Hkv * kh, Hkv * vh        # batch strides
        yh, yb = Sq * Dv, Hq * Sq * Dv
        ldq, ldk, ldv, ldy = D, D, Dv, Dv
    elif rank == 3:
        Hq, Hkv = op.attr("q_num_heads"), op.attr("kv_num_heads")
        if not Hq or not Hkv:
            return "3-D Q/K/V without head counts"
        Bn, Sq, Skv = qs[0], qs[1], ks[1]
        D, Dv = qs[2] // Hq, vs[2] // Hkv
        qh, kh, vh, yh = D, D, Dv, Dv
        qb, kb, vb, yb = Sq * Hq * D, Skv * Hkv * D, Skv * Hkv * Dv, Sq * Hq * Dv
        ldq, ldk, ldv, ldy = Hq * D, Hkv * D, Hkv * Dv, Hq * Dv
    else:
        return f"rank {rank}"
    if (ks[0], ks[-1] if rank == 4 else ks[2] // Hkv) != (Bn, D) or \
            vs[:-1] != ks[:-1] or (rank == 3 and (ks[2] % Hkv or vs[2] % Hkv or qs[2] % Hq)):
        return f"Q {qs}, K {ks}, V {vs} do not agree"
    if K.prod((Bn, Hq, Sq, Skv, D, Dv)) == 0:
        return "zero-size tensor"
    if Hkv == 0 or Hq % Hkv:
        return "query heads not a multiple of kv heads"
    grp = Hq // Hkv
    if Skv * max(D, Dv) > KS.ATT_SMALL and not has_blas():
        return "no BLAS available (long key sequence)"
    ml = _mask_layout(mask, (Bn, Hq, Sq, Skv))
    if isinstance(ml, str):
        return ml
    mkind, mst, m_row, m_col = ml
    if mask is not None and static_shape(mask.type)[-1] != Skv:
        return "mask shorter than the keys (padding)"
    # batch loop: (batch, kv head, query head in its group)
    dims = [(Bn, qb, kb, vb, mst[0], yb), (Hkv, grp * qh, kh, vh, grp * mst[1], grp * yh),
            (grp, qh, 0, 0, mst[1], yh)]
    # size-1 dims index nothing; a dynamic module keeps the batch dim whatever its size
    # (its code must not depend on the shapes: codegen.dynamic_emission)
    dims = [d for j, d in enumerate(dims) if d[0] != 1 or (j == 0 and is_dynamic_emission())]
    scale = op.attr("scale")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    kern = KS.Attention(Sq=Sq, Skv=Skv, D=D, Dv=Dv, batch=tuple(d[0] for d in dims),
                        q_st=tuple(d[1] for d in dims), k_st=tuple(d[2] for d in dims),
                        v_st=tuple(d[3] for d in dims), m_st=tuple(d[4] for d in dims),
                        y_st=tuple(d[5] for d in dims), ldq=ldq, ldk=ldk, ldv=ldv, ldy=ldy,
                        scale=scale, causal=bool(op.attr("is_causal")),
                        softcap=float(op.attr("softcap") or 0.0), mask=mkind, m_row=m_row,
                        m_col=m_col, wide=wide_tiles())
    return kern, [q, k, v] + ([mask] if mask is not None else [])


# -- gather -----------------------------------------------------------------------------------
def lower_gather(op):
    """Constant indices: checked here, copied by TakeConst.  Run-time indices (int32 or
    int64, static shape): Take, which checks each index before it reads."""
    data, idx = op.operands[0], op.operands[1]
    ic = const_of(idx)
    ds, ys = static_shape(data.type), static_shape(op.results[0].type)
    if ds is None or ys is None or len(ds) == 0:
        return "shape not static"
    if data.type.dtype is DType.string:
        return "string tensor"
    ax = op.attr("axis") or 0
    ax = ax + len(ds) if ax < 0 else ax
    n = ds[ax]
    outer, inner_bytes = K.prod(ds[:ax]), K.prod(ds[ax + 1:]) * data.type.dtype.numpy.itemsize
    if ic is None:
        shape = static_shape(idx.type)
        if shape is None or idx.type.dtype not in (DType.int32, DType.int64):
            return "run-time indices of unknown shape or not int32/int64"
        return KS.Take(outer=outer, axis_dim=n, inner_bytes=inner_bytes, n_indices=K.prod(shape),
                       index_bytes=idx.type.dtype.numpy.itemsize), [data, idx]
    flat = np.asarray(ic).astype(np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + n, flat)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        return "index out of range"
    kern = KS.TakeConst(outer=outer, axis_dim=n, inner_bytes=inner_bytes,
                        indices=tuple(int(i) for i in flat))
    return kern, [data]


rule("gather")(lower_gather)
