"""Common subexpression elimination, nested regions included.

Two pure ops are the same computation when they have the same kind, operands, attributes
and result types.  A scope holds what is available: ops in a nested region may reuse a
value computed outside (it dominates them), never the other way around.  The op kept
inherits the provenance of the ops merged into it.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ...ir.core import Block, Module, Operation
from ..manager import Pass, PassContext
from ..rewrite import is_pure

#: Constant tensors larger than this are compared by identity, not content (hashing
#: weights would cost more than merging two equal ones gains).
HASH_LIMIT_BYTES = 1 << 20


def array_key(arr: np.ndarray) -> Any:
    if arr.size and all(s == 0 for s in arr.strides):
        return ("splat", arr.dtype.str, arr.shape, arr.reshape(-1)[:1].tobytes())
    if arr.dtype == object:
        return ("obj", arr.shape, tuple(str(x) for x in arr.reshape(-1)))
    if arr.nbytes > HASH_LIMIT_BYTES:
        return ("id", id(arr))
    data = np.ascontiguousarray(arr).tobytes()
    return ("dense", arr.dtype.str, arr.shape,
            data if len(data) <= 64 else hashlib.blake2b(data, digest_size=16).digest())


def attr_key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return array_key(value)
    if isinstance(value, float):
        return ("f", repr(value))  # -0.0 and nan compare by spelling
    if isinstance(value, tuple):
        return tuple(attr_key(v) for v in value)
    return value


def op_key(op: Operation) -> Any:
    return (op.name,
            tuple(-1 if v is None else id(v) for v in op.operands),
            tuple((k, attr_key(v)) for k, v in sorted(op.attrs.items())),
            tuple(r.type for r in op.results))


def cse_block(block: Block, outer: dict | None, stats: dict) -> None:
    table: dict = {}
    scope = [table] if outer is None else [table, *outer]
    for op in list(block):
        for region in op.regions:
            cse_block(region.block, scope, stats)
        if op.is_terminator or op.regions or not op.results or not is_pure(op):
            continue
        try:
            key = op_key(op)
            hash(key)
        except TypeError:
            continue
        found = None
        for t in scope:
            found = t.get(key)
            if found is not None:
                break
        if found is None:
            table[key] = op
            continue
        found.provenance = tuple(dict.fromkeys([*found.provenance, *op.provenance]))
        for old, new in zip(op.results, found.results):
            if new.name is None and old.name is not None:
                new.name = old.name
            old.replace_all_uses_with(new)
        op.erase()
        stats["cse"] = stats.get("cse", 0) + 1


class CSE(Pass):
    name = "cse"

    def run(self, module: Module, ctx: PassContext) -> bool:
        stats: dict = {}
        cse_block(module.graph.block, None, stats)
        ctx.stats.update(stats)
        return bool(stats)


def cse(module: Module) -> Module:
    """Merge equal computations of ``module`` in place."""
    CSE().run(module, PassContext())
    return module
