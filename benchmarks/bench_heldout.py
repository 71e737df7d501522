"""Generalization check: galaxir cpu against onnxruntime on architectures that are NOT in
the tuned benchmark set (``galaxir.testing.modern.HELDOUT``), so that a speedup fitted to
``modern.MODELS`` shows up as such.  For each model: max abs difference of the outputs,
the ops left on the numpy reference, and the latency ratio at ONE thread in thread CPU
time (``time.thread_time``; steady on a loaded machine), the two engines alternating
``--runs`` times in one process; min and median of the per-run ratio are given.

    python benchmarks/bench_heldout.py                    # the whole held-out set
    python benchmarks/bench_heldout.py --models llama t5_encoder --runs 20
    python benchmarks/bench_heldout.py --models resnet18 --profile   # + top op kinds

Each model runs in its own process (export, compile at level 3, time).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's galaxir


def child(name: str, runs: int, profile: bool) -> dict:
    os.environ["GALAXIR_NUM_THREADS"] = "1"
    import numpy as np
    import onnxruntime as ort
    import galaxir as gx
    from galaxir.testing import modern
    tmp = tempfile.mkdtemp(prefix="galaxir_heldout_")
    path, feeds = modern.export(name, tmp)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    exe = gx.compile(gx.optimize(path, level=3, target="cpu"), target="cpu")
    compile_s = time.perf_counter() - t0
    want = sess.run(None, feeds)
    got = exe.run(feeds)
    got = list(got.values()) if isinstance(got, dict) else list(got)
    diff = max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64))))
               for g, w in zip(got, want))
    scale = max(float(np.max(np.abs(w))) for w in want)
    ratios, tg, to = [], [], []
    for _ in range(runs):
        t = time.thread_time()
        exe.run(feeds)
        a = time.thread_time() - t
        t = time.thread_time()
        sess.run(None, feeds)
        b = time.thread_time() - t
        tg.append(a)
        to.append(b)
        ratios.append(a / b)
    out = dict(model=name, max_diff=diff, out_scale=scale, fallback=sorted(set(exe.fallback_ops)),
               compile_s=compile_s, galaxir_ms=statistics.median(tg) * 1e3,
               ort_ms=statistics.median(to) * 1e3, ratio_median=statistics.median(ratios),
               ratio_min=min(ratios), ratio_of_mins=min(tg) / min(to))
    if profile:
        prof = exe.profile(feeds, runs=3, clock="cpu")
        out["by_kind"] = [f"{r['kind']} x{r['count']}: {r['total_us'] / 1e3:.2f} ms "
                          f"({100 * r['share']:.0f}%)" for r in prof.by_kind()[:10]]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.runs, a.profile)))
        return
    from galaxir.testing import modern
    names = a.models or list(modern.HELDOUT)
    rows = []
    for name in names:
        why = modern.available(name)
        if why:
            print(f"# skipped {name}: {why}", file=sys.stderr, flush=True)
            continue
        args = [sys.executable, __file__, "--child", name, "--runs", str(a.runs)]
        out = subprocess.run(args + (["--profile"] if a.profile else []),
                             capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            err = (out.stderr.strip().splitlines() or ["?"])[-1]
            print(f"# {name} failed: {err[:300]}", file=sys.stderr, flush=True)
            rows.append(dict(model=name, error=err[:300]))
            continue
        r = json.loads(lines[-1])
        rows.append(r)
        print(f"# {json.dumps(r)}", file=sys.stderr, flush=True)
    print("threads: 1 per engine; thread CPU time; engines alternating in one process\n")
    print("| model | max abs diff (output scale) | ops on numpy | galaxir ms | ort ms | "
          "ratio median | ratio of mins |")
    print("|---|---|---|---|---|---|---|")
    good = []
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | failed: {r['error'][:80]} | | | | | |")
            continue
        good.append(r["ratio_median"])
        print(f"| {r['model']} | {r['max_diff']:.2g} ({r['out_scale']:.2g}) | "
              f"{', '.join(r['fallback']) or '-'} | {r['galaxir_ms']:.1f} | {r['ort_ms']:.1f} | "
              f"{r['ratio_median']:.2f} | {r['ratio_of_mins']:.2f} |")
    if good:
        gm = math.exp(sum(map(math.log, good)) / len(good))
        print(f"\ngeometric mean of the median ratios: {gm:.2f}; worst {max(good):.2f}")


if __name__ == "__main__":
    main()
