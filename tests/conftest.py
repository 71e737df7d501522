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
