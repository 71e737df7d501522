"""Shape values of a dynamic module without emitting its LLVM IR (issue 15).

A dynamic module (codegen.begin_dynamic) reads every shape-dependent integer at run time,
so every set of input shapes with the same kernel structure shares one object code; what a
new shape needs is only those integers.  They come from Python arithmetic on the kernels'
fields while the IR is emitted.  This module records that arithmetic once, while the first
shape of a structure is emitted: every int field of an emitted kernel (and every arena
offset the segment entries use) is replaced by a ``Traced`` number that computes its
concrete value as before and appends each operation to a straight-line Python program.
Every *decision* taken on a traced number (a comparison, ``bool``, ``int()``, indexing,
formatting into the IR text) becomes a guard in that program: for another shape it must
come out the same, or the program answers None.  So ``Template.values`` gives a new shape
its integers and parameter blocks in microseconds, and anything the trace cannot vouch
for (a guard that differs, an exception) falls back to emitting the IR as before.
"""
from __future__ import annotations

import math
import operator

import numpy as np


class TraceError(Exception):
    """The emission could not be traced (a kernel used a traced number as an IR value)."""


class Tracer:
    """Collects the straight-line program of one traced emission."""

    def __init__(self):
        self.lines: list[str] = []
        self.n_leaves = 0
        self._n = 0

    def leaf(self, v) -> "Traced":
        k = self.n_leaves
        self.n_leaves += 1
        return Traced(self, v, f"L[{k}]")

    def new(self, expr: str, v):
        if isinstance(v, bool):  # bool results of arithmetic (rare): guard them as well
            self.lines.append(f"if ({expr}) is not {v}: return None")
            return v
        if not isinstance(v, (int, float)):
            raise TraceError(f"traced arithmetic gave a {type(v).__name__}")
        name = f"t{self._n}"
        self._n += 1
        self.lines.append(f"{name} = {expr}")
        return Traced(self, v, name)

    def guard(self, expr: str, result) -> None:
        self.lines.append(f"if ({expr}) != {_lit(result)}: return None")

    def program(self, outputs: str):
        """The traced program as a function of the leaves ``L``: ``outputs`` (an expression
        over the trace's names) when every guard holds, else None."""
        src = "def _traced(L):\n" + "".join(f"    {ln}\n" for ln in self.lines) + \
              f"    return {outputs}\n"
        scope = {"_math": math, "inf": math.inf, "nan": math.nan}
        exec(compile(src, "<galaxir shape trace>", "exec"), scope)
        fn = scope["_traced"]
        fn.source = src  # for debugging a guard that fails
        return fn


def _lit(x) -> str:
    if isinstance(x, bool):
        return repr(x)
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")
    return repr(int(x))


def _operand(x):
    """(source text, concrete value) of an operand, or None when it is no number."""
    if isinstance(x, Traced):
        return x.n, x.v
    if isinstance(x, (bool, np.bool_)):
        return repr(bool(x)), bool(x)
    if isinstance(x, (int, np.integer)):
        return repr(int(x)), int(x)
    if isinstance(x, (float, np.floating)):
        return _lit(float(x)), float(x)
    return None


def _binary(sym: str, fn):
    def op(self, other):
        o = _operand(other)
        if o is None:
            return NotImplemented
        return self.tr.new(f"{self.n} {sym} {o[0]}", fn(self.v, o[1]))

    def rop(self, other):
        o = _operand(other)
        if o is None:
            return NotImplemented
        return self.tr.new(f"{o[0]} {sym} {self.n}", fn(o[1], self.v))
    return op, rop


def _compare(sym: str, fn, other_type_result=None):
    def cmp(self, other):
        o = _operand(other)
        if o is None:
            if other_type_result is None:
                return NotImplemented
            return other_type_result  # == / != against a non-number: the same for any value
        r = bool(fn(self.v, o[1]))
        self.tr.guard(f"{self.n} {sym} {o[0]}", r)
        return r
    return cmp


class Traced:
    """A number computed from kernel fields: its concrete value ``v`` and its name ``n`` in
    the tracer's program.  Not an ``int`` subclass on purpose: whatever reads its value
    without going through these methods (numpy, ``range``, indexing, ``int()``) goes
    through ``__index__``/``__int__``, which records an equality guard: the trace never
    loses track of a value silently."""

    __slots__ = ("tr", "v", "n")
    __array_ufunc__ = None  # numpy defers to the reflected operators

    def __init__(self, tr: Tracer, v, n: str):
        self.tr, self.v, self.n = tr, v, n

    __add__, __radd__ = _binary("+", operator.add)
    __sub__, __rsub__ = _binary("-", operator.sub)
    __mul__, __rmul__ = _binary("*", operator.mul)
    __floordiv__, __rfloordiv__ = _binary("//", operator.floordiv)
    __truediv__, __rtruediv__ = _binary("/", operator.truediv)
    __mod__, __rmod__ = _binary("%", operator.mod)
    __pow__, __rpow__ = _binary("**", operator.pow)
    __lshift__, __rlshift__ = _binary("<<", operator.lshift)
    __rshift__, __rrshift__ = _binary(">>", operator.rshift)
    __and__, __rand__ = _binary("&", operator.and_)
    __or__, __ror__ = _binary("|", operator.or_)
    __xor__, __rxor__ = _binary("^", operator.xor)

    __lt__ = _compare("<", operator.lt)
    __le__ = _compare("<=", operator.le)
    __gt__ = _compare(">", operator.gt)
    __ge__ = _compare(">=", operator.ge)
    __eq__ = _compare("==", operator.eq, False)
    __ne__ = _compare("!=", operator.ne, True)

    def __divmod__(self, other):
        return self // other, self % other

    def __rdivmod__(self, other):
        return other // self, other % self

    def __neg__(self):
        return self.tr.new(f"-{self.n}", -self.v)

    def __pos__(self):
        return self

    def __abs__(self):
        return self.tr.new(f"abs({self.n})", abs(self.v))

    def __ceil__(self):
        return self.tr.new(f"_math.ceil({self.n})", math.ceil(self.v))

    def __floor__(self):
        return self.tr.new(f"_math.floor({self.n})", math.floor(self.v))

    def __trunc__(self):
        return self.tr.new(f"_math.trunc({self.n})", math.trunc(self.v))

    def __round__(self, nd=None):
        if nd is None:
            return self.tr.new(f"round({self.n})", round(self.v))
        return self.tr.new(f"round({self.n}, {int(nd)})", round(self.v, nd))

    def __hash__(self):
        return hash(self.v)  # a dict lookup then compares with __eq__, which guards

    def _exact(self):
        self.tr.guard(self.n, self.v)
        return self.v

    def __bool__(self):
        r = bool(self.v)
        self.tr.guard(f"bool({self.n})", r)
        return r

    def __index__(self):
        if not isinstance(self.v, int):
            raise TypeError("a traced float used as an index")
        return self._exact()

    def __int__(self):
        return int(self._exact())

    def __float__(self):
        return float(self._exact())

    def __str__(self):
        return str(self._exact())

    __repr__ = __str__

    def __format__(self, spec):
        return format(self._exact(), spec)


_TESTS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
          ">": operator.gt, ">=": operator.ge}


def _tracer_of(*xs) -> Tracer | None:
    for x in xs:
        if isinstance(x, Traced):
            return x.tr
    return None


def test(a, op: str, b):
    """``a op b`` as 0/1 *without* a guard: for decisions that only pick a value (use it
    with ``select``, or multiply tests for "and"), so the trace serves both outcomes."""
    tr = _tracer_of(a, b)
    r = _TESTS[op](concrete(a), concrete(b))
    if tr is None:
        return int(r)
    return tr.new(f"int({name_of(a)} {op} {name_of(b)})", int(r))


def select(c, a, b):
    """``a if c else b`` without a guard on ``c`` (a 0/1 from ``test``)."""
    tr = _tracer_of(c, a, b)
    if tr is None:
        return a if c else b
    v = concrete(a) if concrete(c) else concrete(b)
    return tr.new(f"({name_of(a)} if {name_of(c)} else {name_of(b)})", v)


def tmin(*xs):
    """``min(xs)`` without a guard on which one is smallest."""
    tr = _tracer_of(*xs)
    if tr is None:
        return min(xs)
    return tr.new(f"min({', '.join(name_of(x) for x in xs)})", min(concrete(x) for x in xs))


def tmax(*xs):
    """``max(xs)`` without a guard on which one is largest."""
    tr = _tracer_of(*xs)
    if tr is None:
        return max(xs)
    return tr.new(f"max({', '.join(name_of(x) for x in xs)})", max(concrete(x) for x in xs))


def as_int(x):
    """``int(x)``, except that a traced number stays traced (for helpers that normalize
    numpy integers to ints on values the emission may be tracing)."""
    return x if isinstance(x, Traced) else int(x)


def concrete(x):
    """The concrete value of a traced number (anything else as it is)."""
    return x.v if isinstance(x, Traced) else x


def name_of(x) -> str:
    """A traced number's name in the program, or a plain number's literal."""
    return x.n if isinstance(x, Traced) else _lit(x)


# -- kernel fields ---------------------------------------------------------------------------
def _skeleton(x, ints: list):
    """``x`` with every int leaf taken out (appended to ``ints``): what must be equal for
    two kernels to emit the same code apart from those ints."""
    t = type(x)
    if t is int or (isinstance(x, np.integer) and not isinstance(x, np.bool_)):
        ints.append(int(x))
        return "#"
    if t is tuple or t is list:
        return (t.__name__,) + tuple(_skeleton(y, ints) for y in x)
    if t is dict:
        return ("dict",) + tuple((k, _skeleton(y, ints)) for k, y in x.items())
    return x


def flatten(obj) -> tuple[list[int], tuple]:
    """(the int fields of ``obj`` in order, its skeleton: class, field names, containers
    and every non-int field value)."""
    ints: list[int] = []
    skel = (type(obj),) + tuple((k, _skeleton(v, ints)) for k, v in vars(obj).items())
    return ints, skel


def _rebuild(x, tr: Tracer):
    t = type(x)
    if t is int or (isinstance(x, np.integer) and not isinstance(x, np.bool_)):
        return tr.leaf(int(x))
    if t is tuple:
        return tuple(_rebuild(y, tr) for y in x)
    if t is list:
        return [_rebuild(y, tr) for y in x]
    if t is dict:
        return {k: _rebuild(y, tr) for k, y in x.items()}
    return x


def traced_copy(obj, tr: Tracer):
    """A copy of ``obj`` whose int fields are leaves of ``tr`` (in ``flatten``'s order)."""
    if not hasattr(obj, "__dict__") or hasattr(type(obj), "__slots__"):
        raise TraceError(f"{type(obj).__name__} has no plain fields")
    new = object.__new__(type(obj))
    new.__dict__.update({k: _rebuild(v, tr) for k, v in vars(obj).items()})
    return new
