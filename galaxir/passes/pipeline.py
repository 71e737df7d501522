"""Optimization levels, the named-pass registry, and ``optimize``.

Level 0 runs nothing; level 1 is the basic passes; levels 2 and 3 add what is registered
for them (``register_level_pass``; later work fills them with fusion and layout passes).
A target's backend adds its own rewrite patterns (``backend.patterns(level)``) and passes
(``backend.passes(level)``) after the generic ones.

Instrumentation switches on from Python (``optimize(m, 1, timing=True, print_after=["cse"])``)
or, without touching code, from the ``GALAXIR_PASSES`` environment variable, e.g.
``GALAXIR_PASSES="timing,verify,print-after=cse,dump-dir=stages,stop-after=2"``.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Sequence

from ..errors import PassError
from ..ir.core import Module
from .basic import (CSE, DCE, AlgebraicSimplify, Canonicalize, ConstantFold, InlineIf,
                    RemoveNoOps, ShapeFold, UnrollLoops)
from .greedy import PatternPass
from .manager import Pass, PassContext, PassManager

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


def pipeline_for(level: int, target: str | None = None) -> list[Pass]:
    """The passes ``optimize`` runs at ``level`` for ``target``."""
    if not 0 <= level <= MAX_LEVEL:
        raise PassError(f"optimization level must be 0..{MAX_LEVEL}, got {level}")
    passes: list[Pass] = []
    for lv in range(1, level + 1):
        passes.extend(f() for f in LEVEL_PASSES[lv])
    if target is not None and level > 0:
        from ..backends import get_backend
        backend = get_backend(target)
        pats = list(backend.patterns(level) or [])
        extra: list[Pass] = []
        if pats:
            extra.append(PatternPass(f"{backend.name or target}-rules", pats))
        extra.extend(backend.passes(level) or [])
        if extra:
            passes.extend(extra)
            passes.extend([Canonicalize(), DCE()])  # clean up after the target's rules
    return passes


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
        else:
            raise PassError(f"GALAXIR_PASSES: unknown item '{item}' (timing, verify, "
                            "print-before=P, print-after=P, dump-dir=D, stop-after=K, disable=RULE)")
    return out


def optimize(module: Module, level: int = 1, target: str | None = None, *,
             pipeline: Sequence[Any] | str | None = None, disable_rules: Iterable[str] = (),
             disable_passes: Iterable[str] = (), timing: bool = False,
             verify_each: bool = False, print_before: Iterable[str | int] = (),
             print_after: Iterable[str | int] = (), dump_dir: str | None = None,
             stop_after: int | str | None = None, stream=None, verify: bool = True,
             **options: Any) -> Module:
    """Optimize a copy of ``module`` (the argument is never changed) and return it.

    ``pipeline`` replaces the level's passes (a list of passes or ``"cse,dce"``);
    ``disable_rules`` switches rewrite rules off by name, ``disable_passes`` passes;
    other keyword options reach the passes (e.g. ``fold_max_elements``).
    """
    env = env_options()
    timing = timing or env.get("timing", False)
    verify_each = verify_each or env.get("verify_each", False)
    print_before = list(print_before) + env.get("print_before", [])
    print_after = list(print_after) + env.get("print_after", [])
    dump_dir = dump_dir or env.get("dump_dir")
    stop_after = stop_after if stop_after is not None else env.get("stop_after")
    disable_rules = set(disable_rules) | set(env.get("disable_rules", []))

    work = module.clone()
    if pipeline is None:
        passes = pipeline_for(level, target)
    elif isinstance(pipeline, str):
        passes = parse_pipeline(pipeline)
    else:
        passes = list(pipeline)
    off = set(disable_passes)
    pm = PassManager([p for p in passes if getattr(p, "name", None) not in off],
                     verify_each=verify_each, print_before=print_before,
                     print_after=print_after, dump_dir=dump_dir, stop_after=stop_after,
                     timing=timing, stream=stream or sys.stderr,
                     context=PassContext(options=dict(options), disabled_rules=disable_rules,
                                         target=target))
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
