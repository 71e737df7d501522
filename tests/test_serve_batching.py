"""Dynamic batching before and while serving: every batch size the batcher uses is run
(compiled) and timed before the server is ready, nothing new compiles while it serves,
sizes that cost more per row are dropped, and a batch between two sizes is padded or
split as the warm-up times say."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
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
from galaxir.backends.cpu.parallel import available_cores  # noqa: E402
from galaxir.cli import CliError, build_parser, serve_config  # noqa: E402
from galaxir.serve.batcher import (MAX_INSTANCES, Batcher, _run_together,  # noqa: E402
                                   _threads_per_run, choose_instances, guess_instances,
                                   instance_shares, keep_sizes)
from galaxir.serve.models import ServedModel  # noqa: E402
from galaxir.serve.server import BackgroundServer  # noqa: E402

from conftest import http_post, kserve_json  # noqa: E402


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


def fake_clock(monkeypatch, seconds):
    """Warm-up timings from ``seconds(rows, nth)`` (nth: how many times that size was timed
    before) instead of a clock, so what the warm-up decides does not depend on the load."""
    calls: dict[int, int] = {}

    def best_time(self, feeds, runs):
        rows = next(iter(feeds.values())).shape[0]
        calls[rows] = calls.get(rows, 0) + 1
        return seconds(rows, calls[rows] - 1)

    monkeypatch.setattr(Batcher, "_best_time", best_time)
    return calls


def test_a_model_no_size_helps_is_served_without_batching(exe, caplog, monkeypatch):
    fake_clock(monkeypatch, lambda rows, nth: 0.01 * rows * rows)  # per-row cost grows
    app = create_app({"m": ServedModel("m", exe)}, ServeConfig(max_batch=4))
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


# -- how many batches run at once, batch sizes and warm-up as configured ---------------------

def test_instance_shares_split_the_waiting_rows_between_instances():
    sizes = [1, 2, 4, 8, 16]
    assert instance_shares(16, sizes, 4) == {1: 16, 2: 8, 4: 4}
    assert instance_shares(16, sizes, 2) == {1: 16, 2: 8}            # capped by the run threads
    assert instance_shares(16, [1, 2, 4], 4) == {1: 4, 2: 4, 4: 4}   # the largest kept size
    assert instance_shares(12, [1, 2, 4, 8, 12], 4) == {1: 12, 2: 4, 4: 2}  # the sizes that fit
    assert instance_shares(2, [1, 2], 4) == {1: 2, 2: 1}             # no more instances than rows
    assert instance_shares(16, [8, 16], 4) == {1: 16, 2: 8}          # 4 rows fit no size


def test_choose_instances_takes_the_fewest_within_tolerance_of_the_best():
    assert choose_instances({1: 100.0, 2: 80.0, 4: 70.0}) == 1   # one run fills the cores
    assert choose_instances({1: 100.0, 2: 104.0}) == 1           # within 5%: fewer, bigger
    assert choose_instances({1: 100.0, 2: 130.0, 4: 133.0}) == 2
    assert choose_instances({1: 100.0, 2: 110.0, 4: 200.0}) == 4
    assert choose_instances({}) == 1


def test_guess_instances_without_measurements():
    assert guess_instances(threads_per_run=2, cores=2) == 1   # one run uses every core
    assert guess_instances(threads_per_run=1, cores=2) == 2
    assert guess_instances(threads_per_run=4, cores=2) == 1
    assert guess_instances(threads_per_run=1, cores=64) == MAX_INSTANCES


class Formula(Batcher):
    """A batcher whose instance timings come from ``cost(k, rows)`` (seconds for k runs of
    ``rows`` rows started together) instead of a clock, so the choice is deterministic."""

    def __init__(self, *args, cost, **kw):
        super().__init__(*args, **kw)
        self.cost = cost
        self.tried: list[tuple[int, int]] = []

    def _time_together(self, k, rows):
        self.tried.append((k, rows))
        return self.cost(k, rows)


@pytest.mark.parametrize("machine, want", [
    # one core's worth of work however many run at once: the biggest batch wins
    (lambda k, rows: k * (0.001 + 0.001 * rows), 1),
    # runs overlap perfectly (idle cores): batches side by side win
    (lambda k, rows: 0.001 + 0.001 * rows, 4),
], ids=["runs-fill-the-cores", "runs-leave-cores-idle"])
def test_warm_chooses_the_instances_from_the_timings(exe, machine, want):
    b = Formula(ServedModel("m", exe), 8, 0.001, None, sizes=[1, 2, 4, 8], cost=machine)
    b.warm(repeats=1)
    assert b.buckets == [1, 2, 4, 8]
    assert sorted(set(b.tried)) == [(1, 8), (2, 4), (4, 2)]
    assert len(b.tried) == 3 * 3                                 # 2 * repeats + 1 rounds each
    assert b.instances == want == choose_instances(b.rates)
    fixed = Formula(ServedModel("m", exe), 8, 0.001, None, sizes=[1, 2, 4, 8], cost=machine,
                    instances=3)
    fixed.warm(repeats=1)
    assert fixed.instances == 3 and fixed.tried == [] and fixed.rates == {}


class Rendezvous(ServedModel):
    """Every run waits until ``parties`` runs have started: runs that do not overlap fail."""

    def __init__(self, name, exe, parties):
        super().__init__(name, exe)
        self.barrier = threading.Barrier(parties, timeout=30)
        self.rows: list[int] = []

    def run(self, feeds, outputs=None):
        self.rows.append(feeds["x"].shape[0])
        self.barrier.wait()
        return super().run(feeds, outputs)


def test_instance_timing_runs_the_batches_at_once(exe):
    model = Rendezvous("m", exe, 3)
    assert _run_together(model, 3, 2) > 0
    assert model.rows == [2, 2, 2]

    class Broken(ServedModel):
        def run(self, feeds, outputs=None):
            raise RuntimeError("run failed")

    with pytest.raises(RuntimeError, match="run failed"):
        _run_together(Broken("m", exe), 2, 1)


def _ready_batcher(model, config):
    """The app's batcher for ``model`` once the server is ready (None: served unbatched)."""
    app = create_app({"m": model}, config)
    with BackgroundServer(app) as s:
        x = np.zeros((1, 3, 8, 8), np.float32)
        status, body = http_post(f"{s.url}/v2/models/m/infer", kserve_json(x))
        assert status == 200, body[:300]
        return app.state.galaxir.batchers.get("m")


def test_default_config_chooses_the_instances_at_warm_up(exe, caplog):
    with caplog.at_level(logging.INFO, logger="galaxir.serve"):
        b = _ready_batcher(ServedModel("m", exe), ServeConfig(batch_sizes=[1, 2, 4]))
    assert b is not None and b.buckets == [1, 2, 4]
    assert set(b.rates) == {1, 2, 4} and all(r > 0 for r in b.rates.values())
    assert b.instances == choose_instances(b.rates)
    assert "batch instance(s)" in caplog.text
    b = _ready_batcher(ServedModel("m", exe), ServeConfig(batch_sizes=[1, 2, 4], batch_instances=3))
    assert b.instances == 3 and b.rates == {}


def test_batch_sizes_as_given_are_warmed_and_kept(exe):
    worse = PerRow("m", exe, lambda rows: 0.001 * rows)   # the default would drop 2 and 4
    b = _ready_batcher(worse, ServeConfig(batch_sizes=[4, 2, 1, 2], batch_instances=1))
    assert b is not None and b.buckets == [1, 2, 4] and b.max_batch == 4
    assert set(b.times) == {1, 2, 4}


def test_warmup_runs_time_each_size_that_many_times(exe):
    model = Recording("m", exe)
    _ready_batcher(model, ServeConfig(batch_sizes=[1, 2, 4], batch_instances=1, warmup_runs=3))
    warm = Counter(rows for rows, _ in model.runs[:-1])   # the last run is the request
    assert warm == {1: 4, 2: 4, 4: 4}                      # one that compiles, three timed


def test_no_warmup_serves_at_once_and_guesses_the_instances(exe):
    model = Recording("m", exe)
    b = _ready_batcher(model, ServeConfig(max_batch=4, warm=False))
    assert [rows for rows, _ in model.runs] == [1]          # only the request ran
    assert b.times == {} and b.buckets == [1, 2, 4]
    assert b.instances == guess_instances(_threads_per_run(model), available_cores())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch sizes must be 1..128"):
        ServeConfig(batch_sizes=[0, 4])
    with pytest.raises(ValueError, match="warmup_runs"):
        ServeConfig(warmup_runs=0)
    with pytest.raises(ValueError, match="batch_instances"):
        ServeConfig(batch_instances=0)


def _cli_config(*flags):
    return serve_config(build_parser().parse_args(["serve", "m.gxm", *flags]))


def test_serve_flags_make_the_config():
    c = _cli_config()
    assert not c.batching and c.batch_instances is None and c.warm and c.warmup_runs == 2
    c = _cli_config("--batch-sizes", "16,1,2,4,8", "--warmup-runs", "5", "--batch-instances", "2")
    assert c.batch_sizes == [1, 2, 4, 8, 16] and c.max_batch == 16 and c.batching
    assert c.warmup_runs == 5 and c.batch_instances == 2
    c = _cli_config("--max-batch", "8", "--no-warmup")
    assert c.max_batch == 8 and c.batch_sizes is None and not c.warm
    assert _cli_config("--batch-sizes", "2,4", "--max-batch", "4").max_batch == 4
    for flags, msg in [(["--batch-sizes", "1,x"], "comma-separated integers"),
                       (["--batch-sizes", "0,4"], "1..128"),
                       (["--batch-sizes", "1,2,4", "--max-batch", "8"], "differs from the largest"),
                       (["--warmup-runs", "0"], "--no-warmup"),
                       (["--batch-instances", "0"], "at least 1"),
                       (["--max-batch", "500"], "0..128")]:
        with pytest.raises(CliError, match=msg):
            _cli_config(*flags)


def test_serve_help_documents_the_flags():
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for flag in ("--batch-sizes", "--warmup-runs", "--no-warmup", "--batch-instances"):
        assert flag in text


def _grouping(exe, last_group, gaps):
    """Batch sizes (rows) when requests arrive ``gaps`` seconds apart at an idle batcher whose
    last batch held ``last_group`` requests, and the seconds they all took."""
    model = PerRow("m", exe, lambda rows: 0.0)
    sizes: list[int] = []

    async def go():
        pool = ThreadPoolExecutor(1)
        b = Batcher(model, 8, 5.0, pool, on_batch=lambda rows, n: sizes.append(rows),
                    instances=1)
        b.buckets, b.times = [1, 2, 4, 8], {1: 0.001, 2: 0.001, 4: 0.001, 8: 0.001}
        b._last_group = last_group
        b.start()
        t0 = time.monotonic()
        tasks = []
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            tasks.append(asyncio.ensure_future(
                b.submit({"x": np.full((1, 3, 8, 8), i, np.float32)}, None)))
        outs = await asyncio.gather(*tasks)
        took = time.monotonic() - t0
        await b.stop()
        pool.shutdown()
        assert [o["y"][0, 0] for o in outs] == list(range(len(gaps)))
        return took

    return sizes, asyncio.run(go())


def test_an_idle_batcher_waits_for_as_many_requests_as_its_last_batch_held(exe):
    # 4 clients answered together come back one by one: one batch of 4, closed as the 4th
    # arrives (not after the 5 s delay), not the first alone and 3 queued behind it
    sizes, took = _grouping(exe, 4, [0, 0.02, 0.02, 0.02])
    assert sizes == [4] and took < 4.0
    # a lone client does not wait for anyone
    sizes, took = _grouping(exe, 1, [0])
    assert sizes == [1] and took < 4.0


def test_a_size_that_timed_slow_gets_a_second_look_before_it_is_dropped(exe, monkeypatch):
    # linear in rows, but batch 4's compiling run and its timed runs were descheduled; the
    # second look is not
    calls = fake_clock(monkeypatch, lambda rows, nth: 0.3 if rows == 4 and nth < 2
                       else 0.002 * rows)
    b = Batcher(ServedModel("m", exe), 4, 0.001, None, instances=1)
    b.warm(repeats=2)
    assert calls == {1: 2, 2: 2, 4: 3}
    assert b.buckets == [1, 2, 4] and b.times[4] == pytest.approx(0.008)
    # a size that stays slow is dropped
    fake_clock(monkeypatch, lambda rows, nth: 0.3 if rows == 4 else 0.002 * rows)
    b = Batcher(ServedModel("m", exe), 4, 0.001, None, instances=1)
    b.warm(repeats=2)
    assert b.buckets == [1, 2]
