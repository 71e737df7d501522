"""What ``exe.profile(feeds, runs=N)`` returns: the time of each step of a run (a native
kernel, possibly fused from several ops, a view, or an op on the numpy reference), as a
table sorted by time, an aggregate by op kind, and a Chrome trace (chrome://tracing,
Perfetto).  Backends fill it in; this module only holds and formats the measurements."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepTiming:
    """One profiled step: what it runs and how long it took in each run (microseconds)."""

    index: int                 # position in the run's schedule
    name: str                  # the value(s) it produces
    kind: str                  # the op kind ("conv", "add"; "elementwise" for a fused chain)
    ops: list[str]             # every IR op the step implements (a fused kernel has several)
    where: str                 # "native", "view" (no work) or "numpy" (the reference)
    kernel: str                # native kernel name, "view", or "numpy"
    shapes: str                # "f32[1,64,56,56], f32[64] -> f32[1,64,56,56]"
    start_us: list[float] = field(default_factory=list)  # per run, from the run's start
    dur_us: list[float] = field(default_factory=list)    # per run

    @property
    def mean_us(self) -> float:
        return statistics.fmean(self.dur_us) if self.dur_us else 0.0

    @property
    def median_us(self) -> float:
        return statistics.median(self.dur_us) if self.dur_us else 0.0

    @property
    def label(self) -> str:
        return "+".join(self.ops) if len(self.ops) <= 4 else \
            f"{'+'.join(self.ops[:3])}+...({len(self.ops)} ops)"


@dataclass
class Profile:
    """Per-step timings of ``runs`` runs of one executable on one set of inputs.

    ``run_us[r]`` is the wall time of run r measured around the whole call (input binding,
    every step, output copies); the steps' times add up to slightly less (the difference is
    ``overhead_us``: Python work between steps and the timer reads).
    """

    target: str
    steps: list[StepTiming]
    run_us: list[float]
    run_start_us: list[float]  # each run's start, from the first run's start
    notes: list[str] = field(default_factory=list)

    # -- figures -------------------------------------------------------------------------
    @property
    def runs(self) -> int:
        return len(self.run_us)

    @property
    def total_us(self) -> float:
        """Mean wall time of a run."""
        return statistics.fmean(self.run_us) if self.run_us else 0.0

    @property
    def steps_us(self) -> float:
        """Mean over runs of the sum of the steps' times."""
        return sum(s.mean_us for s in self.steps)

    @property
    def overhead_us(self) -> float:
        return self.total_us - self.steps_us

    def step_sums_us(self) -> list[float]:
        """For each run, the sum of its steps' times."""
        return [sum(s.dur_us[r] for s in self.steps) for r in range(self.runs)]

    def by_kind(self) -> list[dict[str, Any]]:
        """Time per op kind, largest first: kind, count (steps), total_us (per run), share."""
        agg: dict[str, list] = {}
        for s in self.steps:
            a = agg.setdefault(s.kind, [0, 0.0])
            a[0] += 1
            a[1] += s.mean_us
        tot = self.steps_us or 1.0
        rows = [dict(kind=k, count=n, total_us=t, share=t / tot) for k, (n, t) in agg.items()]
        return sorted(rows, key=lambda r: -r["total_us"])

    # -- text ----------------------------------------------------------------------------
    def table(self, top: int | None = None) -> str:
        """The steps sorted by time (mean over runs), then the aggregate by op kind."""
        tot = self.steps_us or 1.0
        rows = sorted(self.steps, key=lambda s: -s.mean_us)
        shown = rows if top is None else rows[:top]
        head = (f"{self.target}: {len(self.steps)} steps, {self.runs} run(s); run "
                f"{self.total_us / 1e3:.3f} ms (mean), steps {self.steps_us / 1e3:.3f} ms, "
                f"outside the steps {self.overhead_us / 1e3:.3f} ms")
        lines = [head, f"{'#':>4} {'time us':>10} {'share':>6}  {'where':<6} {'kind':<18} "
                       f"{'ops':<28} {'name':<24} shapes"]
        for s in shown:
            lines.append(f"{s.index:>4} {_us(s.mean_us):>10} {100 * s.mean_us / tot:>5.1f}%  "
                         f"{s.where:<6} {s.kind:<18} {s.label:<28} {_clip(s.name, 24):<24} "
                         f"{s.shapes}")
        if top is not None and len(rows) > top:
            rest = sum(s.mean_us for s in rows[top:])
            lines.append(f"{'':>4} {_us(rest):>10} {100 * rest / tot:>5.1f}%  ({len(rows) - top} "
                         "more steps)")
        lines.append("by op kind:")
        lines.append(f"  {'kind':<24} {'steps':>5} {'time us':>10} {'share':>6}")
        for r in self.by_kind():
            lines.append(f"  {r['kind']:<24} {r['count']:>5} {_us(r['total_us']):>10} "
                         f"{100 * r['share']:>5.1f}%")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # -- Chrome trace --------------------------------------------------------------------
    def chrome_trace(self) -> dict[str, Any]:
        """Trace Event Format: one complete ("X") event per step per run and one per run,
        timestamps and durations in microseconds; loads in chrome://tracing and Perfetto."""
        events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
             "args": {"name": f"galaxir {self.target}"}},
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "runs"}},
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": 1, "args": {"name": "steps"}},
        ]
        for r in range(self.runs):
            t0 = self.run_start_us[r]
            events.append({"name": f"run {r}", "cat": "run", "ph": "X", "pid": 0, "tid": 0,
                           "ts": round(t0, 3), "dur": round(self.run_us[r], 3)})
            for s in self.steps:
                events.append({
                    "name": s.label, "cat": s.where, "ph": "X", "pid": 0, "tid": 1,
                    "ts": round(t0 + s.start_us[r], 3), "dur": round(s.dur_us[r], 3),
                    "args": {"step": s.index, "kind": s.kind, "value": s.name,
                             "kernel": s.kernel, "shapes": s.shapes, "run": r}})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def save_chrome_trace(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.chrome_trace()))
        return p


def time_steps(target: str, steps: list[StepTiming], start_run, runs: int, warmup: int,
               clock: str) -> Profile:
    """Time ``runs`` runs (after ``warmup``) of a backend that reports its kernels:
    ``start_run()`` sets up one run and returns its units, called in order
    (``Executable.kernel_steps``): either one zero-argument callable per entry of ``steps``
    (each timed here), or ``(indices, fn)`` pairs where ``fn(now)`` runs the steps at
    ``indices`` and returns one ``(start_ns, end_ns)`` span per index, read from
    ``now()`` or the same clock (``now.clock_id``): a native segment timing its own
    kernels, a partitioned executable its segments' kernels.  A step no unit covers (a
    view) takes no time, placed where the step before it ended."""
    check_clock(clock)
    now = clock_ns(clock)
    run_us, run_start, t_first = [], [], None
    for r in range(warmup + max(1, runs)):
        units = start_run()
        t0 = now()
        spans = run_units(units, now)
        t1 = now()
        if r < warmup:
            continue
        t_first = t0 if t_first is None else t_first
        run_start.append((t0 - t_first) / 1e3)
        run_us.append((t1 - t0) / 1e3)
        prev = t0
        for k, st in enumerate(steps):
            a, b = spans.get(k, (prev, prev))
            st.start_us.append((a - t0) / 1e3)
            st.dur_us.append((b - a) / 1e3)
            prev = b
    return Profile(target, steps, run_us, run_start)


def run_units(units, now) -> dict[int, tuple[int, int]]:
    """Run one run's units (see ``time_steps``): {step index: (start ns, end ns)}."""
    spans: dict[int, tuple[int, int]] = {}
    for k, u in enumerate(units):
        if callable(u):
            a = now()
            u()
            spans[k] = (a, now())
        else:
            indices, fn = u
            got = fn(now)
            spans.update(zip(indices, got))
    return spans


def timed(fn):
    """``fn`` (no arguments) as the ``fn(now)`` of a one-step unit, timed around the call."""
    def run(now):
        a = now()
        fn()
        return [(a, now())]
    return run


def check_clock(clock: str) -> None:
    if clock not in ("wall", "cpu"):
        from ..errors import ExecutionError
        raise ExecutionError(f"profile: clock must be 'wall' or 'cpu', got {clock!r}")


class _Clock:
    """The Python-side reading of one clock in nanoseconds; ``clock_id`` is the id native
    code passes to clock_gettime to read the same clock."""

    def __init__(self, clock_id: int):
        import time
        self.clock_id = clock_id
        self._get = time.clock_gettime_ns

    def __call__(self) -> int:
        return self._get(self.clock_id)


def clock_ns(clock: str):
    """The Python-side reading of ``clock`` in nanoseconds (the one native code uses)."""
    import time
    return _Clock(time.CLOCK_MONOTONIC if clock == "wall" else time.CLOCK_THREAD_CPUTIME_ID)


def _us(x: float) -> str:
    return f"{x:.1f}" if x >= 100 else f"{x:.3f}"


def _type_str(v) -> str:
    if hasattr(v, "type"):
        return str(v.type)
    arr = getattr(v, "array", None)  # a constant made by lowering (packed weights)
    return f"const{list(arr.shape)}" if arr is not None else "?"


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 3] + "..."


def value_label(values) -> str:
    """The names of some values (for a step's name), or their producers' op names."""
    names = []
    for v in values:
        if v is None:
            continue
        names.append(v.name or (f"%{v.producer.name}" if getattr(v, "producer", None) else "%?"))
    return ", ".join(names) or "-"


def shapes_label(inputs, outputs) -> str:
    """``"f32[1,3], f32[3] -> f32[1,3]"`` from the values' types."""
    def one(vs):
        return ", ".join(_type_str(v) for v in vs if v is not None)
    return f"{one(inputs)} -> {one(outputs)}"
