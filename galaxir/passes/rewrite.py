"""Declarative rewrite patterns and the greedy, worklist-driven driver that applies them.

A pattern reads like the subgraph it matches::

    from galaxir.passes.rewrite import P, Var, Const, pattern

    X = Var("x")

    @pattern(P.mul(X, Const(1)))          # mul is commutative: 1*x matches too
    def mul_by_one(m):
        return m.x                        # replaces the root's result with x

The callback gets a :class:`Match` (captures as attributes, ``m.root``, ``m.b`` a Builder
placed before the root whose ops record the rule name and the matched ops' provenance)
and returns the replacement value(s), or None to decline (``m.fail("why")`` says why).
Replacements are type-checked: a value whose type is not the root result's type is
refused, which stops the classic broadcasting mistakes (``x * ones(2, 3)`` is not ``x``).

For rewrites that do not fit a single subgraph, subclass :class:`RewritePattern` and
implement ``match_and_rewrite(op, rewriter)`` (the xDSL / MLIR shape).

:func:`apply_patterns_greedily` runs a pattern set to a fixpoint: every op starts on a
worklist; when a rewrite changes something, only the ops it touched (new ops, users of
replaced values, producers of erased operands) are queued again, so the work is
proportional to what changed.  Ops in nested regions are visited too, and ops left without
uses are erased on the way (dead code).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import GalaxirError, PassError
from ..ir.builder import Builder
from ..ir.core import Block, Module, Operation, Region, Value
from ..ir.traits import Commutative, Pure
from ..ir.types import UNKNOWN, TensorType, Type, types_compatible

def is_pure(op: Operation) -> bool:
    """May ``op`` be erased when unused, merged with an equal op, or evaluated early?
    (Its definition carries the ``Pure`` trait, and so does every op in its regions; an op
    without a definition counts as pure.)"""
    od = op.opdef
    if od is not None and not od.has_trait(Pure):
        return False
    for region in op.regions:
        for inner in region.walk():
            if not inner.is_terminator and not is_pure(inner):
                return False
    return True


def const_array(v: Value | None) -> np.ndarray | None:
    """The numpy value of ``v`` when a ``constant`` op produces it, else None."""
    return None if v is None else v.constant_value()


def splat_value(arr: np.ndarray, limit: int = 1 << 16):
    """The single value every element of ``arr`` holds, or None (also for empty arrays)."""
    if arr.size == 0:
        return None
    first = arr.reshape(-1)[0] if arr.ndim else arr[()]
    if all(s == 0 for s in arr.strides):
        return first
    if arr.size > limit:
        return None
    if arr.dtype == object:
        return first if all(x == first for x in arr.reshape(-1)) else None
    with np.errstate(all="ignore"):
        return first if bool(np.all(arr == first)) else None


# =========================================================================================
# The matcher DSL
# =========================================================================================
class Pattern:
    """Matches a Value; ``_match`` yields every binding dict that extends ``binds``."""

    capture: str | None = None

    def _match(self, v: Value | None, binds: dict, why: list | None) -> Iterator[dict]:
        raise NotImplementedError

    def named(self, name: str) -> "Pattern":
        """Capture what this sub-pattern matched under ``name``."""
        self.capture = name
        return self

    def __repr__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        return type(self).__name__


def _bind(binds: dict, name: str | None, obj: Any) -> dict | None:
    if name is None:
        return binds
    if name in binds:
        return binds if binds[name] is obj else None
    out = dict(binds)
    out[name] = obj
    return out


def _note(why: list | None, msg: str) -> None:
    if why is not None:
        why.append(msg)


class Var(Pattern):
    """Any value (never a missing operand); the same name twice means the same value."""

    def __init__(self, name: str | None = None, where: Callable[[Value], bool] | None = None,
                 dtype=None):
        self.capture = name
        self.pred = where
        self.dtype = dtype

    def _match(self, v, binds, why):
        if v is None:
            _note(why, f"{self.describe()}: operand is missing")
            return
        if self.dtype is not None and _dtype(v) not in _as_dtypes(self.dtype):
            _note(why, f"{self.describe()}: dtype {_dtype(v)} is not {self.dtype}")
            return
        if self.pred is not None and not self.pred(v):
            _note(why, f"{self.describe()}: constraint failed on {v}")
            return
        b = _bind(binds, self.capture, v)
        if b is None:
            _note(why, f"{self.describe()}: differs from the value bound earlier")
            return
        yield b

    def describe(self) -> str:
        return f"Var({self.capture!r})" if self.capture else "Any"


class Absent(Pattern):
    """A missing optional operand."""

    def _match(self, v, binds, why):
        if v is None:
            yield binds
        else:
            _note(why, "expected a missing operand")

    def describe(self) -> str:
        return "Absent"


class Const(Pattern):
    """A value produced by a ``constant`` op.  ``Const(1)`` matches a constant whose every
    element equals 1 (a splat, any shape); ``where`` tests the numpy array."""

    _ANY = object()

    def __init__(self, value: Any = _ANY, name: str | None = None,
                 where: Callable[[np.ndarray], bool] | None = None):
        self.value = value
        self.capture = name
        self.pred = where

    def _match(self, v, binds, why):
        arr = const_array(v)
        if arr is None:
            _note(why, f"{self.describe()}: {_what(v)} is not a constant")
            return
        if self.value is not Const._ANY:
            s = splat_value(arr)
            if s is None or arr.dtype == object or not _eq(s, self.value):
                _note(why, f"{self.describe()}: the constant is not all {self.value!r}")
                return
        if self.pred is not None and not self.pred(arr):
            _note(why, f"{self.describe()}: constraint failed")
            return
        b = _bind(binds, self.capture, v)
        if b is None:
            return
        yield b

    def describe(self) -> str:
        inner = "" if self.value is Const._ANY else repr(self.value)
        return f"Const({inner})"


def _eq(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _what(v: Value | None) -> str:
    if v is None:
        return "a missing operand"
    if v.producer is None:
        return "a block argument"
    return f"the result of {v.producer.name}"


def _dtype(v: Value):
    return v.type.dtype if isinstance(v.type, TensorType) else None


def _as_dtypes(d) -> tuple:
    from ..ir.types import DType
    items = d if isinstance(d, (tuple, list, set, frozenset)) else (d,)
    return tuple(DType.from_short(x) if isinstance(x, str) else x for x in items)


class OpPat(Pattern):
    """An op of kind ``name`` (or one of several) whose operands match ``operands``.

    ``operands``: None (any operands), or a sequence of patterns; a trailing ``...`` lets
    further operands be anything; operands beyond the list must be missing (None).
    ``attrs``: attribute name -> required value or predicate (defaults apply).
    ``where``: predicate on the Operation.  ``one_use``: its result has exactly one use.
    ``commutative``: try both orders of two operands (default: the op's ``Commutative`` trait).
    """

    def __init__(self, name: str | Sequence[str], operands: Sequence[Any] | None = None,
                 attrs: dict | None = None, where: Callable[[Operation], bool] | None = None,
                 one_use: bool = False, commutative: bool | None = None,
                 name_as: str | None = None):
        self.names = (name,) if isinstance(name, str) else tuple(name)
        self.operands = None if operands is None else [_coerce_pattern(p) for p in operands]
        self.attrs = dict(attrs or {})
        self.pred = where
        self.single_use = one_use
        self.commutative = commutative
        self.capture = name_as

    # fluent helpers ----------------------------------------------------------------------
    def where(self, pred: Callable[[Operation], bool]) -> "OpPat":
        self.pred = pred
        return self

    def with_attrs(self, **attrs: Any) -> "OpPat":
        self.attrs.update(attrs)
        return self

    def one_use(self) -> "OpPat":
        self.single_use = True
        return self

    def ordered(self) -> "OpPat":
        self.commutative = False
        return self

    # matching ----------------------------------------------------------------------------
    def _match(self, v, binds, why):
        if v is None or v.producer is None:
            _note(why, f"{self.describe()}: {_what(v)} is not produced by an op")
            return
        op = v.producer
        if self.single_use and len(v.uses) != 1:
            _note(why, f"{self.describe()}: result has {len(v.uses)} uses, needs exactly one")
            return
        yield from self.match_op(op, binds, why)

    def match_op(self, op: Operation, binds: dict | None = None,
                 why: list | None = None) -> Iterator[dict]:
        binds = {} if binds is None else binds
        if op.name not in self.names:
            _note(why, f"{self.describe()}: found {op.name}")
            return
        for key, want in self.attrs.items():
            got = op.attr(key)
            ok = want(got) if callable(want) else _attr_eq(got, want)
            if not ok:
                _note(why, f"{self.describe()}: attribute {key}={got!r} does not fit")
                return
        b = _bind(binds, self.capture, op)
        if b is None:
            return
        ops_seen = b.get("__ops__", [])
        b = dict(b)
        b["__ops__"] = ops_seen + [op]
        for full in self._match_operands(op, b, why):
            if self.pred is not None and not self.pred(Match(full, op)):
                _note(why, f"{self.describe()}: constraint failed")
                continue
            yield full

    def _match_operands(self, op, binds, why):
        if self.operands is None:
            yield binds
            return
        pats = list(self.operands)
        operands = list(op.operands)
        rest_any = bool(pats) and pats[-1] is Ellipsis
        if rest_any:
            pats = pats[:-1]
        if len(operands) < len(pats):
            operands += [None] * (len(pats) - len(operands))
        elif not rest_any and any(x is not None for x in operands[len(pats):]):
            _note(why, f"{self.describe()}: has {len(operands)} operands, pattern has {len(pats)}")
            return
        orders = [operands[:len(pats)]]
        comm = self.commutative if self.commutative is not None else op.has_trait(Commutative)
        if comm and len(pats) == 2 and len(op.operands) == 2:
            orders.append([operands[1], operands[0]])
        for vals in orders:
            yield from _match_seq(pats, vals, binds, why)

    def describe(self) -> str:
        n = self.names[0] if len(self.names) == 1 else "|".join(self.names)
        if self.operands is None:
            return f"{n}(...)"
        return f"{n}({', '.join('...' if p is Ellipsis else p.describe() for p in self.operands)})"


def _match_seq(pats, vals, binds, why):
    if not pats:
        yield binds
        return
    for b in pats[0]._match(vals[0], binds, why):
        yield from _match_seq(pats[1:], vals[1:], b, why)


def _attr_eq(got, want) -> bool:
    if isinstance(want, list):
        want = tuple(want)
    if isinstance(got, np.ndarray) or isinstance(want, np.ndarray):
        return np.array_equal(np.asarray(got), np.asarray(want))
    return got == want


def _coerce_pattern(p):
    if p is Ellipsis or isinstance(p, Pattern):
        return p
    if p is None:
        return Absent()
    if isinstance(p, (int, float, bool, np.number)):
        return Const(p)
    raise TypeError(f"not a pattern: {p!r} (use Var, Const, P.<op>(...), None or ...)")


class _OpFactory:
    """``P.mul(X, Const(1))`` builds ``OpPat("mul", [X, Const(1)])``; ``P("ml.x", ...)``
    for names that are not identifiers; ``P.any_of("reshape", "squeeze")(X, ...)``."""

    def __call__(self, name: str | Sequence[str], *operands: Any, **kw: Any) -> OpPat:
        if not operands and kw.pop("any_operands", False):
            return OpPat(name, None, **kw)
        return OpPat(name, operands, **kw)

    def any_of(self, *names: str):
        return lambda *operands, **kw: OpPat(names, operands if operands else None, **kw)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *operands, **kw: OpPat(name, operands, **kw)


P = _OpFactory()


# =========================================================================================
# Matches, rewriters and patterns
# =========================================================================================
class Match:
    """What a pattern matched: captures as attributes (``m.x``), the root op, a builder."""

    def __init__(self, binds: dict, root: Operation, rewriter: "Rewriter | None" = None):
        self._binds = binds
        self.root = root
        self.rewriter = rewriter
        self.reason: str | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._binds[name]
        except KeyError:
            raise AttributeError(f"the pattern captured no {name!r} (captures: "
                                 f"{sorted(k for k in self._binds if k != '__ops__')})") from None

    def __getitem__(self, name: str) -> Any:
        return self._binds[name]

    def __contains__(self, name: str) -> bool:
        return name in self._binds

    @property
    def ops(self) -> list[Operation]:
        """Every op the pattern matched, root first."""
        return list(self._binds.get("__ops__", [self.root]))

    def array(self, name: str) -> np.ndarray:
        """The numpy value of a captured constant."""
        arr = const_array(self._binds[name])
        if arr is None:
            raise ValueError(f"capture {name!r} is not a constant")
        return arr

    @property
    def b(self) -> Builder:
        """A Builder inserting before the root (ops record this rule and the provenance)."""
        return self.rewriter.builder()

    def fail(self, reason: str) -> None:
        """Decline this match, saying why (shown by :func:`explain`)."""
        self.reason = reason
        return None


class Rewriter:
    """How patterns change the IR; every change is reported to the driver's worklist."""

    def __init__(self, listener: "_Listener | None" = None,
                 allows: Callable[[str], bool] | None = None):
        self.listener = listener or _Listener()
        #: which composite ops a rule may create (the target's capabilities); None: any
        self.allows = allows
        self.root: Operation | None = None
        self.rule: str | None = None
        self.provenance: tuple[str, ...] = ()
        self.created: list[Operation] = []
        self.erased: list[Operation] = []
        self._freed: list[Operation] = []  # producers of what the rule erased
        self.erase_orphans = True  # (off when the driver keeps dead ops: erase_dead=False)
        self._memos: dict = {}
        self._memos_at = -1

    def memo(self, owner) -> dict:
        """A dict where ``owner`` (a pattern) keeps what it learned about the IR, emptied
        whenever the IR changes (every change is reported to the listener): what it holds
        stays true until the next rewrite, so a pattern need not recompute it per op."""
        if self._memos_at != self.listener.changes:
            self._memos = {}
            self._memos_at = self.listener.changes
        got = self._memos.get(owner)
        if got is None:
            got = self._memos[owner] = {}
        return got

    # -- setup by the driver ------------------------------------------------------------
    def _begin(self, root: Operation, rule: str, matched: Sequence[Operation] = ()) -> None:
        self.root, self.rule = root, rule
        self.provenance = _union_prov([root, *matched])
        self.created, self.erased, self._freed = [], [], []

    @property
    def changed(self) -> bool:
        return bool(self.created or self.erased or self.listener.touched)

    # -- creating ---------------------------------------------------------------------------
    def builder(self, before: Operation | None = None) -> "_TrackingBuilder":
        anchor = before or self.root
        return _TrackingBuilder(self, anchor.parent, anchor)

    def create(self, name: str, *operands: Value | None, before: Operation | None = None,
               **kw: Any) -> Operation:
        return self.builder(before).create(name, *operands, **kw)

    def constant(self, value: np.ndarray, before: Operation | None = None) -> Value:
        """A new ``constant`` op (built directly: its type is the array's)."""
        from ..ir.types import DType
        value = np.asarray(value)
        op = Operation("constant", (), [TensorType(DType.from_numpy(value.dtype), value.shape)],
                       {"value": value}, provenance=self.provenance, created_by=self.rule)
        anchor = before or self.root
        anchor.parent.insert_before(anchor, op)
        self._created(op)
        return op.results[0]

    def _created(self, op: Operation) -> None:
        self.created.append(op)
        if self.allows is not None:
            od = op.opdef
            if od is not None and od.is_composite and not self.allows(op.name):
                raise _Refused(op.name)
        self.listener.added(op)

    # -- replacing and erasing --------------------------------------------------------------
    def replace_op(self, op: Operation, values: Sequence[Value | None]) -> None:
        """Replace ``op``'s results with ``values`` (None for an unused result) and erase it."""
        if len(values) != len(op.results):
            raise PassError(f"{self.rule or 'rewrite'}: {len(values)} replacements for the "
                            f"{len(op.results)} results of {op.name}")
        for old, new in zip(op.results, values):
            if new is None:
                if old.uses:
                    raise PassError(f"{self.rule}: result {old.index} of {op.name} is used "
                                    "but has no replacement")
                continue
            self.replace_all_uses(old, new)
        self.erase_op(op)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        if old is new:
            return
        check_replacement(self.rule or "rewrite", old, new)
        if new.name is None and old.name is not None and new.producer is not None and \
                new.producer in self.created:
            new.name = old.name
        users = old.users
        old.replace_all_uses_with(new)
        for u in users:
            self.listener.touched_op(u)
        if new.producer is not None:
            self.listener.touched_op(new.producer)

    def erase_op(self, op: Operation) -> None:
        producers = _outer_producers(op)
        op.erase()
        self.erased.append(op)
        self._freed.extend(producers)
        self.listener.erased(op)
        for p in producers:
            self.listener.touched_op(p)

    def modified(self, op: Operation) -> None:
        """Tell the driver ``op`` was changed in place (attributes or operands)."""
        self.listener.touched_op(op)
        for r in op.results:
            for u in r.users:
                self.listener.touched_op(u)

    def set_operand(self, op: Operation, i: int, v: Value | None) -> None:
        old = op.operand(i)
        op.set_operand(i, v)
        self.modified(op)
        if old is not None and old.producer is not None:
            self.listener.touched_op(old.producer)

    def inline_region_before(self, region: Region, anchor: Operation) -> list[Value | None]:
        """Move a region's ops (not its terminator) before ``anchor``; returns the values it
        returned.  The region must take no arguments."""
        block = region.block
        if block.args:
            raise PassError(f"{self.rule}: cannot inline a region with arguments")
        results = list(block.results)
        term = block.terminator
        for op in list(block):
            if op is term:
                continue
            block.remove(op)
            anchor.parent.insert_before(anchor, op)
            self.listener.added(op)
            for inner in op.walk():
                self.listener.added(inner)
        return results

    def _finish(self) -> None:
        """After a successful rule: the ops it left without a use (the rest of the matched
        chain) are erased now, and created ops inherit the provenance of every erased op:
        a fused conv+bn+add+relu names all four source nodes, not only the relu."""
        if self.created and self.erase_orphans:
            self._erase_orphans()
        extra = _union_prov(self.erased)
        for op in self.created:
            if op.parent is not None:
                op.provenance = _merge_prov(op.provenance, extra)


    def _erase_orphans(self) -> None:
        while self._freed:
            p = self._freed.pop()
            if p.parent is None or p.name == "constant" or p.regions or not is_pure(p) \
                    or any(r.uses for r in p.results):
                continue
            self.erase_op(p)  # (adds p's producers to _freed)


class _TrackingBuilder(Builder):
    def __init__(self, rewriter: Rewriter, block: Block, before: Operation | None):
        super().__init__(block, before=before, provenance=rewriter.provenance,
                         created_by=rewriter.rule)
        self._rw = rewriter

    def insert(self, op: Operation) -> Operation:
        super().insert(op)
        self._rw._created(op)
        return op


class _Refused(Exception):
    """A rule tried to create a composite op the target neither runs nor decomposes: the
    driver undoes what the rule created and goes on as if it had not matched."""


def check_replacement(rule: str, old: Value, new: Value) -> None:
    """A rewrite must keep the result type: raise PassError naming ``rule`` when ``new``'s
    type contradicts ``old``'s (another dtype or rank, or a different static dim).  Users
    of ``old`` were typed against it, and a graph output's type is part of the contract."""
    if types_compatible(old.type, new.type):
        return
    where = _describe(old.producer) if old.producer is not None else "a block argument"
    raise PassError(f"rewrite '{rule}': replaces result {old.index} of {where}, typed "
                    f"{old.type}, with a value typed {new.type} (a rewrite must keep the result type)")


def replace_op(op: Operation, values: Sequence[Value], rule: str) -> None:
    """``op.replace_with(values)`` for passes that rewrite without a Rewriter: each value's
    type is checked against the result it replaces first (:func:`check_replacement`)."""
    for old, new in zip(op.results, values):
        if new is not None and new is not old:
            check_replacement(rule, old, new)
    op.replace_with(values)


def _union_prov(ops: Iterable[Operation]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for op in ops:
        for p in op.provenance:
            out.setdefault(p, None)
    return tuple(out)


def _merge_prov(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*a, *b]))


def _outer_producers(op: Operation) -> list[Operation]:
    """Producers of values ``op`` (and its regions) read from outside itself."""
    out = []
    inner: set[int] = set()
    if op.regions:
        for r in op.regions:
            for nested in r.walk():
                inner.update(id(x) for x in nested.results)
                for rr in nested.regions:
                    inner.update(id(a) for a in rr.block.args)
            inner.update(id(a) for a in r.block.args)
    for nested in op.walk():
        for v in nested.operands:
            if v is not None and id(v) not in inner and v.producer is not None \
                    and v.producer is not op:
                out.append(v.producer)
    return out


class _Listener:
    """Receives change notifications; the greedy driver's listener queues ops."""

    def __init__(self):
        self.touched = False
        self.changes = 0  # notifications so far: Rewriter.memo's validity

    def added(self, op: Operation) -> None:
        self.touched = True
        self.changes += 1

    def erased(self, op: Operation) -> None:
        self.touched = True
        self.changes += 1

    def touched_op(self, op: Operation) -> None:
        self.touched = True
        self.changes += 1


class RewritePattern:
    """A rewrite: ``match_and_rewrite(op, rewriter) -> bool`` (True when it changed the IR).

    ``root``: the op name(s) it can apply to, or None for any op (tried on every op).
    ``benefit``: higher runs first when several patterns fit one op.
    """

    name: str = ""
    root: str | tuple[str, ...] | None = None
    benefit: int = 1

    def match_and_rewrite(self, op: Operation, rewriter: Rewriter) -> bool:
        raise NotImplementedError

    def explain(self, op: Operation) -> str:
        return "this pattern gives no reasons"

    @property
    def roots(self) -> tuple[str, ...] | None:
        if self.root is None:
            return None
        return (self.root,) if isinstance(self.root, str) else tuple(self.root)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or '?'}>"


Replacement = Value | Sequence[Value | None] | None


class DeclarativePattern(RewritePattern):
    """A :class:`Pattern` tree plus a callback that builds the replacement."""

    def __init__(self, pat: OpPat, fn: Callable[[Match], Replacement], name: str | None = None,
                 benefit: int = 1, check_types: bool = True):
        if not isinstance(pat, OpPat):
            raise TypeError("a rewrite pattern's root must be an op pattern (P.<op>(...))")
        self.pat = pat
        self.fn = fn
        self.name = name or fn.__name__.replace("_", "-")
        self.root = pat.names
        self.benefit = benefit
        self.check_types = check_types
        self.__doc__ = fn.__doc__

    def matches(self, op: Operation) -> Iterator[Match]:
        for binds in self.pat.match_op(op):
            yield Match(binds, op)

    def match_and_rewrite(self, op: Operation, rewriter: Rewriter) -> bool:
        for binds in self.pat.match_op(op):
            m = Match(binds, op, rewriter)
            rewriter._begin(op, self.name, binds.get("__ops__", ()))
            out = self.fn(m)
            if out is None or out is False:
                _rollback(rewriter)
                continue
            if out is True:  # the callback rewrote through m.rewriter itself
                return True
            values = [out] if isinstance(out, Value) else list(out)
            if len(values) != len(op.results):
                _rollback(rewriter)
                raise PassError(f"rule {self.name}: returned {len(values)} values for the "
                                f"{len(op.results)} results of {op.name}")
            bad = _type_problem(op, values, rewriter.created) if self.check_types else None
            if bad:
                _rollback(rewriter)
                continue
            rewriter.replace_op(op, values)
            return True
        return False

    def explain(self, op: Operation) -> str:
        why: list[str] = []
        for binds in self.pat.match_op(op, None, why):
            m = Match(binds, op, Rewriter())
            m.rewriter._begin(op, self.name, binds.get("__ops__", ()))
            out = self.fn(m)
            _rollback(m.rewriter)
            if out is None or out is False:
                why.append(f"the rule declined: {m.reason or 'its callback returned None'}")
                continue
            if out is True:
                return "matches"
            values = [out] if isinstance(out, Value) else list(out)
            bad = _type_problem(op, values, m.rewriter.created)
            if bad:
                why.append(bad)
                continue
            return "matches"
        return "; ".join(why) if why else "no match"


def _rollback(rw: Rewriter) -> None:
    """Erase ops a declining callback created (newest first)."""
    for op in reversed(rw.created):
        if op.parent is not None and not any(r.uses for r in op.results):
            op.erase()
            rw.listener.erased(op)
    rw.created = []


def _type_problem(op: Operation, values: Sequence[Value | None],
                  created: Sequence[Operation]) -> str | None:
    fresh = {id(o) for o in created}
    for i, (old, new) in enumerate(zip(op.results, values)):
        if new is None:
            if old.uses:
                return f"result {i} is used but the rule gave no replacement"
            continue
        if not isinstance(new, Value):
            return f"replacement {i} is {type(new).__name__}, not a Value"
        if new.producer is not None and id(new.producer) in fresh:
            if not types_compatible(old.type, new.type) and not types_compatible(new.type, old.type):
                return f"replacement {i} has type {new.type}, the result has {old.type}"
            continue
        if not same_or_wider(old.type, new.type):
            return f"replacement {i} has type {new.type}, the result has {old.type}"
    return None


def same_or_wider(result: Type, new: Type) -> bool:
    """Is an existing value of type ``new`` certainly shaped like ``result``?  (``result``
    may know less: an unknown dim or rank there accepts anything.)"""
    if isinstance(result, TensorType) and isinstance(new, TensorType):
        if result.dtype != new.dtype:
            return False
        if result.shape is None:
            return True
        if new.shape is None or len(new.shape) != len(result.shape):
            return False
        return all(a == UNKNOWN or a == b for a, b in zip(result.shape, new.shape))
    return types_compatible(result, new)


def pattern(pat: OpPat, name: str | None = None, benefit: int = 1, check_types: bool = True):
    """Decorator: turn ``fn(match) -> replacement`` into a :class:`DeclarativePattern`."""
    def deco(fn: Callable[[Match], Replacement]) -> DeclarativePattern:
        return DeclarativePattern(pat, fn, name, benefit, check_types)
    return deco


def explain(pat: RewritePattern, op: Operation) -> str:
    """Why ``pat`` does (or does not) apply to ``op``, e.g. ``"Const(1): the constant is not
    all 1"``."""
    return pat.explain(op)


# =========================================================================================
# The greedy driver
# =========================================================================================
@dataclass
class RewriteStats:
    """What one greedy run did."""

    rewrites: Counter = field(default_factory=Counter)
    dead_erased: int = 0
    visited: int = 0
    log: list = field(default_factory=list)
    stopped_by_budget: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.rewrites) or self.dead_erased > 0

    @property
    def total(self) -> int:
        return sum(self.rewrites.values())


class _Worklist(_Listener):
    def __init__(self):
        super().__init__()
        self.stack: list[Operation] = []
        self.members: dict[int, Operation] = {}

    def push(self, op: Operation) -> None:
        if op.is_terminator or id(op) in self.members:
            return
        self.members[id(op)] = op
        self.stack.append(op)

    def pop(self) -> Operation | None:
        while self.stack:
            op = self.stack.pop()
            if self.members.get(id(op)) is op:
                del self.members[id(op)]
                return op
        return None

    def added(self, op):
        super().added(op)
        self.push(op)

    def erased(self, op):
        super().erased(op)
        for inner in op.walk():
            self.members.pop(id(inner), None)

    def touched_op(self, op):
        super().touched_op(op)
        if _attached(op):
            self.push(op)


def _attached(op: Operation) -> bool:
    while True:
        blk = op.parent
        if blk is None:
            return False
        region = blk.parent
        if region is None or region.parent is None:
            return True  # a top-level block (graph or detached block)
        op = region.parent


def _ops_of(root: Module | Region | Block | Operation) -> list[Operation]:
    if isinstance(root, Module):
        return list(root.walk())
    if isinstance(root, Region):
        return list(root.walk())
    if isinstance(root, Block):
        return list(root.walk())
    return list(root.walk())


class PatternSet:
    """Patterns indexed by root op name, each list ordered by benefit."""

    def __init__(self, patterns: Iterable[RewritePattern], disabled: Iterable[str] = ()):
        off = set(disabled)
        self.patterns = [p for p in _flatten(patterns) if p.name not in off]
        self.generic = [p for p in self.patterns if p.roots is None]
        self.by_name: dict[str, list[RewritePattern]] = {}
        for p in self.patterns:
            for r in p.roots or ():
                self.by_name.setdefault(r, []).append(p)
        self._cache: dict[str, list[RewritePattern]] = {}

    def for_op(self, name: str) -> list[RewritePattern]:
        got = self._cache.get(name)
        if got is None:
            order = {id(p): i for i, p in enumerate(self.patterns)}
            got = sorted(self.by_name.get(name, []) + self.generic,
                         key=lambda p: (-p.benefit, order[id(p)]))
            self._cache[name] = got
        return got


def _flatten(items) -> Iterator[RewritePattern]:
    for p in items:
        if isinstance(p, RewritePattern):
            yield p
        elif isinstance(p, PatternSet):
            yield from p.patterns
        elif isinstance(p, (list, tuple)):
            yield from _flatten(p)
        else:
            raise TypeError(f"not a rewrite pattern: {p!r}")


def apply_patterns_greedily(root: Module | Region | Block | Operation,
                            patterns: Iterable[RewritePattern] | PatternSet, *,
                            erase_dead: bool = True, max_rewrites: int | None = None,
                            disabled: Iterable[str] = (), record: bool = False,
                            max_total: int | None = None,
                            allows: Callable[[str], bool] | None = None) -> RewriteStats:
    """Apply ``patterns`` until none applies (a fixpoint); returns what happened.

    ``max_rewrites`` stops after that many rule applications (bisection uses it);
    ``disabled`` names rules to skip; ``record`` keeps a log of (rule, op, provenance);
    ``allows(op_name)`` says which composite ops rules may create (a rule that creates
    another does not apply: the target's capabilities, ``PassContext.allows``).
    """
    pset = patterns if isinstance(patterns, PatternSet) and not disabled else \
        PatternSet(patterns if not isinstance(patterns, PatternSet) else patterns.patterns, disabled)
    wl = _Worklist()
    initial = _ops_of(root)
    for op in reversed(initial):
        wl.push(op)
    limit = max_total if max_total is not None else 50 * len(initial) + 10_000
    rw = Rewriter(wl, allows)
    rw.erase_orphans = erase_dead
    stats = RewriteStats()
    while True:
        op = wl.pop()
        if op is None:
            break
        stats.visited += 1
        if erase_dead and _trivially_dead(op):
            rw.root = op
            rw.erase_op(op)
            stats.dead_erased += 1
            continue
        for pat in pset.for_op(op.name):
            if max_rewrites is not None and stats.total >= max_rewrites:
                stats.stopped_by_budget = True
                break
            desc = (op.name, op.provenance) if record else None
            rw._begin(op, pat.name)
            try:
                done = pat.match_and_rewrite(op, rw)
            except _Refused:
                _undo_created(rw)
                done = False
            except GalaxirError:
                raise
            except Exception as e:
                raise PassError(f"rule {pat.name} failed on {_describe(op)}: "
                                f"{type(e).__name__}: {e}") from e
            if done:
                rw._finish()
                stats.rewrites[pat.name] += 1
                if record:
                    stats.log.append((pat.name,) + desc)
                if op.parent is not None and _attached(op):
                    wl.push(op)  # changed in place: try the other patterns again
                break
        if stats.total > limit:
            last = ", ".join(f"{k} x{v}" for k, v in stats.rewrites.most_common(3))
            raise PassError(f"the rewrite driver did not converge after {stats.total} rewrites "
                            f"(two rules may undo each other; most applied: {last})")
    return stats


def _undo_created(rw: Rewriter) -> None:
    """Erase what a refused rule created (unused: the rule had not replaced anything yet)."""
    for op in reversed(rw.created):
        if op.parent is not None and all(not r.uses for r in op.results):
            rw.erase_op(op)
    rw.created = []


def _describe(op: Operation) -> str:
    from ..ir.opdef import describe
    return describe(op)


def _trivially_dead(op: Operation) -> bool:
    if op.is_terminator or op.parent is None:
        return False
    for r in op.results:
        if r.uses:
            return False
    return is_pure(op)
