"""Type refinement: re-infer an op's result types when its operands became more precise.

Importers infer types once, in graph order.  When folding later turns a computed shape
(``shape -> gather -> concat``) into a constant, the reshape/pad/slice that consumes it
still carries the ``?`` dims it was given at import, and so does everything downstream:
the cpu backend then cannot give those ops static kernels.  This pattern runs with the
folds, so each fold that makes an operand constant lets its users' types sharpen, which
lets the next shape computation fold, until the module reaches its fixpoint.
"""
from __future__ import annotations

from ...errors import GalaxirError
from ...ir.core import Operation
from ...ir.types import UNKNOWN, TensorType, Type, types_compatible
from ..rewrite import RewritePattern, Rewriter


def _sharper_dim(old, new):
    """The more precise of two compatible dims: a number over a symbol over '?'."""
    if isinstance(old, int):
        return old
    if isinstance(new, int):
        return new
    return new if old == UNKNOWN else old


def refined(old: Type, new: Type) -> Type | None:
    """`old` sharpened by what `new` knows, or None when `new` adds nothing (or disagrees)."""
    if not (isinstance(old, TensorType) and isinstance(new, TensorType)):
        return None
    if old.dtype != new.dtype or not types_compatible(old, new) or new.shape is None:
        return None
    if old.shape is None:
        return new
    shape = tuple(_sharper_dim(a, b) for a, b in zip(old.shape, new.shape))
    return None if shape == old.shape else old.with_shape(shape)


class RefineTypes(RewritePattern):
    """Re-infer an op's result types; keep whatever is more precise than before."""

    name = "refine-types"
    root = None
    benefit = 1

    def match_and_rewrite(self, op: Operation, rw: Rewriter) -> bool:
        od = op.opdef
        if od is None or op.is_terminator or op.name == "constant" or op.regions or not op.results:
            return False
        if not any(isinstance(r.type, TensorType) and not r.type.is_static for r in op.results):
            return False
        try:
            types = od.infer_types(op)
        except GalaxirError:
            return False    # the verifier reports a broken op; refinement just leaves it
        if not types or len(types) != len(op.results):
            return False
        better = [refined(r.type, t) for r, t in zip(op.results, types)]
        if all(b is None for b in better):
            return False
        rw._begin(op, self.name, ())
        for r, b in zip(op.results, better):
            if b is not None:
                r.type = b
        rw.modified(op)
        return True
