"""O3 (O2 fusions + the O3 passes) on the ONNX node suite: on numpy for every case that
passes unoptimized, and on cpu for a deterministic third of them (all under -m slow);
the 9 light zoo models at O3 on cpu match their shipped outputs (slow)."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

import galaxir as gx
from galaxir.testing import zoo
from galaxir.testing.onnx_conformance import load_cases, read_expected, run_case

EXPECTED = Path(__file__).parent / "data" / "onnx_expected_failures.txt"


def _cases(stride: int = 1):
    failing = read_expected(EXPECTED)
    return [c for c in load_cases() if c.name not in failing and zlib.crc32(c.name.encode()) % stride == 0]


def _o3_for(target):
    return lambda m: gx.optimize(m, level=3, target=target)


def test_node_suite_at_o3_on_numpy():
    failed = [r for r in (run_case(c, "numpy", transform=_o3_for("numpy")) for c in _cases())
              if not r.ok]
    assert not failed, "\n".join(f"{r.name}: {r.reason}" for r in failed[:40])


@pytest.mark.parametrize("stride", [pytest.param(3, id="third"),
                                    pytest.param(1, id="all", marks=pytest.mark.slow)])
def test_node_suite_at_o3_on_cpu(stride):
    pytest.importorskip("llvmlite")
    failed = [r for r in (run_case(c, "cpu", transform=_o3_for("cpu")) for c in _cases(stride))
              if not r.ok]
    assert not failed, "\n".join(f"{r.name}: {r.reason}" for r in failed[:40])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_zoo_models_at_o3_on_cpu(name):
    proto = onnx.load(str(zoo.model_path(name)))
    exe = gx.compile(gx.import_model(proto), target="cpu", level=3)
    out = exe.run(zoo.dummy_inputs(proto))
    rtol, atol = zoo.MODELS[name]
    for n, want in zip(exe.output_names, zoo.expected_outputs(name, proto)):
        np.testing.assert_allclose(out[n], want, rtol=rtol, atol=atol)
