"""Load time of .gxm (memory-mapped, zero-copy weights) against onnx.load of the same model
after constant folding, on the light zoo densenet121 and ResNet-50.

    python benchmarks/bench_load.py [--runs 15] [--models densenet121 resnet50]

Columns (median ms):
  onnx.load       parse the .onnx file (protobuf; copies the weights)
  onnx+import     onnx.load + gx.import_model: what a galaxir Module from ONNX costs
  gx.load         map the .gxm and check all of it (header and graph CRC32, every count,
                  index and tensor bound, dominance and scoping, op signatures); the ops are
                  built on the first access of the graph
  gx.load+build   gx.load, then build every op, each checked against its type rule (what
                  the first access of module.graph adds)

Two tables: "warm" repeats each load back to back (the steady state, as timeit measures);
"cold" evicts the CPU caches (writes 64 MB) before every call, as a process's first load
of a model sees them.  Each function runs in three blocks, alternating with the others, so
a busy machine slows them alike.  The cyclic garbage collector is off while timing (a
dropped module is cyclic garbage; collecting it inside the next timing would bill the wrong
call) and runs between blocks.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import galaxir as gx
from galaxir.frontends.onnx.exporter import export_onnx
from galaxir.testing import zoo

_SWEEP = np.zeros(64 << 20, np.uint8)


def measure_ms(fns: dict, runs: int, cold: bool, blocks: int = 3) -> dict[str, float]:
    """Median ms of each function over ``runs`` calls, in ``blocks`` alternating blocks."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    per_block = max(1, -(-runs // blocks))
    was = gc.isenabled()
    try:
        for _ in range(blocks):
            for k, f in fns.items():
                f()  # warm-up (imports, first-call caches), not timed
                gc.collect()
                gc.disable()
                for _ in range(per_block):
                    if cold:
                        np.add(_SWEEP, 1, out=_SWEEP)
                    t = time.perf_counter()
                    result = f()
                    times[k].append(time.perf_counter() - t)
                    del result
                gc.enable()
    finally:
        if not was:
            gc.disable()
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--models", nargs="*", default=["densenet121", "resnet50"])
    a = p.parse_args(argv)
    rows: dict[str, list[str]] = {"warm": [], "cold": []}
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            m = gx.optimize(gx.import_model(str(zoo.model_path(name))), level=1)
            weights = sum(op.attrs["value"].nbytes for op in m.walk() if op.name == "constant")
            gxm = Path(d) / f"{name}.gxm"
            onx = Path(d) / f"{name}.onnx"
            gx.save(m, gxm)
            onnx.save(export_onnx(m), str(onx))
            fns = {
                "onnx": lambda onx=onx: onnx.load(str(onx)),
                "import": lambda onx=onx: gx.import_model(onnx.load(str(onx))),
                "load": lambda gxm=gxm: gx.load(gxm),
                "build": lambda gxm=gxm: gx.load(gxm).graph,
            }
            for mode, lines in rows.items():
                t = measure_ms(fns, a.runs, cold=mode == "cold")
                lines.append(
                    f"| {name} | {m.num_ops} | {weights / 1e6:.1f} | {t['onnx']:.2f} | {t['import']:.1f} "
                    f"| {t['load']:.2f} | **{t['onnx'] / t['load']:.1f}x** | {t['build']:.1f} "
                    f"| {t['onnx'] / t['build']:.2f}x | {t['import'] / t['build']:.1f}x |")
    for mode, lines in rows.items():
        print(f"\n{mode}:\n")
        print("| model | ops | weights MB | onnx.load ms | onnx+import ms | gx.load ms | vs onnx.load "
              "| gx.load+build ms | vs onnx.load | vs onnx+import |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
