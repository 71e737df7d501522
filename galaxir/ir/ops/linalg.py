"""Linear algebra: matmul (numpy-style batched, 1-D promotion), gemm, einsum, det."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..opdef import attr, define
from ..types import UNKNOWN, Dim
from .rules import broadcast_dims, broadcast_shapes, fail, tensor_operand

if TYPE_CHECKING:
    from ..core import Operation


def _same_dim(a: Dim, b: Dim) -> Dim:
    """Two dims that must be equal: the more precise one (a number beats a symbol)."""
    if isinstance(a, int) and isinstance(b, int):
        if a != b:
            raise ValueError(f"{a} != {b}")
        return a
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a != UNKNOWN else b


def matmul_shape(op: "Operation", sa, sb):
    """The result shape of numpy matmul for shapes ``sa`` @ ``sb`` (None: unknown rank)."""
    if sa is None or sb is None:
        return None
    if len(sa) == 0 or len(sb) == 0:
        raise fail(op, "operands must have rank >= 1")
    a = (1,) + tuple(sa) if len(sa) == 1 else tuple(sa)
    b = tuple(sb) + (1,) if len(sb) == 1 else tuple(sb)
    try:
        _same_dim(a[-1], b[-2])
    except ValueError:
        raise fail(op, f"inner dims differ: {list(sa)} @ {list(sb)}") from None
    try:
        batch = broadcast_shapes(a[:-2], b[:-2])
    except ValueError as e:
        raise fail(op, f"batch dims of {list(sa)} and {list(sb)} do not broadcast: {e}") from None
    out = list(batch)
    if len(sa) > 1:
        out.append(a[-2])
    if len(sb) > 1:
        out.append(b[-1])
    return tuple(out)


def _matmul_infer(op: "Operation"):
    ta, tb = tensor_operand(op, 0), tensor_operand(op, 1)
    return [ta.with_shape(matmul_shape(op, ta.shape, tb.shape))]


define("matmul", operands=["a", "b"], infer=_matmul_infer, types={"a": "T", "b": "T"},
       doc="numpy matmul: batched over leading dims (broadcast); 1-D operands are promoted "
           "to a row (a) or column (b) vector and the added dim removed.")


def _gemm_infer(op: "Operation"):
    ta, tb = tensor_operand(op, 0), tensor_operand(op, 1)
    for t, nm in ((ta, "a"), (tb, "b")):
        if t.shape is not None and len(t.shape) != 2:
            raise fail(op, f"operand {nm} must be 2-D, got {t}")
    m = n = UNKNOWN
    if ta.shape is not None:
        m, ka = (ta.shape[1], ta.shape[0]) if op.attr("transA") else ta.shape
    if tb.shape is not None:
        kb, n = (tb.shape[1], tb.shape[0]) if op.attr("transB") else tb.shape
    if ta.shape is not None and tb.shape is not None:
        try:
            _same_dim(ka, kb)
        except ValueError:
            raise fail(op, f"inner dims differ: {ta} and {tb} (transA={op.attr('transA')}, "
                       f"transB={op.attr('transB')})") from None
    out = (m, n)
    c = op.operand(2)
    if c is not None:
        tc = tensor_operand(op, 2)
        if tc.shape is not None:
            if len(tc.shape) > 2:
                raise fail(op, f"operand c must have rank <= 2, got {tc}")
            cs = (1,) * (2 - len(tc.shape)) + tuple(tc.shape)
            refined = []
            for r, cd in zip(out, cs):  # c broadcasts to [M, N], never the other way round
                if isinstance(r, int) and isinstance(cd, int) and cd not in (1, r):
                    raise fail(op, f"c {tc} does not broadcast to [{m},{n}]")
                refined.append(cd if not isinstance(r, int) and isinstance(cd, int) and cd != 1 else r)
            out = tuple(refined)
    return [ta.with_shape(out)]


GEMM_TYPES = {"a": "T", "b": "T", "c": "T"}
define("gemm", operands=["a", "b", "c?"], infer=_gemm_infer, types=GEMM_TYPES,
       attrs={"alpha": attr("float", 1.0), "beta": attr("float", 1.0),
              "transA": attr("int", 0), "transB": attr("int", 0)},
       doc="alpha * op(a) @ op(b) + beta * c, with c broadcast to [M, N].")


# -- einsum ------------------------------------------------------------------------------------
def parse_einsum(equation: str, ranks: list[int | None]):
    """Split an equation into per-input terms and the output term, with '...' as '.'.

    Returns (input_terms, output_term, ellipsis_rank).  The output term is the implicit
    one (ellipsis, then letters seen once, sorted) when the equation has no '->'.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"equation has {len(terms)} input terms for {len(ranks)} inputs")
    terms = [t.replace("...", ".") for t in terms]
    ell = 0
    for t, r in zip(terms, ranks):
        if any(not (c.isalpha() or c == ".") for c in t) or t.count(".") > 1:
            raise ValueError(f"bad term {t!r}")
        if "." in t and r is not None:
            ell = max(ell, r - (len(t) - 1))
        elif r is not None and len(t) != r:
            raise ValueError(f"term {t!r} has {len(t)} letters for a rank-{r} input")
    if arrow:
        out = rhs.replace("...", ".")
        if any(not (c.isalpha() or c == ".") for c in out):
            raise ValueError(f"bad output term {out!r}")
    else:
        letters = "".join(terms).replace(".", "")
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        out = ("." if any("." in t for t in terms) else "") + "".join(once)
    return terms, out, ell


def _einsum_infer(op: "Operation"):
    types = [tensor_operand(op, i) for i in range(len(op.operands))]
    if not types:
        raise fail(op, "needs at least one input")
    ranks = [t.rank for t in types]
    try:
        terms, out, ell = parse_einsum(op.attr("equation"), ranks)
    except ValueError as e:
        raise fail(op, f"equation {op.attr('equation')!r}: {e}") from None
    if any(r is None for r in ranks):
        return [types[0].with_shape(None)]
    dims: dict[str, Dim] = {}
    ell_shapes = []
    for t, term in zip(types, terms):
        shape = list(t.shape)
        if "." in term:
            i = term.index(".")
            n_ell = len(shape) - (len(term) - 1)
            ell_shapes.append(tuple(shape[i:i + n_ell]))
            shape = shape[:i] + [None] + shape[i + n_ell:]
        for c, d in zip(term, shape):
            if c == ".":
                continue
            if c in dims:
                try:
                    dims[c] = _same_dim(dims[c], d) if dims[c] != 1 and d != 1 else \
                        broadcast_dims(dims[c], d)
                except ValueError:
                    raise fail(op, f"letter {c!r} has sizes {dims[c]} and {d}") from None
            else:
                dims[c] = d
    try:
        ell_shape = broadcast_shapes(*ell_shapes) if ell_shapes else ()
    except ValueError as e:
        raise fail(op, f"ellipsis dims do not broadcast: {e}") from None
    shape: list[Dim] = []
    for c in out:
        if c == ".":
            shape.extend(ell_shape)
        elif c not in dims:
            raise fail(op, f"output letter {c!r} does not occur in the inputs")
        else:
            shape.append(dims[c])
    return [types[0].with_shape(tuple(shape))]


define("einsum", operands=["inputs*"], infer=_einsum_infer, types={"inputs": "T"},
       attrs={"equation": attr("str", required=True)})


def _det_infer(op: "Operation"):
    t = tensor_operand(op, 0)
    if t.shape is None:
        return [t]
    if len(t.shape) < 2:
        raise fail(op, f"input must be [..., M, M], got {t}")
    try:
        _same_dim(t.shape[-1], t.shape[-2])
    except ValueError:
        raise fail(op, f"input must hold square matrices, got {t}") from None
    return [t.with_shape(t.shape[:-2])]


define("det", operands=["x"], infer=_det_infer, doc="Determinant of each [..., M, M] matrix.")
