"""``exe.profile``: per-step times that add up to the run, a table naming every op, a valid
Chrome trace, and no trace of the profiler in the code a normal call runs."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

import galaxir as gx
from galaxir.errors import ExecutionError
from galaxir.ir import GraphBuilder, tensor
from galaxir.testing import zoo

pytest.importorskip("llvmlite")


@pytest.fixture(scope="module")
def squeezenet():
    proto = onnx.load(str(zoo.model_path("squeezenet")))
    exe = gx.compile(gx.import_model(proto), target="cpu", num_threads=1)
    return exe, zoo.dummy_inputs(proto)


def test_step_times_add_up_to_the_run_time(squeezenet):
    exe, feeds = squeezenet
    prof = exe.profile(feeds, runs=5)
    assert prof.runs == 5 and len(prof.steps) == len(exe.last.steps)
    native = [s for s in prof.steps if s.where == "native"]
    assert len(native) >= 20 and all(s.mean_us > 0 for s in native)
    # inside one profiled run the steps cover the call but for the Python around them
    # (nested readings of one clock: never more; the best run shows how much less)
    fractions = [steps / run for steps, run in zip(prof.step_sums_us(), prof.run_us)]
    assert max(fractions) <= 1.0 and max(fractions) >= 0.9, fractions
    # that the profiler costs nothing when off is shown on the code itself
    # (test_profiling_leaves_the_compiled_code_unchanged), not by timing calls on a shared
    # machine: a normal call's time against a profiled one is for benchmarks/
    cpu = exe.profile(feeds, runs=3, clock="cpu")
    assert all(0 < s <= r for s, r in zip(cpu.step_sums_us(), cpu.run_us))
    with pytest.raises(ExecutionError, match="clock"):
        exe.profile(feeds, clock="gpu")


def test_table_and_kinds_name_every_op(squeezenet):
    exe, feeds = squeezenet
    prof = exe.profile(feeds, runs=2)
    text = str(prof)
    ops_in_steps = [name for s in prof.steps for name in s.ops]
    assert sorted(ops_in_steps) == sorted(op.name for op, _, _ in exe.placement())
    for s in prof.steps:
        assert s.label in text and s.name[:20] in text
    rows = [line for line in text.splitlines() if re.match(r"\s*\d+\s+[\d.]+\s+[\d.]+%", line)]
    assert len(rows) == len(prof.steps)
    times = [float(r.split()[1]) for r in rows]
    assert times == sorted(times, reverse=True)  # slowest first
    kinds = prof.by_kind()
    assert {k["kind"] for k in kinds} == {s.kind for s in prof.steps}
    assert sum(k["count"] for k in kinds) == len(prof.steps)
    assert abs(sum(k["share"] for k in kinds) - 1) < 1e-9
    conv = next(k for k in kinds if k["kind"] in ("conv", "fused_conv"))
    assert conv["share"] > 0.5  # squeezenet is its convolutions
    assert "by op kind" in text and "top" not in prof.table(top=3).split("\n")[0]
    assert "more steps" in prof.table(top=3)


def test_chrome_trace_has_one_event_per_step_per_run(squeezenet, tmp_path):
    exe, feeds = squeezenet
    prof = exe.profile(feeds, runs=3)
    path = prof.save_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    steps = [e for e in events if e["ph"] == "X" and e["cat"] != "run"]
    runs = [e for e in events if e["ph"] == "X" and e["cat"] == "run"]
    assert len(steps) == 3 * len(prof.steps) and len(runs) == 3
    for e in steps + runs:
        assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float))
        assert e["dur"] >= 0 and {"pid", "tid", "name"} <= set(e)
    for r, run in enumerate(runs):
        mine = [e for e in steps if e["args"]["run"] == r]
        starts = [e["ts"] for e in mine]
        assert starts == sorted(starts)
        assert run["ts"] <= starts[0] and max(e["ts"] + e["dur"] for e in mine) <= \
            run["ts"] + run["dur"] + 1e-3
    assert runs[1]["ts"] >= runs[0]["ts"] + runs[0]["dur"] - 1e-3


def _defined_functions(llvm_ir: str) -> set[str]:
    return set(re.findall(r"^define [^@]*@\"?([\w.]+)", llvm_ir, re.M))


def test_profiling_leaves_the_compiled_code_unchanged():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 8, 16))
    w = gb.constant(np.linspace(-1, 1, 16 * 4, dtype=np.float32).reshape(16, 4))
    y = gb.relu(gb.matmul(gb.add(x, x), w))
    gb.output(gb.softmax(gb.cos(y), axis=1), "y")  # cos runs on numpy: two segments
    m = gb.module()
    exe = gx.compile(m, target="cpu", level=0)
    spec = exe.last
    before = (spec.llvm_ir, [id(e) for e in spec.entries], spec.loaded)
    assert "clock" not in spec.llvm_ir and "timed" not in spec.llvm_ir
    fresh = gx.compile(m, target="cpu", level=0).last.llvm_ir
    assert fresh == spec.llvm_ir
    assert {f for f in _defined_functions(spec.llvm_ir) if f.startswith("gx_seg")} == \
        {"gx_seg0", "gx_seg1"}
    xv = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    prof = exe.profile({"x": xv}, runs=3)
    assert exe.last is spec
    assert (spec.llvm_ir, [id(e) for e in spec.entries], spec.loaded) == before
    assert "gx_clock_gettime" in spec._timed.llvm_ir  # the timed copy is separate
    assert "gx_seg0_timed" in _defined_functions(spec._timed.llvm_ir)
    where = {s.kind: s.where for s in prof.steps}
    assert where["cos"] == "numpy" and where["softmax"] == "native"
    assert all(s.mean_us > 0 for s in prof.steps if s.where != "view")
    want = gx.compile(m, target="numpy")(xv)[0]
    np.testing.assert_allclose(exe(xv)[0], want, rtol=1e-5, atol=1e-6)


def test_profile_checks_its_inputs_and_reports_kernel_failures():
    gb = GraphBuilder()
    table = gb.input("t", tensor("f32", 5, 4))
    idx = gb.input("i", tensor("i64", 3))
    gb.output(gb.gather(table, idx, axis=0), "y")
    exe = gx.compile(gb.module(), target="cpu", level=0)
    t = np.arange(20, dtype=np.float32).reshape(5, 4)
    with pytest.raises(gx.errors.InputValidationError):
        exe.profile({"t": t}, runs=1)
    prof = exe.profile({"t": t, "i": np.array([4, 0, 1])}, runs=2)
    assert [(s.kind, s.where) for s in prof.steps] == [("gather", "native")]
    with pytest.raises(ExecutionError, match="gather"):  # the timed code checks too
        exe.profile({"t": t, "i": np.array([9, 0, 1])}, runs=1)


def test_numpy_backend_profile():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 4))
    gb.output(gb.relu(gb.add(x, x)), "y")
    exe = gx.compile(gb.module(), target="numpy")
    prof = exe.profile({"x": np.ones((3, 4), np.float32)}, runs=4)
    assert [s.kind for s in prof.steps] == ["add", "relu"]
    assert all(len(s.dur_us) == 4 and min(s.dur_us) > 0 for s in prof.steps)
    for steps, run in zip(prof.step_sums_us(), prof.run_us):
        assert steps <= run
    assert "add" in str(prof) and "relu" in str(prof)
    assert len([e for e in prof.chrome_trace()["traceEvents"] if e.get("cat") == "numpy"]) == 8


def test_partitioned_profile_times_the_cpu_kernels_inside_its_segments():
    """A backend that leaves ``softmax`` to the reference gets partitioned; its segments are cpu
    executables, so the profile names each cpu kernel inside them (a fused loop, the gemm)
    and the reference op between them, on the values the run computes."""
    from galaxir.backends import Capabilities, register_backend
    from galaxir.backends.cpu import CpuBackend
    from galaxir.reference.registry import all_kernels

    class CpuNoSoftmax(CpuBackend):
        name = "cpu-no-softmax"

        def capabilities(self):
            caps = super().capabilities()
            return Capabilities(ops=frozenset(all_kernels()) - {"softmax"},
                                decomposes=caps.decomposes)
    register_backend("cpu-no-softmax", CpuNoSoftmax)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 8, 16))
    w = gb.constant(np.linspace(-1, 1, 16 * 32, dtype=np.float32).reshape(16, 32))
    h = gb.relu(gb.add(gb.mul(gb.matmul(x, w), gb.constant(np.float32(0.5))),
                       gb.constant(np.float32(0.1))))
    gb.output(gb.sigmoid(gb.mul(gb.op("softmax", h, axis=-1), h)), "y")
    m = gb.module()
    xv = np.linspace(-2, 2, 8 * 16, dtype=np.float32).reshape(8, 16)
    exe = gx.compile(m, target="cpu-no-softmax", level=2, num_threads=1)
    assert len(exe.segments) == 2, exe.report()
    prof = exe.profile({"x": xv}, runs=3)
    where = [(st.where, st.kind) for st in prof.steps]
    assert ("numpy", "softmax") in where
    native = [st for st in prof.steps if st.where == "native"]
    cpu_kernels = [s.kernel.name for seg in exe.segments for s in seg.exe.last.steps]
    assert [st.kernel for st in native] == cpu_kernels and len(native) >= 3, where
    assert all(len(st.dur_us) == 3 for st in prof.steps)
    for steps, run in zip(prof.step_sums_us(), prof.run_us):
        assert 0 < steps <= run
    (ref,) = gx.compile(m, target="numpy", level=0)(xv)
    np.testing.assert_allclose(exe(xv)[0], ref, rtol=1e-4, atol=1e-5)
