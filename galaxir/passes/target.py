"""Naming a compilation target below the backends layer.

``optimize(m, 2, target="cpu")`` may name its target; the passes only ever see the Backend
object (``ctx.backend``).  The backend registry (galaxir/backends/base.py) installs itself
here as the resolver when it is imported, so galaxir/passes never imports galaxir/backends
(a name given before anything loaded the registry loads it by name, through importlib).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

_resolver: Callable[[str], Any] | None = None


def set_resolver(fn: Callable[[str], Any]) -> None:
    """Called once by galaxir.backends: how a target name becomes a Backend."""
    global _resolver
    _resolver = fn


def resolve(target: Any) -> Any:
    """The Backend for ``target`` (a name, a Backend, or None for no target)."""
    if target is None or not isinstance(target, str):
        return target
    if _resolver is None:  # nothing has loaded the registry yet: loading it installs it
        importlib.import_module("galaxir.backends")
    return _resolver(target)
