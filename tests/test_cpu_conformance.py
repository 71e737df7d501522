"""The ONNX backend node suite on the cpu target: every case that passes on numpy (all but
tests/data/onnx_expected_failures.txt) passes on cpu too; ops without a native kernel run
on the numpy reference through partitioning.  Prints the ops compiled natively.

The default run takes a deterministic third of the cases (by a hash of the name, so every
op family is represented) to stay around a minute on 2 cores; ``pytest -m slow`` runs all
of them (47 s on a quiet machine, about 100 s on a busy one: 1877/1877 passed when last run).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from galaxir.testing.onnx_conformance import load_cases, read_expected, run_case

pytest.importorskip("llvmlite")
EXPECTED = Path(__file__).parent / "data" / "onnx_expected_failures.txt"
SUBSET_STRIDE = 3


def _recording(monkeypatch):
    """Record every cpu executable the cases compile."""
    from galaxir.backends.cpu.backend import CpuBackend
    made = []
    orig = CpuBackend.compile

    def compile(self, module, **kw):
        exe = orig(self, module, **kw)
        made.append(exe)
        return exe
    monkeypatch.setattr(CpuBackend, "compile", compile)
    return made


def _in_default_subset(case) -> bool:
    """Every SUBSET_STRIDE-th case by a hash of its name: deterministic, and spread over
    every op family."""
    return zlib.crc32(case.name.encode()) % SUBSET_STRIDE == 0


def _run(cases, monkeypatch, capsys, label):
    made = _recording(monkeypatch)
    expected = read_expected(EXPECTED)
    cases = [c for c in cases if c.name not in expected]
    failed = {}
    native: dict[str, int] = {}
    for c in cases:
        made.clear()
        r = run_case(c, "cpu")
        if not r.ok:
            failed[c.name] = r.reason
        for exe in made:
            for name in set(exe.native_ops):
                native[name] = native.get(name, 0) + 1
    with capsys.disabled():
        print(f"\ngalaxir cpu ({label}): {len(cases) - len(failed)}/{len(cases)} cases pass "
              f"(the cases that pass on numpy)")
        print("ops compiled natively (cases): " +
              ", ".join(f"{k} ({v})" for k, v in sorted(native.items())))
    assert not failed, "cases passing on numpy but failing on cpu:\n" + "\n".join(
        f"  {n}: {why}" for n, why in sorted(failed.items()))
    assert {"matmul", "add", "softmax", "max_pool", "transpose", "concat"} <= set(native)


def test_onnx_node_suite_on_cpu_subset(monkeypatch, capsys):
    cases = [c for c in load_cases() if _in_default_subset(c)]
    assert len(cases) > 550
    _run(cases, monkeypatch, capsys, "default subset")


@pytest.mark.slow
def test_onnx_node_suite_on_cpu_all(monkeypatch, capsys):
    _run(load_cases(), monkeypatch, capsys, "all cases")


#: single-op node cases whose extra inputs (indices, pads, axes, scales, sizes) real models
#: hold as constants; the suite feeds them as runtime inputs, which the kernels need constant
CONSTANT_OPERAND_OPS = {"Slice": "slice", "Pad": "pad", "Split": "split", "Tile": "tile",
                        "Expand": "expand", "Resize": "resize", "Upsample": "resize",
                        **{f"Reduce{k}": f"reduce_{v}" for k, v in (
                            ("Sum", "sum"), ("Mean", "mean"), ("Max", "max"), ("Min", "min"),
                            ("Prod", "prod"), ("L1", "l1"), ("L2", "l2"), ("LogSum", "log_sum"),
                            ("LogSumExp", "log_sum_exp"), ("SumSquare", "sum_square"))}}


def test_node_cases_with_constant_operands_run_natively():
    """Every single-op Slice/Pad/Split/Tile/Expand/Resize/Upsample/Reduce* case of the node
    suite (that the numpy reference passes), its non-data inputs turned into initializers:
    it matches the suite's expected outputs, and runs natively wherever its data is
    float32 (the data ops move any fixed-size dtype)."""
    import copy
    import warnings

    import numpy as np
    from onnx import numpy_helper

    import galaxir as gx
    from galaxir.testing.onnx_conformance import _normalize, assert_similar, data_inputs
    expected = read_expected(EXPECTED)
    native = {v: 0 for v in CONSTANT_OPERAND_OPS.values()}
    for case in load_cases():
        m = case.model
        if case.name in expected or len(m.graph.node) != 1 or m.graph.node[0].op_type not in CONSTANT_OPERAND_OPS:
            continue
        op = CONSTANT_OPERAND_OPS[m.graph.node[0].op_type]
        names = data_inputs(m)
        for inputs, ref in case.data_sets:
            inputs = [_normalize(x) for x in inputs]
            mm = copy.deepcopy(m)
            for name, x in zip(names[1:], inputs[1:]):
                mm.graph.initializer.append(numpy_helper.from_array(np.asarray(x), name))
            exe = gx.compile(gx.import_model(mm), target="cpu", level=0)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                out = exe.run({names[0]: inputs[0]})
            assert_similar([_normalize(r) for r in ref], [out[k] for k in exe.output_names],
                           case.rtol, case.atol)
            if op in exe.native_ops:
                native[op] += 1
            elif inputs[0].dtype == np.float32 and inputs[0].size:
                pytest.fail(f"{case.name}: {op} fell back:\n{exe.report()}")
    assert all(native.values()), native
