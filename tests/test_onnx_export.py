"""ONNX export: every node-suite case that galaxir passes exports to a model that
onnx.checker accepts, and wherever onnxruntime runs the original case it runs the export
to the same reference outputs."""
from pathlib import Path

import onnx
import pytest

import galaxir as gx
from galaxir.frontends.onnx.exporter import export_onnx
from galaxir.testing.onnx_conformance import (_normalize, assert_similar, data_inputs, load_cases,
                                               read_expected, run_case_onnxruntime)

EXPECTED = Path(__file__).parent / "data" / "onnx_expected_failures.txt"

#: exports that are right but that onnxruntime refuses, and why
ORT_REFUSES = {
    "test_affine_grid_2d_expanded": "the function feeds Range 1-element tensors; galaxir inlines the "
        "If whose condition is constant, so onnxruntime's checker now sees them and wants scalars",
    "test_affine_grid_2d_align_corners_expanded": "as test_affine_grid_2d_expanded",
    "test_loop16_seq_none": "the loop-carried value starts optional and the body makes it a sequence: "
        "galaxir types the result optional<seq>, onnxruntime wants seq",
}


def test_node_suite_exports_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    failing = read_expected(EXPECTED)
    problems, exported, compared = [], 0, 0
    for case in load_cases():
        if case.name in failing:
            continue
        try:
            proto = export_onnx(gx.import_model(case.model))
            onnx.checker.check_model(proto)
            exported += 1
        except Exception as e:
            problems.append(f"{case.name}: export failed: {type(e).__name__}: {e}"[:300])
            continue
        if case.name in ORT_REFUSES or not run_case_onnxruntime(case).ok:
            continue  # onnxruntime cannot run the original either (bfloat16 inputs, new ops...)
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            for inputs, ref in case.data_sets:
                feeds = dict(zip(data_inputs(case.model), [_normalize(x) for x in inputs]))
                assert_similar([_normalize(x) for x in ref], sess.run(None, feeds), case.rtol, case.atol)
            compared += 1
        except Exception as e:
            problems.append(f"{case.name}: onnxruntime on the export: {type(e).__name__}: {' '.join(str(e).split())}"[:300])
    print(f"\nexported {exported} cases, {compared} compared in onnxruntime")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])
