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


ZOO_EXPORTS = [(n, 2) for n in ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet",
                                 "squeezenet", "bvlc_alexnet", "zfnet512", "vgg19")]
ZOO_EXPORTS += [(n, 3) for n in ("resnet50", "shufflenet", "bvlc_alexnet")]  # channels-last ops


@pytest.mark.slow
@pytest.mark.parametrize("name,level", ZOO_EXPORTS)
def test_zoo_models_export_after_o2_and_match(name, level):
    """O2's fused ops export through their decompositions, O3's channels-last ops between
    Transposes; onnxruntime runs the export with random weights to the same outputs as
    galaxir's numpy backend."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    from galaxir.testing import zoo
    proto = onnx.load(str(zoo.model_path(name)))
    if name in ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet"):
        proto = zoo.with_random_weights(proto)
    m = gx.optimize(gx.import_model(proto), level=level, target="cpu" if level == 3 else None)
    assert any(op.name.startswith(("fused_", "linear")) for op in m.walk())
    assert (level == 3) == any(op.attrs.get("layout") == "NHWC" for op in m.walk())
    exported = export_onnx(m)
    onnx.checker.check_model(exported)
    rng = np.random.default_rng(0)
    feeds = {k: rng.random(v.shape, dtype=np.float32) for k, v in zoo.dummy_inputs(proto).items()}
    want = gx.compile(m, target="numpy", level=0).run(feeds)
    sess = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
    for n, g in zip(m.graph.output_names, got):
        np.testing.assert_allclose(g, want[n], rtol=1e-3, atol=1e-6)


def test_channels_last_ops_export_between_transposes():
    """After O3 on the cpu target the convs, pools, lrn, batch norm and the residual conv
    run channels-last (``layout="NHWC"``); each exports as its ONNX form between two
    Transposes, passes the checker and runs in onnxruntime to the reference's outputs."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    from galaxir.ir import GraphBuilder, tensor
    rng = np.random.default_rng(3)

    def const(*shape):
        return gb.constant(rng.standard_normal(shape).astype(np.float32) * 0.3)

    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 3, 15, 13))
    y = gb.relu(gb.conv(x, const(8, 3, 3, 3), const(8), pads=[1, 1, 1, 1]))
    y = gb.lrn(y, size=3)
    y = gb.create("max_pool", y, num_results=1, kernel_shape=[2, 2], strides=[2, 2]).results[0]
    scale = gb.input("scale", tensor("f32", 8))  # runtime statistics: batch_norm keeps its op
    y = gb.batch_norm(y, scale, const(8), const(8), gb.constant(np.ones(8, np.float32)))
    z = gb.relu(gb.conv(y, const(8, 8, 3, 3), pads=[1, 1, 1, 1]))
    y = gb.relu(gb.add(gb.conv(z, const(8, 8, 1, 1), const(8)), y))  # residual: fused_conv with z
    gb.output(gb.create("global_average_pool", y, num_results=1).results[0], "y")
    m = gx.optimize(gb.module(), level=3, target="cpu", layout="NHWC")
    nhwc = {op.name for op in m.walk() if op.attrs.get("layout") == "NHWC"}
    assert {"fused_conv", "lrn", "max_pool", "batch_norm", "global_average_pool"} <= nhwc, nhwc
    exported = export_onnx(m)
    onnx.checker.check_model(exported)
    assert all(a.name != "layout" for n in exported.graph.node for a in n.attribute)
    feeds = {"x": rng.standard_normal((2, 3, 15, 13)).astype(np.float32),
             "scale": rng.random(8).astype(np.float32) + 0.5}
    want = gx.compile(m, target="numpy", level=0).run(feeds)
    sess = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, feeds)
    np.testing.assert_allclose(got, want["y"], rtol=1e-4, atol=1e-5)
