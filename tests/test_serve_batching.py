"""Dynamic batching before and while serving: every batch size the batcher uses is run
(compiled) and timed before the server is ready, nothing new compiles while it serves,
sizes that cost more per row are dropped, and a batch between two sizes is padded or
split as the warm-up times say."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus_client) is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")

import galaxir as gx  # noqa: E402
from galaxir.ir import GraphBuilder, tensor  # noqa: E402
from galaxir.serve.app import ServeConfig, create_app  # noqa: E402
from galaxir.serve.batcher import Batcher, keep_sizes  # noqa: E402
from galaxir.serve.models import ServedModel  # noqa: E402
from galaxir.serve.server import BackgroundServer  # noqa: E402


def _module():
    rng = np.random.default_rng(0)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3, 8, 8))
    w = gb.constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    r = gb.relu(gb.conv(x, w, pads=(1, 1, 1, 1)))
    gb.output(gb.reduce_mean(r, gb.constant(np.array([2, 3], np.int64)), keepdims=0), "y")
    return gb.module()


class Recording(ServedModel):
    """Records the shapes of every run, and whether the server was ready (serving) then."""

    def __post_init__(self):
        super().__post_init__()
        self.serving = False
        self.runs: list[tuple[int, bool]] = []
        self.lock = threading.Lock()

    def run(self, feeds, outputs=None):
        with self.lock:
            self.runs.append((feeds["x"].shape[0], self.serving))
        return super().run(feeds, outputs)


class PerRow(ServedModel):
    """A model whose run costs ``per_row(rows)`` seconds per row (no real compute)."""

    def __init__(self, name, exe, per_row):
        super().__init__(name, exe)
        self.per_row = per_row

    def run(self, feeds, outputs=None):
        rows = next(iter(feeds.values())).shape[0]
        time.sleep(rows * self.per_row(rows))
        return {"y": np.repeat(feeds["x"][:, :1, 0, 0], 4, axis=1)}  # each row's own value


@pytest.fixture(scope="module")
def exe():
    return gx.compile(_module(), target="cpu")


def test_every_batch_size_runs_before_serving_and_none_while(exe, caplog):
    model = Recording("m", exe)
    app = create_app({"m": model}, ServeConfig(max_batch=8, max_delay_ms=20))
    with caplog.at_level(logging.INFO, logger="galaxir.serve"):
        with BackgroundServer(app) as s:
            warmed = {rows for rows, _ in model.runs}
            assert warmed == {1, 2, 4, 8}                  # every power of two up to 8
            model.serving = True
            sizes = app.state.galaxir.batchers["m"].buckets if app.state.galaxir.batchers else [1]
            x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
            want = exe.run({"x": x})["y"]

            def client(_):
                c = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
                inp = httpclient.InferInput("x", [1, 3, 8, 8], "FP32")
                inp.set_data_from_numpy(x)
                got = [c.infer("m", [inp]).as_numpy("y") for _ in range(10)]
                c.close()
                return got

            with ThreadPoolExecutor(12) as pool:
                results = [g for r in pool.map(client, range(12)) for g in r]
    assert all(np.array_equal(g, want) for g in results)
    served = [rows for rows, serving in model.runs if serving]
    assert served and set(served) <= set(sizes)   # no size that was not warmed
    text = caplog.text
    assert "batch 8 ready" in text and "batch sizes [" in text


def test_keep_sizes_drops_the_sizes_above_the_best_per_row():
    assert keep_sizes({1: 1.0, 2: 1.6, 4: 3.0, 8: 5.0}) == [1, 2, 4, 8]
    assert keep_sizes({1: 1.0, 2: 3.0, 4: 6.0}) == [1]                 # squeezenet-like
    assert keep_sizes({1: 1.0, 2: 2.08, 4: 3.0, 8: 7.0}) == [1, 2, 4]  # 8 costs more per row
    assert keep_sizes({1: 1.0, 2: 1.6, 4: 4.4, 8: 4.0}) == [1, 2, 4, 8]  # a noisy 4 is kept
    assert keep_sizes({1: 1.0, 2: 1.0, 4: 2.08}) == [1, 2, 4]        # within 5% of the best
    assert keep_sizes({}) == []


def _batcher(exe, times):
    b = Batcher(ServedModel("m", exe), max(times), 0.001, None)
    b.buckets, b.times = sorted(times), dict(times)
    return b


def test_plan_pads_or_splits_by_the_warm_up_times(exe):
    # run time proportional to rows (a compute-bound model): 9 rows run as 8 (+ 1 later)
    # rather than padded to 16
    linear = _batcher(exe, {b: 0.01 * b for b in (1, 2, 4, 8, 16)})
    assert linear.plan(9) == 8 and linear.plan(8) == 8 and linear.plan(16) == 16
    assert linear.plan(3) == 2
    # run time flat in rows (overhead-bound): pad 9 up to 16, one run
    flat = _batcher(exe, {b: 0.01 for b in (1, 2, 4, 8, 16)})
    assert flat.plan(9) == 9 and flat.plan(3) == 3
    assert flat.pad_to(9) == 16
    # nothing timed (warm-up impossible): run everything, padded as before
    untimed = Batcher(ServedModel("m", exe), 8, 0.001, None)
    assert untimed.plan(5) == 5 and untimed.pad_to(5) == 8


def test_a_model_no_size_helps_is_served_without_batching(exe, caplog):
    worse = PerRow("m", exe, lambda rows: 0.002 * rows)   # per-row cost grows with the batch
    app = create_app({"m": worse}, ServeConfig(max_batch=4))
    with caplog.at_level(logging.INFO, logger="galaxir.serve"):
        with BackgroundServer(app):
            assert app.state.galaxir.batchers == {}
    assert "serving it without batching" in caplog.text


def test_split_batches_answer_every_request(exe):
    """Rows split off a batch (held for the next one) still get their answers, in order."""
    model = PerRow("m", exe, lambda rows: 0.001)  # linear: 5 rows run as 4 + 1

    async def go():
        pool = ThreadPoolExecutor(2)
        b = Batcher(model, 8, 0.05, pool)
        b.buckets, b.times = [1, 2, 4, 8], {1: 0.001, 2: 0.002, 4: 0.004, 8: 0.008}
        b.start()
        feeds = [{"x": np.full((1, 3, 8, 8), i, np.float32)} for i in range(5)]
        outs = await asyncio.gather(*[b.submit(f, None) for f in feeds])
        await b.stop()
        pool.shutdown()
        return outs

    outs = asyncio.run(go())
    assert [o["y"].tolist() for o in outs] == [[[i] * 4] for i in range(5)]
