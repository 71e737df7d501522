"""Passes and the PassManager that runs a pipeline of them, with instrumentation.

A pass changes a Module in place.  Write one as a class::

    class CountOps(Pass):
        name = "count-ops"
        def run(self, module, ctx):
            ctx.stat("ops", module.num_ops)
            return False          # True (or None) when it may have changed the module

or as a function with :func:`function_pass`.  ``ctx`` is a :class:`PassContext`: the
options given to ``optimize``, rules switched off, statistics, and a rewrite budget.

The PassManager runs passes in order; instruments watch each one (time, op counts before
and after, verify after each pass, print or dump the IR) and ``stop_after`` ends the
pipeline early::

    pm = PassManager([Canonicalize(), CSE(), DCE()], timing=True, verify_each=True,
                     print_after=["cse"], dump_dir="stages/", stop_after=2)
    pm.run(module)
    print(pm.report())
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TextIO

from ..errors import GalaxirError, PassError
from ..ir.core import Module


@dataclass
class PassContext:
    """What a pass may consult: options, disabled rules, statistics, rewrite budget."""

    options: dict[str, Any] = field(default_factory=dict)
    disabled_rules: set[str] = field(default_factory=set)
    stats: Counter = field(default_factory=Counter)
    rewrite_budget: int | None = None  # bisection: stop after this many rule applications
    record: bool = False               # keep a log of rule applications
    log: list = field(default_factory=list)
    #: the Backend the module is optimized for (None: no target), resolved once by
    #: ``optimize``; passes read its declared contract (capabilities, preferred_layout)
    backend: Any = None
    _caps: Any = field(default=None, repr=False)

    @property
    def target(self) -> str | None:
        """The target's name (None without a target)."""
        return None if self.backend is None else self.backend.name

    def allows(self, op_name: str) -> bool:
        """May a generic rewrite create ``op_name``?  Always without a target; else only
        what the target's capabilities run natively or decompose.  (Only composite ops
        are asked: core ops run on the reference when the target lacks them.)"""
        if self.backend is None:
            return True
        if self._caps is None:
            self._caps = self.backend.capabilities()
        return self._caps.can_create(op_name)

    def stat(self, key: str, n: int = 1) -> None:
        self.stats[key] += n

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


class Pass:
    """One transformation over a Module.  ``run`` returns whether it changed anything
    (None means "maybe")."""

    name: str = ""
    #: True for passes built on the greedy rewrite driver (bisection can then go down to
    #: single rule applications through ``ctx.rewrite_budget``).
    uses_rewrites: bool = False

    def run(self, module: Module, ctx: PassContext) -> bool | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name or type(self).__name__}>"


class FunctionPass(Pass):
    """A pass made from ``fn(module)`` or ``fn(module, ctx)``."""

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__.replace("_", "-")
        import inspect
        self._takes_ctx = len(inspect.signature(fn).parameters) >= 2

    def run(self, module: Module, ctx: PassContext) -> bool | None:
        return self.fn(module, ctx) if self._takes_ctx else self.fn(module)


def function_pass(name: str | Callable | None = None):
    """Decorator: ``@function_pass("my-pass") def f(module): ...`` makes a Pass."""
    if callable(name):
        return FunctionPass(name)

    def deco(fn: Callable) -> FunctionPass:
        return FunctionPass(fn, name)
    return deco


def as_pass(p: Any) -> Pass:
    if isinstance(p, Pass):
        return p
    if isinstance(p, type) and issubclass(p, Pass):
        return p()
    if isinstance(p, str):
        from .pipeline import make_pass
        return make_pass(p)
    if callable(p):
        return FunctionPass(p)
    raise TypeError(f"not a pass: {p!r}")


# -- instrumentation --------------------------------------------------------------------
@dataclass
class PassRecord:
    """What the manager saw for one pass run."""

    index: int
    name: str
    seconds: float = 0.0
    ops_before: int = 0
    ops_after: int = 0
    changed: bool | None = None
    stats: dict = field(default_factory=dict)
    counts_before: dict = field(default_factory=dict)
    counts_after: dict = field(default_factory=dict)


class Instrument:
    """Hooks called around every pass; subclass and give to ``PassManager(instruments=)``."""

    def before_pass(self, p: Pass, module: Module, rec: PassRecord) -> None:
        pass

    def after_pass(self, p: Pass, module: Module, rec: PassRecord) -> None:
        pass


class VerifyEach(Instrument):
    """Verify the module after each pass; a broken module names the pass that broke it."""

    def after_pass(self, p, module, rec):
        try:
            module.verify()
        except GalaxirError as e:
            raise PassError(f"the IR is invalid after pass #{rec.index} '{rec.name}': {e}") from e


def _matches(name: str, index: int, wanted: Iterable[str | int]) -> bool:
    for w in wanted:
        if w == "*" or w == name or (isinstance(w, int) and w == index) or \
                (isinstance(w, str) and w.isdigit() and int(w) == index):
            return True
    return False


class PrintIR(Instrument):
    """Print the IR before and/or after the named passes (a name, an index or ``*``)."""

    def __init__(self, before: Iterable[str | int] = (), after: Iterable[str | int] = (),
                 stream: TextIO | None = None, resources: bool = False):
        self.before = list(before)
        self.after = list(after)
        self.stream = stream
        self.resources = resources

    def _emit(self, title: str, module: Module) -> None:
        out = self.stream or sys.stderr
        out.write(f"// ----- {title} -----\n")
        out.write(module.to_text(resources=self.resources))

    def before_pass(self, p, module, rec):
        if _matches(rec.name, rec.index, self.before):
            self._emit(f"IR before pass #{rec.index} '{rec.name}'", module)

    def after_pass(self, p, module, rec):
        if _matches(rec.name, rec.index, self.after):
            self._emit(f"IR after pass #{rec.index} '{rec.name}'", module)


class DumpStages(Instrument):
    """Write the IR before the first pass and after every pass to ``folder``:
    ``00-input.gxir``, ``01-canonicalize.gxir``, ..."""

    def __init__(self, folder: str | os.PathLike, resources: bool = False):
        self.folder = os.fspath(folder)
        self.resources = resources
        self._started = False

    def _write(self, stem: str, module: Module) -> None:
        os.makedirs(self.folder, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
        with open(os.path.join(self.folder, f"{safe}.gxir"), "w") as f:
            f.write(module.to_text(resources=self.resources))

    def before_pass(self, p, module, rec):
        if not self._started:
            self._started = True
            self._write("00-input", module)

    def after_pass(self, p, module, rec):
        self._write(f"{rec.index:02d}-{rec.name}", module)


# -- the manager --------------------------------------------------------------------------
class PassManager:
    """Runs a pipeline of passes over a Module, in place.

    ``timing`` and op counts are always recorded (they are cheap); ``verify_each``,
    ``print_before``/``print_after`` (pass names, 1-based indexes or ``"*"``),
    ``dump_dir`` and ``stop_after`` (a count k or a pass name: stop after it) switch on
    the rest.  ``report()`` is a table of what each pass did.
    """

    def __init__(self, passes: Sequence[Any] = (), *, verify_each: bool = False,
                 print_before: Iterable[str | int] = (), print_after: Iterable[str | int] = (),
                 dump_dir: str | os.PathLike | None = None, stop_after: int | str | None = None,
                 timing: bool = False, instruments: Sequence[Instrument] = (),
                 stream: TextIO | None = None, context: PassContext | None = None,
                 count_ops: bool = True):
        self.passes: list[Pass] = [as_pass(p) for p in passes]
        self.instruments: list[Instrument] = []
        if print_before or print_after:
            self.instruments.append(PrintIR(print_before, print_after, stream))
        if dump_dir is not None:
            self.instruments.append(DumpStages(dump_dir))
        if verify_each:
            self.instruments.append(VerifyEach())
        self.instruments.extend(instruments)
        self.stop_after = stop_after
        self.timing = timing
        self.stream = stream
        self.context = context or PassContext()
        self.count_ops = count_ops
        self.records: list[PassRecord] = []

    def add(self, p: Any) -> "PassManager":
        self.passes.append(as_pass(p))
        return self

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def _limit(self) -> int:
        if self.stop_after is None:
            return len(self.passes)
        if isinstance(self.stop_after, int) or str(self.stop_after).isdigit():
            return min(int(self.stop_after), len(self.passes))
        for i, p in enumerate(self.passes):
            if p.name == self.stop_after:
                return i + 1
        raise PassError(f"stop_after={self.stop_after!r}: no such pass in the pipeline "
                        f"({', '.join(self.names) or 'empty'})")

    def run(self, module: Module) -> Module:
        ctx = self.context
        self.records = []
        for i, p in enumerate(self.passes[:self._limit()], start=1):
            rec = PassRecord(i, p.name)
            if self.count_ops:
                rec.counts_before = module.op_counts()
                rec.ops_before = sum(rec.counts_before.values())
            for ins in self.instruments:
                ins.before_pass(p, module, rec)
            before_stats = Counter(ctx.stats)
            t0 = time.perf_counter()
            try:
                changed = p.run(module, ctx)
            except GalaxirError as e:
                if isinstance(e, PassError) and f"'{p.name}'" in str(e):
                    raise
                raise PassError(f"pass #{i} '{p.name}' failed: {e}") from e
            rec.seconds = time.perf_counter() - t0
            rec.changed = changed
            rec.stats = dict(ctx.stats - before_stats)
            if self.count_ops:
                rec.counts_after = module.op_counts()
                rec.ops_after = sum(rec.counts_after.values())
            self.records.append(rec)
            for ins in self.instruments:
                ins.after_pass(p, module, rec)
        if self.timing:
            (self.stream or sys.stderr).write(self.report() + "\n")
        return module

    def report(self) -> str:
        """A table: pass, seconds, ops before -> after, and the pass's statistics."""
        rows = [("#", "pass", "ms", "ops", "what changed")]
        for r in self.records:
            stats = ", ".join(f"{k} x{v}" for k, v in sorted(r.stats.items(), key=lambda kv: -kv[1]))
            rows.append((str(r.index), r.name, f"{r.seconds * 1e3:.1f}",
                         f"{r.ops_before} -> {r.ops_after}", stats[:100]))
        total = sum(r.seconds for r in self.records)
        widths = [max(len(row[c]) for row in rows) for c in range(4)]
        lines = ["  ".join(row[c].ljust(widths[c]) for c in range(4)) + "  " + row[4] for row in rows]
        lines.append(f"total {total * 1e3:.1f} ms")
        return "\n".join(lines)
