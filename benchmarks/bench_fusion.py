"""Each O2 fusion pass off and on: cpu latency of the light zoo models at the cpu default
level (O3: the fusions, then channels-last layout and memory planning) with every fusion,
and with one fusion pass switched off at a time, against onnxruntime in the same run
(O1 and O2 are shown too).  A fusion that is on by default should help or be neutral.

    python benchmarks/bench_fusion.py [--models resnet50 squeezenet] [--runs 7] [--level 3]
"""
from __future__ import annotations

import argparse

import onnx

import galaxir as gx
from galaxir.testing import zoo
from galaxir.testing.timing import median_ms

FUSIONS = ["fuse-recognize", "fold-batchnorm", "fuse-bias", "fuse-activation", "fuse-elementwise"]


def latency(module, feeds, runs: int) -> float:
    exe = gx.compile(module, target="cpu", level=0)
    return median_ms(lambda: exe.run(feeds), runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="*", default=["resnet50", "squeezenet", "inception_v1", "shufflenet"])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--level", type=int, default=3, help="level the fusions are switched off at")
    a = p.parse_args(argv)
    import onnxruntime as ort
    lv = f"O{a.level}"
    head = (f"| model | ort ms | O1 | O2 | {lv} (all fusions) | "
            + " | ".join(f"{lv} without {f}" for f in FUSIONS) + " |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for name in a.models:
        proto = onnx.load(str(zoo.model_path(name)))
        feeds = zoo.dummy_inputs(proto)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        t_ort = median_ms(lambda: sess.run(None, feeds), a.runs)
        m = gx.import_model(proto)
        cells = [latency(gx.optimize(m, level=1, target="cpu"), feeds, a.runs),
                 latency(gx.optimize(m, level=2, target="cpu"), feeds, a.runs),
                 latency(gx.optimize(m, level=a.level, target="cpu"), feeds, a.runs)]
        for f in FUSIONS:
            cells.append(latency(gx.optimize(m, level=a.level, target="cpu", disable_passes=[f]),
                                 feeds, a.runs))
        print(f"| {name} | {t_ort:.1f} | " + " | ".join(f"{c:.1f} ({c / t_ort:.2f}x)" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
