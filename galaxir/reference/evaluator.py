"""The reference evaluator: walks each block in order, calls the numpy kernel of each op,
and frees every intermediate after its last use (so big models fit in memory).
``evaluate_op`` runs one op on given operand values (what constant folding needs)."""
from __future__ import annotations

import warnings
from collections import ChainMap
from typing import Any, Sequence

import numpy as np

from ..errors import ExecutionError, GalaxirError, UnsupportedOpError
from ..ir import Block, Module, Operation, Value
from ..ir.opdef import describe
from ..ir.types import DType, TensorType
from .registry import get_kernel


class KernelContext:
    """What a kernel sees besides its operands: the op's attributes, result types, regions."""

    __slots__ = ("interp", "op", "env")

    def __init__(self, interp: "Interpreter", op: Operation, env: dict[int, Any]):
        self.interp = interp
        self.op = op
        self.env = env

    def attr(self, name: str, default: Any = None) -> Any:
        return self.op.attr(name, default)

    @property
    def result_types(self):
        return [r.type for r in self.op.results]

    @property
    def num_results(self) -> int:
        return len(self.op.results)

    def result_dtype(self, i: int = 0) -> np.dtype | None:
        t = self.op.results[i].type
        return t.dtype.numpy if isinstance(t, TensorType) else None

    def run_region(self, index: int, args: Sequence[Any]) -> list[Any]:
        """Run region ``index`` with its block arguments bound to ``args``."""
        return self.interp.run_block(self.op.regions[index].block, list(args), self.env)


class Interpreter:
    def __init__(self, module: Module):
        self.module = module
        self._plans: dict[int, list[list[int]]] = {}

    def _release_plan(self, block: Block) -> list[list[int]]:
        """For each op index, the value ids whose last use is that op."""
        key = id(block)
        if key not in self._plans:
            ops = list(block)
            last: dict[int, int] = {}
            for i, op in enumerate(ops):
                for v in op.read_values():
                    last[id(v)] = i
            plan: list[list[int]] = [[] for _ in ops]
            for vid, i in last.items():
                plan[i].append(vid)
            self._plans[key] = plan
        return self._plans[key]

    def run_block(self, block: Block, args: list[Any], outer: dict[int, Any] | None = None) -> list[Any]:
        env: Any = ChainMap({}, outer) if outer is not None else {}
        if len(args) != len(block.args):
            raise ExecutionError(f"a region takes {len(block.args)} arguments, got {len(args)}")
        for a, v in zip(block.args, args):
            env[id(a)] = v
        release = self._release_plan(block) if outer is None else None
        for i, op in enumerate(block):
            if op.is_terminator:
                return [None if v is None else env[id(v)] for v in op.operands]
            self.run_op(op, env)
            if release is not None:
                for vid in release[i]:
                    env.pop(vid, None)
        raise ExecutionError("a block ended without a return op")

    def run_op(self, op: Operation, env: dict[int, Any]) -> None:
        fn = get_kernel(op.name)
        if fn is None:
            raise UnsupportedOpError(f"{describe(op)}: the numpy backend has no kernel for '{op.name}'")
        args = [None if v is None else env[id(v)] for v in op.operands]
        try:
            out = fn(KernelContext(self, op, env), *args)
        except GalaxirError:
            raise
        except Exception as e:
            raise ExecutionError(f"{describe(op)} failed: {type(e).__name__}: {e}") from e
        od = op.opdef
        if od is not None and od.num_results == 1:
            out = (out,)
        elif out is None:
            out = ()
        if len(out) != len(op.results):
            raise ExecutionError(f"{describe(op)}: kernel gave {len(out)} results, expected {len(op.results)}")
        for r, x in zip(op.results, out):
            env[id(r)] = _coerce(x, r)

    def run(self, inputs: list[Any]) -> list[Any]:
        return self.run_block(self.module.graph.block, inputs)


def _coerce(x: Any, r: Value) -> Any:
    """Give a kernel's result the dtype the IR declared (numpy promotes where ONNX does not)."""
    t = r.type
    if isinstance(t, TensorType) and x is not None:
        if not isinstance(x, np.ndarray):
            x = np.asarray(x, dtype=t.dtype.numpy if t.dtype is not DType.string else object)
        elif t.dtype is DType.string:
            if x.dtype != object:
                x = x.astype(object)
        elif x.dtype != t.dtype.numpy:
            x = x.astype(t.dtype.numpy)
    return x


def run_module(module: Module, inputs: list[Any]) -> list[Any]:
    return Interpreter(module).run(inputs)


def evaluate_op(op: Operation, args: Sequence[Any]) -> list[Any] | None:
    """``op``'s results on operand values ``args`` (numpy warnings silenced), or None when
    it has no kernel or fails on these values (leaving it for run time to report)."""
    env = {id(v): a for v, a in zip(op.operands, args) if v is not None}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            Interpreter(None).run_op(op, env)
    except (GalaxirError, Exception):
        return None
    return [env.get(id(r)) for r in op.results]
