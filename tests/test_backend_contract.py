"""The backend contract: registry, entry-point plugins (a real pip-installed package),
and input validation in Executable before any backend code runs."""
import subprocess
import sys

import numpy as np
import pytest

import galaxir as gx
from galaxir import errors
from galaxir.backends import available_backends, get_backend
from galaxir.ir import GraphBuilder, tensor


def _module():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3))
    y = gb.input("y", tensor("f32", "N", 3))
    gb.output(gb.relu(gb.add(x, y)), "z")
    return gb.module()


@pytest.fixture(scope="module")
def toy_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    from pathlib import Path
    pkg = Path(__file__).parent / "plugin_pkg"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(pkg)], check=True)
    sys.path.insert(0, str(target))
    yield
    sys.path.remove(str(target))


def test_plugin_found_through_entry_point(toy_plugin):
    assert "toy" in available_backends()
    backend = get_backend("toy")
    assert type(backend).__module__ == "galaxir_toy_backend"
    exe = gx.compile(_module(), target="toy", level=0)
    x = np.array([[1, -2, 3]], np.float32)
    (z,) = exe(x, x)
    np.testing.assert_array_equal(z, [[2, 0, 6]])
    assert exe.calls == 1
    # the plugin's own compile refuses what it does not run; gx.compile never hands it any
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 2))
    gb.output(gb.op("sub", a, a), "b")
    with pytest.raises(errors.UnsupportedOpError, match="toy backend cannot run: sub"):
        backend.compile(gb.module())


def _mixed_module():
    """add/mul/relu (the toy runs them) between ops it does not (exp, sub, conv)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 2, 5, 5))
    z = gb.input("z", tensor("f32", 1, 3, 5, 5))
    w = gb.constant(np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32))
    c = gb.op("conv", x, w, pads=(1, 1, 1, 1))
    s = gb.relu(gb.add(c, z))
    e = gb.op("exp", gb.op("neg", s))
    gb.output(gb.mul(gb.op("sub", e, s), e), "y")
    return gb.module()


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_plugin_runs_at_every_level_with_partitioning(toy_plugin, level):
    m = _mixed_module()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    z = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    (ref,) = gx.compile(m, target="numpy", level=0)(x, z)
    exe = gx.compile(m, target="toy", level=level)
    (y,) = exe(x, z)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    report = exe.report()
    assert "numpy fallback:" in report and "conv: 1" in report and "exp: 1" in report
    native = "toy_add_relu: 1" if level >= 2 else "relu: 1"  # its own rule fires at O2+
    assert native in report and "mul: 1" in report, report
    assert all(s.exe.calls == 1 for s in exe.segments)


def test_plugin_rule_fires_before_the_generic_fusions(toy_plugin):
    from galaxir.passes import pipeline_for
    backend = get_backend("toy")
    names = [p.name for p in pipeline_for(2, backend)]
    assert names.index("toy-rules") < names.index("fuse-recognize") < names.index("fuse-activation")

    class ToyWithFusedAdd(type(backend)):
        """also claims fused_add: had its rule run after fuse-activation, that would have
        made a fused_add of the add + relu"""

        def capabilities(self):
            c = super().capabilities()
            return type(c)(ops=c.ops | {"fused_add"}, dtypes=c.dtypes)
    o = gx.optimize(_mixed_module(), 2, target=ToyWithFusedAdd())
    counts = o.op_counts()
    assert counts.get("toy_add_relu") == 1 and "fused_add" not in counts, counts
    assert "toy-rules" in o.metadata["optimized"]


def test_profile_times_the_plugins_ops_inside_its_segments(toy_plugin):
    """A partitioned executable's profile: every op the plugin runs (its own kernels, as its
    executable reports them) and every reference op between its segments, in order."""
    m = _mixed_module()
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32),
             "z": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)}
    exe = gx.compile(m, target="toy", level=2)
    prof = exe.profile(feeds, runs=3)
    top = [op for op in exe.module.graph.block if not op.is_terminator and op.name != "constant"]
    assert [st.kind for st in prof.steps] == [op.name for op in top]
    where = {st.kind: (st.where, st.kernel) for st in prof.steps}
    assert where["toy_add_relu"] == ("native", "toy.toy_add_relu") and where["mul"][0] == "native"
    assert where["conv"] == ("numpy", "numpy") and where["exp"] == ("numpy", "numpy")
    assert len(exe.segments) >= 2 and prof.runs == 3
    assert all(len(st.dur_us) == 3 and min(st.dur_us) >= 0 for st in prof.steps)
    for r, total in enumerate(prof.run_us):  # the steps lie inside their run, in order
        ends = [st.start_us[r] + st.dur_us[r] for st in prof.steps]
        assert all(a <= b + 1e-3 for a, b in zip(ends, [st.start_us[r] for st in prof.steps][1:]))
        assert ends[-1] <= total + 1e-3
    np.testing.assert_allclose(exe.run(feeds)["y"], gx.compile(m, target="numpy", level=0).run(feeds)["y"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_plugin_runs_light_resnet50_at_o2(toy_plugin):
    onnx = pytest.importorskip("onnx")
    from galaxir.testing.zoo import dummy_inputs, model_path, with_random_weights
    proto = with_random_weights(onnx.load(str(model_path("resnet50"))))
    feeds = dummy_inputs(proto)
    m = gx.import_model(proto)
    exe = gx.compile(m, target="toy", level=2)
    out = exe.run(feeds)
    ref = gx.compile(m, target="numpy", level=0).run(feeds)
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-3, atol=1e-5)
    report = exe.report()
    assert "toy_add_relu: 16" in report and "conv: 53" in report, report
    assert "relu: 33" in report


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(errors.CompileError, match="no backend named 'nope'.*available"):
        gx.compile(_module(), target="nope", level=0)


@pytest.mark.parametrize("feeds, match", [
    ({"x": np.zeros((2, 3), np.float32)}, r"missing input\(s\) 'y'"),
    ({"x": np.zeros((2, 3), np.float32), "y": np.zeros((2, 3), np.float32), "w": 1}, r"unknown input name\(s\) 'w'"),
    ({"x": np.zeros((2, 3), np.float64), "y": np.zeros((2, 3), np.float32)}, "input 'x': expected dtype float32, got float64"),
    ({"x": np.zeros((2, 3, 1), np.float32), "y": np.zeros((2, 3), np.float32)}, "input 'x': expected rank 2"),
    ({"x": np.zeros((2, 4), np.float32), "y": np.zeros((2, 4), np.float32)}, "input 'x': dim 1 must be 3"),
    ({"x": np.zeros((2, 3), np.float32), "y": np.zeros((5, 3), np.float32)}, "symbol 'N', bound to 2 .* but is 5"),
    ({"x": "hello", "y": np.zeros((2, 3), np.float32)}, "input 'x'"),
])
def test_input_validation(feeds, match):
    exe = gx.compile(_module(), target="numpy", level=0)
    with pytest.raises(errors.InputValidationError, match=match):
        exe.run(feeds)


def test_positional_and_named_calls_agree():
    exe = gx.compile(_module(), target="numpy", level=0)
    x = np.random.rand(4, 3).astype(np.float32)
    (a,) = exe(x, x)
    b = exe.run({"x": x, "y": x})["z"]
    (c,) = exe(x=x, y=x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(errors.InputValidationError, match="takes 2 inputs"):
        exe(x)
