"""Load time of .gxm (memory-mapped, zero-copy weights) against onnx.load of the same model
after constant folding, on the light zoo densenet121 and ResNet-50.

    python benchmarks/bench_load.py [--runs 15]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx

import galaxir as gx
from galaxir.frontends.onnx.exporter import export_onnx
from galaxir.testing import zoo
from galaxir.testing.timing import median_ms


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--models", nargs="*", default=["densenet121", "resnet50"])
    a = p.parse_args(argv)
    print("| model | weights MB | onnx.load ms | galaxir.load ms | speed-up |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            m = gx.optimize(gx.import_model(str(zoo.model_path(name))), level=1)
            weights = sum(op.attrs["value"].nbytes for op in m.walk() if op.name == "constant")
            gxm = Path(d) / f"{name}.gxm"
            onx = Path(d) / f"{name}.onnx"
            gx.save(m, gxm)
            onnx.save(export_onnx(m), str(onx))
            t_onnx = median_ms(lambda: onnx.load(str(onx)), a.runs)
            t_gxm = median_ms(lambda: gx.load(gxm), a.runs)
            print(f"| {name} | {weights / 1e6:.1f} | {t_onnx:.1f} | {t_gxm:.1f} | {t_onnx / t_gxm:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
