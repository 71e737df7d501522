"""Helpers shared by the test modules (imported as ``from conftest import ...``)."""
from __future__ import annotations

import galaxir as gx
from galaxir.ir import GraphBuilder
from galaxir.ir.types import DType, tensor


def run_op(name, *arrays, num_results=None, target="numpy", **attrs):
    """Run one op on ``arrays`` through a one-op module; ``None`` leaves an optional operand out.

    Returns the single result, or a list when the op has several."""
    gb = GraphBuilder()
    xs = [None if a is None else gb.input(f"x{i}", tensor(DType.from_numpy(a.dtype), *a.shape))
          for i, a in enumerate(arrays)]
    out = gb.op(name, *xs, num_results=num_results, **attrs)
    outs = out if isinstance(out, tuple) else (out,)
    for i, o in enumerate(outs):
        gb.output(o, f"y{i}")
    res = gx.compile(gb.module(), target=target, level=0)(*[a for a in arrays if a is not None])
    return res if isinstance(out, tuple) else res[0]


def native_kernels(exe):
    """Class names of the native kernels the last run of a cpu executable used, in order."""
    return [type(s.kernel).__name__ for s in exe.last.steps if s.kind == "native"]


# --- serving: helpers shared by test_serve.py, test_serve_batching.py and test_ray.py -----
import json as _json  # noqa: E402
import urllib.error as _urlerror  # noqa: E402
import urllib.request as _urlrequest  # noqa: E402

import numpy as _np  # noqa: E402


def cnn_module(channels: int = 8, seed: int = 0):
    """A small CNN with a symbolic batch: conv -> relu -> mean over space (logits) and the
    relu map itself (features)."""
    rng = _np.random.default_rng(seed)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3, 12, 12))
    w = gb.constant(rng.standard_normal((channels, 3, 3, 3)).astype(_np.float32))
    r = gb.relu(gb.conv(x, w, pads=(1, 1, 1, 1)))
    logits = gb.reduce_mean(r, gb.constant(_np.array([2, 3], _np.int64)), keepdims=0)
    gb.output(logits, "logits")
    gb.output(r, "features")
    return gb.module()


def cnn_input(n: int = 2, seed: int = 0):
    """``n`` rows of input for ``cnn_module``."""
    return _np.random.default_rng(seed).standard_normal((n, 3, 12, 12)).astype(_np.float32)


def kserve_json(x, datatype="FP32", name="x") -> bytes:
    """A KServe v2 JSON infer request body with one input."""
    return _json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                    "data": x.reshape(-1).tolist()}]}).encode()


def http_post(url, body: bytes, headers=None):
    """(status, body) of a POST; 4xx/5xx answers are returned, not raised."""
    req = _urlrequest.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with _urlrequest.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except _urlerror.HTTPError as e:
        return e.code, e.read()


def http_get(url, headers=None):
    """(status, body) of a GET; 4xx/5xx answers are returned, not raised."""
    req = _urlrequest.Request(url, headers=headers or {})
    try:
        with _urlrequest.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except _urlerror.HTTPError as e:
        return e.code, e.read()


def metric_value(text: str, key: str) -> float:
    """The value of one sample (``name{labels}``) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{key} not in metrics")
# --- end of the serving helpers ---------------------------------------------------------------


# --- int8: helpers shared by test_cpu_int8.py, test_cpu_int8_ops.py, test_cpu_int8_dw.py and
# test_cpu_quant_nodes.py (onnx is imported when a helper runs: the int8 modules skip without it)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

DT = [np.uint8, np.int8]
PATHS = [("1", "1"), ("0", "1"), ("1", "0"), ("0", "0")]   # (VNNI, WIDE)


def _path_ok(vnni: str, wide: str) -> bool:
    from galaxir.backends.cpu import jit
    if vnni == "1":
        return jit.has_feature("avx512vnni") or jit.has_feature("avxvnni")
    return jit.has_feature("avx2")


@pytest.fixture(params=PATHS, ids=lambda p: f"vnni{p[0]}-wide{p[1]}")
def path(request, monkeypatch):
    """The int8 kernels' instruction path forced (VNNI or not, 16 or 8 lanes); a path the
    host lacks is skipped."""
    vnni, wide = request.param
    if not _path_ok(vnni, wide):
        pytest.skip("the host lacks this instruction set")
    monkeypatch.setenv("GALAXIR_CPU_VNNI", vnni)
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    return request.param


def _rand(rng, dt, shape):
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max + 1, shape).astype(dt)


def _params(rng, wdt, n, per_channel):
    shape = (n,) if per_channel else ()
    ws = (rng.random(shape) * 0.01 + 0.001).astype(np.float32)
    info = np.iinfo(wdt)
    wz = rng.integers(info.min // 2, info.max // 2 + 1, shape).astype(wdt)
    return ws, wz


def _onnx_t(dt):
    from onnx import TensorProto
    return {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}[dt]


def matmul_model(rng, M, K, N, xdt, wdt, per_channel, op="QLinearMatMul"):
    from onnx import TensorProto, helper, numpy_helper
    w = _rand(rng, wdt, (K, N))
    ws, wz = _params(rng, wdt, N, per_channel)
    xz = np.array(7 if xdt == np.uint8 else -3, xdt)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(xz, "xz"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(wz, "wz"), numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
             numpy_helper.from_array(np.array(100, np.uint8), "yz")]
    if op == "MatMulInteger":
        node, yt = helper.make_node(op, ["x", "w", "xz", "wz"], ["y"]), TensorProto.INT32
    else:
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
        yt = TensorProto.UINT8
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", _onnx_t(xdt), [M, K])],
                          [helper.make_tensor_value_info("y", yt, [M, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def conv_model(rng, N, C, H, W, M, k, s, p, g, xdt, wdt, per_channel, op="QLinearConv", dil=1):
    from onnx import TensorProto, helper, numpy_helper
    w = _rand(rng, wdt, (M, C // g, k, k))
    ws, wz = _params(rng, wdt, M, per_channel)
    xz = np.array(7 if xdt == np.uint8 else -3, xdt)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(xz, "xz"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(wz, "wz"), numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
             numpy_helper.from_array(np.array(-5, np.int8), "yz"),
             numpy_helper.from_array(rng.integers(-5000, 5000, M).astype(np.int32), "b")]
    att = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g, dilations=[dil, dil])
    if op == "ConvInteger":
        node, yt = helper.make_node(op, ["x", "w", "xz", "wz"], ["y"], **att), TensorProto.INT32
    else:
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], **att)
        yt = TensorProto.INT8
    gr = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", _onnx_t(xdt), [N, C, H, W])],
                           [helper.make_tensor_value_info("y", yt, [None] * 4)], inits)
    return helper.make_model(gr, opset_imports=[helper.make_opsetid("", 13)])


def _one(r):
    return r[0] if isinstance(r, (list, tuple)) else r


def _qdq_cnn(tmp_path):
    torch = pytest.importorskip("torch")
    q = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1 = torch.nn.Conv2d(c, c, 3, padding=1)
            self.c2 = torch.nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))) + x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.b1, self.b2 = Block(16), Block(16)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            x = self.b2(self.pool(self.b1(torch.relu(self.stem(x)))))
            return self.fc(x.mean((2, 3)))

    fp, qp = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    torch.onnx.export(Net().eval(), torch.randn(1, 3, 32, 32), fp, input_names=["x"],
                      output_names=["y"], dynamo=False)
    rng = np.random.default_rng(0)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                            for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(fp, qp, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    return qp
# --- end of the int8 helpers ---------------------------------------------------------------------


# --- models and runners shared by several modules (IR core, ONNX import, CLI, threads) -----
import os as _os  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402
import textwrap as _textwrap  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest as _pytest  # noqa: E402

ROOT = _Path(__file__).resolve().parents[1]


def cli(*args, cwd=None):
    """``python -m galaxir.cli ARGS`` in a subprocess (CompletedProcess, text output)."""
    return _subprocess.run([_sys.executable, "-m", "galaxir.cli", *map(str, args)],
                           capture_output=True, text=True, cwd=cwd, timeout=300)


def run_script(code: str, timeout: float = 180, env: dict | None = None, cwd=None):
    """Run ``code`` in a fresh interpreter that imports this checkout's galaxir; returns the
    CompletedProcess (a hang fails the test through the timeout)."""
    e = dict(_os.environ)
    e["PYTHONPATH"] = str(ROOT) + _os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    try:
        return _subprocess.run([_sys.executable, "-c", _textwrap.dedent(code)],
                               capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)
    except _subprocess.TimeoutExpired:
        _pytest.fail(f"subprocess hung (> {timeout} s)")


CONV_MODELS = """
import threading, numpy as np
from onnx import TensorProto, helper
import galaxir as gx

def conv_model(seed, cout):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Mul", ["r", "r"], ["y"])]
    g = helper.make_graph(nodes, f"conv{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 64, 64])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

def hammer(exes, feeds, expected, calls):
    bad = []
    def work(k):
        exe = exes[k % len(exes)]
        for i in range(calls):
            (y,) = exe(feeds[i % len(feeds)])
            if not np.array_equal(y, expected[k % len(exes)][i % len(feeds)]):
                bad.append((k, i))
    ts = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(4)]
    for t in ts: t.start()
    for t in ts:
        t.join(120)
        assert not t.is_alive(), "a thread hung"
    return bad

rng = np.random.default_rng(0)
feeds = [rng.standard_normal((1, 8, 64, 64)).astype(np.float32) for _ in range(3)]
"""


def small_module():
    """x[N,4] + y[1,4] -> relu -> * 3: a symbolic dim, a broadcast and a constant."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 4))
    y = gb.input("y", tensor("f32", 1, 4))
    s = gb.constant(np.float32(3.0))
    z = gb.relu(gb.add(x, y))
    gb.output(gb.mul(z, s), "out")
    return gb.module({"producer": "test"})


def if_loop_module():
    """An ``if`` feeding a 3-trip ``loop``: regions that capture outer values."""
    gb = GraphBuilder()
    c = gb.input("c", tensor("bool"))
    x = gb.input("x", tensor("f32", "N"))
    k = gb.constant(np.float32(2))
    then_r = gb.region(body=lambda b: b.mul(x, k))
    else_r = gb.region(body=lambda b: b.add(x, k))
    (r,) = gb.create("if", c, regions=[then_r, else_r]).results
    n = gb.constant(np.int64(3))

    def body(b, i, cond, acc):
        return [cond, b.add(acc, x)]
    loop_r = gb.region([tensor("i64"), tensor("bool"), tensor("f32", "N")], body)
    (acc,) = gb.create("loop", n, None, r, regions=[loop_r]).results
    gb.output(acc, "acc")
    return gb.module()


def add_relu_model(extra_nodes=(), opset=17):
    """ONNX x[batch,4] + w -> Relu (y), and an Identity copy of the sum (s_copy)."""
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["s"], name="add0"),
             helper.make_node("Relu", ["s"], ["y"], name="relu0"),
             helper.make_node("Identity", ["s"], ["s_copy"], name="copy0")] + list(extra_nodes)
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
                           helper.make_tensor_value_info("s_copy", TensorProto.FLOAT, [None, None])],
                          [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
