"""Positional keys for values, the same in a module and its clones (calibrated ranges are
computed once and reused on fresh copies)."""
from __future__ import annotations

from ..ir import Module


def value_keys(module: Module) -> dict[int, tuple]:
    """id(value) -> ("in", i) for graph inputs, (op index, result index) for op results."""
    keys: dict[int, tuple] = {id(a): ("in", i) for i, a in enumerate(module.graph.inputs)}
    for j, op in enumerate(module.graph.block):
        for k, r in enumerate(op.results):
            keys[id(r)] = (j, k)
    return keys
