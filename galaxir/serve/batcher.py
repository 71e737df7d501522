"""Dynamic batching: concurrent requests to a model with a batch dimension are merged
into one run.

Before serving, ``warm`` runs the model once at every batch size the batcher may use
(powers of two up to ``max_batch``), so a target that compiles per shape never compiles
while serving, and times more runs of each: sizes above the one with the best time per
row are dropped after a second look (on some models and machines a bigger batch costs
more per row), and the times choose, for a batch whose rows fall between two sizes,
between padding up and running the largest size that fits now, leaving the rest for the
next batch (``plan``).

A request waits at most ``max_delay`` seconds (from its arrival) for others; a batch
closes early when it holds ``max_batch`` rows.  A request that finds the model idle (no
batch running, nothing queued) waits only for as many requests as the last batch held:
after a batch of one (a lone client) it runs at once; after a batch of 16 answered 16
clients, their next requests come back within a moment and form the next batch of 16,
instead of the first one back running alone while the other 15 queue behind it.
Requests merge only when their inputs agree in everything but the batch dim (dtypes,
other dims) and ask for the same outputs.  The merged rows are padded with zeros up to a
batch size (powers of two up to ``max_batch``, or the ``sizes`` given), so a compiled
target specializes for a handful of batch sizes instead of every sum; each
request gets its own rows of every output back.  Padding and merging assume the model
treats rows independently (what a batch dimension means for inference: no batch
statistics).  Up to ``instances`` batches of a model run at once on the server's thread
pool (like Triton's model instances); a batch is formed when an instance is free, so
while all are busy requests queue up and the next batches come out bigger.

How many instances (``instances=None``: chosen by ``warm``): when ``max_batch`` rows wait,
k instances take about max_batch/k rows each, so the warm-up times k runs of that many
rows (the largest kept size that fits) at once for k = 1, 2, 4 ... and keeps the fewest k
within 5% of the most rows per second (``choose_instances``).  One run that already keeps
every core busy (a conv-heavy model with a thread per core) does best with one instance
and full batches; a model whose runs leave cores idle (small kernels, serial parts) gains
from running batches side by side.
Without warm-up times the guess is one instance per ``threads`` cores of the machine."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..backends.cpu.parallel import available_cores
from .models import ServedModel

MAX_BATCH_LIMIT = 128  # a handful of specializations (one per power of two)
#: sizes up to the largest whose time per row is at most this much worse than the best are
#: kept (a bigger batch also saves per-run overhead outside the timed run)
KEEP_TOLERANCE = 1.05
#: more batch instances than this are never tried (each needs a run thread and an arena)
MAX_INSTANCES = 4

log = logging.getLogger("galaxir.serve")


def bucket_sizes(max_batch: int) -> list[int]:
    """The batch sizes runs are padded to: powers of two below max_batch, then max_batch."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None
    rows: int
    key: tuple
    arrived: float
    future: asyncio.Future = field(repr=False)


def example_feeds(model: ServedModel, rows: int) -> dict[str, np.ndarray] | None:
    """Zeros for every input with ``rows`` in the batch dim; None when another dim is
    symbolic (the sizes requests will bring are unknown)."""
    feeds = {}
    for info in model.exe.inputs:
        rest = info.shape[1:]
        if info.dtype is None or not all(isinstance(d, int) for d in rest):
            return None
        feeds[info.name] = np.zeros((rows,) + tuple(rest), info.dtype)
    return feeds


def keep_sizes(times: dict[int, float]) -> list[int]:
    """The sizes worth batching to: every size up to the largest one whose time per row is
    within ``KEEP_TOLERANCE`` of the best.  A size in between that timed worse is kept (on
    a shared machine one slow run is noise; the curve it sits on falls)."""
    if not times:
        return []
    per_row = {b: t / b for b, t in times.items()}
    best = min(per_row.values())
    top = max(b for b, r in per_row.items() if r <= best * KEEP_TOLERANCE)
    return sorted(b for b in times if b <= top)


def instance_shares(load: int, sizes: list[int], limit: int) -> dict[int, int]:
    """k -> the batch size each of k instances runs when ``load`` rows are waiting: k = 1, 2,
    4 ... up to ``limit`` (and ``load``), each running the largest size in ``sizes`` that
    fits its share ``load // k``."""
    shares, k = {}, 1
    while k <= min(max(1, limit), load):
        fit = [b for b in sizes if b <= load // k]
        if fit:
            shares[k] = fit[-1]
        k *= 2
    return shares or {1: sizes[0]}


def choose_instances(rows_per_s: dict[int, float]) -> int:
    """The fewest instances whose measured rows per second is within ``KEEP_TOLERANCE`` of
    the best: each extra instance makes batches smaller and splits requests unevenly between
    instances, so it has to pay clearly."""
    if not rows_per_s:
        return 1
    best = max(rows_per_s.values())
    return min(k for k, r in rows_per_s.items() if r * KEEP_TOLERANCE >= best)


def guess_instances(threads_per_run: int, cores: int) -> int:
    """Without measurements: one instance per ``threads_per_run`` cores (a run that already
    uses every core gets one instance), at most ``MAX_INSTANCES``."""
    return max(1, min(MAX_INSTANCES, cores // max(1, threads_per_run)))


def check_sizes(sizes) -> list[int]:
    """Batch sizes given by the user: sorted, unique, each 1..MAX_BATCH_LIMIT."""
    out = sorted(set(int(b) for b in sizes))
    if not out or out[0] < 1 or out[-1] > MAX_BATCH_LIMIT:
        raise ValueError(f"batch sizes must be 1..{MAX_BATCH_LIMIT}, got {list(sizes)}")
    return out


class Batcher:
    """``sizes``: the batch sizes to pad to, used as given (default: powers of two up to
    ``max_batch``, pruned by the warm-up times).  ``instances``: batches running at once
    (None: chosen by ``warm``, at most ``max_instances``)."""

    def __init__(self, model: ServedModel, max_batch: int, max_delay: float, executor: Executor,
                 on_batch: Callable[[int, int], None] | None = None,
                 instances: int | None = None, sizes: list[int] | None = None,
                 max_instances: int = MAX_INSTANCES):
        if sizes is not None:
            sizes = check_sizes(sizes)
            max_batch = sizes[-1]
        if not 1 <= max_batch <= MAX_BATCH_LIMIT:
            raise ValueError(f"max_batch must be 1..{MAX_BATCH_LIMIT}, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.executor = executor
        self.on_batch = on_batch
        self.fixed_sizes = sizes is not None
        self.buckets = sizes if sizes is not None else bucket_sizes(max_batch)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._held: list[_Pending] = []  # taken from the queue, did not fit the last batch
        self._last_group = 1  # requests in the last batch: how many to expect in the next
        self.auto_instances = instances is None
        self.max_instances = max(1, max_instances)
        self.instances = max(1, instances) if instances is not None else \
            guess_instances(_threads_per_run(model), available_cores())
        self._free: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self.times: dict[int, float] = {}  # warmed size -> best run time (s)
        self.rates: dict[int, float] = {}  # instances tried -> rows per second

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._free = asyncio.Semaphore(self.instances)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running:  # batches already running finish (graceful shutdown)
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, feeds: dict[str, np.ndarray], outputs) -> dict:
        """The outputs for one request's rows (the request is already validated against the
        model's signature, so every input has the batch dim first)."""
        rows = int(next(iter(feeds.values())).shape[0])
        key = (tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items())),
               tuple(outputs) if outputs is not None else None)
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(feeds, tuple(outputs) if outputs is not None else None,
                                        rows, key, time.monotonic(), fut))
        return await fut

    def warm(self, repeats: int = 2) -> dict[int, float]:
        """Run every bucket size before serving (a per-shape target compiles each now, not
        inside a request), time the best of ``repeats`` more runs, keep the sizes that pay
        (``keep_sizes``, after ``2 * repeats`` more runs of each size it would drop; sizes
        given by the user are all kept) and, when ``instances`` was left to the warm-up,
        choose it (``time_instances``).  Blocking: call it on a worker thread.  Returns the
        times (empty when the model's non-batch dims are symbolic: nothing can be
        warmed)."""
        times: dict[int, float] = {}
        for b in self.buckets:
            feeds = example_feeds(self.model, b)
            if feeds is None:
                log.info("model '%s': symbolic non-batch dims, batch sizes compile on first use",
                         self.model.name)
                return {}
            first = self._best_time(feeds, 1)
            times[b] = best = self._best_time(feeds, repeats)
            log.info("model '%s': batch %d ready (first run %.0f ms, then %.2f ms, %.3f ms/row)",
                     self.model.name, b, 1e3 * first, 1e3 * best, 1e3 * best / b)
        self.times = times
        if not self.fixed_sizes:
            for b in sorted(set(times) - set(keep_sizes(times))):
                # a second look before a size is dropped: one descheduled run on a shared
                # machine is enough to make it look worse than it is
                times[b] = min(times[b], self._best_time(example_feeds(self.model, b),
                                                         2 * repeats))
            self.buckets = keep_sizes(times)
        dropped = sorted(set(times) - set(self.buckets))
        log.info("model '%s': batch sizes %s%s", self.model.name, self.buckets,
                 f" (dropped {dropped}: no cheaper per row)" if dropped else "")
        if self.auto_instances and self.buckets[-1] > 1:
            self.rates = self.time_instances(2 * max(1, repeats) + 1)
            self.instances = choose_instances(self.rates)
            log.info("model '%s': %d batch instance(s) (rows/s with k batches at once, %d rows "
                     "waiting: %s)", self.model.name, self.instances, self.max_batch,
                     ", ".join(f"k={k} {r:.0f}" for k, r in sorted(self.rates.items())))
        return times

    def _best_time(self, feeds: dict[str, np.ndarray], runs: int) -> float:
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            self.model.run(feeds)
            best = min(best, time.perf_counter() - t0)
        return best

    def time_instances(self, repeats: int) -> dict[int, float]:
        """Rows per second of k batches run at once when ``max_batch`` rows wait, each batch
        taking its share (``instance_shares``), for k = 1, 2, 4 ...: the best of ``repeats``
        rounds, the candidates alternating within a round so that load from elsewhere hits
        each alike (``warm`` gives it 2 * repeats + 1 rounds: each round is a few runs, and
        the choice between candidates is closer than between batch sizes)."""
        shares = instance_shares(self.max_batch, self.buckets, self.max_instances)
        best = {k: float("inf") for k in shares}
        for _ in range(repeats):
            for k, rows in shares.items():
                best[k] = min(best[k], self._time_together(k, rows))
        return {k: k * shares[k] / t for k, t in best.items()}

    def _time_together(self, k: int, rows: int) -> float:
        return _run_together(self.model, k, rows)

    def pad_to(self, rows: int) -> int:
        for b in self.buckets:
            if b >= rows:
                return b
        return rows  # a single request bigger than max_batch runs as it is

    def cost(self, rows: int) -> float:
        """Estimated seconds to run ``rows`` rows as padded batches of warmed sizes."""
        total = 0.0
        while rows > 0:
            up = self.pad_to(rows)
            size = up if up in self.times else self.buckets[-1]
            total += self.times.get(size, 0.0)
            rows -= size
        return total

    def plan(self, rows: int) -> int:
        """How many of ``rows`` rows to run now: all of them (padded up to a warmed size), or
        the largest warmed size below, leaving the rest for the next batch, whichever the
        warm-up times say is cheaper (always all of them when nothing was timed)."""
        if not self.times or rows in self.buckets or rows > self.buckets[-1]:
            return min(rows, self.buckets[-1]) if self.times else rows
        down = max((b for b in self.buckets if b <= rows), default=rows)
        if down == rows or self.cost(rows) <= self.times[down] + self.cost(rows - down):
            return rows
        return down

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self._held:
            return self._held.pop(0)
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _loop(self) -> None:
        while True:
            await self._free.acquire()  # an instance is free: form the next batch
            first = await self._next(None)
            batch, rows, skipped = [first], first.rows, []
            deadline = first.arrived + self.max_delay
            idle = not self._running and not self._held and self._queue.empty()
            if idle and self._last_group <= 1:
                deadline = 0.0  # a lone client, nothing queued: waiting would only add latency
            limit = self.buckets[-1] if self.times else self.max_batch
            while rows < limit:
                if idle and len(batch) >= self._last_group and self._queue.empty():
                    break  # the last batch's clients are back: no need to wait longer
                item = await self._next(deadline - time.monotonic())
                if item is None:
                    break
                if item.key == first.key and rows + item.rows <= limit:
                    batch.append(item)
                    rows += item.rows
                else:
                    skipped.append(item)
                    if len(skipped) > 4 * self.max_batch:
                        break
            take, kept = self.plan(rows), 0
            for i, p in enumerate(batch):  # whole requests, in arrival order
                if i and kept + p.rows > take:
                    skipped = batch[i:] + skipped
                    batch = batch[:i]
                    break
                kept += p.rows
            rows = kept
            self._held = skipped + self._held
            self._last_group = len(batch)
            task = asyncio.get_running_loop().create_task(self._run(batch, rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending], rows: int) -> None:
        try:
            await self._run_batch(batch)
        finally:
            self._free.release()

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        live = [p for p in batch if not p.future.done()]  # a client may have gone
        if not live:
            return
        rows = sum(p.rows for p in live)
        padded = self.pad_to(rows)
        feeds = {}
        for name in live[0].feeds:
            parts = [p.feeds[name] for p in live]
            if padded > rows:
                pad = np.zeros((padded - rows,) + parts[0].shape[1:], parts[0].dtype)
                parts.append(pad)
            feeds[name] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        if self.on_batch is not None:
            self.on_batch(rows, len(live))
        try:
            out = await loop.run_in_executor(self.executor, self.model.run, feeds,
                                             live[0].outputs)
        except Exception as e:  # every request of the batch gets the error
            for p in live:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        start = 0
        for p in live:
            part = {n: v[start:start + p.rows] for n, v in out.items()}
            start += p.rows
            if not p.future.done():
                p.future.set_result(part)


def _run_together(model: ServedModel, k: int, rows: int) -> float:
    """Wall seconds for ``k`` runs of ``rows`` rows started together on k threads."""
    feeds = example_feeds(model, rows)
    if k == 1:
        t0 = time.perf_counter()
        model.run(feeds)
        return time.perf_counter() - t0
    start = threading.Barrier(k + 1)
    errors: list[BaseException] = []

    def one():
        start.wait()
        try:
            model.run(feeds)
        except BaseException as e:  # raised below, on the warm-up's thread
            errors.append(e)

    threads = [threading.Thread(target=one, name="galaxir-serve-warm") for _ in range(k)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def _threads_per_run(model: ServedModel) -> int:
    """Threads one run of the model uses (the cpu target's pool size; 1 elsewhere)."""
    pool = getattr(model.exe, "pool", None)
    return int(getattr(pool, "size", 1) or 1)

