"""A new input shape of a dynamic module without emitting LLVM IR (issue 15).

Shapes with the same *kernel structure* (the segments, which steps share a kernel
function, each argument's place, and every kernel's non-integer fields) share one object
code; they differ only in the integers the code reads at run time (codegen.begin_dynamic).
The first shape of a structure is emitted with its kernels' int fields and arena offsets
traced (shapetrace.py): the result is a ``Template`` holding the object code and a
straight-line program from those fields to every run-time integer and parameter block.
A later shape with that structure is lowered and planned as before, then takes the
template's object code and runs the program on its own kernels' fields: no IR text, no
LLVM.  When a guard of the program fails (a decision the emission took on a value comes
out differently for this shape) the shape is emitted as before and traced into another
template.
"""
from __future__ import annotations

from .codegen import dynamic_blocks, dynamic_values
from .shapetrace import Tracer, concrete, flatten, name_of, traced_copy

#: counts, for tests and reports: shapes served by a template, traced emissions, traces
#: that failed (the module was emitted plainly), templates dropped by their self-check
stats = {"reused": 0, "traced": 0, "trace_failed": 0, "self_check_failed": 0}

#: templates kept per structure (a guard that fails adds one)
MAX_PER_STRUCTURE = 8


class Recorder:
    """Gives the emission traced stand-ins (``Specialization.emit_module(trace=)``) and
    records where their leaves come from, in order."""

    def __init__(self):
        self.tracer = Tracer()
        #: ("k", step index, kernel skeleton) | ("o", step index, argument index)
        self.recipe: list[tuple] = []

    def kernel(self, i: int, kernel):
        skel = flatten(kernel)[1]
        self.recipe.append(("k", i, skel))
        return traced_copy(kernel, self.tracer)

    def offset(self, i: int, j: int, v: int):
        self.recipe.append(("o", i, j))
        return self.tracer.leaf(v)


def leaves(recipe: list[tuple], spec) -> list[int] | None:
    """The leaf values of ``recipe`` for ``spec``; None when a kernel's skeleton differs."""
    out: list[int] = []
    steps = spec.steps
    for e in recipe:
        if e[0] == "k":
            ints, skel = flatten(steps[e[1]].kernel)
            if skel != e[2]:
                return None
            out += ints
        else:
            out.append(spec.arg_offset(e[1], e[2]))
    return out


def structure(spec) -> tuple:
    """What the segment entries' code depends on besides the kernels' fields: per native
    step its index, its kernel function group (steps with equal kernel keys share one),
    in-place flag, scratch, fallibility and where each argument lives."""
    groups: dict = {}
    rows = []
    for seg in spec.segments:
        row = []
        for i, s in seg:
            inplace = i in spec.inplace_steps
            g = groups.setdefault((s.kernel.key(), inplace), len(groups))
            args = []
            for v in list(s.outputs) + list(s.inputs):
                r = id(spec.root_of(v))
                if r in spec.out_slot:
                    args.append(-spec.out_slot[r])
                elif r in spec.produced_native:
                    args.append(0)
                else:
                    args.append(spec.slot[r])
            row.append((i, g, inplace, bool(s.kernel.scratch_bytes), bool(s.kernel.fallible),
                        s.kernel.name, tuple(args)))
        rows.append(tuple(row))
    return (spec.n_slots, tuple(rows))


class Template:
    """One kernel structure's object code and traced program."""

    __slots__ = ("recipe", "fn", "n_values", "layout", "llvm_ir", "n_kernels", "obj")

    def __init__(self, recipe, fn, n_values: int, layout, llvm_ir: str, n_kernels: int):
        self.recipe, self.fn, self.n_values, self.layout = recipe, fn, n_values, layout
        self.llvm_ir, self.n_kernels, self.obj = llvm_ir, n_kernels, None

    def values(self, spec) -> tuple[list, dict] | None:
        """(run-time integers, parameter blocks) for ``spec``, or None when this template
        does not serve its shapes."""
        try:  # a field that does not compare plainly (an array) serves no template
            leaf = leaves(self.recipe, spec)
            if leaf is None:
                return None
            flat = self.fn(leaf)
        except Exception:  # noqa: BLE001 - the shape is emitted as before
            return None
        if flat is None:
            return None
        return flat[:self.n_values], {name: flat[a:b] for name, a, b in self.layout}


def reuse(spec, templates: dict) -> tuple[Template, tuple] | None:
    """A template serving ``spec`` and its values for it, or None."""
    spec._structure = structure(spec)
    for tpl in templates.get(spec._structure, ()):
        if tpl.obj is None:
            continue
        vals = tpl.values(spec)
        if vals is not None:
            stats["reused"] += 1
            return tpl, vals
    return None


def emit_traced(spec):
    """Emit ``spec``'s module with its kernels traced: (module, kernel functions, IR text,
    (values, blocks)), and a template for ``keep``.  If the emission cannot be traced, it
    is emitted plainly and the values are None."""
    spec._template = None
    rec = Recorder()
    try:
        mod, kernel_fns = spec.emit_module(trace=rec)
        text = str(mod)  # formatting a traced number into the IR guards its value
        vals, blocks = dynamic_values(mod), dynamic_blocks(mod)
        names = [name_of(v) for v in vals]
        layout, at = [], len(vals)
        for name, block in blocks.items():
            names += [name_of(v) for v in block]
            layout.append((name, at, at + len(block)))
            at += len(block)
        fn = rec.tracer.program("[" + ", ".join(names) + "]")
    except Exception:  # a kernel used a traced number where only an int works
        stats["trace_failed"] += 1
        mod, kernel_fns = spec.emit_module()
        return mod, kernel_fns, str(mod), None
    stats["traced"] += 1
    values = [int(concrete(v)) for v in vals]
    blocks_now = {name: [int(concrete(v)) for v in block] for name, block in blocks.items()}
    tpl = Template(rec.recipe, fn, len(vals), layout, text, len(kernel_fns))
    # the program must give back this shape's own values, else it is not kept
    if tpl.values(spec) == (values, blocks_now):
        spec._template = tpl
    else:
        stats["self_check_failed"] += 1
    return mod, kernel_fns, text, (values, blocks_now)


def keep(spec, obj: bytes) -> None:
    """File the template ``emit_traced`` made for ``spec`` with its object code."""
    tpl = getattr(spec, "_template", None)
    if tpl is None or spec.templates is None:
        return
    tpl.obj = obj
    sig = getattr(spec, "_structure", None) or structure(spec)
    kept = spec.templates.setdefault(sig, [])
    kept.append(tpl)
    del kept[:-MAX_PER_STRUCTURE]
    spec._template = None


#: the sizes a dynamic module's symbolic dims get for the compile at ``gx.compile`` time
#: (distinct, so no two symbols look equal; not 1, whose size-1 dims broadcast)
WARM_SIZES = (5, 7, 11, 13, 17, 19, 23, 29)


def warm_shapes(module, bounds, step: int = 0) -> dict[str, tuple] | None:
    """Input shapes for compiling a dynamic module before its first call: each symbolic
    dim a distinct size of WARM_SIZES (plus ``step``), moved into its declared
    ``(min, max)``; None when
    an input dim is an expression of symbols (its value would have to be solved for)."""
    from ...ir.types import TensorType
    sizes: dict[str, int] = {}
    shapes = {}
    for a in module.graph.inputs:
        t = a.type
        if not isinstance(t, TensorType) or t.shape is None:
            return None
        shape = []
        for d in t.shape:
            if isinstance(d, str):
                if not d.isidentifier():
                    return None
                if d not in sizes:
                    v = WARM_SIZES[len(sizes) % len(WARM_SIZES)] + step
                    lo, hi = bounds.get(d, (None, None)) if bounds else (None, None)
                    v = max(v, lo) if lo is not None else v
                    v = min(v, hi) if hi is not None else v
                    sizes[d] = v
                d = sizes[d]
            shape.append(int(d))
        shapes[a.name] = tuple(shape)
    return shapes


def warm(prepared, shapes: dict, other: dict, templates: dict, cache_dir) -> bool:
    """Compile a dynamic module before its first call: trace its emission for ``shapes``
    and run LLVM only if the traced program also serves ``other`` (different sizes of
    the same symbols), i.e. the code is not specific to one shape; the template is filed
    in ``templates``.  False when it was not compiled (the first call compiles then)."""
    from ...passes.memory import specialize_types
    from . import jit
    from .program import Specialization
    a = Specialization.planned(specialize_types(prepared, shapes), dynamic=True)
    b = Specialization.planned(specialize_types(prepared, other), dynamic=True)
    if not a.segments:
        return False
    a._structure = structure(a)
    if structure(b) != a._structure:
        return False
    _, _, text, _ = emit_traced(a)
    tpl = a._template
    if tpl is None or tpl.values(b) is None:
        return False
    obj, _ = jit.compile_ir(text, cache_dir)
    a.templates = templates
    keep(a, obj)
    return True
