"""Single convolutions on the cpu backend against onnxruntime, in one process: depthwise
(ConvNeXt 7x7, MobileNet/EfficientNet 3x3 and 5x5), grouped (RegNet, ResNeXt) and
transposed (DCGAN) convs, each a one-node ONNX model built with onnx.helper.

    python benchmarks/bench_conv_ops.py                  # 1 and 2 threads, markdown table
    python benchmarks/bench_conv_ops.py --threads 2 --runs 100 --cases dw7_convnext
    python benchmarks/bench_conv_ops.py --from-model efficientnet_b0.onnx --threads 1

``--nchw-level 2`` compiles the plain NCHW model at O2 (no layout pass): the NCHW kernels.
``--from-model`` times instead every distinct depthwise / narrow-group conv of an ONNX
model (as galaxir's O3 pipeline sees it, batch norms folded), one case each, and the sum.

onnxruntime runs the NCHW model.  galaxir runs, for the convs, the same model between an
NHWC input transpose and an NHWC output transpose, which its O3 layout pass cancels: what
is timed is the channels-last kernel alone, the way it runs inside a channels-last network
(``gx NHWC``); ``gx NCHW`` is the plain model at O3 (the two transposes at the boundary
included).  conv_transpose has no channels-last form: both engines run NCHW.  The engines
take turns call by call; the table gives median and min of the per-call time ratio
galaxir / onnxruntime over ``--runs`` calls (after 5 warm-up calls each).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

# the galaxir of this checkout, not an installed one
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (op, C, H, W, M, kernel, stride, group, extra attrs)
CASES = {
    "dw7_convnext": ("Conv", 96, 56, 56, 96, 7, 1, 96, {}),
    "dw3_mobilenet": ("Conv", 144, 56, 56, 144, 3, 1, 144, {}),
    "dw3s2_mobilenet": ("Conv", 144, 56, 56, 144, 3, 2, 144, {}),
    "dw5_efficientnet": ("Conv", 240, 28, 28, 240, 5, 1, 240, {}),
    "dw3_dilated": ("Conv", 128, 28, 28, 128, 3, 1, 128, {"dilations": [2, 2]}),
    "grouped_regnet": ("Conv", 104, 28, 28, 104, 3, 1, 13, {}),
    "grouped_resnext": ("Conv", 128, 56, 56, 128, 3, 1, 32, {}),
    # dense kxk convs (the 6 x 32 tile): ResNet-50's 3x3 stages and stems with 3 channels
    "conv3_resnet56": ("Conv", 64, 56, 56, 64, 3, 1, 1, {}),
    "conv3_resnet28": ("Conv", 128, 28, 28, 128, 3, 1, 1, {}),
    "conv3_resnet14": ("Conv", 256, 14, 14, 256, 3, 1, 1, {}),
    "conv3_resnet7": ("Conv", 512, 7, 7, 512, 3, 1, 1, {}),
    "conv3s2_resnet": ("Conv", 128, 56, 56, 128, 3, 2, 1, {}),
    "conv1s2_resnet": ("Conv", 512, 28, 28, 1024, 1, 2, 1, {}),
    "stem7s2_resnet": ("Conv", 3, 224, 224, 64, 7, 2, 1, {}),
    "stem3s2_squeezenet": ("Conv", 3, 224, 224, 64, 3, 2, 1, {"pads": [0, 0, 0, 0]}),
    # the five layers of the DCGAN generator (nz 100, ngf 64)
    "convT_dcgan1": ("ConvTranspose", 100, 1, 1, 512, 4, 1, 1, {"pads": [0, 0, 0, 0]}),
    "convT_dcgan2": ("ConvTranspose", 512, 4, 4, 256, 4, 2, 1, {}),
    "convT_dcgan3": ("ConvTranspose", 256, 8, 8, 128, 4, 2, 1, {}),
    "convT_dcgan4": ("ConvTranspose", 128, 16, 16, 64, 4, 2, 1, {}),
    "convT_dcgan5": ("ConvTranspose", 64, 32, 32, 3, 4, 2, 1, {}),
}


def model_cases(path: str) -> list[str]:
    """Add to CASES every distinct depthwise or grouped conv of ``path`` (as run at O3)."""
    import galaxir as gx
    from galaxir.backends.cpu.kernels_depthwise import DepthwiseNhwc
    from galaxir.backends.cpu.kernels_nhwc import ConvNhwc
    from galaxir.backends.cpu.lower import NativeStep, lower_module
    from galaxir.backends.cpu.prepare import prepare, specialize
    m = gx.optimize(gx.import_model(path), level=3, target="cpu")
    shapes = {v.name: tuple(v.type.shape) for v in m.graph.inputs}
    names = []
    for st in lower_module(specialize(prepare(m), shapes)):
        k = st.kernel if isinstance(st, NativeStep) else None
        if isinstance(k, ConvNhwc) and k.group > 1:
            cg, M, g = k.C // k.group, k.M, k.group
        elif isinstance(k, DepthwiseNhwc):
            cg, M, g = k.cg, k.C, k.C // k.cg
        else:
            continue
        pb = (k.OH - 1) * k.sh + (k.kh - 1) * k.dh + 1 - k.H - k.pt
        pr = (k.OW - 1) * k.sw + (k.kw - 1) * k.dw + 1 - k.W - k.pl
        extra = {"dilations": [k.dh, k.dw], "pads": [k.pt, k.pl, max(pb, 0), max(pr, 0)]}
        name = f"{k.C}x{k.H}x{k.W}_k{k.kh}s{k.sh}d{k.dh}_cg{cg}"
        if name not in CASES:
            CASES[name] = ("Conv", k.C, k.H, k.W, M, k.kh, k.sh, g, extra)
            names.append(name)
    return names


def build(case: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    op, C, H, W, M, k, s, g, extra = CASES[case]
    rng = np.random.default_rng(0)
    d = extra.get("dilations", [1, 1])[0]
    if op == "Conv":
        w = rng.standard_normal((M, C // g, k, k)).astype(np.float32) * 0.1
        p = d * (k - 1) // 2
        attrs = dict(group=g, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        attrs.update(extra)
    else:
        w = rng.standard_normal((C, M // g, k, k)).astype(np.float32) * 0.1
        attrs = dict(group=g, kernel_shape=[k, k], strides=[s, s], pads=[1] * 4)
        attrs.update(extra)
    bias = rng.standard_normal(M).astype(np.float32)
    node = helper.make_node(op, ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def channels_last(model):
    """The model between transposes: NHWC in, NHWC out."""
    import onnx
    from onnx import TensorProto, helper
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    n, c, h, w = (d.dim_value for d in g.input[0].type.tensor_type.shape.dim)
    g.node[0].input[0], g.node[0].output[0] = "x_nchw", "y_nchw"
    g.node.insert(0, helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
    g.node.append(helper.make_node("Transpose", ["y_nchw"], ["y"], perm=[0, 2, 3, 1]))
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, h, w, c]))
    return m


def measure(case: str, threads: int, runs: int, folder: str, nchw_level: int | None = None) -> dict:
    import onnx
    import onnxruntime as ort
    import galaxir as gx
    model = build(case)
    path = os.path.join(folder, f"{case}.onnx")
    onnx.save(model, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(
        [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    ref = sess.run(None, {"x": x})[0]
    engines = {"gx NCHW": (gx.compile(path, target="cpu", level=nchw_level, num_threads=threads),
                           x, False)}
    if model.graph.node[0].op_type == "Conv":
        last = os.path.join(folder, f"{case}_nhwc.onnx")
        onnx.save(channels_last(model), last)
        engines["gx NHWC"] = (gx.compile(last, target="cpu", num_threads=threads),
                              np.ascontiguousarray(x.transpose(0, 2, 3, 1)), True)
    out = {}
    for name, (exe, xin, nhwc) in engines.items():
        got = np.asarray(exe(xin)[0])
        got = got.transpose(0, 3, 1, 2) if nhwc else got
        err = float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-30))
        ratios, tg, to = [], [], []
        for k in range(runs + 5):
            t0 = time.perf_counter()
            sess.run(None, {"x": x})
            t1 = time.perf_counter()
            exe(xin)
            t2 = time.perf_counter()
            if k >= 5:
                to.append(t1 - t0)
                tg.append(t2 - t1)
                ratios.append((t2 - t1) / (t1 - t0))
        out[name] = dict(gx_ms=statistics.median(tg) * 1e3, ort_ms=statistics.median(to) * 1e3,
                         median=statistics.median(ratios), min=min(tg) / min(to), err=err)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--from-model", help="time the depthwise/grouped convs of this ONNX model")
    ap.add_argument("--nchw-level", type=int, default=None,
                    help="optimization level of the plain NCHW model (2: no layout pass, "
                         "the NCHW kernels; default: the cpu default, O3)")
    a = ap.parse_args(argv)
    if a.from_model:
        a.cases = model_cases(a.from_model)
    print("| case | threads | engine | galaxir ms | onnxruntime ms | ratio median "
          "| ratio of mins | rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for threads in a.threads:
            total: dict = {}
            for case in a.cases:
                for eng, r in measure(case, threads, a.runs, folder, a.nchw_level).items():
                    print(f"| {case} | {threads} | {eng} | {r['gx_ms']:.3f} | {r['ort_ms']:.3f} | "
                          f"{r['median']:.2f} | {r['min']:.2f} | {r['err']:.1e} |", flush=True)
                    t = total.setdefault(eng, [0.0, 0.0])
                    t[0] += r["gx_ms"]
                    t[1] += r["ort_ms"]
            for eng, (g, o) in total.items():
                print(f"| all | {threads} | {eng} | {g:.3f} | {o:.3f} | {g / o:.2f} (sum) | | |")


if __name__ == "__main__":
    main()
