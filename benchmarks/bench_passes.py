"""O1 on the light model zoo (op counts before/after, time, numerics), on densenet121
(time), and the greedy driver's scaling on synthetic chains of 1k/10k/100k ops.

    python benchmarks/bench_passes.py [--no-run] [--repeat 5]

Times are CPU seconds of this process (time.process_time), the median of --repeat runs, so
a busy machine inflates them less than wall time.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import numpy as np
import onnx

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor
from galaxir.passes import P, PassManager, Var, apply_patterns_greedily, optimize, pattern, pipeline_for
from galaxir.passes.bisect import _run, compare_outputs, random_inputs

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def cpu_time(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts)


def zoo(repeat: int, run: bool) -> None:
    print(f"{'model':<26}{'onnx nodes':>11}{'ops before':>11}{'ops after':>10}"
          f"{'compute ops':>12}{'constOfShape':>13}{'identity+dropout':>17}{'O1 ms':>8}  numerics")
    for path in sorted(glob.glob(os.path.join(LIGHT, "*.onnx"))):
        name = os.path.basename(path)[len("light_"):-5]
        nodes = len(onnx.load(path, load_external_data=False).graph.node)
        m = gx.import_model(path)
        o = optimize(m, 1)
        ms = cpu_time(lambda: optimize(m, 1), repeat) * 1e3
        c = o.op_counts()
        left = c.get("identity", 0) + c.get("dropout", 0)
        status = "-"
        if run:
            feeds = random_inputs(m, 0)
            why = compare_outputs(m.graph.output_names, _run(m, feeds), _run(o, feeds), 1e-3, 1e-4)
            status = "same" if why is None else f"DIFFERS: {why}"
        print(f"{name:<26}{nodes:>11}{m.num_ops:>11}{o.num_ops:>10}{o.num_ops - c.get('constant', 0):>12}{c.get('constant_of_shape', 0):>13}"
              f"{left:>17}{ms:>8.0f}  {status}")


def densenet(repeat: int) -> None:
    m = gx.import_model(os.path.join(LIGHT, "light_densenet121.onnx"))
    optimize(m, 1)  # warm up (kernel registry import)
    total = cpu_time(lambda: optimize(m, 1), repeat)
    clones = [m.clone() for _ in range(repeat)]
    it = iter(clones)
    pipe = cpu_time(lambda: PassManager(pipeline_for(1)).run(next(it)), repeat)
    print(f"\ndensenet121 (1746 ONNX nodes, {m.num_ops} ops): O1 pipeline {pipe * 1e3:.0f} ms, "
          f"optimize() incl. clone + final verify {total * 1e3:.0f} ms (CPU, median of {repeat})")


def chain(n: int):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 8))
    one = gb.constant(np.ones((), np.float32))
    v = x
    for i in range(n):
        v = gb.mul(v, one) if i % 10 == 0 else (gb.relu(v) if i % 2 else gb.neg(v))
    gb.output(v, "y")
    return gb.module()


def scaling(repeat: int) -> None:
    @pattern(P.mul(Var("x"), P.constant()))
    def mul_const(m):
        return None  # matched, declined: measures matching, not rewriting
    X = Var("x")

    @pattern(P.mul(X, gx.passes.Const(1)))
    def mul_one(m):
        return m.x
    print("\ndriver scaling on chains (every 10th op is x*1, removed):")
    print(f"{'ops':>8}{'rewrites':>10}{'visited':>10}{'ms':>9}{'us/op':>8}")
    for n in (1_000, 10_000, 100_000):
        mods = [chain(n) for _ in range(repeat)]
        it = iter(mods)
        stats = []
        t = cpu_time(lambda: stats.append(apply_patterns_greedily(next(it), [mul_one, mul_const])), repeat)
        st = stats[-1]
        print(f"{n:>8}{st.total:>10}{st.visited:>10}{t * 1e3:>9.1f}{t * 1e6 / n:>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-run", action="store_true", help="skip running models to compare numerics")
    a = ap.parse_args()
    zoo(a.repeat, not a.no_run)
    densenet(a.repeat)
    scaling(a.repeat)


if __name__ == "__main__":
    main()
