"""Memory plans of the cpu backend on the 9 light model-zoo CNNs, next to onnxruntime.

For each model: the cpu backend's arena (the static plan of galaxir/passes/memory.py, the
one the compiled code executes: liveness, in-place elementwise steps, greedy-by-size or
interval-colouring placement, validated), the naive sum of every intermediate in its own
buffer, the largest set of simultaneously-live buffers (a lower bound for any arena), and
onnxruntime's peak memory for the same model: the growth of the process's peak RSS from
just before the session is created to after one run, measured in a fresh subprocess
(it includes the weights onnxruntime materializes; galaxir's arena holds activations only,
so the weights are listed too).

    python benchmarks/bench_memory.py                   # markdown table on stdout
    python benchmarks/bench_memory.py --models resnet50 --compile   # plan of a real compile
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's galaxir
from galaxir.testing.timing import peak_rss_mb  # noqa: E402

MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512"]
MiB = 2.0 ** 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ort_child(model: str) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from galaxir.testing.zoo import dummy_inputs, model_path
    path = str(model_path(model))
    feeds = dummy_inputs(onnx.load(path))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    # warm the library up (kernel registries, thread pools) on a one-node model first, so
    # the growth measured below is this model's own
    h = onnx.helper
    tiny = h.make_model(h.make_graph([h.make_node("Relu", ["a"], ["b"])], "t",
                                     [h.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [4])],
                                     [h.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [4])]),
                        opset_imports=[h.make_opsetid("", 13)])
    warm = ort.InferenceSession(tiny.SerializeToString(), so, providers=["CPUExecutionProvider"])
    warm.run(None, {"a": np.zeros(4, np.float32)})
    before = _rss_bytes()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    after_init = peak_rss_mb() * MiB
    sess.run(None, feeds)
    peak = peak_rss_mb() * MiB
    return dict(ort_peak_growth=peak - before, ort_init_growth=after_init - before)


def galaxir_plan(model: str, compile_: bool) -> dict:
    import numpy as np
    import onnx

    import galaxir as gx
    from galaxir.backends.cpu.prepare import prepare, specialize
    from galaxir.backends.cpu.program import Specialization
    from galaxir.testing.zoo import dummy_inputs, model_path
    mp = onnx.load(str(model_path(model)))
    feeds = dummy_inputs(mp)
    if compile_:
        exe = gx.compile(mp, target="cpu")
        exe.run(feeds)
        rep = exe.memory_report()
        prepared = exe.prepared
    else:
        prepared = prepare(gx.import_model(mp))
        spec = Specialization.plan_only(specialize(prepared, {k: v.shape for k, v in feeds.items()}))
        rep = spec.plan.as_report()
    weights = sum(np.asarray(op.attrs["value"]).nbytes for op in prepared.walk()
                  if op.name == "constant")
    return dict(arena=rep["arena_bytes"], naive=rep["naive_bytes"],
                live=rep["largest_live_set_bytes"], inplace=rep["inplace_steps"],
                method=rep["method"], weights=weights)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--compile", action="store_true",
                    help="compile each model for real (slow: JIT) instead of planning only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(ort_child(args.child)))
        return
    print("| model | arena MiB | naive sum MiB | arena / naive | largest live set MiB | "
          "in-place steps | placement | weights MiB | onnxruntime peak growth MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for model in args.models:
        g = galaxir_plan(model, args.compile)
        try:
            out = subprocess.run([sys.executable, __file__, "--child", model], check=True,
                                 capture_output=True, text=True, timeout=600).stdout
            o = json.loads(out.strip().splitlines()[-1])
            ort_s = f"{o['ort_peak_growth'] / MiB:.1f}"
        except Exception as e:  # onnxruntime missing or failing: still report the plan
            ort_s = f"n/a ({type(e).__name__})"
        ratio = g["arena"] / g["naive"] if g["naive"] else 0.0
        ratios.append(ratio)
        print(f"| {model} | {g['arena'] / MiB:.1f} | {g['naive'] / MiB:.1f} | {100 * ratio:.1f}% | "
              f"{g['live'] / MiB:.1f} | {g['inplace']} | {g['method']} | {g['weights'] / MiB:.1f} |"
              f" {ort_s} |", flush=True)
    if ratios:
        print(f"\nmean arena / naive: {100 * sum(ratios) / len(ratios):.1f}%")


if __name__ == "__main__":
    main()
