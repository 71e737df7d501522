"""The main job: compile a model-zoo network that the onnx package ships for the default
target, check it against references, and time it beside onnxruntime.

    python -m galaxir.demo [--model resnet50] [--target cpu] [--runs 10]

Two checks a user can believe:

1. the shipped file against the output shipped beside it (onnx's own test data).  These
   files keep the architecture but not the trained weights: every weight is a
   ConstantOfShape splat, so all 1000 logits come out equal and the "top-5 classes" would
   only be the last indexes.  The demo says so instead of printing them;
2. the same architecture with seeded random weights (``zoo.with_random_weights``), whose
   output varies from class to class, against onnxruntime (or, without it, galaxir's numpy
   reference): largest difference, whether both rank the same top-5, and the two times.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

import galaxir as gx
from galaxir.quiet import silence_third_party_warnings
from galaxir.testing import zoo


def _timed_in_blocks(fns: dict, runs: int, rounds: int = 3) -> dict[str, float]:
    """Median ms of each function over ``rounds`` blocks of ``runs`` calls, the engines
    taking turns block by block (so load on a shared machine hits both alike).  Not call by
    call: an engine's worker threads keep spinning for a while after a call returns and
    would take the cores from the other engine's next call (onnxruntime's pool does)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()    # warm-up, and the other engine's threads go quiet
            for _ in range(max(1, runs)):
                t = time.perf_counter()
                fn()
                times[k].append(1e3 * (time.perf_counter() - t))
    return {k: float(np.median(v)) for k, v in times.items()}


def _reference(proto: onnx.ModelProto):
    """(name, run(feeds) -> first output) of onnxruntime, else galaxir's numpy reference."""
    try:
        from galaxir.quiet import ort_session
        sess = ort_session(proto.SerializeToString(), threads=0)
        return "onnxruntime", lambda feeds: sess.run(None, feeds)[0]
    except ImportError:
        exe = gx.compile(proto, target="numpy", level=0)
        return "galaxir numpy reference", lambda feeds: exe(*feeds.values())[0]


def main(argv=None) -> int:
    silence_third_party_warnings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", choices=sorted(zoo.MODELS))
    p.add_argument("--target", default="cpu")
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args(argv)
    proto = onnx.load(str(zoo.model_path(a.model)))
    feeds = zoo.dummy_inputs(proto)
    rtol, atol = zoo.MODELS[a.model]

    t0 = time.perf_counter()
    module = gx.import_model(proto)
    t1 = time.perf_counter()
    exe = gx.compile(module, target=a.target)
    t2 = time.perf_counter()
    y = exe.run(feeds)[exe.output_names[0]]
    want = zoo.expected_outputs(a.model, proto)[0]
    ok = bool(np.allclose(y, want, rtol=rtol, atol=atol))
    level = gx.default_level(a.target)
    print(f"model      light_{a.model}.onnx, {module.num_ops} galaxir ops after import")
    print(f"target     {a.target} at O{level} (gx.compile's default); import {1e3 * (t1 - t0):.0f} ms, "
          f"compile {1e3 * (t2 - t1):.0f} ms")
    print(f"1. shipped weights vs the output shipped beside the model: max |diff| "
          f"{float(np.max(np.abs(y - want))):.2e} ({'matches' if ok else 'DOES NOT MATCH'} at rtol={rtol})")
    spread = float(np.ptp(y))
    if spread == 0.0:
        print(f"   the model-zoo file ships constant weights: all {y.size} outputs are equal "
              f"({float(y.reshape(-1)[0]):.4g}), so its classes carry no meaning")

    rand = zoo.with_random_weights(proto, seed=0)
    exe_r = gx.compile(rand, target=a.target)
    ref_name, ref = _reference(rand)
    yr = exe_r.run(feeds)[exe_r.output_names[0]]
    wr = ref(feeds)
    diff = float(np.max(np.abs(yr - wr)))
    ok_r = bool(np.allclose(yr, wr, rtol=rtol, atol=max(atol, 1e-5)))
    top_ours = np.argsort(yr.reshape(-1))[::-1][:5].tolist()
    top_ref = np.argsort(wr.reshape(-1))[::-1][:5].tolist()
    print(f"2. seeded random weights vs {ref_name}: max |diff| {diff:.2e} "
          f"({'matches' if ok_r else 'DOES NOT MATCH'} at rtol={rtol}); output range "
          f"{float(yr.min()):.3g}..{float(yr.max()):.3g}")
    print(f"   top-5 indexes galaxir {top_ours}, {ref_name} {top_ref} "
          f"({'the same' if top_ours == top_ref else 'DIFFERENT'}; random weights: not predictions)")
    ms = _timed_in_blocks({"galaxir": lambda: exe_r.run(feeds), "ref": lambda: ref(feeds)}, a.runs)
    print(f"time       galaxir {a.target} {ms['galaxir']:.1f} ms, {ref_name} {ms['ref']:.1f} ms "
          f"(median of 3 x {a.runs} runs, the engines taking turns, each with its default threads; "
          f"ratio {ms['galaxir'] / ms['ref']:.2f})")
    return 0 if ok and ok_r else 1


if __name__ == "__main__":
    raise SystemExit(main())
