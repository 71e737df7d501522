"""O3 memory: liveness over a schedule, in-place reuse, buffer sharing and one static arena.

A *schedule* is the order in which a backend runs its steps.  Each ``Step`` defines some
values and uses others (keys are any hashable: value ids, names).  From it:

1. **Liveness**: a buffer lives from the step that defines it to its last use (graph
   outputs live to the end).  Views (reshape, flatten, ...) are aliases of their source:
   their uses keep the source's buffer alive.
2. **In-place**: an elementwise step whose input (same size, same shape as the output) dies
   at that step writes its output into that input's buffer; the two values share one buffer
   (recorded in ``MemoryPlan.inplace``).
3. **Buffer sharing / arena**: every buffer gets a 64-byte aligned offset in one arena;
   buffers whose lifetimes intersect never overlap.  Two placements are tried, the smaller
   arena wins: greedy by size (each buffer, largest first, at the lowest offset that fits
   between the placed buffers it lives with) and interval-graph colouring with networkx
   (buffers of one colour share one slot, slots laid end to end).
4. **Validation**: ``validate_plan`` proves the plan sound (aligned, inside the arena, no two
   simultaneously-live buffers overlapping) and raises ``CompileError`` naming the buffers.

``plan_module(module)`` builds the schedule from a module's top-level graph (sizes from
static types, or from concrete input ``shapes`` by re-inferring types); the cpu backend
builds it from its lowered steps (galaxir/backends/cpu/program.py) and executes the plan.
The ``plan-memory`` pass (O3) records the plan's summary in ``module.metadata``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Sequence

from ..errors import CompileError
from ..ir.core import Module, Value
from ..ir.traits import InPlace, View
from ..ir.types import TensorType
from .manager import Pass, PassContext

ALIGN = 64


def _always_view(op) -> bool:
    """Is ``op``'s result its first operand's buffer reinterpreted (``View`` trait; dropout's
    view holds only at inference, which this analysis does not check)?"""
    t = op.trait(View)
    return t is not None and t.kind != "inference"


def align_up(n: int, align: int = ALIGN) -> int:
    return -(-max(int(n), 1) // align) * align


@dataclass
class Step:
    """One schedule entry: values it defines and uses, the (output, input) pairs it may run
    in place, and the scratch bytes it needs while it runs."""

    defs: Sequence[Hashable] = ()
    uses: Sequence[Hashable] = ()
    inplace: Sequence[tuple[Hashable, Hashable]] = ()
    scratch: int = 0
    name: str = ""


@dataclass
class Buffer:
    key: Hashable           # the first value stored in it (or ("scratch", step))
    size: int               # bytes (the largest value it holds)
    start: int              # first step it is live at
    end: int                # last step it is live at (inclusive; len(steps) = live-out)
    offset: int = -1
    name: str = ""
    members: list = field(default_factory=list)   # keys of every value stored in it
    kind: str = "value"     # "value" | "scratch"

    @property
    def padded(self) -> int:
        return align_up(self.size)

    def lives_with(self, other: "Buffer") -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena_bytes: int
    naive_bytes: int          # every value (and scratch) in its own buffer
    peak_live_bytes: int      # the largest set of simultaneously-live buffers (a lower bound)
    peak_step: int
    num_steps: int
    assignment: dict = field(default_factory=dict)      # value key -> Buffer
    inplace: list = field(default_factory=list)         # (step, output key, input key)
    method: str = ""
    align: int = ALIGN

    def buffer_of(self, key: Hashable) -> Buffer | None:
        return self.assignment.get(key)

    def offset_of(self, key: Hashable) -> int:
        return self.assignment[key].offset

    def summary(self) -> dict[str, Any]:
        return dict(arena_bytes=self.arena_bytes, naive_bytes=self.naive_bytes,
                    peak_live_bytes=self.peak_live_bytes, peak_step=self.peak_step,
                    buffers=len(self.buffers), values=len(self.assignment),
                    inplace=len(self.inplace), method=self.method,
                    ratio=round(self.arena_bytes / self.naive_bytes, 4) if self.naive_bytes else 0.0)

    def listing(self) -> list[dict[str, Any]]:
        """Each buffer: name, offset, size, lifetime in steps, the values sharing it."""
        return [dict(name=b.name, offset=b.offset, size=b.size, start=b.start, end=b.end,
                     kind=b.kind, shared_by=len(b.members))
                for b in sorted(self.buffers, key=lambda b: (b.offset, b.start))]

    def as_report(self) -> "MemoryReport":
        """A dict (arena_bytes, naive_bytes, largest_live_set_bytes, ..., buffers) that
        prints as the text report."""
        s = self.summary()
        return MemoryReport(arena_bytes=s["arena_bytes"], naive_bytes=s["naive_bytes"],
                            largest_live_set_bytes=s["peak_live_bytes"],
                            largest_live_set_step=s["peak_step"], ratio=s["ratio"],
                            inplace_steps=s["inplace"], method=s["method"],
                            buffers=self.listing(), text=self.report())

    def report(self) -> str:
        s = self.summary()
        mib = 2.0 ** 20
        lines = [f"memory plan: arena {s['arena_bytes'] / mib:.2f} MiB for {s['values']} values "
                 f"in {s['buffers']} buffers ({s['method']}); naive sum {s['naive_bytes'] / mib:.2f}"
                 f" MiB ({100 * s['ratio']:.1f}%); largest live set {s['peak_live_bytes'] / mib:.2f}"
                 f" MiB at step {s['peak_step']}; {s['inplace']} in-place step(s)"]
        for row in self.listing():
            lines.append(f"  {row['offset']:>12}  {row['size']:>12}  [{row['start']}, "
                         f"{row['end']}]  {row['name']}" + (f" (+{row['shared_by'] - 1} in place)"
                                                             if row['shared_by'] > 1 else ""))
        return "\n".join(lines)


class MemoryReport(dict):
    """``exe.memory_report()``: a dict that prints as the plan's text report."""

    def __str__(self) -> str:
        return self.get("text", dict.__repr__(self))


# -- liveness --------------------------------------------------------------------------------
def plan_schedule(steps: Sequence[Step], sizes: Mapping[Hashable, int], *,
                  aliases: Mapping[Hashable, Hashable] | None = None,
                  live_out: Iterable[Hashable] = (), names: Mapping[Hashable, str] | None = None,
                  inplace: bool = True, method: str = "best", align: int = ALIGN,
                  validate: bool = True) -> MemoryPlan:
    """The arena plan for ``steps``.  Only keys in ``sizes`` (values the schedule defines and
    the arena holds) are planned; other uses (inputs, constants) are ignored.  ``aliases``
    maps a view's key to its source's key."""
    aliases = dict(aliases or {})
    names = names or {}

    def root(k):
        seen = 0
        while k in aliases and seen < 10_000:
            k = aliases[k]
            seen += 1
        return k

    n = len(steps)
    start: dict[Hashable, int] = {}
    end: dict[Hashable, int] = {}
    for i, s in enumerate(steps):
        for k in s.defs:
            k = root(k)
            if k in sizes and k not in start:
                start[k] = i
                end[k] = max(end.get(k, i), i)
        for k in s.uses:
            k = root(k)
            if k in sizes:
                end[k] = max(end.get(k, i), i)
    for k in live_out:
        k = root(k)
        if k in start:
            end[k] = n
    for k in sizes:
        if k in start:
            continue
        if root(k) == k:
            raise CompileError(f"memory plan: value '{names.get(k, k)}' has a size but no step "
                               "defines it")

    # in-place: union a step's output into an input buffer that dies at that step
    group: dict[Hashable, Hashable] = {k: k for k in start}     # value -> its group's head
    gsize: dict[Hashable, int] = {k: int(sizes[k]) for k in start}
    gend: dict[Hashable, int] = dict(end)                       # head -> group's last use
    gmembers: dict[Hashable, list] = {k: [k] for k in start}
    glast: dict[Hashable, Hashable] = {k: k for k in start}     # head -> latest member
    done: list[tuple[int, Hashable, Hashable]] = []
    if inplace:
        for i, s in enumerate(steps):
            taken: set = set()
            for out, inp in s.inplace:
                o, r = root(out), root(inp)
                if o not in start or r not in start or o == r or group[o] != o:
                    continue
                if start[o] != i:
                    continue
                head = group[r]
                if head in taken or glast[head] != r or gend[head] != i or end[r] != i:
                    continue
                # every read of r at this step must be through ``inp`` itself (no other view)
                if any(root(u) == r and u != inp for u in s.uses):
                    continue
                if int(sizes[o]) > gsize[head]:
                    continue
                taken.add(head)
                group[o] = head
                gmembers[head].append(o)
                glast[head] = o
                gend[head] = end[o]
                del gmembers[o], glast[o], gend[o], gsize[o]
                done.append((i, out, inp))

    buffers: list[Buffer] = []
    assignment: dict[Hashable, Buffer] = {}
    for head, members in gmembers.items():
        b = Buffer(head, gsize[head], start[head], gend[head], name=str(names.get(head, head)),
                   members=list(members))
        buffers.append(b)
        for k in members:
            assignment[k] = b
    for k in list(sizes) + list(aliases):
        if k not in assignment and root(k) in assignment:
            assignment[k] = assignment[root(k)]
    for i, s in enumerate(steps):
        if s.scratch:
            buffers.append(Buffer(("scratch", i), int(s.scratch), i, i,
                                  name=f"scratch@{i}" + (f" ({s.name})" if s.name else ""),
                                  kind="scratch"))
    naive = sum(align_up(sizes[k], align) for k in start) + sum(
        align_up(s.scratch, align) for s in steps if s.scratch)
    peak, peak_step = live_peak(buffers, n, align)
    arena, used = place(buffers, method, align)
    plan = MemoryPlan(buffers, arena, naive, peak, peak_step, n, assignment, done, used, align)
    if validate:
        validate_plan(plan, sizes)
    return plan


def live_peak(buffers: Sequence[Buffer], n: int, align: int = ALIGN) -> tuple[int, int]:
    """(bytes, step) of the largest set of buffers live at one step."""
    delta = [0] * (n + 2)
    for b in buffers:
        delta[b.start] += align_up(b.size, align)
        delta[min(b.end, n) + 1] -= align_up(b.size, align)
    best, at, cur = 0, 0, 0
    for i in range(n + 1):
        cur += delta[i]
        if cur > best:
            best, at = cur, i
    return best, at


# -- placement -------------------------------------------------------------------------------
def place_greedy_by_size(buffers: Sequence[Buffer], align: int = ALIGN) -> dict[int, int]:
    """Largest first, each at the lowest aligned offset that clears every placed buffer it
    lives with (the TFLite / "greedy by size" strategy).  Returns index -> offset."""
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, buffers[i].start))
    placed: list[int] = []
    out: dict[int, int] = {}
    for i in order:
        b = buffers[i]
        size = align_up(b.size, align)
        busy = sorted((out[j], out[j] + align_up(buffers[j].size, align)) for j in placed
                      if buffers[j].lives_with(b))
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        out[i] = off
        placed.append(i)
    return out


def place_by_colouring(buffers: Sequence[Buffer], align: int = ALIGN) -> dict[int, int]:
    """Colour the interference (interval) graph with networkx; each colour is one slot as
    big as its largest buffer, slots laid end to end.  Returns index -> offset."""
    import networkx as nx
    g = nx.Graph()
    g.add_nodes_from(range(len(buffers)))
    order = sorted(range(len(buffers)), key=lambda i: buffers[i].start)
    active: list[int] = []
    for i in order:
        active = [j for j in active if buffers[j].end >= buffers[i].start]
        g.add_edges_from((i, j) for j in active)
        active.append(i)
    # colouring big buffers first keeps big slots few
    by_size = sorted(range(len(buffers)), key=lambda i: -buffers[i].size)
    colours = nx.coloring.greedy_color(g, strategy=lambda gr, c: iter(by_size))
    slot = {}
    for i, c in colours.items():
        slot[c] = max(slot.get(c, 0), align_up(buffers[i].size, align))
    base, off = {}, 0
    for c in sorted(slot):
        base[c] = off
        off += slot[c]
    return {i: base[c] for i, c in colours.items()}


def place(buffers: list[Buffer], method: str = "best", align: int = ALIGN) -> tuple[int, str]:
    """Assign ``offset`` to every buffer; returns (arena bytes, method used)."""
    if not buffers:
        return 0, method
    cands = []
    if method in ("best", "greedy-size"):
        cands.append(("greedy-size", place_greedy_by_size(buffers, align)))
    if method in ("best", "colouring"):
        try:
            cands.append(("colouring", place_by_colouring(buffers, align)))
        except ImportError:
            if method == "colouring":
                raise
    if not cands:
        raise CompileError(f"memory plan: unknown placement method '{method}' "
                           "(best, greedy-size, colouring)")

    def size_of(offs):
        return max(offs[i] + align_up(b.size, align) for i, b in enumerate(buffers))

    name, offs = min(cands, key=lambda c: size_of(c[1]))
    for i, b in enumerate(buffers):
        b.offset = offs[i]
    return size_of(offs), name


# -- validation ------------------------------------------------------------------------------
def validate_plan(plan: MemoryPlan, sizes: Mapping[Hashable, int] | None = None) -> None:
    """Prove the plan sound or raise CompileError naming the offending buffers: every buffer
    aligned and inside the arena, every value fitting its buffer, and no two buffers whose
    lifetimes intersect sharing a byte."""
    bufs = plan.buffers
    for b in bufs:
        if b.offset < 0 or b.offset % plan.align:
            raise CompileError(f"memory plan: buffer '{b.name}' has offset {b.offset}, not a "
                               f"multiple of {plan.align}")
        if b.offset + b.size > plan.arena_bytes:
            raise CompileError(f"memory plan: buffer '{b.name}' [{b.offset}, {b.offset + b.size})"
                               f" overruns the {plan.arena_bytes} byte arena")
        if b.start > b.end:
            raise CompileError(f"memory plan: buffer '{b.name}' ends (step {b.end}) before it "
                               f"starts (step {b.start})")
    if sizes is not None:
        for k, b in plan.assignment.items():
            if k in sizes and int(sizes[k]) > b.size:
                raise CompileError(f"memory plan: value '{k}' ({sizes[k]} bytes) does not fit "
                                   f"buffer '{b.name}' ({b.size} bytes)")
    # sweep over start steps: compare each buffer with the ones still live
    order = sorted(bufs, key=lambda b: (b.start, b.end))
    active: list[Buffer] = []
    for b in order:
        active = [a for a in active if a.end >= b.start]
        for a in active:
            if a.offset < b.offset + b.size and b.offset < a.offset + a.size \
                    and a.size > 0 and b.size > 0:
                raise CompileError(
                    f"memory plan: buffers '{a.name}' (bytes [{a.offset}, {a.offset + a.size}), "
                    f"steps {a.start}..{a.end}) and '{b.name}' (bytes [{b.offset}, "
                    f"{b.offset + b.size}), steps {b.start}..{b.end}) are live at the same time "
                    "and overlap")
        active.append(b)
    # in-place pairs: the input must die where the output is born
    for i, out, inp in plan.inplace:
        bo, bi = plan.assignment.get(out), plan.assignment.get(inp)
        if bo is None or bo is not bi:
            raise CompileError(f"memory plan: in-place step {i} ('{out}' over '{inp}') does not "
                               "share one buffer")


# -- IR-level schedule -----------------------------------------------------------------------
def _static_nbytes(v: Value) -> int | None:
    t = v.type
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    if not all(isinstance(d, int) and d >= 0 for d in t.shape):
        return None
    try:
        item = t.dtype.numpy.itemsize
    except Exception:
        return None
    if t.dtype.numpy.hasobject:
        return None
    n = 1
    for d in t.shape:
        n *= d
    return n * item


def specialize_types(module: Module, shapes: Mapping[str, Sequence[int]]) -> Module:
    """A copy of ``module`` whose inputs have the given concrete shapes, result types
    re-inferred op by op (ops whose inference fails keep their types)."""
    m = module.clone()
    g = m.graph
    for a in g.inputs:
        if a.name in shapes and isinstance(a.type, TensorType):
            a.type = TensorType(a.type.dtype, tuple(int(d) for d in shapes[a.name]))
    for op in g.block:
        if op.is_terminator or op.name == "constant" or op.opdef is None:
            continue
        try:
            types = op.opdef.infer_types(op)
        except Exception:
            continue
        if types is not None and len(types) == len(op.results):
            for r, t in zip(op.results, types):
                r.type = t
    return m


def schedule_of(module: Module) -> tuple[list[Step], dict, dict, list, dict]:
    """(steps, sizes, aliases, live_out, names) for the top-level graph, in block order.
    Values of unknown size and constants stay out of the arena."""
    steps: list[Step] = []
    sizes: dict[int, int] = {}
    aliases: dict[int, int] = {}
    names: dict[int, str] = {}
    for op in module.graph.block:
        if op.is_terminator or op.name == "constant":
            continue
        defs = []
        for r in op.results:
            nb = _static_nbytes(r)
            if nb is not None:
                sizes[id(r)] = nb
                names[id(r)] = r.name or f"%{op.name}"
                defs.append(id(r))
        uses = [id(v) for v in op.read_values()]
        if _always_view(op) and op.operands and op.operands[0] is not None and defs:
            x, r = op.operands[0], op.results[0]
            if id(x) in sizes and sizes[id(x)] == sizes.get(id(r)) and \
                    getattr(x.type, "dtype", None) == getattr(r.type, "dtype", None):
                aliases[id(r)] = id(x)
                del sizes[id(r)]
                steps.append(Step((), uses, name=op.name))
                continue
        pairs = []
        if op.has_trait(InPlace) and len(op.results) == 1 and defs:
            r = op.results[0]
            for v in op.operands:
                if v is not None and isinstance(v.type, TensorType) and v.type == r.type:
                    pairs.append((id(r), id(v)))
        steps.append(Step(defs, uses, pairs, name=op.name))
    live_out = [id(v) for v in module.graph.outputs if v is not None]
    return steps, sizes, aliases, live_out, names


def plan_module(module: Module, shapes: Mapping[str, Sequence[int]] | None = None, **kw) -> MemoryPlan:
    """The arena plan of ``module``'s top-level graph in block order (sizes from static types,
    or from ``shapes`` given for the inputs)."""
    if shapes:
        module = specialize_types(module, shapes)
    steps, sizes, aliases, live_out, names = schedule_of(module)
    return plan_schedule(steps, sizes, aliases=aliases, live_out=live_out, names=names, **kw)


class PlanMemory(Pass):
    """O3 analysis: plan the arena of the top-level graph (when its shapes are static) and
    record the summary in ``module.metadata["memory_plan"]``; the IR is left unchanged
    (backends plan their own schedules with the same planner)."""

    name = "plan-memory"

    def run(self, module: Module, ctx: PassContext) -> bool:
        plan = plan_module(module)
        s = plan.summary()
        module.metadata["memory_plan"] = (
            f"arena={s['arena_bytes']} naive={s['naive_bytes']} peak_live={s['peak_live_bytes']}"
            f" buffers={s['buffers']} inplace={s['inplace']}")
        if hasattr(ctx, "stat"):
            ctx.stat("inplace", len(plan.inplace))
        return False


__all__ = ["ALIGN", "Step", "Buffer", "MemoryPlan", "MemoryReport", "plan_schedule", "plan_module",
           "schedule_of", "specialize_types", "validate_plan", "place", "place_greedy_by_size",
           "place_by_colouring", "live_peak", "align_up", "PlanMemory"]
