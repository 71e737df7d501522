"""Dynamic shapes: transformer encoders exported with dynamic batch and sequence axes,
called with a fresh random (batch, seq) on every call, galaxir cpu against onnxruntime.

Models (galaxir/testing/dynamic_models.py, seeded random weights, exported on the fly):
``bert`` (a BERT-style encoder: embeddings, in-graph padding mask and position ids, reshape
targets computed from shapes) and ``torch_encoder`` (``torch.nn.TransformerEncoder``),
each with the TorchScript and the dynamo exporter where that exporter can export it here
(the dynamo exporter needs ``onnxscript``; TorchScript bakes nn.MultiheadAttention's
sizes, so ``torch_encoder`` is dynamo-only).  Both engines compile/load once, then take
turns on the same inputs: for each call a new (batch in 1-4, seq in 8-256), the first
call of that shape (galaxir compiles a new specialization), then a second, steady call.

Printed per model and exporter: total time of the first calls (what a server sees with
ever-new shapes) for each engine and the ratio; the median steady-call ratio; galaxir's
median cost of a new shape beyond its steady call, in wall time and in CPU time of the
calling thread (where the specialization is built: the figure to read on a loaded
machine); the native share of galaxir's ops (``exe.report()`` of the last shape).  A
dynamic model is compiled by ``gx.compile`` (counted in load).

    python benchmarks/bench_dynamic.py [--calls 30] [--threads 2] [--layers 4] [--hidden 256]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def _both(fn) -> tuple[float, float]:
    """(wall time, CPU time of the calling thread) of ``fn()``: a new shape's
    specialization is built on the calling thread, and on a loaded machine the wall clock
    also counts the waits for a core."""
    t, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t, time.thread_time() - c


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_one(name: str, exporter: str, args, tmp: str) -> dict | None:
    import onnxruntime as ort

    import galaxir as gx
    from galaxir.testing import dynamic_models as dm
    why = dm.available(name, exporter)
    if why:
        print(f"{name:14s} {exporter:11s} skipped: {why}")
        return None
    path = dm.export(name, os.path.join(tmp, f"{name}_{exporter}.onnx"), exporter,
                     layers=args.layers, hidden=args.hidden, heads=args.heads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    t_ort_load = time.perf_counter() - t0
    from galaxir.backends.cpu import dynreuse, jit
    load0 = jit.stats["compiled"]
    t0 = time.perf_counter()
    exe = gx.compile(gx.import_model(path), target="cpu")  # a dynamic model compiles here
    t_gx_load = time.perf_counter() - t0
    compiles0 = jit.stats["compiled"]
    traced0, reused0 = dynreuse.stats["traced"], dynreuse.stats["reused"]
    rng = np.random.default_rng(args.seed)
    first_gx, first_ort, steady_gx, steady_ort, extra, extra_cpu = [], [], [], [], [], []
    seen = set()
    model_compiles = 0
    for k in range(args.calls):
        b, s = int(rng.integers(1, 5)), int(rng.integers(8, 257))
        while (b, s) in seen:
            b, s = int(rng.integers(1, 5)), int(rng.integers(8, 257))
        seen.add((b, s))
        feeds = dm.feeds(b, s, seed=k)
        ins = [feeds[n] for n in exe.input_names]
        fg, fg_cpu = _both(lambda: exe(*ins))
        model_compiles += exe.cache_source == "compiled"
        fo = _timed(lambda: sess.run(None, feeds))
        sg, sg_cpu = _both(lambda: exe(*ins))
        extra_cpu.append(fg_cpu - sg_cpu)
        so_ = _timed(lambda: sess.run(None, feeds))
        if k == 0:   # correctness, once
            got = exe(*ins)[0]
            np.testing.assert_allclose(got, sess.run(None, feeds)[0], rtol=1e-3, atol=1e-3)
        first_gx.append(fg)
        first_ort.append(fo)
        steady_gx.append(sg)
        steady_ort.append(so_)
        extra.append(fg - sg)
    head = exe.report().splitlines()[0]
    llvm_runs = jit.stats["compiled"] - compiles0
    static = _static_vs_dynamic(gx, dm, path, exe, args) if args.static_check else None
    return dict(name=name, exporter=exporter, gx_total=sum(first_gx), ort_total=sum(first_ort),
                steady_ratio=statistics.median(g / o for g, o in zip(steady_gx, steady_ort)),
                steady_ratio_min=min(g / o for g, o in zip(steady_gx, steady_ort)),
                new_shape_ms=1e3 * statistics.median(extra),
                new_shape_cpu_ms=1e3 * statistics.median(extra_cpu), gx_load=t_gx_load,
                ort_load=t_ort_load, report=head, fallback=sorted(set(exe.fallback_ops)),
                llvm_runs=llvm_runs, model_compiles=model_compiles, static=static,
                load_llvm_runs=compiles0 - load0,
                traced=dynreuse.stats["traced"] - traced0, reused=dynreuse.stats["reused"] - reused0)


def _static_vs_dynamic(gx, dm, path, exe, args, reps: int = 15) -> list:
    """Steady time of the dynamic executable (shape values read at run time) against an
    executable compiled for that one static shape (constants baked in), interleaved:
    [(batch, seq, median ratio dynamic / static, min ratio)]."""
    from galaxir.ir.types import TensorType
    rows = []
    for b, s in [(1, 16), (2, 64), (4, 128), (4, 256)]:
        m = gx.import_model(path)
        for a in m.graph.inputs:
            a.type = TensorType(a.type.dtype, (b, s))
        st = gx.compile(m, target="cpu")
        ins = [dm.feeds(b, s)[n] for n in exe.input_names]
        exe(*ins), st(*ins)
        r = []
        for _ in range(reps):
            d = _timed(lambda: exe(*ins))
            t = _timed(lambda: st(*ins))
            r.append(d / t)
        rows.append((b, s, statistics.median(r), min(r)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=30, help="calls, each with a new shape")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--static-check", action="store_true",
                   help="also time the dynamic executable against per-shape static compiles")
    p.add_argument("--models", nargs="*", default=["bert", "torch_encoder"])
    p.add_argument("--exporters", nargs="*", default=["torchscript", "dynamo"])
    args = p.parse_args(argv)
    os.environ["GALAXIR_NUM_THREADS"] = str(args.threads)
    print(f"{args.calls} calls, each a new random (batch 1-4, seq 8-256); {args.threads} "
          f"thread(s); {args.layers} layers, hidden {args.hidden}, {args.heads} heads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for exporter in args.exporters:
                r = run_one(name, exporter, args, tmp)
                if r:
                    rows.append(r)
    if not rows:
        return 0
    print(f"\n{'model':14s} {'exporter':11s} {'galaxir s':>9s} {'ort s':>7s} {'ratio':>6s} "
          f"{'steady med':>10s} {'steady min':>10s} {'new shape ms':>12s} {'cpu ms':>7s}  native share")
    for r in rows:
        print(f"{r['name']:14s} {r['exporter']:11s} {r['gx_total']:9.2f} {r['ort_total']:7.2f} "
              f"{r['gx_total'] / r['ort_total']:6.2f} {r['steady_ratio']:10.2f} "
              f"{r['steady_ratio_min']:10.2f} {r['new_shape_ms']:12.0f} "
              f"{r['new_shape_cpu_ms']:7.1f}  {r['report']}")
        if r["fallback"]:
            print(f"{'':27s}on the reference: {', '.join(r['fallback'])}")
        print(f"{'':27s}load: galaxir {r['gx_load']:.2f} s ({r['load_llvm_runs']} LLVM runs), "
              f"onnxruntime {r['ort_load']:.2f} s; model compiles during the calls: "
              f"{r['model_compiles']} (LLVM runs, shared library kernels included: "
              f"{r['llvm_runs']}); new shapes that emitted no LLVM IR: {r['reused']}, "
              f"traced emissions: {r['traced']}")
        for b, s_, med, lo in r["static"] or []:
            print(f"{'':27s}steady {b}x{s_}: dynamic / static-shape compile {med:.2f} (min {lo:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
