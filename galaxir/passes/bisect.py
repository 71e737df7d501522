"""Pass bisection: which optimization changed my model's numbers?

``bisect(module, inputs)`` runs the unoptimized module on the numpy reference, then the
pipeline one pass at a time, running the module after each pass; the first pass after
which an output differs beyond tolerance (or which fails, or leaves the IR invalid) is the
culprit.  When that pass is built on the rewrite driver, bisection goes one level further:
it binary-searches the number of rule applications to name the single rewrite (rule, op,
source nodes) that broke the numerics.  The report carries the IR before and after.

    result = bisect(model, {"x": x}, level=1)
    print(result)        # pass #2 'canonicalize', rule 'mul-one' on mul (from Mul_3) ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import GalaxirError, InputValidationError
from ..ir.core import Module
from ..ir.types import DType, SequenceType, TensorType
from ..reference.evaluator import run_module
from .manager import Pass, PassContext, as_pass


@dataclass
class BisectResult:
    """The first pass (and rule application) after which outputs differ."""

    found: bool
    pass_index: int | None = None       # 1-based position in the pipeline
    pass_name: str | None = None
    reason: str = ""                    # what differs, or the error raised
    before: str = ""                    # IR before the culprit pass
    after: str = ""                     # IR after it (empty when it raised)
    rule: str | None = None             # the rule application that broke it, when known
    rule_index: int | None = None       # 1-based count of rule applications in that pass
    rule_op: str | None = None
    rule_provenance: tuple = ()
    passes_checked: list = field(default_factory=list)

    def __str__(self) -> str:
        if not self.found:
            return (f"no pass changes the outputs beyond tolerance "
                    f"({len(self.passes_checked)} passes checked: {', '.join(self.passes_checked)})")
        lines = [f"pass #{self.pass_index} '{self.pass_name}' breaks the model: {self.reason}"]
        if self.rule:
            src = f" (from {', '.join(self.rule_provenance)})" if self.rule_provenance else ""
            lines.append(f"  culprit rewrite: application #{self.rule_index} of rule "
                         f"'{self.rule}' on op '{self.rule_op}'{src}")
        lines.append("--- IR before ---")
        lines.append(self.before.rstrip())
        lines.append("--- IR after ---")
        lines.append(self.after.rstrip() or ("(the backend's code: see above)" if
                                             self.pass_name and self.pass_name.endswith(" lowering")
                                             else "(the pass raised)"))
        return "\n".join(lines)


#: the most elements a random input may have (a model declaring a huge input is not run)
RANDOM_INPUT_LIMIT = 1 << 28


def random_inputs(module: Module, seed: int = 0, sym_dim: int = 2) -> dict[str, Any]:
    """Random inputs fitting the graph signature (symbolic or unknown dims become
    ``sym_dim``; floats standard normal, ints in [0, 4), bools random)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for v in module.graph.inputs:
        try:
            feeds[v.name] = _random_value(v.type, rng, sym_dim)
        except (ValueError, MemoryError, OverflowError) as e:
            raise InputValidationError(f"cannot make a random value for input '{v.name}' of type "
                                       f"{v.type} ({e}): give it as a file") from None
    return feeds


def _random_value(t, rng, sym_dim):
    if isinstance(t, SequenceType):
        return [_random_value(t.elem, rng, sym_dim) for _ in range(2)]
    if not isinstance(t, TensorType):
        raise GalaxirError(f"cannot make a random input of type {t}")
    shape = tuple(d if isinstance(d, int) else sym_dim for d in (t.shape if t.shape is not None else (sym_dim,)))
    if math.prod(shape) > RANDOM_INPUT_LIMIT:
        raise ValueError(f"{math.prod(shape)} elements is more than {RANDOM_INPUT_LIMIT}")
    dt = t.dtype
    if dt is DType.bool:
        return rng.random(shape) < 0.5
    if dt.is_int:
        return rng.integers(0, 4, size=shape).astype(dt.numpy)
    if dt is DType.string:
        return np.array(rng.choice(["a", "b", "c"], size=shape), dtype=object)
    return rng.standard_normal(shape).astype(dt.numpy)


def _run(module: Module, feeds: Mapping[str, Any]) -> list:
    """The module's outputs on the reference evaluator (below the passes, no backend)."""
    import warnings
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return run_module(module, [feeds[v.name] for v in module.graph.inputs])


def compare_outputs(names: Sequence[str], ref: Sequence, got: Sequence, rtol: float,
                    atol: float) -> str | None:
    """None when ``got`` matches ``ref`` within tolerance, else what differs."""
    if len(ref) != len(got):
        return f"{len(got)} outputs, expected {len(ref)}"
    for name, r, g in zip(names, ref, got):
        if isinstance(r, (list, tuple)):
            why = compare_outputs([f"{name}[{i}]" for i in range(len(r))], r, g, rtol, atol)
            if why:
                return why
            continue
        if r is None or g is None:
            if (r is None) != (g is None):
                return f"output '{name}': one side is None"
            continue
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape:
            return f"output '{name}': shape {list(g.shape)}, expected {list(r.shape)}"
        if r.dtype != g.dtype:
            return f"output '{name}': dtype {g.dtype}, expected {r.dtype}"
        if r.dtype == object or r.dtype.kind in "bUS":
            if not np.array_equal(r, g):
                return f"output '{name}': values differ"
            continue
        rf, gf = r.astype(np.float64), g.astype(np.float64)
        ok = np.isclose(gf, rf, rtol=rtol, atol=atol, equal_nan=True)
        if not ok.all():
            diff = np.abs(gf - rf)
            diff[~np.isfinite(diff)] = np.inf
            i = int(np.argmax(np.where(ok, -1, diff)))
            return (f"output '{name}': {int((~ok).sum())} of {ok.size} elements differ, max "
                    f"abs diff {float(diff.reshape(-1)[i]):.3g} (got {gf.reshape(-1)[i]:.6g}, "
                    f"expected {rf.reshape(-1)[i]:.6g})")
    return None


def _check(module: Module, feeds, ref, rtol, atol) -> str | None:
    try:
        module.verify()
    except GalaxirError as e:
        return f"the IR is invalid: {e}"
    try:
        got = _run(module, feeds)
    except Exception as e:
        return f"running the module failed: {type(e).__name__}: {e}"
    return compare_outputs(module.graph.output_names, ref, got, rtol, atol)


def bisect(module: Module, inputs: Mapping[str, Any] | Sequence[Any] | None = None,
           pipeline: Sequence[Any] | str | None = None, level: int = 1,
           target: Any = None, rtol: float = 1e-4, atol: float = 1e-5,
           rules: bool = True, seed: int = 0,
           progress: Callable[[int, int, str], None] | None = None,
           **options: Any) -> BisectResult:
    """Find the first pass (and rule application) after which the outputs differ.

    ``progress(index, total, pass_name)`` is called before each pass is checked (it takes
    a while: every pass runs the model on the reference backend).

    ``inputs``: a dict by input name, a list in input order, or None for random inputs.
    ``pipeline``: passes (or ``"cse,dce"``); default: the ``level``/``target`` pipeline.
    """
    from . import target as targets
    from .pipeline import parse_pipeline, pipeline_for
    target = targets.resolve(target)
    if inputs is None:
        feeds = random_inputs(module, seed)
    elif isinstance(inputs, Mapping):
        feeds = dict(inputs)
    else:
        feeds = dict(zip(module.graph.input_names, inputs))
    if pipeline is None:
        passes = pipeline_for(level, target)
    elif isinstance(pipeline, str):
        passes = parse_pipeline(pipeline)
    else:
        passes = [as_pass(p) for p in pipeline]
    current = module.clone()
    ref = _run(current, feeds)
    names: list[str] = []
    for i, p in enumerate(passes, start=1):
        if progress is not None:
            progress(i, len(passes), p.name)
        before = current.clone()
        names.append(p.name)
        ctx = PassContext(options=dict(options), backend=target)
        try:
            p.run(current, ctx)
        except Exception as e:
            res = BisectResult(True, i, p.name, f"the pass raised {type(e).__name__}: {e}",
                               before.to_text(resources=False), "", passes_checked=names)
            return res
        why = _check(current, feeds, ref, rtol, atol)
        if why is not None:
            res = BisectResult(True, i, p.name, why, before.to_text(resources=False),
                               current.to_text(resources=False), passes_checked=names)
            if rules and getattr(p, "uses_rewrites", False):
                _bisect_rules(res, p, before, feeds, ref, rtol, atol, options, target)
            return res
    if getattr(target, "check_lowering", None) is not None:  # now the backend's own code
        names.append(f"{target.name} lowering")
        try:
            why = target.check_lowering(current, feeds, rtol=rtol, atol=atol)
        except Exception as e:
            why = f"compiling or running it raised {type(e).__name__}: {e}"
        if why is not None:
            return BisectResult(True, len(names), names[-1], why, current.to_text(resources=False),
                                "", passes_checked=names)
    return BisectResult(False, passes_checked=names)


def _bisect_rules(res: BisectResult, p: Pass, before: Module, feeds, ref, rtol, atol,
                  options, target) -> None:
    """Binary-search the rule applications of pass ``p`` for the first one that breaks."""
    def probe(k: int):
        m = before.clone()
        ctx = PassContext(options=dict(options), backend=target, rewrite_budget=k, record=True)
        p.run(m, ctx)
        return m, ctx.log

    full = before.clone()
    ctx = PassContext(options=dict(options), backend=target, record=True)
    p.run(full, ctx)
    total = len(ctx.log)
    if total == 0:
        return
    lo, hi = 0, total  # invariant: k=lo applications are fine, k=hi break
    m0, _ = probe(0)
    if _check(m0, feeds, ref, rtol, atol) is not None:
        return  # it breaks without any rewrite (the pass does more than rewrite)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m, _ = probe(mid)
        if _check(m, feeds, ref, rtol, atol) is None:
            lo = mid
        else:
            hi = mid
    m, log = probe(hi)
    if len(log) >= hi:
        entry = log[hi - 1]  # (pass name, rule, op name, provenance)
        res.rule, res.rule_op, res.rule_provenance = entry[1], entry[2], tuple(entry[3])
        res.rule_index = hi
        res.after = m.to_text(resources=False)
        if hi > 1:
            res.before = probe(hi - 1)[0].to_text(resources=False)
