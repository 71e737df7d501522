"""Each O2 fusion pass off and on: cpu latency of the light zoo models at the cpu default
level (O3: the fusions, then channels-last layout and memory planning) with every fusion,
and with one fusion pass switched off at a time, against onnxruntime in the same run
(O1 and O2 are shown too).  A fusion that is on by default should help or be neutral.

Every variant is compiled first; then they are timed taking turns, ``--rounds`` times
``--runs`` runs each, and each cell is the median over the rounds of the round medians, so
a burst of load on this shared machine slows all the variants of a model alike.

    python benchmarks/bench_fusion.py [--models resnet50 squeezenet] [--runs 7] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics

import onnx

import galaxir as gx
from galaxir.testing import zoo
from galaxir.testing.timing import median_ms

FUSIONS = ["fuse-recognize", "fold-batchnorm", "fuse-bias", "fuse-activation", "fuse-elementwise"]


def taking_turns(fns: list, runs: int, rounds: int) -> list[float]:
    """Median over ``rounds`` of each function's median ms over ``runs`` runs, the
    functions taking turns every round."""
    per: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            per[i].append(median_ms(fn, runs))
    return [statistics.median(t) for t in per]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="*", default=["resnet50", "squeezenet", "inception_v1", "shufflenet"])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--rounds", type=int, default=5)
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
        m = gx.import_model(proto)
        variants = [gx.optimize(m, level=1, target="cpu"), gx.optimize(m, level=2, target="cpu"),
                    gx.optimize(m, level=a.level, target="cpu")]
        variants += [gx.optimize(m, level=a.level, target="cpu", disable_passes=[f]) for f in FUSIONS]
        exes = [gx.compile(v, target="cpu", level=0) for v in variants]
        fns = [lambda: sess.run(None, feeds)] + [lambda exe=exe: exe.run(feeds) for exe in exes]
        t_ort, *cells = taking_turns(fns, a.runs, a.rounds)
        print(f"| {name} | {t_ort:.1f} | " + " | ".join(f"{c:.1f} ({c / t_ort:.2f}x)" for c in cells) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
