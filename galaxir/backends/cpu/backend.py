"""The cpu backend: ``galaxir.compile(model, target="cpu")``.

The module is prepared once (constant folding, batch-norm folding); each set of concrete
input shapes gets a specialization (compiled at ``compile`` time when every input shape is
static, else at the first call with new shapes), holding native code for the ops the
backend lowers and the list of ops that run on the numpy reference in between.  With
symbolic input dims the native code reads its shape values at run time (program.py,
``dynamic``), so every new shape reuses the first one's object code: one LLVM compile per
model, done at ``compile`` time for representative shapes, and a new shape computes its
shape values from a traced program without emitting IR (dynreuse.py).  The
specializations are kept in an LRU bounded by bytes (SHAPE_CACHE_BYTES).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ...errors import CompileError, GalaxirError
from ...ir import Module
from ...ir.types import TensorType
from ..base import Backend, Executable
from . import jit
from .lower import ELEMENTWISE, RULES, ALIAS_OPS
from ...passes.memory import specialize_types
from .prepare import prepare
from .program import Specialization

import os

#: bytes of per-shape state (arenas, object code, lowered plans) an executable keeps for
#: the input shapes it has seen; least recently used shapes go first, the latest always
#: stays.  ``GALAXIR_SHAPE_CACHE_BYTES`` or ``compile(..., shape_cache_bytes=)`` sets it.
SHAPE_CACHE_BYTES = int(os.environ.get("GALAXIR_SHAPE_CACHE_BYTES", str(256 << 20)))


def spec_bytes(spec: Specialization) -> int:
    """What keeping ``spec`` costs: its arena (one per call state it holds), its object
    code, its shape values and the lowered module (weights are shared, not counted; so is
    the IR text of a shape that reused its structure's template, dynreuse.py)."""
    ir_text = 0 if getattr(spec, "reused", False) else len(getattr(spec, "llvm_ir", "") or "")
    dyn = getattr(spec, "_dyn_data", None)
    return (spec.arena_size * max(1, len(spec._free)) + getattr(spec, "object_bytes", 0)
            + ir_text + (dyn.nbytes if dyn is not None else 0) + 64 * len(spec.steps))


def _passes_ready() -> bool:
    try:
        from ...passes import optimize  # noqa: F401
    except Exception:
        return False
    return True


class CpuExecutable(Executable):
    def __init__(self, module: Module, cache_dir=None, prepared: Module | None = None,
                 num_threads: int | None = None, shape_cache_bytes: int | None = None,
                 warm: bool = True):
        super().__init__(module)
        self.shape_cache_bytes = SHAPE_CACHE_BYTES if shape_cache_bytes is None else int(shape_cache_bytes)
        from .parallel import get_pool
        self.pool = get_pool(num_threads)
        from ..numpy import Interpreter
        self.cache_dir = cache_dir
        self.prepared = prepared if prepared is not None else prepare(module)
        self._interp = Interpreter(self.prepared)
        self._specs: OrderedDict[tuple, Specialization] = OrderedDict()
        # per kernel structure: the object code and traced shape program a new shape
        # reuses without emitting LLVM IR (dynreuse.py)
        self._templates: dict = {}
        self._lock = threading.RLock()
        self.last: Specialization | None = None
        # (input shapes, specialization) of the latest call: one attribute, read without the
        # lock, so a thread never sees one call's shapes with another call's code
        self._hit: tuple | None = None
        static = {}
        for a in self.prepared.graph.inputs:
            t = a.type
            if isinstance(t, TensorType) and t.shape is not None and all(isinstance(d, int) for d in t.shape):
                static[a.name] = tuple(t.shape)
            elif isinstance(t, TensorType):
                static = None
                break
        self.dynamic = static is None  # symbolic input dims: shape values read at run time
        # the inputs' checks let one set of shapes through: the specialization made here
        self._one_shape = static is not None and static == {
            n: tuple(t.shape) for n, t in zip(self.input_names, self.input_types)
            if isinstance(t, TensorType)}
        if static is not None:
            self._spec_for(static)
        elif warm:
            self._warm()

    def _warm(self) -> None:
        """Compile a dynamic module now, for representative shapes (dynreuse.warm_shapes),
        so that no call waits for LLVM: its object code and traced shape program become
        the template later shapes reuse.  Only when the program serves a second set of
        sizes too (code not specific to one shape), and the shapes fit the model (not a
        reshape that needs divisible sizes, ...); else the first call compiles."""
        from .dynreuse import warm, warm_shapes
        shapes = warm_shapes(self.prepared, self._bounds)
        other = warm_shapes(self.prepared, self._bounds, step=2)
        if shapes is None:
            return
        try:
            warm(self.prepared, shapes, other, self._templates, self.cache_dir)
        except Exception:  # noqa: BLE001 - an optimization only: the first call compiles
            pass

    @property
    def cache_source(self) -> str | None:
        """Where the latest specialization's object code came from: compiled/memory/disk."""
        return self.last.cache_source if self.last is not None else None

    def _spec_for(self, shapes: dict[str, tuple]) -> Specialization:
        key = tuple(sorted(shapes.items()))
        spec = self._specs.get(key)
        if spec is None:
            try:
                m = specialize_types(self.prepared, shapes)  # the one shape specialization
                spec = Specialization(m, self.cache_dir, dynamic=self.dynamic,
                                      templates=self._templates)
            except GalaxirError:
                raise
            except MemoryError as e:
                raise CompileError(f"cpu backend: out of memory compiling for shapes {shapes}") from e
            self._specs[key] = spec
            self._evict()
        else:
            self._specs.move_to_end(key)
        self.last = spec
        return spec

    def shape_cache_size(self) -> int:
        """Bytes the per-shape cache holds now (``spec_bytes`` summed)."""
        return sum(spec_bytes(s) for s in self._specs.values())

    def _evict(self) -> None:
        """Drop least recently used shapes until the cache fits ``shape_cache_bytes``
        (the newest stays even when it alone is larger)."""
        total = self.shape_cache_size()
        while total > self.shape_cache_bytes and len(self._specs) > 1:
            _, old = self._specs.popitem(last=False)
            total -= spec_bytes(old)

    def _spec_for_inputs(self, inputs: list[Any]) -> Specialization:
        """The specialization for these (validated) inputs' shapes.  A static module has
        one; else the latest call's serves every call with the same shapes (one tuple
        comparison, no lock, dict or sort); another takes the lock."""
        if self._one_shape:
            return self.last  # compiled at compile time, for the one set of shapes inputs pass
        key = tuple([x.shape if isinstance(x, np.ndarray) else None for x in inputs])
        hit = self._hit
        if hit is not None and hit[0] == key:
            return hit[1]
        shapes = {}
        for a, x in zip(self.prepared.graph.inputs, inputs):
            if isinstance(a.type, TensorType) and isinstance(x, np.ndarray):
                shapes[a.name] = tuple(int(d) for d in x.shape)
        with self._lock:
            spec = self._spec_for(shapes)
            self._hit = (key, spec)
        return spec

    def _execute_into(self, inputs: list[Any], out: list) -> list[Any]:
        return self._execute(inputs, out)  # arena outputs are copied straight into out

    def _execute(self, inputs: list[Any], out: list | None = None) -> list[Any]:
        # the lock covers compiling or choosing a new specialization only: the run itself
        # uses a per-call arena, so threads calling at once run side by side
        return self._spec_for_inputs(inputs).run(inputs, self._interp, self.pool, out)

    def kernel_steps(self, inputs: list[Any]):
        """Every step of the specialization for these inputs, for the shared profiler
        (``Executable.profile``): the first call for a set of input shapes compiles a timed
        copy of the native code (galaxir/backends/cpu/profile.py); the code that
        ``exe(...)`` runs is never changed."""
        from .profile import kernel_plan
        spec = self._spec_for_inputs(inputs)
        return kernel_plan(spec, inputs, self._interp, self.pool)

    def profile(self, feeds, runs: int = 10, warmup: int = 1, clock: str = "wall"):
        """Per-step times (see ``Executable.profile``), each kernel of a native segment
        timed by the code itself."""
        from .profile import notes_for
        with self._lock:  # one specialization chosen and kept for the whole profile
            prof = super().profile(feeds, runs, warmup, clock)
            prof.notes += notes_for(self.last, self.pool, clock)
        return prof

    # -- reports ----------------------------------------------------------------------------
    def placement(self):
        if self.last is None:
            return []
        return self.last.placement()

    @property
    def native_ops(self) -> list[str]:
        return [op.name for op, where, _ in self.placement() if where == "native"]

    @property
    def fallback_ops(self) -> list[str]:
        return [op.name for op, where, _ in self.placement() if where == "numpy"]

    def report(self) -> str:
        if self.last is None:
            return ("cpu backend: not specialized yet (symbolic input dims); call it once to "
                    "compile for concrete shapes")
        spec = self.last
        rows = spec.placement()
        native: dict[str, int] = {}
        kernels: dict[str, int] = {}
        fallback: dict[tuple[str, str], int] = {}
        for op, where, detail in rows:
            if where == "native":
                native[op.name] = native.get(op.name, 0) + 1
                kernels[detail] = kernels.get(detail, 0) + 1
            else:
                fallback[(op.name, detail)] = fallback.get((op.name, detail), 0) + 1
        lines = [f"cpu backend: {len(rows)} ops ({sum(native.values())} native in "
                 f"{len(spec.segments)} native segment(s), {sum(fallback.values())} on the numpy "
                 f"reference); arena {spec.arena_size / 2**20:.1f} MiB; object code "
                 f"{spec.cache_source}"]
        if native:
            lines.append("  native:")
            lines += [f"    {name}: {n}" for name, n in sorted(native.items())]
        if fallback:
            lines.append("  numpy fallback:")
            lines += [f"    {name}: {n} ({why})" for (name, why), n in sorted(fallback.items())]
        else:
            lines.append("  numpy fallback: none")
        return "\n".join(lines)

    def memory_plan(self) -> list[dict]:
        """Each arena buffer: value name, offset, size, and lifetime in steps."""
        if self.last is None:
            return []
        return [dict(name=b.name, offset=b.offset, size=b.size, start=b.start, end=b.end)
                for b in sorted(self.last.buffers, key=lambda b: b.offset)]

    def memory_report(self):
        """The latest specialization's arena plan (galaxir/passes/memory.py): a dict with
        arena_bytes, naive_bytes (every intermediate in its own buffer),
        largest_live_set_bytes, inplace_steps and buffers (offset, size, lifetime); it
        prints as a text report.  None before the first specialization."""
        if self.last is None:
            return None
        return self.last.plan.as_report()


class CpuBackend(Backend):
    """llvmlite JIT for the host CPU with numpy fallback for everything else."""

    name = "cpu"
    #: O3: the generic fusions, the cpu rules (galaxir/backends/cpu/rules.py), and the
    #: channels-last layout where it pays (passes/layout.py): the NHWC conv kernel needs no
    #: im2col packing (kernels_nhwc.py).  Measured on the light zoo (docs/performance.md):
    #: 1.2-1.7x faster than O2 on the conv-heavy models, the same kernels elsewhere.
    default_level = 3 if _passes_ready() else 0
    preferred_layout = "NHWC"

    def supported_ops(self) -> set[str] | None:
        return None  # every op runs: those without a native kernel run on numpy

    def capabilities(self):
        from ..base import Capabilities
        from .rules import DECOMPOSES
        return Capabilities(ops=None, decomposes=DECOMPOSES)

    def native_ops(self) -> set[str]:
        return set(RULES) | set(ELEMENTWISE) | set(ALIAS_OPS) | {"fused_add", "fused_elementwise"}

    def passes(self, level: int) -> list:
        """The cpu backend's own passes (galaxir/backends/cpu/prepare.py ``own_passes``),
        after the generic ones: at O2+ what the generic fusions made that it has no native
        kernel for goes back to core ops (rules.py), and its elementwise loop's chains are
        grouped (``cpu-fuse-elementwise``); at O1 the same folding and fusion that
        ``prepare`` gives an unoptimized module."""
        if level < 1:
            return []
        from ...passes import AFTER, Placed
        from .prepare import own_passes
        return [Placed(p, AFTER) for p in own_passes(level)]

    def check_lowering(self, module: Module, feeds, rtol: float = 1e-4, atol: float = 1e-5):
        """Each native kernel against the reference on the same inputs (galaxir bisect)."""
        from .check import first_bad_kernel
        return first_bad_kernel(module, feeds, rtol, atol)

    def compile(self, module: Module, cache_dir=None, num_threads: int | None = None,
                shape_cache_bytes: int | None = None, warm: bool = True,
                **options: Any) -> CpuExecutable:
        from ..numpy.registry import get_kernel
        missing = sorted({op.name for op in module.walk()
                          if not op.is_terminator and get_kernel(op.name) is None
                          and op.name not in self.native_ops()})
        if missing:
            from ...errors import UnsupportedOpError
            raise UnsupportedOpError(f"the cpu backend cannot run: {', '.join(missing)} "
                                     "(no native kernel and no numpy reference kernel)")
        if cache_dir is None:
            cache_dir = jit.default_cache_dir()
        return CpuExecutable(module, cache_dir, num_threads=num_threads,
                             shape_cache_bytes=shape_cache_bytes, warm=warm)
