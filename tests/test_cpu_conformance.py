"""The ONNX backend node suite on the cpu target: every case that passes on numpy (all but
tests/data/onnx_expected_failures.txt) passes on cpu too; ops without a native kernel run
on the numpy reference through partitioning.  Prints the ops compiled natively.

The default run takes a deterministic subset (every case whose model has a natively
compiled op, plus every SUBSET_STRIDE-th other case: the others only exercise the
fallback path, identical to the numpy suite); ``pytest -m slow`` runs all of them.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from galaxir.testing.onnx_conformance import load_cases, read_expected, run_case

pytest.importorskip("llvmlite")
EXPECTED = Path(__file__).parent / "data" / "onnx_expected_failures.txt"
SUBSET_STRIDE = 4


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
    ops = {n.op_type for n in case.model.graph.node}
    if ops & _NATIVE_ONNX:
        return True
    return zlib.crc32(case.name.encode()) % SUBSET_STRIDE == 0


# ONNX op types whose galaxir op has a native cpu kernel
_NATIVE_ONNX = {
    "Conv", "MatMul", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Softmax", "LogSoftmax", "LRN", "Concat", "Transpose", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze", "Identity", "Dropout", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "Max", "Min",
    "Sum", "Mean", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Sigmoid", "Tanh", "LeakyRelu",
    "Clip", "Floor", "Ceil", "BatchNormalization", "HardSigmoid", "HardSwish", "Gelu"}


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
    assert {"conv", "matmul", "add", "softmax", "max_pool"} <= set(native)


def test_onnx_node_suite_on_cpu_subset(monkeypatch, capsys):
    cases = [c for c in load_cases() if _in_default_subset(c)]
    assert len(cases) > 400
    _run(cases, monkeypatch, capsys, "default subset")


@pytest.mark.slow
def test_onnx_node_suite_on_cpu_all(monkeypatch, capsys):
    _run(load_cases(), monkeypatch, capsys, "all cases")
