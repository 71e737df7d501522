"""Native int8 kernels against onnxruntime, in the same process, interleaved.

Cases: QLinearMatMul and QLinearConv single ops (galaxir int8 vs galaxir float32 of the
same shape vs onnxruntime), and two QDQ models made by onnxruntime's ``quantize_static``
(random calibration): a small ResNet-like CNN and a matmul-heavy MLP, run by galaxir
(one native segment of int8_conv / int8_matmul) and by onnxruntime.  Prints min and
median ratios galaxir / onnxruntime over blocks taken in turns.

    GALAXIR_NUM_THREADS=1 python benchmarks/bench_int8_kernels.py [--threads 1] [--reps 30]
    GALAXIR_CPU_VNNI=0 ...   # the AVX2 path
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np


def _block_ms(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) * 1e3 / n


def interleaved(fns: dict, reps: int, inner: int = 3) -> dict:
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            times[k].append(_block_ms(f, inner))
    return times


def _ort(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _single_ops(d):
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    rng = np.random.default_rng(0)
    out = []

    def save(name, nodes, x_info, y_info, inits):
        g = h.make_graph(nodes, name, [x_info], [y_info], inits)
        p = os.path.join(d, name + ".onnx")
        onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), p)
        return p

    def qparams(prefix, n=None):
        s = (rng.random(n) * 0.01 + 0.001).astype(np.float32) if n else np.array(0.02, np.float32)
        return [nh.from_array(s, prefix + "s"),
                nh.from_array(np.zeros(n, np.int8) if n else np.array(0, np.int8), prefix + "z")]

    for M, K, N in ((128, 768, 768), (1, 768, 3072)):
        w = rng.integers(-127, 128, (K, N)).astype(np.int8)
        inits = [nh.from_array(w, "w"), nh.from_array(np.array(0.02, np.float32), "xs"),
                 nh.from_array(np.array(128, np.uint8), "xz"), *qparams("w", N),
                 nh.from_array(np.array(0.5, np.float32), "ys"), nh.from_array(np.array(128, np.uint8), "yz")]
        p = save(f"qmatmul_{M}x{K}x{N}",
                 [h.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])],
                 h.make_tensor_value_info("x", T.UINT8, [M, K]), h.make_tensor_value_info("y", T.UINT8, [M, N]),
                 inits)
        wf = rng.standard_normal((K, N)).astype(np.float32)
        pf = save(f"fmatmul_{M}x{K}x{N}", [h.make_node("MatMul", ["x", "w"], ["y"])],
                  h.make_tensor_value_info("x", T.FLOAT, [M, K]), h.make_tensor_value_info("y", T.FLOAT, [M, N]),
                  [nh.from_array(wf, "w")])
        out.append((f"QLinearMatMul {M}x{K}x{N}", p, {"x": rng.integers(0, 256, (M, K)).astype(np.uint8)},
                    pf, {"x": rng.standard_normal((M, K)).astype(np.float32)}))
    C = 64
    w = rng.integers(-127, 128, (C, C, 3, 3)).astype(np.int8)
    inits = [nh.from_array(w, "w"), nh.from_array(np.array(0.02, np.float32), "xs"),
             nh.from_array(np.array(128, np.uint8), "xz"), *qparams("w", C),
             nh.from_array(np.array(0.5, np.float32), "ys"), nh.from_array(np.array(128, np.uint8), "yz")]
    att = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    p = save("qconv", [h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], **att)],
             h.make_tensor_value_info("x", T.UINT8, [1, C, 56, 56]),
             h.make_tensor_value_info("y", T.UINT8, [1, C, 56, 56]), inits)
    pf = save("fconv", [h.make_node("Conv", ["x", "w"], ["y"], **att)],
              h.make_tensor_value_info("x", T.FLOAT, [1, C, 56, 56]),
              h.make_tensor_value_info("y", T.FLOAT, [1, C, 56, 56]),
              [nh.from_array(rng.standard_normal((C, C, 3, 3)).astype(np.float32), "w")])
    out.append(("QLinearConv 64ch 56x56 3x3", p, {"x": rng.integers(0, 256, (1, C, 56, 56)).astype(np.uint8)},
                pf, {"x": rng.standard_normal((1, C, 56, 56)).astype(np.float32)}))
    return out


def _qdq_models(d):
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1 = torch.nn.Conv2d(c, c, 3, padding=1)
            self.c2 = torch.nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))) + x)

    class ResNetLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3)
            self.pool = torch.nn.MaxPool2d(3, 2, 1)
            self.blocks = torch.nn.Sequential(Block(64), Block(64))
            self.down = torch.nn.Conv2d(64, 128, 3, stride=2, padding=1)
            self.blocks2 = torch.nn.Sequential(Block(128), Block(128))
            self.fc = torch.nn.Linear(128, 100)

        def forward(self, x):
            x = self.pool(torch.relu(self.stem(x)))
            x = self.blocks2(torch.relu(self.down(self.blocks(x))))
            return self.fc(x.mean((2, 3)))

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.ReLU(),
                                         torch.nn.Linear(3072, 768), torch.nn.ReLU(),
                                         torch.nn.Linear(768, 768))

        def forward(self, x):
            return self.l(x)

    out = []
    for name, net, shape in (("ResNet-like CNN 1x3x112x112", ResNetLike(), (1, 3, 112, 112)),
                             ("MLP 64x768 (768-3072-768-768)", MLP(), (64, 768))):
        fp, qp = os.path.join(d, name[:3] + ".onnx"), os.path.join(d, name[:3] + ".q.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.eval(), torch.randn(*shape), fp, input_names=["x"],
                              output_names=["y"], dynamo=False)
        rng = np.random.default_rng(0)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)])

            def get_next(self):
                return next(self.it, None)

        quantize_static(fp, qp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        x = {"x": rng.standard_normal(shape).astype(np.float32)}
        out.append((name, qp, x, fp, x))
    return out


def _f16_conv(d):
    """The 64-channel 56x56 3x3 conv in float16 (galaxir f16 vs galaxir f32 vs onnxruntime
    f16)."""
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    rng = np.random.default_rng(0)
    paths = {}
    for name, dt, t in (("f16", np.float16, T.FLOAT16), ("f32", np.float32, T.FLOAT)):
        w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(dt)
        g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], name,
                         [h.make_tensor_value_info("x", t, [1, 64, 56, 56])],
                         [h.make_tensor_value_info("y", t, [1, 64, 56, 56])], [nh.from_array(w, "w")])
        paths[name] = os.path.join(d, name + ".onnx")
        onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), paths[name])
    x = rng.standard_normal((1, 64, 56, 56))
    return paths, {"x": x.astype(np.float16)}, {"x": x.astype(np.float32)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GALAXIR_NUM_THREADS", "1")))
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    os.environ["GALAXIR_NUM_THREADS"] = str(args.threads)
    import logging
    logging.getLogger().setLevel(logging.ERROR)
    import galaxir as gx
    from galaxir.backends.cpu import kernels_int8 as KI
    lanes = KI.int8_lanes()
    print(f"int8 path: {'VNNI' if KI.use_vnni(lanes) else 'AVX2'}, {lanes} lanes; "
          f"{args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as d:
        cases = _single_ops(d) + _qdq_models(d)
        print(f"{'case':34s} {'gx int8':>9s} {'ort int8':>9s} {'gx f32':>9s}  "
              f"{'int8/ort min':>12s} {'median':>7s}  {'int8/f32':>8s}")
        for name, qp, qx, fp, fx in cases:
            exe = gx.compile(qp, target="cpu", num_threads=args.threads)
            assert not exe.fallback_ops, exe.report()
            fexe = gx.compile(fp, target="cpu", num_threads=args.threads)
            sess = _ort(qp, args.threads)
            t = interleaved({"gx": lambda: exe(**qx), "ort": lambda: sess.run(None, qx),
                             "f32": lambda: fexe(**fx)}, args.reps)
            g, o, f = (np.array(t[k]) for k in ("gx", "ort", "f32"))
            r = g / o
            print(f"{name:34s} {np.median(g):8.3f}ms {np.median(o):8.3f}ms {np.median(f):8.3f}ms  "
                  f"{r.min():12.2f} {np.median(r):7.2f}  {np.median(g) / np.median(f):8.2f}")
        paths, x16, x32 = _f16_conv(d)
        e16 = gx.compile(paths["f16"], target="cpu", num_threads=args.threads)
        assert not e16.fallback_ops, e16.report()
        e32 = gx.compile(paths["f32"], target="cpu", num_threads=args.threads)
        s16 = _ort(paths["f16"], args.threads)
        t = interleaved({"g16": lambda: e16(**x16), "g32": lambda: e32(**x32),
                         "o16": lambda: s16.run(None, x16)}, args.reps)
        g16, g32, o16 = (np.array(t[k]) for k in ("g16", "g32", "o16"))
        print(f"f16 conv 64ch 56x56 3x3: galaxir f16 {np.median(g16):.3f}ms, galaxir f32 "
              f"{np.median(g32):.3f}ms, onnxruntime f16 {np.median(o16):.3f}ms; f16/f32 min "
              f"{(g16 / g32).min():.2f} median {np.median(g16 / g32):.2f}; f16 vs ort f16 "
              f"median {np.median(g16 / o16):.2f}")


if __name__ == "__main__":
    main()
