"""The cuda backend on a GPU (marker ``gpu``; skipped with the reason where cupy or a CUDA
device is missing).  ``scripts/gpu_check.sh`` runs these and benchmarks/bench_cuda.py.

* the ONNX node suite on cuda against the reference: every case that passes on numpy;
* the 9 light zoo models against numpy (fp32, 1e-4 relative);
* torch-built ResNet-50 and a BERT-style encoder, batch 1 and 32, fp32 (1e-4) and fp16
  (1e-2), against PyTorch on the same GPU;
* device arrays in and out (cupy, torch via DLPack), CUDA graph replay, and the errors:
  wrong dtype, wrong device, out-of-range gather index, a model too large for the device.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import galaxir as gx
from galaxir.errors import CompileError, ExecutionError, InputValidationError


def _device_problem() -> str | None:
    try:
        import cupy
    except Exception as e:
        return f"cupy is not installed ({e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no CUDA driver/device: cupy.cuda.runtime.getDeviceCount() failed ({e})"
    return None if n > 0 else "no CUDA device"


_PROBLEM = _device_problem()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))]
EXPECTED = Path(__file__).parent / "data" / "onnx_expected_failures.txt"


def _rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _relu_model(dtype=None, shape=(2, 3)):
    from onnx import TensorProto, helper
    dt = dtype or TensorProto.FLOAT
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", dt, list(shape))],
                          [helper.make_tensor_value_info("y", dt, list(shape))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


# -- the node suite ------------------------------------------------------------------------------
def test_node_suite_on_cuda_matches_where_numpy_passes(capsys):
    from galaxir.backends.cuda.runtime import load_kernels, open_device
    from galaxir.testing import cuda_sweep
    from galaxir.testing.onnx_conformance import load_cases, read_expected, run_case
    expected = read_expected(EXPECTED)
    cases = [c for c in load_cases() if c.name not in expected]
    kernels, _ = cuda_sweep.node_suite_kernels(cases)
    load_kernels(open_device(), list(kernels.values()))  # one NVRTC call for the whole suite
    failed = {}
    for c in cases:
        r = run_case(c, "cuda")
        if not r.ok:
            failed[c.name] = r.reason
    with capsys.disabled():
        print(f"\ngalaxir cuda: {len(cases) - len(failed)}/{len(cases)} node cases pass")
    assert not failed, "cases passing on numpy but failing on cuda:\n" + "\n".join(
        f"  {n}: {why}" for n, why in sorted(failed.items()))


# -- the zoo -------------------------------------------------------------------------------------
def _zoo():
    from galaxir.testing import cuda_sweep
    return cuda_sweep.zoo_paths()


@pytest.mark.parametrize("path", _zoo(), ids=lambda p: p.stem)
def test_zoo_model_matches_numpy(path):
    import onnx
    model = onnx.load(str(path))
    exe = gx.compile(model, target="cuda")
    ref = gx.compile(model, target="numpy")
    rng = np.random.default_rng(0)
    feeds = {}
    for n, t in zip(exe.input_names, exe.input_types):
        shape = [d if isinstance(d, int) else 1 for d in t.shape]
        feeds[n] = rng.standard_normal(shape).astype(t.dtype.numpy)
    got, want = exe.run(feeds), ref.run(feeds)
    for n in exe.output_names:
        assert _rel_err(got[n], want[n]) <= 1e-4, (n, exe.report())


# -- torch models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("name", ["resnet50", "bert"])
def test_torch_model_matches_pytorch_on_the_gpu(name, batch, dtype):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    from galaxir.testing import cuda_models as cm
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = cm.build(name, dtype)
    ins = cm.inputs(name, batch, dtype)
    exe = gx.compile(gx.import_model(model, example_inputs=ins), target="cuda")
    dev_ins = tuple(x.cuda() for x in ins)
    with torch.no_grad():
        want = model.cuda()(*dev_ins).float().cpu().numpy()
    (got,) = exe(*[x.cpu().numpy() for x in ins])
    tol = 1e-4 if dtype == "float32" else 1e-2
    err = _rel_err(got.astype(np.float32), want)
    assert err <= tol, f"{name} batch {batch} {dtype}: relative error {err:.2e}\n{exe.report()}"
    # the same through DLPack: torch CUDA tensors in, device arrays out
    (dgot,) = exe(*dev_ins)
    assert not isinstance(dgot, np.ndarray)
    assert _rel_err(dgot.get().astype(np.float32), want) <= tol


# -- device arrays, graphs, errors ----------------------------------------------------------------
def test_cupy_arrays_in_and_out_and_graph_replay():
    import cupy
    exe = gx.compile(_relu_model(shape=(64, 64)), target="cuda")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    outs = [exe(x)[0] for _ in range(3)]  # run 2 captures the graph, run 3 replays it
    for y in outs:
        assert isinstance(y, cupy.ndarray)
        np.testing.assert_array_equal(y.get(), np.maximum(x.get(), 0))
    assert "captured" in exe.report(), exe.report()
    (h,) = exe(x.get())
    assert isinstance(h, np.ndarray)


def test_wrong_dtype_device_array_is_refused():
    import cupy
    exe = gx.compile(_relu_model(), target="cuda")
    with pytest.raises(InputValidationError, match="expected dtype float32"):
        exe(cupy.zeros((2, 3), dtype=cupy.float64))
    with pytest.raises(InputValidationError, match="dim 1 must be 3"):
        exe(cupy.zeros((2, 4), dtype=cupy.float32))


def test_array_on_another_device_is_refused():
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    exe = gx.compile(_relu_model(), target="cuda", device=0)
    with cupy.cuda.Device(1):
        x = cupy.zeros((2, 3), dtype=cupy.float32)
    with pytest.raises(InputValidationError, match="on CUDA device 1"):
        exe(x)


def test_gather_index_out_of_range_is_an_execution_error():
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Gather", ["d", "i"], ["y"])], "g",
                          [helper.make_tensor_value_info("d", TensorProto.FLOAT, [4, 2]),
                           helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])])
    exe = gx.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), target="cuda")
    d = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.testing.assert_array_equal(exe(d, np.array([3, -1, 0]))[0], d[[3, -1, 0]])
    with pytest.raises(ExecutionError, match="gather index"):
        exe(d, np.array([0, 4, 1]))


def test_model_larger_than_device_memory_is_a_compile_error(monkeypatch):
    import cupy
    monkeypatch.setattr(cupy.cuda.runtime, "memGetInfo", lambda: (1024, 1 << 34))
    with pytest.raises(CompileError, match="MiB of device memory"):
        gx.compile(_relu_model(shape=(1024, 1024)), target="cuda")
