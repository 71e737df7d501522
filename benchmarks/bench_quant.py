"""Quantization and 16-bit floats end to end: accuracy (SQNR against fp32) and latency of
galaxir's int8 (static QDQ, dynamic), f16 and bf16 models next to onnxruntime's fp32 and
its own quantize_static (QDQ, per channel, same calibration data and method) and
quantize_dynamic, in the same process.

Models: torchvision ResNet-18/50 and MobileNetV2 (random weights, batch-norm statistics
from seeded train-mode passes) and a BERT-style encoder from torch.nn.TransformerEncoder;
calibrated on 32 seeded inputs, evaluated on 16 others.  Latencies are medians of engines
taking turns (A, B, A, B...); ratios are against galaxir fp32 and onnxruntime's matching
engine.

    python benchmarks/bench_quant.py                          # every model, 2 threads
    python benchmarks/bench_quant.py --models resnet18 bert --runs 10 --cal 8 --eval 4
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "bert")


def build(name: str):
    """(torch module, example input, input shape) with seeded random weights."""
    import torch
    if name == "bert":
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True,
                                                 activation="gelu")
        model = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
        return model, (1, 128, 256)
    from galaxir.testing import modern
    model, (x,), _ = modern._vision(name)()
    return model, tuple(x.shape)


def export(model, shape, path):
    import torch
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False, do_constant_folding=True)


def sqnr(ref: list, got: list) -> float:
    s = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in ref)
    n = sum(float(np.sum((np.asarray(r, np.float64) - np.asarray(g, np.float64)) ** 2))
            for r, g in zip(ref, got))
    return math.inf if n == 0 else 10 * math.log10(s / n)


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_quantize(src, folder, cal, method):
    from onnxruntime import quantization as qz

    class Reader(qz.CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal)

        def get_next(self):
            return next(self.it, None)

    cm = {"minmax": qz.CalibrationMethod.MinMax, "percentile": qz.CalibrationMethod.Percentile,
          "entropy": qz.CalibrationMethod.Entropy}[method]
    pre = os.path.join(folder, "pre.onnx")
    try:
        qz.quant_pre_process(src, pre)
    except Exception:
        pre = src
    st, dy = os.path.join(folder, "ort_static.onnx"), os.path.join(folder, "ort_dynamic.onnx")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        qz.quantize_static(pre, st, Reader(), quant_format=qz.QuantFormat.QDQ, per_channel=True,
                           activation_type=qz.QuantType.QUInt8, weight_type=qz.QuantType.QInt8,
                           calibrate_method=cm)
        qz.quantize_dynamic(src, dy, weight_type=qz.QuantType.QInt8)
    return st, dy


def time_turns(fns: dict, x, runs: int, budget_s: float = 20.0) -> dict:
    """Median ms of each engine, the engines taking turns within every round; an engine
    that has spent ``budget_s`` (ops falling back to the numpy reference) stops after 3 runs."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f(x)
    for _ in range(runs):
        for k, f in fns.items():
            if len(times[k]) >= 3 and sum(times[k]) > 1e3 * budget_s:
                continue
            t = time.perf_counter()
            f(x)
            times[k].append(1e3 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def _forced_bf16_dot() -> bool:
    """Set GALAXIR_CPU_BF16DOT=1 for the next compile where the host has AVX512-BF16 but
    the vdpbf16ps GEMM is not its default (lower_bf16.use_bf16_dot)."""
    from galaxir.backends.cpu import jit
    from galaxir.backends.cpu.lower_bf16 import use_bf16_dot
    if "GALAXIR_CPU_BF16DOT" in os.environ or not jit.has_feature("avx512bf16") or use_bf16_dot():
        return False
    os.environ["GALAXIR_CPU_BF16DOT"] = "1"
    if use_bf16_dot():
        return True
    os.environ.pop("GALAXIR_CPU_BF16DOT")
    return False


def bench_model(name, args):
    import galaxir as gx
    model, shape = build(name)
    folder = tempfile.mkdtemp(prefix=f"bq_{name}_")
    src = os.path.join(folder, f"{name}.onnx")
    export(model, shape, src)
    rng = np.random.default_rng(10)
    cal = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(args.cal)]
    rng = np.random.default_rng(20)
    ev = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(args.eval)]
    m = gx.import_model(src)
    t = time.perf_counter()
    variants = {"gx fp32": m,
                "gx int8 static": gx.quantize(m, cal, method=args.method, progress=False, target="cpu"),
                "gx int8 dynamic": gx.quantize(m, None),
                "gx f16": gx.convert_float(m, "f16"),
                "gx bf16": gx.convert_float(m, "bf16")}
    prep_s = time.perf_counter() - t
    st, dy = ort_quantize(src, folder, cal, args.method)
    engines = {}
    for k, mod in variants.items():
        exe = gx.compile(mod, target="cpu", num_threads=args.threads)
        engines[k] = (lambda e: lambda f: e.run(f)["y"])(exe)
    if _forced_bf16_dot():   # bf16 products on vdpbf16ps even where it is not the default
        exe = gx.compile(variants["gx bf16"], target="cpu", num_threads=args.threads)
        os.environ.pop("GALAXIR_CPU_BF16DOT")
        engines["gx bf16 vdpbf16ps"] = (lambda e: lambda f: e.run(f)["y"])(exe)
    for k, path in (("ort fp32", src), ("ort int8 static", st), ("ort int8 dynamic", dy)):
        s = ort_session(path, args.threads)
        engines[k] = (lambda s: lambda f: s.run(None, f)[0])(s)
    outs = {k: [f(e) for e in ev] for k, f in engines.items()}
    ref = outs["gx fp32"]
    ms = time_turns(engines, ev[0], args.runs)
    print(f"\n{name} (input {shape}; galaxir quantize/convert {prep_s:.1f} s; {args.threads} threads)")
    print(f"  {'engine':<18}{'SQNR dB':>9}{'ms':>10}{'/gx fp32':>10}{'/ort same':>11}")
    same = {"gx fp32": "ort fp32", "gx int8 static": "ort int8 static",
            "gx int8 dynamic": "ort int8 dynamic"}
    for k in engines:
        s = sqnr(ref, outs[k])
        r_ort = f"{ms[k] / ms[same[k]]:>11.2f}" if k in same else " " * 11
        print(f"  {k:<18}{s:>9.1f}{ms[k]:>10.2f}{ms[k] / ms['gx fp32']:>10.2f}{r_ort}")
    d = sqnr(ref, outs["gx int8 static"]) - sqnr(ref, outs["ort int8 static"])
    print(f"  static SQNR galaxir - onnxruntime: {d:+.1f} dB (target >= -1 dB)")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"])
    p.add_argument("--cal", type=int, default=32, help="calibration inputs")
    p.add_argument("--eval", type=int, default=16, help="evaluation inputs")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from galaxir.testing import modern
    why = modern.available("mobilenet_v3_small")
    if why:
        raise SystemExit(f"cannot build the models: {why}")
    for name in args.models:
        bench_model(name, args)


if __name__ == "__main__":
    main()
