"""The kernels the cuda backend generates for the ONNX node suite and the light model zoo,
without a device: each model is imported, optimized as ``compile`` would, specialized to
its test inputs' shapes and lowered (galaxir/backends/cuda/lower.py).  The compile tests
hand the distinct kernels to NVRTC."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def kernels_of_model(model, shapes=None, level: int = 0):
    """(kernels, Lowered) for one ONNX model, specialized to ``shapes`` ({name: shape};
    default: the declared input shapes, symbolic dims set to 1)."""
    import galaxir as gx
    from galaxir.backends.cuda.lower import lower_for_shapes
    from galaxir.ir.types import TensorType
    m = gx.import_model(model)
    if level:
        m = gx.optimize(m, level=level, target="cuda", fold_max_growth=float("inf"))
    if shapes is None:
        shapes = {}
        for a in m.graph.inputs:
            if isinstance(a.type, TensorType) and a.type.shape is not None:
                shapes[a.name] = tuple(d if isinstance(d, int) else 1 for d in a.type.shape)
    low = lower_for_shapes(m, shapes)
    return low.kernels(), low


def node_suite_kernels(cases=None):
    """{kernel name: Kernel} over every node case (each data set's input shapes), and
    {case name: (ops on cuda, ops on numpy)}."""
    from galaxir.testing.onnx_conformance import data_inputs, load_cases
    import onnx
    kernels, placed = {}, {}
    for case in (load_cases() if cases is None else cases):
        names = data_inputs(case.model)
        for inputs, _ in case.data_sets[:1]:
            shapes = {}
            for n, x in zip(names, inputs):
                if isinstance(x, onnx.TensorProto):
                    x = onnx.numpy_helper.to_array(x)
                if isinstance(x, np.ndarray):
                    shapes[n] = x.shape
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ks, low = kernels_of_model(case.model, shapes)
            except Exception as e:  # the import itself fails (numpy fails too): no kernels
                placed[case.name] = ("error", f"{type(e).__name__}: {e}")
                continue
            for k in ks:
                kernels.setdefault(k.name, k)
            placed[case.name] = ([op.name for op, w, _ in low.placement if w == "cuda"],
                                 [op.name for op, w, _ in low.placement if w == "numpy"])
    return kernels, placed


def zoo_paths() -> list[Path]:
    import onnx
    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return sorted(root.glob("*.onnx"))
