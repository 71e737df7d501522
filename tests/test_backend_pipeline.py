"""The declared backend contract and the shared pipeline: Capabilities, the Backend in the
pass context, placed backend passes, generic fusions that create only what the target
claims, the shared partitioner (report, profile, errors) and provenance through fusions."""
import numpy as np
import pytest

import galaxir as gx
from galaxir import errors
from galaxir.backends import Backend, Capabilities, Executable, register_backend
from galaxir.backends.numpy import NumpyBackend, run_module
from galaxir.ir import GraphBuilder, tensor
from galaxir.passes import (AFTER, BEFORE_FUSION, P, PassContext, Placed, Var, function_pass,
                            instead_of, pattern, pipeline_for)

ELEMENTWISE = {"add": np.add, "mul": np.multiply, "relu": lambda x: np.maximum(x, 0)}


class Interp(Executable):
    def __init__(self, module):
        super().__init__(module)
        self.seen = [op.name for op in module.graph.block if not op.is_terminator]

    def _execute(self, inputs):
        env = {id(v): x for v, x in zip(self.module.graph.inputs, inputs)}
        for op in self.module.graph.block:
            if op.is_terminator:
                return [env[id(v)] for v in op.operands]
            env[id(op.result)] = ELEMENTWISE[op.name](*[env[id(v)] for v in op.operands])


class ThreeOps(Backend):
    """The plugin of the issue: supported_ops() = {add, mul, relu}, nothing else."""

    name = "three-ops"

    def supported_ops(self):
        return set(ELEMENTWISE)

    def compile(self, module, **options):
        bad = {op.name for op in module.walk() if not op.is_terminator} - set(ELEMENTWISE)
        assert not bad, bad  # the partitioner never hands it anything else
        return Interp(module)


register_backend("three-ops", ThreeOps)


def _block(rng):
    """conv -> add residual -> relu -> elementwise chain, the shapes of a ResNet block."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 3, 6, 6))
    w = gb.constant(rng.standard_normal((3, 3, 3, 3)).astype(np.float32))
    r = gb.relu(gb.add(gb.op("conv", x, w, pads=(1, 1, 1, 1)), x))
    y = gb.mul(gb.op("tanh", gb.add(r, r)), gb.op("sigmoid", r))
    gb.output(gb.relu(gb.mul(y, y)), "y")
    return gb.module()


# -- the declared contract ------------------------------------------------------------------
def test_backends_declare_level_and_layout():
    assert Backend.default_level == 0 and Backend.preferred_layout == "NCHW"
    assert gx.default_level("three-ops") == 0
    cpu = gx.backends.get_backend("cpu")
    assert cpu.preferred_layout == "NHWC" and gx.default_level("cpu") == cpu.default_level == 3


def test_capabilities_per_op_dtype_and_layout():
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 1, 2, 4, 4))
    i = gb.input("i", tensor("i32", 3))
    fa = gb.add(a, a)
    ia = gb.add(i, i)
    gb.output(fa, "fa")
    gb.output(ia, "ia")
    m = gb.module()
    caps = Capabilities(ops=frozenset({"add", "conv"}), dtypes={"add": frozenset({"float32"})},
                        layouts={"conv": frozenset({"NCHW"})}, decomposes=frozenset({"sdpa"}))
    add_f, add_i = [op for op in m.graph.block if op.name == "add"]
    assert caps.supports("add") and caps.supports(add_f) and not caps.supports(add_i)
    assert not caps.supports("mul")
    assert caps.runs_layout("conv", "NCHW") and not caps.runs_layout("conv", "NHWC")
    assert caps.runs_layout("add", "NHWC")  # not listed: any layout
    assert caps.can_create("sdpa") and not caps.supports("sdpa") and not caps.can_create("linear")
    assert Capabilities().supports("anything") and Capabilities().supports(add_i)
    assert ThreeOps().capabilities().ops == frozenset(ELEMENTWISE)


# -- the Backend in the pass context --------------------------------------------------------
def test_passes_see_the_backend_object_resolved_once():
    seen = []

    @function_pass
    def spy(module, ctx):
        seen.append(ctx.backend)

    class Spy(NumpyBackend):
        name = "spy"

        def passes(self, level):
            return [spy]
    backend = Spy()
    register_backend("spy", Spy)
    gx.optimize(_block(np.random.default_rng(0)), 1, target=backend)
    gx.optimize(_block(np.random.default_rng(0)), 1, target="spy")
    assert seen[0] is backend and isinstance(seen[1], Spy)
    assert PassContext(backend=backend).target == "spy" and PassContext().target is None


def test_layout_pass_reads_the_declared_layout_and_capabilities():
    """A target preferring NHWC whose conv runs only in NCHW gets no channels-last conv."""
    class NhwcButConvNchw(NumpyBackend):
        name = "nhwc-nchw-conv"
        preferred_layout = "NHWC"

        def capabilities(self):
            return Capabilities(layouts={"conv": frozenset({"NCHW"}),
                                         "fused_conv": frozenset({"NCHW"})})

    class Nhwc(NumpyBackend):
        name = "nhwc"
        preferred_layout = "NHWC"
    rng = np.random.default_rng(0)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 4, 8, 8))
    h = x
    for _ in range(3):
        h = gb.relu(gb.op("conv", h, gb.constant(rng.standard_normal((4, 4, 3, 3)).astype(np.float32)),
                          pads=(1, 1, 1, 1)))
    gb.output(h, "y")
    m = gb.module()

    def layouts(backend):
        o = gx.optimize(m, 3, target=backend)
        return {op.attrs.get("layout", "NCHW") for op in o.walk() if op.name in ("conv", "fused_conv")}
    assert layouts(Nhwc()) == {"NHWC"}
    assert layouts(NhwcButConvNchw()) == {"NCHW"}
    assert layouts(NumpyBackend()) == {"NCHW"}


# -- placed backend passes ----------------------------------------------------------------------
def test_backend_passes_at_their_positions():
    @function_pass
    def early(module):
        pass

    @function_pass
    def late(module):
        pass

    @function_pass
    def my_chains(module):
        pass

    class Placing(NumpyBackend):
        name = "placing"

        def passes(self, level):
            return [Placed(early, BEFORE_FUSION), Placed(late, AFTER),
                    Placed(my_chains, instead_of("fuse-elementwise"))]
    names = [p.name for p in pipeline_for(2, Placing())]
    assert names.index("cse") < names.index("early") < names.index("fuse-recognize")
    assert "fuse-elementwise" not in names
    assert names.index("fuse-activation") < names.index("my-chains") < names.index("late")
    o1 = [p.name for p in pipeline_for(1, Placing())]  # O1 has no fusions: early still runs
    assert "early" in o1 and "my-chains" not in o1

    class Bad(NumpyBackend):
        name = "bad-place"

        def passes(self, level):
            return [Placed(early, "instead:no-such-pass")]
    with pytest.raises(errors.PassError, match="placed at 'instead:no-such-pass'"):
        pipeline_for(2, Bad())


# -- generic fusions create only what the target claims ------------------------------------------
@pytest.mark.parametrize("level", [2, 3])
def test_generic_fusions_create_no_op_the_target_lacks(level):
    m = _block(np.random.default_rng(0))
    o = gx.optimize(m, level, target="three-ops")
    names = set(o.op_counts())
    assert not names & {"fused_conv", "fused_add", "fused_elementwise"}, names
    everything = set(gx.optimize(m, level).op_counts())  # without a target they do fuse
    assert everything & {"fused_conv", "fused_add", "fused_elementwise"}

    class Decomposes(ThreeOps):
        """runs add/mul/relu and decomposes fused_elementwise itself"""
        name = "decomposes"

        def capabilities(self):
            return Capabilities(ops=frozenset(ELEMENTWISE), decomposes=frozenset({"fused_elementwise"}))
    assert "fused_elementwise" in gx.optimize(m, level, target=Decomposes()).op_counts()


# -- the shared partitioner ---------------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_three_op_plugin_runs_at_every_level(level):
    rng = np.random.default_rng(level)
    m = _block(rng)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    (ref,) = run_module(m, [x])
    exe = gx.compile(m, target="three-ops", level=level)
    (y,) = exe(x)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    native = [name for s in exe.segments for name in s.exe.seen]
    assert native and set(native) <= set(ELEMENTWISE)
    report = exe.report()
    assert report.startswith("three-ops backend:") and "numpy fallback:" in report
    assert "conv: 1" in report and "tanh: 1" in report and "sigmoid: 1" in report


def test_segments_feed_each_other_and_graph_outputs():
    """Segment outputs read by later segments, by reference ops and as graph outputs."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4))
    a = gb.add(x, x)                      # segment 1
    e = gb.op("exp", a)                   # reference
    b = gb.mul(a, e)                      # segment 2 reads segment 1 and the reference
    gb.output(a, "a")
    gb.output(gb.op("neg", b), "n")
    gb.output(x, "x_again")
    m = gb.module()
    xs = np.linspace(-1, 1, 4).astype(np.float32)
    exe = gx.compile(m, target="three-ops", level=0)
    got = exe.run({"x": xs})
    np.testing.assert_allclose(got["a"], 2 * xs)
    np.testing.assert_allclose(got["n"], -(2 * xs * np.exp(2 * xs)), rtol=1e-6)
    np.testing.assert_array_equal(got["x_again"], xs)
    assert len(exe.segments) == 2


def test_partitioned_profile_has_every_step():
    rng = np.random.default_rng(0)
    m = _block(rng)
    exe = gx.compile(m, target="three-ops", level=1)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    prof = exe.profile({"x": x}, runs=2)
    wheres = {st.where for st in prof.steps}
    assert wheres == {"native", "numpy"} and prof.runs == 2
    assert all(len(st.dur_us) == 2 for st in prof.steps)
    assert "conv" in str(prof)


def test_op_neither_backend_nor_reference_runs_is_a_clear_error():
    from galaxir.ir import define, lookup
    if lookup("test_nowhere") is None:
        define("test_nowhere", operands=["x"], infer=lambda op: [op.operands[0].type])
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2))
    gb.output(gb.op("test_nowhere", gb.add(x, x)), "y")
    with pytest.raises(errors.UnsupportedOpError,
                       match="does not run 'test_nowhere' and the numpy reference has no kernel"):
        gx.compile(gb.module(), target="three-ops", level=0)


# -- provenance through the fusions ----------------------------------------------------------
def test_fused_conv_keeps_every_source_node():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array((rng.random(4) + 0.5).astype(np.float32), n) for n in "sbmv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv_0", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn_0"),
             helper.make_node("Add", ["bn", "z"], ["a"], name="add_0"),
             helper.make_node("Relu", ["a"], ["y"], name="relu_0")]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                       vi("z", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [vi("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = gx.import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    o = gx.optimize(m, 2, target="cpu")
    (fused,) = [op for op in o.walk() if op.name == "fused_conv"]
    assert fused.attr("activation") == "relu"
    assert set(fused.provenance) == {"conv_0", "bn_0", "add_0", "relu_0"}


def test_fused_elementwise_keeps_every_source_node():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 3))
    gb.output(gb.op("tanh", gb.op("exp", gb.op("neg", x))), "y")
    m = gb.module()
    for i, op in enumerate(m.graph.block):
        op.provenance = (f"n{i}",)
    o = gx.optimize(m, 2)
    (fused,) = [op for op in o.graph.block if op.name == "fused_elementwise"]
    assert set(fused.provenance) == {"n0", "n1", "n2"}


def test_own_rule_before_fusion_sees_unfused_ops():
    """A backend pattern placed BEFORE_FUSION matches relu(add) before fuse-activation
    turns it into fused_add."""
    seen = []

    @pattern(P.relu(P.add(Var("a"), Var("b"))), name="count-add-relu")
    def count(m):
        seen.append(m.root.name)
        return m.fail("only counting")

    class Early(NumpyBackend):
        name = "early"
        where = BEFORE_FUSION

        def passes(self, level):
            return [Placed([count], self.where)]

    class Late(Early):
        where = AFTER
    gx.optimize(_block(np.random.default_rng(0)), 2, target=Early())
    assert seen and set(seen) == {"relu"}
    seen.clear()
    gx.optimize(_block(np.random.default_rng(0)), 2, target=Late())
    assert seen == []  # after the generic fusions the add + relu is a fused_conv


# -- bisect checks the backend's own code ------------------------------------------------------
def _chain():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 8))
    w = gb.constant(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    h = gb.op("matmul", x, w)
    y = gb.mul(gb.op("neg", gb.op("exp", h)), h)
    gb.output(gb.relu(y), "y")
    m = gb.module()
    for i, op in enumerate(m.graph.block):
        op.provenance = (f"node{i}",)
    return m


def test_bisect_finds_nothing_wrong_in_the_cpu_kernels():
    pytest.importorskip("llvmlite")
    from galaxir.passes import bisect
    res = bisect(_chain(), None, level=2, target="cpu")
    assert not res.found and res.passes_checked[-1] == "cpu lowering"


def test_bisect_names_the_cpu_kernel_that_differs(monkeypatch):
    pytest.importorskip("llvmlite")
    from galaxir.backends.cpu import lower
    from galaxir.passes import bisect
    real = lower._op_expr

    def broken(op, children):  # neg forgets to negate: a wrong elementwise kernel
        return children[0] if op.name == "neg" else real(op, children)
    monkeypatch.setattr(lower, "_op_expr", broken)  # the fused loop's expression too
    res = bisect(_chain(), None, level=2, target="cpu")
    assert res.found and res.pass_name == "cpu lowering", str(res)
    assert "native kernel" in res.reason and "node" in res.reason
    assert "fused_elementwise(exp+neg+mul+relu)" in res.reason, res.reason
    assert "differs from the reference" in str(res)


def test_bisect_names_the_plugin_segment_that_differs():
    from galaxir.passes import bisect

    class WrongMul(ThreeOps):
        name = "wrong-mul"

        def compile(self, module, **options):
            exe = super().compile(module)
            exe._execute = lambda inputs: [x + 1 for x in Interp._execute(exe, inputs)] \
                if "mul" in exe.seen else Interp._execute(exe, inputs)
            return exe
    res = bisect(_chain(), None, level=1, target=WrongMul())
    assert res.found and res.pass_name == "wrong-mul lowering", str(res)
    assert "native segment" in res.reason and "mul" in res.reason
    assert not bisect(_chain(), None, level=1, target=ThreeOps()).found


def test_profiler_works_for_a_backend_that_reports_its_kernels():
    from galaxir.backends.profile import StepTiming

    class Reporting(Interp):
        target_name = "reporting"

        def kernel_steps(self, inputs):
            ops = [op for op in self.module.graph.block if not op.is_terminator]
            steps = [StepTiming(i, op.results[0].name or "-", op.name, [op.name], "native",
                                f"k_{op.name}", "") for i, op in enumerate(ops)]

            def start_run():
                env = {id(v): x for v, x in zip(self.module.graph.inputs, inputs)}

                def run(op):
                    env[id(op.result)] = ELEMENTWISE[op.name](*[env[id(v)] for v in op.operands])
                return [lambda op=op: run(op) for op in ops]
            return steps, start_run
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 8))
    gb.output(gb.relu(gb.mul(gb.add(x, x), x)), "y")
    m = gb.module()
    prof = Reporting(m).profile({"x": np.ones(8, np.float32)}, runs=3)
    assert [st.kernel for st in prof.steps] == ["k_add", "k_mul", "k_relu"]
    assert prof.runs == 3 and all(len(st.dur_us) == 3 for st in prof.steps)
    with pytest.raises(errors.ExecutionError, match="no profiler"):
        Interp(m).profile({"x": np.ones(8, np.float32)})
