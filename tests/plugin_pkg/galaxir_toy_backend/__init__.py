"""A third-party galaxir backend: runs add/mul/relu itself, refuses anything else."""
import numpy as np

from galaxir.backends import Backend, Executable
from galaxir.errors import UnsupportedOpError

OPS = {"add": np.add, "mul": np.multiply, "relu": lambda x: np.maximum(x, 0)}


class ToyExecutable(Executable):
    def __init__(self, module):
        super().__init__(module)
        self.calls = 0

    def _execute(self, inputs):
        self.calls += 1
        env = {id(v): x for v, x in zip(self.module.graph.inputs, inputs)}
        for op in self.module.graph.block:
            if op.is_terminator:
                return [env[id(v)] for v in op.operands]
            env[id(op.result)] = OPS[op.name](*[env[id(v)] for v in op.operands])


class ToyBackend(Backend):
    name = "toy"

    def supported_ops(self):
        return set(OPS)

    def compile(self, module, **options):
        bad = sorted({op.name for op in module.walk() if not op.is_terminator and op.name not in OPS})
        if bad:
            raise UnsupportedOpError(f"toy backend cannot run: {', '.join(bad)}")
        return ToyExecutable(module)
