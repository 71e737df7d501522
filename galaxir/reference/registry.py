"""The numpy kernel registry: one function per op, ``fn(ctx, *operands) -> result(s)``."""
from __future__ import annotations

from typing import Any, Callable

Kernel = Callable[..., Any]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str):
    """Register a function as the numpy kernel of the named ops."""
    def deco(fn: Kernel) -> Kernel:
        for n in names:
            KERNELS[n] = fn
        return fn
    return deco


_loaded = False


def get_kernel(name: str) -> Kernel | None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import kernels  # noqa: F401  (registers the built-in kernels)
    return KERNELS.get(name)


def all_kernels() -> dict[str, Kernel]:
    get_kernel("")
    return dict(KERNELS)
