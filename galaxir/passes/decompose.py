"""``Decompose``: a rewrite pattern that replaces a composite op by its OpDef decomposition
(core ops), for a backend that declares it decomposes what it has no kernel for
(``Capabilities.decomposes`` and its patterns, e.g. galaxir/backends/cpu/rules.py)."""
from __future__ import annotations

from typing import Callable

from ..ir.core import Operation
from .rewrite import RewritePattern, Rewriter


class Decompose(RewritePattern):
    """Replace ``op_name`` ops by their decomposition when ``when(op)`` holds (always when
    ``when`` is None)."""

    def __init__(self, op_name: str, name: str, when: Callable[[Operation], bool] | None = None):
        self.root = op_name
        self.name = name
        self.when = when

    def match_and_rewrite(self, op: Operation, rewriter: Rewriter) -> bool:
        od = op.opdef
        if od is None or od.decompose is None:
            return False
        if self.when is not None and not self.when(op):
            return False
        outs = od.decompose(rewriter.builder(before=op), op)
        rewriter.replace_op(op, list(outs))
        return True

    def explain(self, op: Operation) -> str:
        return f"decomposes {self.root} into core ops"
