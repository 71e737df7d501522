"""An interpreter over the IR: walks each block in order, calls the numpy kernel of each op,
and frees every intermediate after its last use (so big models fit in memory)."""
from __future__ import annotations

from collections import ChainMap
from typing import Any, Sequence

import numpy as np

from ...errors import ExecutionError, GalaxirError, UnsupportedOpError
from ...ir import Block, Module, Operation, Value
from ...ir.opdef import describe
from ...ir.types import DType, TensorType
from ..base import Backend, Executable
from .registry import all_kernels, get_kernel


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


class NumpyExecutable(Executable):
    def __init__(self, module: Module):
        super().__init__(module)
        from ...ir.mapped import detach_constants, has_file_backed_constants
        if has_file_backed_constants(module):  # own the weights of a mapped .gxm file
            module = module.clone()
            detach_constants(module)
        self.interpreter = Interpreter(module)

    def _execute(self, inputs: list[Any]) -> list[Any]:
        return self.interpreter.run(inputs)

    def profile(self, feeds, runs: int = 10, warmup: int = 1, clock: str = "wall"):
        """Per-op times of the top-level ops (an op with regions counts as one step),
        timed in Python; see ``Executable.profile``."""
        from ..profile import Profile, StepTiming, check_clock, clock_ns, shapes_label, value_label
        check_clock(clock)
        inputs = self.validate(feeds)
        block = self.module.graph.block
        ops = [op for op in block if not op.is_terminator]
        steps = [StepTiming(i, value_label(op.results), op.name, [op.name], "numpy", "numpy",
                            shapes_label(op.read_values(), op.results))
                 for i, op in enumerate(ops)]
        release = self.interpreter._release_plan(block)  # free intermediates as run() does
        keep = {id(v) for v in block.terminator.operands if v is not None}
        now = clock_ns(clock)
        run_us, run_start, t_first = [], [], None
        for r in range(warmup + max(1, runs)):
            t0 = now()
            env: dict[int, Any] = dict(zip((id(a) for a in block.args), inputs))
            spans = []
            for op, dead in zip(ops, release):
                a = now()
                self.interpreter.run_op(op, env)
                spans.append((a, now()))
                for vid in dead:
                    if vid not in keep:
                        env.pop(vid, None)
            t1 = now()
            if r < warmup:
                continue
            t_first = t0 if t_first is None else t_first
            run_start.append((t0 - t_first) / 1e3)
            run_us.append((t1 - t0) / 1e3)
            for st, (a, b) in zip(steps, spans):
                st.start_us.append((a - t0) / 1e3)
                st.dur_us.append((b - a) / 1e3)
        return Profile("numpy", steps, run_us, run_start)

    def report(self) -> str:
        counts = self.module.op_counts()
        lines = [f"numpy backend: {sum(counts.values())} ops, all run by the numpy interpreter"]
        lines += [f"  {name}: {n}" for name, n in sorted(counts.items())]
        return "\n".join(lines)


class NumpyBackend(Backend):
    """The reference: runs every op of the core set and every composite op."""

    name = "numpy"

    def supported_ops(self) -> set[str]:
        return set(all_kernels())

    def compile(self, module: Module, **options: Any) -> NumpyExecutable:
        missing = sorted({op.name for op in module.walk()
                          if not op.is_terminator and get_kernel(op.name) is None})
        if missing:
            raise UnsupportedOpError(f"the numpy backend has no kernel for: {', '.join(missing)}")
        return NumpyExecutable(module)
