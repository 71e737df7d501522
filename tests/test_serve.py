"""The KServe v2 server (galaxir/serve): tritonclient.http answers equal exe.run, JSON
and binary tensors, metadata and health, dynamic batching under 16 concurrent clients,
4xx answers with a message for bad requests while the server keeps serving, bearer
auth, Prometheus metrics, graceful shutdown, and the `galaxir serve` command.  Servers
bind 127.0.0.1 on a free port and always shut down."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus_client) is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

import galaxir as gx  # noqa: E402
from galaxir.serve.app import ServeConfig, create_app  # noqa: E402
from galaxir.serve.models import ServedModel  # noqa: E402
from galaxir.serve.server import BackgroundServer  # noqa: E402

from conftest import cnn_input as _x, cnn_module  # noqa: E402
from conftest import http_get as _get, http_post as _post  # noqa: E402
from conftest import kserve_json as _json_req, metric_value as _metric  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cnn_exe():
    return gx.compile(cnn_module(), target="cpu")


def _served(exe, name="cnn"):
    return {name: ServedModel(name, exe)}


@pytest.fixture(scope="module")
def server(cnn_exe):
    with BackgroundServer(create_app(_served(cnn_exe), ServeConfig(max_body_bytes=1 << 20))) as s:
        yield s


def _triton(s):
    return httpclient.InferenceServerClient(s.url.removeprefix("http://"), concurrency=1)


def _infer(client, x, outputs=None, binary=True, model="cnn"):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = None if outputs is None else [httpclient.InferRequestedOutput(n, binary_data=binary)
                                         for n in outputs]
    return client.infer(model, [inp], outputs=outs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_equals_exe_run(server, cnn_exe, binary):
    client = _triton(server)
    x = _x(3)
    want = cnn_exe.run({"x": x})
    res = _infer(client, x, binary=binary) if binary else \
        _infer(client, x, outputs=["logits", "features"], binary=False)
    for name in ("logits", "features"):
        got = res.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == want[name].shape
        np.testing.assert_array_equal(got, want[name])
    only = _infer(client, x, outputs=["logits"], binary=binary)
    np.testing.assert_array_equal(only.as_numpy("logits"), want["logits"])
    assert only.as_numpy("features") is None


def test_health_and_metadata_through_tritonclient(server):
    client = _triton(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("cnn")
    assert meta["name"] == "cnn" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 12, 12]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "features"]
    assert client.get_server_metadata()["name"] == "galaxir"
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


_BIN_HEAD = (b'{"inputs":[{"name":"x","shape":[1,3,12,12],"datatype":"FP32",'
             b'"parameters":{"binary_data_size":8}}]}')
BAD_REQUESTS = [
    ("malformed json", "cnn", b'{"inputs": [', {}, 400, "not valid JSON"),
    ("not an object", "cnn", b"[1, 2]", {}, 400, "JSON object"),
    ("no inputs", "cnn", b"{}", {}, 400, "'inputs'"),
    ("wrong shape", "cnn", _json_req(np.zeros((1, 3, 5, 5), np.float32)), {}, 400, "dim 2 must be 12"),
    ("wrong dtype", "cnn", _json_req(np.zeros((1, 3, 12, 12), np.float32), "FP64"), {}, 400,
     "expected dtype float32"),
    ("unknown dtype", "cnn", _json_req(np.zeros((1, 3, 12, 12), np.float32), "FP7"), {}, 400,
     "unknown datatype"),
    ("data count", "cnn", json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 12, 12],
                                                  "datatype": "FP32", "data": [1.0, 2.0]}]}).encode(),
     {}, 400, "has 2 elements"),
    ("unknown input", "cnn", _json_req(np.zeros((1, 3, 12, 12), np.float32), name="y"), {}, 400,
     "unknown input name"),
    ("unknown model", "nope", _json_req(np.zeros((1, 3, 12, 12), np.float32)), {}, 404,
     "unknown model"),
    ("unknown version", "cnn/versions/7", _json_req(np.zeros((1, 3, 12, 12), np.float32)), {}, 404,
     "no version"),
    ("binary size", "cnn", _BIN_HEAD + b"\0" * 8,
     {"Inference-Header-Content-Length": str(len(_BIN_HEAD))}, 400, "needs 1728"),
    ("header length", "cnn", b"{}", {"Inference-Header-Content-Length": "99"}, 400, "does not fit"),
    ("oversized", "cnn", b"x" * ((1 << 20) + 10), {}, 413, "limit"),
    ("unknown output", "cnn", json.dumps({"inputs": json.loads(_json_req(np.zeros((1, 3, 12, 12), np.float32)))["inputs"],
                                          "outputs": [{"name": "zzz"}]}).encode(), {}, 400, "no output"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server, cnn_exe, case):
    _, model, body, headers, status, msg = case
    got, text = _post(f"{server.url}/v2/models/{model}/infer", body, headers)
    assert got == status, text[:300]
    assert msg in json.loads(text)["error"]
    x = _x(1)
    np.testing.assert_array_equal(_infer(_triton(server), x).as_numpy("logits"),
                                  cnn_exe.run({"x": x})["logits"])


def test_metrics_count_requests_and_latency(server):
    _infer(_triton(server), _x(1))
    status, text = _get(f"{server.url}/metrics")
    text = text.decode()
    assert status == 200
    assert 'galaxir_requests_total{endpoint="infer",model="cnn",status="200"}' in text
    assert "galaxir_request_seconds_bucket" in text


def test_bearer_token_is_required_except_for_health(cnn_exe):
    app = create_app(_served(cnn_exe), ServeConfig(token="s3cret"))
    with BackgroundServer(app) as s:
        assert _get(f"{s.url}/v2/health/live")[0] == 200
        assert _get(f"{s.url}/v2/models/cnn")[0] == 401
        assert _get(f"{s.url}/v2/models/cnn", {"Authorization": "Bearer wrong"})[0] == 401
        assert _get(f"{s.url}/v2/models/cnn", {"Authorization": "Bearer s3cret"})[0] == 200
        x = _x(1)
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException):
            client.infer("cnn", [inp])
        res = client.infer("cnn", [inp], headers={"Authorization": "Bearer s3cret"})
        np.testing.assert_array_equal(res.as_numpy("logits"), cnn_exe.run({"x": x})["logits"])


def _hammer(url, exe, clients=16, per_client=50):
    xs = [_x(1 + k % 3, seed=k) for k in range(8)]
    want = [exe.run({"x": x}) for x in xs]
    errors, wrong = [], []

    def work(c):
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        for i in range(per_client):
            k = (c + i) % len(xs)
            try:
                res = _infer(client, xs[k], outputs=["logits"] if i % 2 else None)
            except Exception as e:  # counted, not raised: all clients finish
                errors.append(repr(e))
                continue
            if not np.array_equal(res.as_numpy("logits"), want[k]["logits"]):
                wrong.append((c, i))
        client.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    return errors, wrong


@pytest.mark.parametrize("max_batch", [0, 16], ids=["no-batching", "dynamic-batching"])
def test_16_concurrent_clients_x_50_requests(cnn_exe, max_batch):
    app = create_app(_served(cnn_exe), ServeConfig(max_batch=max_batch, max_delay_ms=5))
    with BackgroundServer(app) as s:
        errors, wrong = _hammer(s.url, cnn_exe)
        assert not errors, errors[:3]
        assert not wrong, wrong[:5]
        text = _get(f"{s.url}/metrics")[1].decode()
    count = _metric(text, 'galaxir_requests_total{endpoint="infer",model="cnn",status="200"}')
    assert count == 16 * 50
    if max_batch:  # concurrent requests were merged: fewer runs than requests
        runs = _metric(text, 'galaxir_batch_requests_count{model="cnn"}')
        merged = _metric(text, 'galaxir_batch_requests_sum{model="cnn"}')
        assert merged == 16 * 50 and runs < merged


class _SlowModel(ServedModel):
    def run(self, feeds, outputs=None):
        time.sleep(1.0)
        return super().run(feeds, outputs)


def test_graceful_shutdown_lets_in_flight_requests_finish(cnn_exe):
    s = BackgroundServer(create_app({"cnn": _SlowModel("cnn", cnn_exe)})).start()
    result = {}

    def call():
        result["status"], result["body"] = _post(f"{s.url}/v2/models/cnn/infer", _json_req(_x(1)))

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)  # the request is running
    s.stop()
    t.join(30)
    assert result.get("status") == 200, result
    got = np.array(json.loads(result["body"])["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(got, cnn_exe.run({"x": _x(1)})["logits"].reshape(-1), rtol=1e-6)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{s.url}/v2/health/live", timeout=5)


def test_galaxir_serve_command(tmp_path):
    path = tmp_path / "cnn.gxm"
    gx.save(cnn_module(), path)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "galaxir.cli", "serve", f"m={path}", "--port", "0",
                          "--max-batch", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            if "listening on" in line:
                url = line.split("listening on ")[1].split()[0]
        assert url and url.startswith("http://127.0.0.1:"), p.stderr.read()[-2000:] if p.poll() is not None else url
        for _ in range(100):
            try:
                if _get(f"{url}/v2/health/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        status, body = _post(f"{url}/v2/models/m/infer", _json_req(_x(2)))
        assert status == 200
        want = gx.compile(cnn_module(), target="numpy").run({"x": _x(2)})["logits"]
        out = json.loads(body)["outputs"][0]
        np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), want,
                                   rtol=1e-4, atol=1e-5)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
    assert rc == 0
