"""Optimization levels, the named-pass registry, and ``optimize``.

Level 0 runs nothing; level 1 is the basic passes; levels 2 and 3 add what is registered
for them (``register_level_pass``; later work fills them with fusion and layout passes).
A target's backend adds its own rewrite patterns (``backend.patterns(level)``) and passes
(``backend.passes(level)``), each at a declared position (``Placed``): before the generic
fusions, instead of a named generic pass, or after the generic passes (the default).
The target is resolved once, here, and reaches the passes as ``ctx.backend``.

Instrumentation switches on from Python (``optimize(m, 1, timing=True, print_after=["cse"])``)
or, without touching code, from the ``GALAXIR_PASSES`` environment variable, e.g.
``GALAXIR_PASSES="timing,verify,print-after=cse,dump-dir=stages,stop-after=2"``.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Sequence

from dataclasses import dataclass

from ..errors import OptionError, PassError
from ..ir.core import Module
from .basic import (CSE, DCE, AlgebraicSimplify, Canonicalize, ConstantFold, InlineIf,
                    RemoveNoOps, ShapeFold, UnrollLoops)
from . import target as targets
from .greedy import PatternPass
from .manager import Pass, PassContext, PassManager, as_pass

PassFactory = Callable[[], Pass]

PASS_REGISTRY: dict[str, PassFactory] = {
    "canonicalize": Canonicalize,
    "fold-constants": ConstantFold,
    "fold-shapes": ShapeFold,
    "remove-noops": RemoveNoOps,
    "simplify-algebra": AlgebraicSimplify,
    "inline-constant-if": InlineIf,
    "unroll-loops": UnrollLoops,
    "cse": CSE,
    "dce": DCE,
}

#: The passes each level adds on top of the levels below it.
LEVEL_PASSES: dict[int, list[PassFactory]] = {
    1: [Canonicalize, CSE, Canonicalize, DCE],
    2: [],
    3: [],
}

MAX_LEVEL = 3

#: Options ``optimize`` hands to the passes (``ctx.option(name)``); register a new one with
#: ``register_pass_option`` so that ``optimize`` accepts it (unknown names are refused).
PASS_OPTIONS: dict[str, str] = {
    "fold_max_elements": "largest constant (elements) that constant folding creates",
    "fold_max_growth": "how many times its inputs' bytes a folded constant may be",
    "layout": "'NHWC' or 'NCHW': force the O3 layout pass's choice (passes/layout.py)",
    "unroll_max_ops": "most ops a constant-trip-count loop may unroll into (passes/basic/unroll.py)",
}

#: The keyword arguments of ``optimize`` that configure the pass manager.
MANAGER_OPTIONS = ("pipeline", "disable_rules", "disable_passes", "timing", "verify_each",
                   "print_before", "print_after", "dump_dir", "stop_after", "stream", "verify")


def register_pass_option(name: str, doc: str) -> None:
    """Make ``optimize(..., name=value)`` reach the passes (``ctx.option(name)``)."""
    PASS_OPTIONS[name] = doc


def register_pass(name: str, factory: PassFactory) -> None:
    """Make a pass available by name (pipelines strings, the command line)."""
    PASS_REGISTRY[name] = factory


def register_level_pass(level: int, factory: PassFactory, index: int | None = None) -> None:
    """Add a pass to what ``level`` runs (at the end, or at ``index``)."""
    if level not in LEVEL_PASSES:
        raise ValueError(f"no optimization level {level}; levels are 1..{MAX_LEVEL}")
    lst = LEVEL_PASSES[level]
    lst.insert(len(lst) if index is None else index, factory)


def make_pass(name: str) -> Pass:
    f = PASS_REGISTRY.get(name)
    if f is None:
        raise PassError(f"no pass named '{name}'; known passes: {', '.join(sorted(PASS_REGISTRY))}")
    return f()


def parse_pipeline(text: str) -> list[Pass]:
    """``"canonicalize,cse,dce"`` -> those passes."""
    return [make_pass(n.strip()) for n in text.split(",") if n.strip()]


#: Where a backend's pass or patterns go in the pipeline (``Placed.position``).
BEFORE_FUSION = "before-fusion"   # after the O1 passes, before the first O2 fusion
AFTER = "after"                   # after every generic pass of the level


def instead_of(pass_name: str) -> str:
    """The position that replaces the generic pass ``pass_name`` (where the level runs it)."""
    return f"instead:{pass_name}"


@dataclass
class Placed:
    """A backend's pass (or list of rewrite patterns) at a position: ``BEFORE_FUSION``,
    ``AFTER`` or ``instead_of("fuse-elementwise")``.  ``Backend.passes(level)`` returns
    these (a bare Pass means ``AFTER``)."""

    item: Any
    position: str = AFTER
    name: str | None = None

    def as_pass(self, backend_name: str) -> Pass:
        if isinstance(self.item, (list, tuple)):
            return PatternPass(self.name or f"{backend_name}-rules", list(self.item))
        return as_pass(self.item)


def backend_additions(backend: Any, level: int) -> list[Placed]:
    """The backend's patterns (after the generic passes) and passes, as placed items."""
    out: list[Placed] = []
    pats = list(backend.patterns(level) or [])
    if pats:
        out.append(Placed(pats, AFTER, f"{backend.name}-rules"))
    for p in backend.passes(level) or []:
        out.append(p if isinstance(p, Placed) else Placed(p, AFTER))
    for p in out:
        pos = p.position
        if pos not in (BEFORE_FUSION, AFTER) and not (
                pos.startswith("instead:") and pos[len("instead:"):] in PASS_REGISTRY):
            raise PassError(f"backend '{backend.name}': a pass placed at '{pos}'; positions are "
                            f"'{BEFORE_FUSION}', '{AFTER}' or 'instead:NAME' with NAME one of "
                            f"{', '.join(sorted(PASS_REGISTRY))}")
    return out


def pipeline_for(level: int, target: Any = None) -> list[Pass]:
    """The passes ``optimize`` runs at ``level`` for ``target`` (a Backend or its name)."""
    if not 0 <= level <= MAX_LEVEL:
        raise PassError(f"optimization level must be 0..{MAX_LEVEL}, got {level}")
    backend = targets.resolve(target)
    passes: list[Pass] = []
    for lv in range(1, level + 1):
        if lv == 2:
            passes.append(_FUSION_MARK)
        passes.extend(f() for f in LEVEL_PASSES[lv])
    if backend is not None and level > 0:
        extra = backend_additions(backend, level)
        before = [p.as_pass(backend.name) for p in extra if p.position == BEFORE_FUSION]
        after = [p.as_pass(backend.name) for p in extra if p.position == AFTER]
        instead = {p.position[len("instead:"):]: p.as_pass(backend.name) for p in extra
                   if p.position.startswith("instead:")}
        at = passes.index(_FUSION_MARK) if _FUSION_MARK in passes else len(passes)
        passes[at:at] = before
        passes = [instead.get(getattr(p, "name", None), p) for p in passes]
        if after:
            passes.extend(after)
        if extra:
            passes.extend([Canonicalize(), DCE()])  # clean up after the target's rules
    return [p for p in passes if p is not _FUSION_MARK]


_FUSION_MARK = Pass()  # where O2 starts, while pipeline_for builds the list


def env_options(text: str | None = None) -> dict[str, Any]:
    """Instrumentation options from ``GALAXIR_PASSES`` (comma separated)."""
    text = os.environ.get("GALAXIR_PASSES", "") if text is None else text
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, val = item.partition("=")
        key = key.replace("-", "_")
        if key in ("timing", "verify", "verify_each"):
            out["verify_each" if key.startswith("verify") else "timing"] = True
        elif key in ("print_before", "print_after"):
            out.setdefault(key, []).append(val or "*")
        elif key in ("print_all", "print"):
            out["print_after"] = ["*"]
        elif key == "dump_dir":
            out["dump_dir"] = val
        elif key == "stop_after":
            out["stop_after"] = int(val) if val.isdigit() else val
        elif key in ("disable", "disable_rule"):
            out.setdefault("disable_rules", []).append(val)
        elif key == "disable_pass":
            out.setdefault("disable_passes", []).append(val)
        else:
            raise OptionError(f"GALAXIR_PASSES: unknown item '{item}' (timing, verify, "
                              "print-before=P, print-after=P, dump-dir=D, stop-after=K, "
                              "disable=RULE, disable-pass=P)")
    return out


def unknown_names(kind: str, given: Iterable[str], valid: Iterable[str], where: str = "") -> None:
    """Raise OptionError when a name in ``given`` is not in ``valid``: it names the
    closest valid names and lists them all, so a typo is never silently ignored."""
    import difflib
    valid = sorted(set(valid))
    bad = [g for g in given if g not in valid]
    if not bad:
        return
    hints = []
    for g in bad:
        close = difflib.get_close_matches(g, valid, n=2)
        hints.append(f"'{g}'" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    plural = kind + ("es" if kind.endswith("s") else "s")
    raise OptionError(f"no {kind} named {', '.join(hints)}{where}; the valid {plural} are: "
                      f"{', '.join(valid)}")


def rule_names(passes: Iterable[Pass], target: Any = None) -> set[str]:
    """Every rewrite rule the pattern passes of ``passes`` (and of the highest level for
    ``target``) can apply: the names ``disable_rules`` accepts."""
    ctx = PassContext(backend=targets.resolve(target))
    names: set[str] = set()
    for p in [*passes, *pipeline_for(MAX_LEVEL, target)]:
        if isinstance(p, PatternPass):
            names.update(r.name for r in p.patterns(ctx))
    return names


def _check_names(passes: list[Pass], target: Any, disable_rules: Iterable[str],
                 disable_passes: Iterable[str], printed: Iterable[str | int]) -> None:
    pass_names = set(PASS_REGISTRY) | {p.name for p in passes if getattr(p, "name", None)}
    unknown_names("pass", disable_passes, pass_names, " (disable_passes)")
    named = [w for w in printed if isinstance(w, str) and w != "*" and not w.isdigit()]
    unknown_names("pass", named, pass_names, " (print_before/print_after)")
    if disable_rules:
        unknown_names("rule", disable_rules, rule_names(passes, target), " (disable_rules)")


def optimize(module: Module, level: int = 1, target: Any = None, *,
             pipeline: Sequence[Any] | str | None = None, disable_rules: Iterable[str] = (),
             disable_passes: Iterable[str] = (), timing: bool = False,
             verify_each: bool = False, print_before: Iterable[str | int] = (),
             print_after: Iterable[str | int] = (), dump_dir: str | None = None,
             stop_after: int | str | None = None, stream=None, verify: bool = True,
             **options: Any) -> Module:
    """Optimize a copy of ``module`` (the argument is never changed) and return it.

    ``pipeline`` replaces the level's passes (a list of passes or ``"cse,dce"``);
    ``disable_rules`` switches rewrite rules off by name, ``disable_passes`` passes;
    other keyword options reach the passes (e.g. ``fold_max_elements``).  ``target`` is a
    Backend or a backend's name (resolved once; passes see it as ``ctx.backend``).
    """
    backend = targets.resolve(target)
    unknown_names("option", options, PASS_OPTIONS, " given to optimize")
    env = env_options()
    timing = timing or env.get("timing", False)
    verify_each = verify_each or env.get("verify_each", False)
    print_before = list(print_before) + env.get("print_before", [])
    print_after = list(print_after) + env.get("print_after", [])
    dump_dir = dump_dir or env.get("dump_dir")
    stop_after = stop_after if stop_after is not None else env.get("stop_after")
    disable_rules = set(disable_rules) | set(env.get("disable_rules", []))
    disable_passes = set(disable_passes) | set(env.get("disable_passes", []))

    work = module.clone()
    if pipeline is None:
        passes = pipeline_for(level, backend)
    elif isinstance(pipeline, str):
        passes = parse_pipeline(pipeline)
    else:
        passes = [as_pass(p) for p in pipeline]
    _check_names(passes, backend, disable_rules, disable_passes, [*print_before, *print_after])
    off = set(disable_passes)
    pm = PassManager([p for p in passes if getattr(p, "name", None) not in off],
                     verify_each=verify_each, print_before=print_before,
                     print_after=print_after, dump_dir=dump_dir, stop_after=stop_after,
                     timing=timing, stream=stream or sys.stderr,
                     context=PassContext(options=dict(options), disabled_rules=disable_rules,
                                         backend=backend))
    if not pm.passes:
        return work
    pm.run(work)
    if verify and not verify_each:
        try:
            work.verify()
        except Exception as e:
            raise PassError(f"the module is invalid after optimization (run with "
                            f"verify_each=True to find the pass): {e}") from e
    work.metadata["optimized"] = f"O{level}: " + ",".join(r.name for r in pm.records) \
        if pipeline is None else ",".join(r.name for r in pm.records)
    global last_manager
    last_manager = pm
    return work


#: The PassManager of the latest ``optimize`` call (its ``report()`` and ``records``).
last_manager: PassManager | None = None
