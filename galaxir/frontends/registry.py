"""The table every frontend keeps its op converters in."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable
from typing import Any


class ConverterTable(dict):
    """Converters by op key (a framework op-type name; ``(domain, op_type)`` for ONNX).

    ``register(*keys)`` is a frontend's ``@converter`` decorator.  ``loaded()`` imports the
    frontend's built-in converters (the module named ``builtins``, whose import registers
    them) on first use, so importing a frontend stays cheap."""

    def __init__(self, builtins: str):
        super().__init__()
        self._builtins = builtins
        self._loaded = False

    def register(self, *keys: Hashable) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            for k in keys:
                self[k] = fn
            return fn
        return deco

    def loaded(self) -> "ConverterTable":
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtins)
        return self
