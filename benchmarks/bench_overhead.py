"""Per-call latency of tiny models, galaxir cpu against onnxruntime, as ratios: where a
call's fixed cost (input validation, binding, the call into native code, output copies)
is all there is.

- ``exp32`` / ``exp64k``: one Exp on 32 / 65536 floats (the latter: the fixed cost beside
  a 256 KiB kernel, its output handed over without a copy);
- ``chain1``: one op; ``chain50``: 50 ops that do not fuse (softmax and add: 50 native kernels,
  25 constants; galaxir/testing/tiny.py);
- ``control_flow``: an If on a constant condition and a Loop of 4 iterations with a scan
  output (unrolled at O1, so one native segment); ``control_flow_dynamic``: the same
  loop stopped by a data-dependent condition (stays a loop, runs on the numpy reference).

Both engines run the same ONNX model on one thread (``--threads``), taking turns: each
round times ``--calls`` calls of each; the ratio is galaxir's time over onnxruntime's,
reported for the best round and the median round.

    python benchmarks/bench_overhead.py [--rounds 30] [--calls 200] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import galaxir as gx
from galaxir.testing.tiny import chain_model, control_flow_model, unary_model


def models():
    return {
        "exp32": (unary_model("Exp", 32), (32,)),
        "exp64k": (unary_model("Exp", 65536), (65536,)),
        "chain1": (chain_model(1), (4, 8)),
        "chain50": (chain_model(50), (4, 8)),
        "control_flow": (control_flow_model(4), (2, 8)),
        "control_flow_dynamic": (control_flow_model(4, stop_below=-1e9), (2, 8)),
    }


def per_call_us(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e6 * (time.perf_counter() - t) / calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="*", default=None)
    a = p.parse_args(argv)
    import onnxruntime as ort
    print(f"threads: {a.threads}; {a.rounds} rounds of {a.calls} calls, taking turns")
    print("| model | galaxir us (best / median) | onnxruntime us (best / median) | "
          "ratio best | ratio median | native segments | fallback ops |")
    print("|---|---|---|---|---|---|---|")
    for name, (proto, shape) in models().items():
        if a.models and name not in a.models:
            continue
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        exe = gx.compile(proto, target="cpu", num_threads=a.threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        ours_fn, theirs_fn = (lambda: exe(x)), (lambda: sess.run(None, {"x": x}))
        for g, t in zip(ours_fn(), theirs_fn()):
            np.testing.assert_allclose(g, t, rtol=1e-5, atol=1e-6)
        ours, theirs, ratios = [], [], []
        for _ in range(a.rounds):
            ours.append(per_call_us(ours_fn, a.calls))
            theirs.append(per_call_us(theirs_fn, a.calls))
            ratios.append(ours[-1] / theirs[-1])
        print(f"| {name} | {min(ours):.1f} / {statistics.median(ours):.1f} | "
              f"{min(theirs):.1f} / {statistics.median(theirs):.1f} | "
              f"{min(ours) / min(theirs):.2f} | {statistics.median(ratios):.2f} | "
              f"{len(exe.last.segments)} | {len(exe.fallback_ops)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
