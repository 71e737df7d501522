"""galaxir.integrations.ray on a local Ray instance started here (ray.init(num_cpus=2)):
Ray Data map_batches with one compiled executable per actor, and a Ray Serve deployment
answering handle calls and KServe v2 HTTP infer requests.  Ray's start-up takes tens of
seconds on a busy 2-core machine: marked slow."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("ray.data", reason="ray[data] is not installed")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")

import galaxir as gx  # noqa: E402
from galaxir.integrations import ray as gxray  # noqa: E402

from conftest import cnn_input, cnn_module, http_post, kserve_json  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT) + os.pathsep +
                                       os.environ.get("PYTHONPATH", "")}})
    try:
        yield
    finally:
        try:
            from ray import serve
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "cnn.gxm"
    gx.save(cnn_module(), path)
    return path


def test_ray_data_map_batches_runs_one_executable_per_actor(local_ray, model_file):
    x = cnn_input(10)
    ds = ray.data.from_numpy(x).rename_columns({"data": "image"})
    out = gxray.map_batches(ds, model_file, columns={"x": "image"}, outputs=["logits"],
                            batch_size=4, concurrency=1, num_cpus=1)
    rows = out.take_all()
    assert len(rows) == 10
    got = np.stack([r["logits"] for r in rows])
    want = gx.compile(cnn_module(), target="numpy").run({"x": x})["logits"]
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(want, axis=0), rtol=1e-4, atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_deployment_answers_handles_and_kserve_http(local_ray, model_file):
    from ray import serve
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = gxray.deployment(model_file, "cnn", num_replicas=1,
                           ray_actor_options={"num_cpus": 1})
    handle = serve.run(app, name="cnn", route_prefix="/cnn")
    x = cnn_input(3, seed=1)
    want = gx.compile(cnn_module(), target="numpy").run({"x": x})
    got = handle.run.remote({"x": x}).result()
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
    url = f"http://127.0.0.1:{port}/cnn/v2/models/cnn/infer"
    status, text = http_post(url, kserve_json(x))
    assert status == 200, text[:300]
    out = {o["name"]: o for o in json.loads(text)["outputs"]}["logits"]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]),
                               want["logits"], rtol=1e-4, atol=1e-5)
    status, text = http_post(url, b"{nope")
    assert status == 400 and "not valid JSON" in json.loads(text)["error"]
    serve.delete("cnn")
