"""Op traits: properties of an op kind, declared once where the op is defined, that passes
and backends query instead of keeping their own lists of op names.

    define("add", ..., traits=[Commutative(), Elementwise("binary", fusible=True), InPlace()])
    op.has_trait(Commutative)                   # Operation: False for an unregistered op
    op.opdef.trait(Elementwise).kind            # the trait object, with its parameters
    ops_with(View, lambda t: t.kind == "reshape")   # names of every op carrying it

A trait is a small frozen object; ``has_trait`` asks by class.  An op defined outside the
package gets the same treatment by passing ``traits=`` to ``opdef.define``.  What a backend
can *lower* is its own capability, not a trait (see docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T", bound="OpTrait")


class OpTrait:
    """Base of every trait.  Subclasses are frozen dataclasses (hashable, compared by value)."""

    __slots__ = ()


@dataclass(frozen=True)
class Pure(OpTrait):
    """No effect besides its results, and the same results for the same operands: the op may
    be erased when unused, merged with an equal op, and evaluated early (folded).  Attached
    by ``OpDef`` unless the op is declared ``pure=False`` (random ops, ``return``)."""


@dataclass(frozen=True)
class Commutative(OpTrait):
    """The operands may be given in any order (pattern matching tries both orders of two)."""


ELEMENTWISE_KINDS = ("unary", "binary", "variadic", "other")


@dataclass(frozen=True)
class Elementwise(OpTrait):
    """Each result element depends only on the operand elements at the same (broadcast)
    position, and the op has no axis attribute: a transpose of every operand moves through
    it (passes/layout.py).

    ``kind``: ``unary`` (one tensor), ``binary`` (two, broadcast), ``variadic`` (any number,
    broadcast) or ``other`` (a fixed mix, e.g. where's condition or clip's scalar bounds).
    ``fusible``: a numeric formula in its operands' element type that the generic
    elementwise fusion may put into a ``fused_elementwise`` loop (comparisons, logic,
    casts, integer-only ops and sum/mean are not)."""

    kind: str = "unary"
    fusible: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ELEMENTWISE_KINDS:
            raise ValueError(f"Elementwise kind must be one of {ELEMENTWISE_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class InPlace(OpTrait):
    """The result may be written over an operand buffer of the same type: every output
    element is computed from input elements at its own position only (the memory planner's
    in-place candidates, passes/memory.py)."""


VIEW_KINDS = ("reshape", "identity", "inference")


@dataclass(frozen=True)
class View(OpTrait):
    """The (first) result holds operand 0's elements unchanged, in the same order, so it may
    reuse operand 0's buffer.  ``kind``: ``reshape`` (a new shape: reshape, flatten, squeeze,
    unsqueeze), ``identity`` (the same value), ``inference`` (only when not training and no
    mask is asked for: dropout; the user checks those conditions)."""

    kind: str = "reshape"

    def __post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise ValueError(f"View kind must be one of {VIEW_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ShapeOnly(OpTrait):
    """Only rearranges or repeats operand 0's elements as its other operands/attributes
    say (reshape, squeeze, unsqueeze, flatten, expand, tile): a result of exactly operand
    0's shape *is* operand 0 (simplify's ``remove-noop-*`` rules)."""


@dataclass(frozen=True)
class SizeFromValues(OpTrait):
    """The result's size depends on operand *values*, not only their shapes (range, tile,
    expand, pad, non_zero, ...): folding checks the result type is static before it runs."""


@dataclass(frozen=True)
class ConstantLike(OpTrait):
    """Produces a value from its attributes alone (``constant``): nothing to fold."""


@dataclass(frozen=True)
class LayoutAttr(OpTrait):
    """Has an NHWC form, chosen by its ``layout`` attribute (``"NCHW"`` or ``"NHWC"``), that
    the O3 layout pass converts to."""


def ops_with(cls: type[T], where: Callable[[T], bool] | None = None) -> frozenset[str]:
    """The names of the registered ops carrying trait ``cls`` (and satisfying ``where``)."""
    from .opdef import all_ops
    out = []
    for name, od in all_ops().items():
        t = od.trait(cls)
        if t is not None and (where is None or where(t)):
            out.append(name)
    return frozenset(out)


__all__ = ["OpTrait", "Pure", "Commutative", "Elementwise", "InPlace", "View", "ShapeOnly",
           "SizeFromValues",
           "ConstantLike", "LayoutAttr", "ops_with", "ELEMENTWISE_KINDS", "VIEW_KINDS"]
