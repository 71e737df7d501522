"""A third-party galaxir backend (installed by the tests as a real package): it runs add,
sum, mul, relu and its own fused op ``toy_add_relu`` (made by its own rule, which runs before
the generic O2 fusions); ``gx.compile`` runs every other op on the numpy reference, and
``exe.profile`` times each of its ops inside the native segments (``kernel_steps``)."""
from functools import reduce

import numpy as np

from galaxir.backends import Backend, Capabilities, Executable
from galaxir.errors import UnsupportedOpError
from galaxir.ir import define, lookup
from galaxir.passes import BEFORE_FUSION, P, Placed, Var, pattern

OPS = {"add": np.add, "sum": lambda *xs: reduce(np.add, xs), "mul": np.multiply, "relu": lambda x: np.maximum(x, 0),
       "toy_add_relu": lambda a, b: np.maximum(a + b, 0)}

if lookup("toy_add_relu") is None:
    define("toy_add_relu", operands=["a", "b"], types={"a": "T", "b": "T"},
           infer=lambda op: lookup("add").infer(op),
           decompose=lambda b, op: [b.relu(b.add(op.operand(0), op.operand(1)))],
           doc="relu(a + b), the toy backend's fused op")


@pattern(P.relu(P.any_of("add", "sum")(Var("lhs"), Var("rhs"), one_use=True)),
         name="toy-fuse-add-relu")
def fuse_add_relu(m):
    """relu(a + b) -> toy_add_relu(a, b)  (add, or the sum of two as ONNX ResNets write it)"""
    return m.b.create("toy_add_relu", m["lhs"], m["rhs"]).results[0]


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

    def kernel_steps(self, inputs):
        """Its ops for ``exe.profile``: one step each (inside a partitioned executable's
        segments too)."""
        from galaxir.backends.profile import StepTiming, shapes_label, value_label
        ops = [op for op in self.module.graph.block if not op.is_terminator]
        steps = [StepTiming(i, value_label(op.results), op.name, [op.name], "native",
                            f"toy.{op.name}", shapes_label(op.operands, op.results))
                 for i, op in enumerate(ops)]

        def start_run():
            env = {id(v): x for v, x in zip(self.module.graph.inputs, inputs)}

            def run(op):
                env[id(op.result)] = OPS[op.name](*[env[id(v)] for v in op.operands])
            return [lambda op=op: run(op) for op in ops]
        return steps, start_run


class ToyBackend(Backend):
    name = "toy"
    default_level = 2

    def capabilities(self):
        return Capabilities(ops=frozenset(OPS), dtypes={n: frozenset({"float32"}) for n in OPS})

    def passes(self, level):
        return [Placed([fuse_add_relu], BEFORE_FUSION, "toy-rules")] if level >= 2 else []

    def compile(self, module, **options):
        bad = sorted({op.name for op in module.walk() if not op.is_terminator and op.name not in OPS})
        if bad:
            raise UnsupportedOpError(f"toy backend cannot run: {', '.join(bad)}")
        return ToyExecutable(module)
