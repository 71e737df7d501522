"""Thread scaling of the cpu backend: one model compiled with num_threads=1 and with N
threads, timed in interleaved blocks (A, B, A, B, ...) in one process; prints min and
median of the per-block time ratios.  A quiet machine is needed for a meaningful figure.

    python benchmarks/bench_threads.py [--model resnet50] [--threads 2] [--blocks 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's galaxir

import galaxir as gx  # noqa: E402
from galaxir.backends.cpu.parallel import available_cores  # noqa: E402
from galaxir.testing import zoo  # noqa: E402


def _block(exe, feeds, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        exe.run(feeds)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", choices=sorted(zoo.MODELS))
    ap.add_argument("--threads", type=int, default=min(2, available_cores()))
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model = onnx.load(str(zoo.model_path(args.model)))
    feeds = zoo.dummy_inputs(model)
    m = gx.import_model(model)
    one = gx.compile(m, target="cpu", num_threads=1)
    many = gx.compile(m, target="cpu", num_threads=args.threads)
    for exe in (one, many):
        exe.run(feeds)
    t1, tn = [], []
    for _ in range(args.blocks):
        t1.append(_block(one, feeds, args.reps))
        tn.append(_block(many, feeds, args.reps))
    ratios = sorted(a / b for a, b in zip(t1, tn))
    print(f"{args.model}: cores available {available_cores()}; 1 thread min {min(t1) * 1e3:.1f} ms, "
          f"{args.threads} threads min {min(tn) * 1e3:.1f} ms; speed-up min-time "
          f"{min(t1) / min(tn):.2f}x, per-block ratio median {statistics.median(ratios):.2f}x "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
