"""The main job: compile the onnx package's model-zoo ResNet-50 for the default target,
run it, and print the result and the time.  ``python -m galaxir.demo [--target T] [--model M]``"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

import galaxir as gx
from galaxir.testing import zoo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet50", choices=sorted(zoo.MODELS))
    p.add_argument("--target", default="cpu")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args(argv)
    proto = onnx.load(str(zoo.model_path(a.model)))
    feeds = zoo.dummy_inputs(proto)
    t0 = time.perf_counter()
    module = gx.import_model(proto)
    t1 = time.perf_counter()
    exe = gx.compile(module, target=a.target)
    t2 = time.perf_counter()
    times = []
    for _ in range(max(1, a.runs)):
        s = time.perf_counter()
        out = exe.run(feeds)
        times.append(time.perf_counter() - s)
    y = out[exe.output_names[0]]
    ref = zoo.expected_outputs(a.model, proto)[0]
    rtol, atol = zoo.MODELS[a.model]
    top5 = np.argsort(y.reshape(-1))[::-1][:5]
    print(f"model      light_{a.model}.onnx ({module.num_ops} galaxir ops after import)")
    print(f"target     {a.target}")
    print(f"import     {1e3 * (t1 - t0):.0f} ms")
    print(f"compile    {1e3 * (t2 - t1):.0f} ms")
    print(f"run        median {1e3 * float(np.median(times)):.1f} ms over {len(times)} runs")
    print(f"output     {exe.output_names[0]}: shape {list(y.shape)}, top-5 classes {top5.tolist()}")
    ok = np.allclose(y, ref, rtol=rtol, atol=atol)
    print(f"reference  max |diff| vs the shipped expected output = {float(np.max(np.abs(y - ref))):.2e} "
          f"({'matches' if ok else 'DOES NOT MATCH'} at rtol={rtol})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
