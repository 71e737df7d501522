"""galaxir cuda vs PyTorch eager vs torch.compile on the same GPU: ResNet-50 and a
BERT-style encoder (galaxir/testing/cuda_models.py, plain torch, seeded random weights),
batch 1 and 32, float32 and float16.  Inputs and outputs stay on the device for every
engine (galaxir gets torch CUDA tensors through DLPack), so the times are the models', not
the copies'.  Each time is the median of ``--runs`` runs measured with CUDA events after
``--warmup`` runs (galaxir's second run captures its CUDA graph); engines take turns.

    PYTHONPATH=. python benchmarks/bench_cuda.py                   # everything (~3 min on an H100)
    PYTHONPATH=. python benchmarks/bench_cuda.py --models bert --batches 32 --dtypes float16
    PYTHONPATH=. python benchmarks/bench_cuda.py --no-compile      # skip torch.compile
    PYTHONPATH=. python benchmarks/bench_cuda.py --compile-batches 1 32   # torch.compile at both

Prints a markdown table: milliseconds per run, and galaxir / eager (<= 1.0 is the target
for ResNet-50 and BERT at batch 32 in float16).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def _time(fn, torch, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["resnet50", "bert"])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float16"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile-batches", nargs="*", type=int, default=[32],
                    help="batch sizes timed with torch.compile too (each costs a compile)")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("bench_cuda: this torch build sees no CUDA device; nothing to time")
        return 1
    import galaxir as gx
    from galaxir.testing import cuda_models as cm
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print("| model | batch | dtype | galaxir ms | eager ms | torch.compile ms | galaxir/eager | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for dtype in args.dtypes:
            model = cm.build(name, dtype)
            for batch in args.batches:
                ins = cm.inputs(name, batch, dtype)
                t0 = time.perf_counter()
                exe = gx.compile(gx.import_model(model, example_inputs=ins), target="cuda")
                dev_ins = tuple(x.cuda() for x in ins)
                exe(*dev_ins)
                ctime = time.perf_counter() - t0
                tm = model.cuda()
                rows = {}
                with torch.no_grad():
                    engines = {"galaxir": lambda: exe(*dev_ins), "eager": lambda: tm(*dev_ins)}
                    if not args.no_compile and batch in args.compile_batches:
                        try:
                            comp = torch.compile(tm)
                            comp(*dev_ins)
                            engines["compile"] = lambda: comp(*dev_ins)
                        except Exception as e:  # no triton, an unsupported op: say so
                            print(f"torch.compile unavailable for {name}: {type(e).__name__}: {e}",
                                  file=sys.stderr)
                    for key, fn in engines.items():  # a first pass, then the timed one in turn
                        _time(fn, torch, 2, args.warmup)
                    for key, fn in engines.items():
                        rows[key] = _time(fn, torch, args.runs, 0)
                g, e = rows["galaxir"], rows["eager"]
                c = rows.get("compile")
                print(f"| {name} | {batch} | {dtype} | {g:.3f} | {e:.3f} | "
                      f"{'-' if c is None else f'{c:.3f}'} | {g / e:.2f} | {ctime:.1f} |", flush=True)
                model = model.cpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
