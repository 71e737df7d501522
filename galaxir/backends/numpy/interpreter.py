"""The numpy reference backend: the reference evaluator (galaxir/reference) behind the
``Backend`` interface, with per-op profiling and a report."""
from __future__ import annotations

from typing import Any

from ...errors import UnsupportedOpError
from ...ir import Module
from ...reference.evaluator import Interpreter, KernelContext, run_module
from ...reference.registry import all_kernels, get_kernel
from ..base import Backend, Executable

__all__ = ["Interpreter", "KernelContext", "NumpyBackend", "NumpyExecutable", "run_module"]


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
        from ..profile import StepTiming, shapes_label, time_steps, value_label
        inputs = self.validate(feeds)
        block = self.module.graph.block
        ops = [op for op in block if not op.is_terminator]
        steps = [StepTiming(i, value_label(op.results), op.name, [op.name], "numpy", "numpy",
                            shapes_label(op.read_values(), op.results))
                 for i, op in enumerate(ops)]
        release = self.interpreter._release_plan(block)  # free intermediates as run() does
        keep = {id(v) for v in block.terminator.operands if v is not None}

        def start_run():
            env: dict[int, Any] = dict(zip((id(a) for a in block.args), inputs))

            def step(op, dead):
                def run_op():
                    self.interpreter.run_op(op, env)
                    for vid in dead:
                        if vid not in keep:
                            env.pop(vid, None)
                return run_op
            return [step(op, dead) for op, dead in zip(ops, release)]
        return time_steps("numpy", steps, start_run, runs, warmup, clock)

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
