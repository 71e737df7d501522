"""The backend contract every target implements, the backend registry (with the
``galaxir.backends`` entry point group for third-party plugins) and ``Executable``,
which validates inputs before any backend code runs."""
from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import CompileError, ExecutionError, InputValidationError, VerificationError
from ..ir import Module
from ..ir.bounds import dim_bounds
from ..ir.core import MAX_NESTING, nesting_depth
from ..ir.types import UNKNOWN, AnyType, DType, OptionalType, SequenceType, TensorType, Type

ENTRY_POINT_GROUP = "galaxir.backends"


@dataclass(frozen=True)
class Capabilities:
    """What a backend runs natively.  ``ops``: op names (None: every op); ``dtypes`` and
    ``layouts``: per op, the dtype names / layouts (``"NCHW"``, ``"NHWC"``) it runs (an op
    not listed runs in any); ``decomposes``: composite ops its own patterns turn into ops
    it runs (the generic fusions may create those too).  ``gx.compile`` runs every op that
    ``supports`` refuses on the numpy reference (galaxir/backends/partition.py)."""

    ops: frozenset[str] | None = None
    dtypes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    layouts: Mapping[str, frozenset[str]] = field(default_factory=dict)
    decomposes: frozenset[str] = frozenset()

    def supports(self, op: Any) -> bool:
        """Does the backend run ``op`` (a name, or an Operation: then its dtype and layout
        are checked too)?"""
        name = op if isinstance(op, str) else op.name
        if self.ops is not None and name not in self.ops:
            return False
        if isinstance(op, str):
            return True
        want = self.dtypes.get(name)
        if want is not None:
            for v in [*op.operands, *op.results]:
                t = getattr(v, "type", None)
                if isinstance(t, TensorType) and t.dtype.name not in want:
                    return False
        lay = self.layouts.get(name)
        return lay is None or op.attrs.get("layout", "NCHW") in lay

    def runs_layout(self, name: str, layout: str) -> bool:
        """Does the backend run op ``name`` in ``layout`` (the O3 layout pass asks)?"""
        lay = self.layouts.get(name)
        return self.supports(name) and (lay is None or layout in lay)

    def can_create(self, name: str) -> bool:
        """May a generic rewrite create ``name`` for this backend (it runs or decomposes it)?"""
        return name in self.decomposes or self.supports(name)


class Backend(abc.ABC):
    """A compilation target.  Subclasses set ``name`` and implement ``compile``; the rest
    of the contract has defaults (docs/backends.md)."""

    name: str = ""
    #: the optimization level ``gx.compile`` uses when none is given
    default_level: int = 0
    #: "NCHW" or "NHWC": the image layout the O3 layout pass converts to for this target
    preferred_layout: str = "NCHW"

    def supported_ops(self) -> set[str] | None:
        """Op names this backend runs natively; None means every op.  The shorthand for
        ``capabilities`` (override that one to declare dtypes, layouts, decompositions)."""
        return None

    def capabilities(self) -> Capabilities:
        """What this backend runs natively (by default: ``supported_ops``)."""
        ops = self.supported_ops()
        return Capabilities(ops=None if ops is None else frozenset(ops))

    def patterns(self, level: int) -> list:
        """Rewrite patterns this backend adds at optimization ``level``, run after the
        generic passes (for another position return ``Placed(patterns, position)`` from
        ``passes``)."""
        return []

    def passes(self, level: int) -> list:
        """Passes this backend adds at ``level``: a Pass (run after the generic ones) or a
        ``galaxir.passes.Placed(pass or [patterns], position)`` with position
        ``BEFORE_FUSION``, ``AFTER`` or ``instead_of("generic-pass-name")``."""
        return []

    @abc.abstractmethod
    def compile(self, module: Module, **options: Any) -> "Executable":
        """Turn a verified module into something callable."""

    def check_lowering(self, module: Module, feeds: Mapping[str, Any], rtol: float = 1e-4,
                       atol: float = 1e-5) -> str | None:
        """After the passes, ``galaxir bisect`` asks the backend whether its own code agrees
        with the reference: None, or which segment/kernel differs first.  By default each
        native segment of the shared partitioner runs on the reference's values of its
        inputs (galaxir/backends/partition.py); the cpu backend checks kernel by kernel."""
        from .partition import first_bad_segment
        return first_bad_segment(module, self, feeds, rtol, atol)

    def compile_options(self) -> set[str]:
        """The keyword options ``compile`` understands: ``gx.compile`` refuses any other
        name (a typo must not be ignored).  By default the named keyword parameters of
        ``compile``; a backend that reads options out of ``**options`` overrides this."""
        params = inspect.signature(self.compile).parameters
        return {n for n, p in params.items() if n != "module" and p.kind in
                (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


class Executable(abc.ABC):
    """A compiled module: ``exe(*arrays) -> tuple`` or ``exe.run({name: array}) -> dict``.

    Inputs are checked against the graph signature (names, dtypes, rank, static dims,
    symbolic dims bound consistently) before ``_execute`` sees them.
    """

    def __init__(self, module: Module):
        depth = nesting_depth(module)
        if depth > MAX_NESTING:  # executors recurse over regions
            raise VerificationError(f"the module's regions nest {depth} deep; galaxir allows at "
                                    f"most {MAX_NESTING} levels")
        self.module = module
        self.input_names = list(module.graph.input_names)
        self.input_types = [v.type for v in module.graph.inputs]
        self.output_names = list(module.graph.output_names)
        # (dtype, shape) of each input whose type is a fully static tensor: an ndarray that
        # matches exactly needs no other check (the common case, at no per-call cost)
        self._static = [_static_signature(t) for t in self.input_types]
        self._bounds = dim_bounds(module)  # declared ranges of symbolic dims, checked per call
        # inputs whose check depends on nothing but an ndarray's dtype and shape (tensors of
        # numbers): then a call whose (dtype, shape) per input equals those of the latest
        # call that passed every check passes them too (_check_values' fast path)
        self._sig_inputs = all(isinstance(t, TensorType) and t.dtype is not DType.string
                               for t in self.input_types)
        static = self._static if self._sig_inputs and all(self._static) else None
        self._last_sig: tuple | None = None if static is None else tuple(static)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        if args and kwargs:
            raise InputValidationError("pass inputs either positionally or by name, not both")
        if kwargs:
            return tuple(self._run_checked(self.validate(kwargs)))
        if len(args) != len(self.input_names):
            raise InputValidationError(
                f"the model takes {len(self.input_names)} inputs ({_some(self.input_names)}), "
                f"got {len(args)}")
        return tuple(self._run_checked(self._check_values(args)))

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None,
            out: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Run on ``{input name: array}``; returns ``{output name: array}``.

        ``outputs``: compute only these outputs (and only what they need: a pruned copy of
        the module is compiled once per output set).  ``out``: ``{output name: array}``
        buffers to write those outputs into (IO binding; dtype and shape must match, the
        returned dict holds the same arrays)."""
        if type(feeds) is not dict and not isinstance(feeds, Mapping):
            raise InputValidationError(f"run() takes a dict {{input name: array}}, got "
                                       f"{type(feeds).__name__}; call the executable itself, "
                                       "exe(*arrays), to pass inputs by position")
        if outputs is None:
            names, exe = self.output_names, self
        else:
            names = self._output_selection(outputs)
            exe = self if names == self.output_names else self._pruned(tuple(names))
        inputs = exe.validate(feeds)
        if out is None:
            results = exe._run_checked(inputs)
            if len(names) == 1:  # dict(zip()) costs ~0.3 us, a display ~0.05
                return {names[0]: results[0]}
            return dict(zip(names, results))
        bufs = exe._check_out(out)
        return dict(zip(names, exe._run_checked(inputs, bufs)))

    # -- outputs= and out= --------------------------------------------------------------------
    def _output_selection(self, outputs) -> list[str]:
        if isinstance(outputs, str) or not isinstance(outputs, Sequence):
            raise InputValidationError(f"outputs= takes a list of output names, got "
                                       f"{type(outputs).__name__}")
        known = set(self.output_names)
        bad = [n for n in outputs if n not in known]
        if bad:
            raise InputValidationError(f"unknown output name(s) {_some(bad)}; the model's "
                                       f"outputs: {_some(self.output_names)}")
        if not outputs:
            raise InputValidationError("outputs= names no output")
        return list(dict.fromkeys(outputs))  # each once, in the order asked

    def _pruned(self, names: tuple[str, ...]) -> "Executable":
        """An executable of a copy of the module that returns only ``names``, dead code
        erased; compiled once per output set with the options this one was compiled with."""
        cache = self.__dict__.setdefault("_pruned_cache", {})
        exe = cache.get(names)
        if exe is None:
            compile_like = getattr(self, "compile_like", None)
            if compile_like is None:
                raise ExecutionError(f"{type(self).__name__} was not made by galaxir.compile: "
                                     "it cannot compile a subset of its outputs")
            from ..passes.basic.dce import dce
            module = self.module.clone()
            g = module.graph
            by_name = dict(zip(g.output_names, g.outputs))
            g.set_outputs([by_name[n] for n in names], list(names))
            exe = cache[names] = compile_like(dce(module))
        return exe

    def _check_out(self, out) -> list[np.ndarray | None]:
        """Caller buffers in output order (None where none was given), checked against the
        declared output types."""
        if not isinstance(out, Mapping):
            raise InputValidationError(f"out= takes a dict {{output name: array}}, got "
                                       f"{type(out).__name__}")
        unknown = [n for n in out if n not in self.output_names]
        if unknown:
            raise InputValidationError(f"out= names unknown or unrequested output(s) "
                                       f"{_some(unknown)}; computed: {_some(self.output_names)}")
        bufs: list[np.ndarray | None] = []
        for info in self.outputs:
            buf = out.get(info.name)
            if buf is not None:
                if not isinstance(buf, np.ndarray) or not buf.flags.writeable:
                    raise InputValidationError(f"out['{info.name}']: expected a writable numpy "
                                               f"array, got {type(buf).__name__}")
                if info.dtype is not None and buf.dtype != info.dtype:
                    raise InputValidationError(f"out['{info.name}']: expected dtype "
                                               f"{info.dtype}, got {buf.dtype}")
                if info.shape is not None and (len(buf.shape) != len(info.shape) or any(
                        isinstance(d, int) and d != h for d, h in zip(info.shape, buf.shape))):
                    raise InputValidationError(f"out['{info.name}']: expected shape "
                                               f"{list(info.shape)}, got {list(buf.shape)}")
            bufs.append(buf)
        return bufs

    @property
    def inputs(self) -> list["TensorInfo"]:
        """Name, numpy dtype and shape (ints, symbol names for symbolic dims) of each input,
        and the declared ``(min, max)`` of its symbolic dims (``bounds``)."""
        declared = dim_bounds(self.module)
        return [TensorInfo.of(n, t, declared) for n, t in zip(self.input_names, self.input_types)]

    @property
    def outputs(self) -> list["TensorInfo"]:
        """Name, numpy dtype and shape of each output."""
        g = self.module.graph
        return [TensorInfo.of(n, None if v is None else v.type)
                for n, v in zip(self.output_names, g.outputs)]

    def _run_checked(self, inputs: list[Any], out: list | None = None) -> list[Any]:
        try:
            if out is None:
                return self._execute(inputs)
            return self._execute_into(inputs, out)
        except MemoryError:
            shapes = ", ".join(f"{n}: {list(getattr(v, 'shape', []))}" for n, v in zip(self.input_names, inputs))
            raise ExecutionError(f"out of memory running the model on inputs of shape {shapes}") from None

    def validate(self, feeds: Mapping[str, Any]) -> list[Any]:
        if type(feeds) is not dict and not isinstance(feeds, Mapping):
            raise InputValidationError(f"run() takes a dict of inputs by name ({_some(self.input_names)}), "
                                       f"got {type(feeds).__name__}; call the executable for inputs in order")
        names = self.input_names
        if len(feeds) == len(names):  # every name present (and, as many, no other)?
            values = None
            if type(feeds) is dict:  # a plain dict has no __missing__: a lookup may fail
                try:
                    values = list(map(feeds.__getitem__, names))
                except KeyError:
                    pass
            elif all(n in feeds for n in names):
                values = [feeds[n] for n in names]
            if values is not None:
                return self._check_values(values)
        known = set(self.input_names)
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in known]
        parts = []
        if extra:
            parts.append(f"unknown input name(s) {_some(extra)}")
        if missing:
            parts.append(f"missing input(s) {_some(missing)}")
        raise InputValidationError("; ".join(parts) + f"; the model takes {len(self.input_names)} "
                                   f"input(s): {_some(self.input_names)}")

    def _check_values(self, values) -> list[Any]:
        """The inputs (in graph order) checked against the signature, in canonical form."""
        sig = self._last_sig
        if sig is not None and len(values) == len(sig):
            for v, (dt, shape) in zip(values, sig):
                if type(v) is not np.ndarray or v.shape != shape or v.dtype != dt:
                    break
            else:  # the dtypes and shapes that passed every check before: no Python call
                return list(values)
        out = self._check_all(values)
        if self._sig_inputs and all(type(v) is np.ndarray for v in out):
            self._last_sig = tuple((v.dtype, v.shape) for v in out)
        return out

    def _check_all(self, values) -> list[Any]:
        """Every check of every input (``_check_values`` without its fast path)."""
        out = []
        bindings: dict[str, int] = {}
        for i, (v, static) in enumerate(zip(values, self._static)):
            if static is not None and type(v) is np.ndarray and v.dtype == static[0] \
                    and v.shape == static[1]:
                out.append(v)  # the common case, with no Python call
            else:
                out.append(self._check_input(i, v, bindings))
        if self._bounds:
            for v, n, t in zip(out, self.input_names, self.input_types):
                check_bounds(v, t, n, self._bounds)
        return out

    def _check_input(self, i: int, v, bindings: dict[str, int]):
        """Input ``i`` checked against its type (``bindings``: the symbolic dims seen so far);
        a backend that takes other array kinds (device arrays) overrides this."""
        return check_value(v, self.input_types[i], self.input_names[i], bindings)

    @abc.abstractmethod
    def _execute(self, inputs: list[Any]) -> list[Any]:
        """Run on validated inputs, in graph input order; return outputs in order."""

    def _execute_into(self, inputs: list[Any], out: list) -> list[Any]:
        """``_execute`` writing output k into ``out[k]`` where that is not None (checked
        buffers); backends that can skip the intermediate copy override this."""
        results = self._execute(inputs)
        return [r if o is None else copy_into(o, r, name)
                for r, o, name in zip(results, out, self.output_names)]

    def profile(self, feeds: Mapping[str, Any], runs: int = 10, warmup: int = 1,
                clock: str = "wall"):
        """Time each step of ``runs`` runs on ``feeds`` (after ``warmup`` untimed runs):
        a ``galaxir.backends.profile.Profile`` (``print(p)`` for the table sorted by time,
        ``p.by_kind()``, ``p.save_chrome_trace(path)``).  ``clock="cpu"`` measures the
        calling thread's CPU time instead of wall time (steady on a busy machine).
        Any backend whose executable reports its kernels (``kernel_steps``) gets it; the
        others raise ExecutionError."""
        from .profile import check_clock, time_steps
        check_clock(clock)
        inputs = self.validate(feeds)
        plan = self.kernel_steps(inputs)
        if plan is None:
            raise ExecutionError(f"{type(self).__name__} has no profiler (it reports no "
                                 "kernels: Executable.kernel_steps)")
        return time_steps(self.target_name, plan[0], plan[1], runs, warmup, clock)

    #: the target's name in profiles and reports
    target_name: str = "?"

    def kernel_steps(self, inputs: list[Any]):
        """For the shared profiler: ``(steps, start_run)`` with ``steps`` a list of
        ``profile.StepTiming`` (what each kernel runs) and ``start_run()`` setting up one
        run on ``inputs`` and returning one callable per step (or units that time several
        steps themselves: ``profile.time_steps``); None: no kernels reported.  A third
        element ``outputs()`` (the latest run's outputs), with ``start_run(inputs)``
        accepting each run's inputs, lets a partitioned executable time this one's
        kernels inside its segments on live values without running them twice."""
        return None

    def report(self) -> str:
        """Where each op ran; backends that partition override this."""
        return f"all {self.module.num_ops} ops run on {type(self).__name__}"


class TensorInfo(NamedTuple):
    """One input or output of an executable, as onnxruntime's ``NodeArg`` describes it:
    ``dtype`` a numpy dtype (None: not a tensor, or any type), ``shape`` a tuple of ints and
    symbol names ("?" unknown), None for unknown rank; ``type`` galaxir's type text;
    ``bounds`` the declared ``{symbol: (min, max or None)}`` of its symbolic dims."""

    name: str
    dtype: np.dtype | None
    shape: tuple | None
    type: str
    bounds: Mapping[str, tuple] = MappingProxyType({})

    @classmethod
    def of(cls, name: str, t: Type | None, declared: Mapping[str, tuple] | None = None
           ) -> "TensorInfo":
        if isinstance(t, TensorType):
            try:
                dt = np.dtype(object) if t.dtype is DType.string else np.dtype(t.dtype.numpy)
            except Exception:
                dt = None
            shape = None if t.shape is None else tuple(t.shape)
            bounds = {d: declared[d] for d in shape or () if declared and d in declared}
            return cls(name, dt, shape, str(t), bounds)
        return cls(name, None, None, str(t) if t is not None else "none")


def copy_into(dst: np.ndarray, src: Any, name: str) -> np.ndarray:
    """Write output ``name`` into the caller's buffer ``dst`` (same dtype and shape)."""
    src = np.asarray(src)
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise ExecutionError(f"out['{name}']: the output is {src.dtype}{list(src.shape)}, the "
                             f"buffer {dst.dtype}{list(dst.shape)}")
    np.copyto(dst, src, casting="no")
    return dst


def _some(names, limit: int = 6) -> str:
    """A few names, quoted, and how many more (a model may have hundreds of inputs)."""
    names = [repr(str(n)) for n in names]
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" ... and {more} more" if more > 0 else "")


def _static_signature(t: Type) -> tuple | None:
    """(numpy dtype, shape) of a fully static tensor type, else None."""
    if not isinstance(t, TensorType) or t.shape is None or t.dtype is DType.string or \
            not all(isinstance(d, int) for d in t.shape):
        return None
    try:
        return np.dtype(t.dtype.numpy), tuple(t.shape)
    except Exception:  # a dtype numpy cannot name: the full check handles it
        return None


def check_value(value: Any, ty: Type, name: str, bindings: dict[str, int]) -> Any:
    """Check one runtime value against a declared type; returns it in canonical form."""
    if isinstance(ty, AnyType):
        return value
    if isinstance(ty, OptionalType):
        return None if value is None else check_value(value, ty.elem, name, bindings)
    if isinstance(ty, SequenceType):
        if not isinstance(value, (list, tuple)):
            raise InputValidationError(f"input '{name}': expected a sequence (list of tensors), "
                                       f"got {type(value).__name__}")
        return [check_value(v, ty.elem, f"{name}[{i}]", {}) for i, v in enumerate(value)]
    if not isinstance(ty, TensorType):
        return value
    if not isinstance(value, np.ndarray):
        try:
            if isinstance(value, (int, float, bool, np.generic)) or (
                    isinstance(value, (list, tuple)) and ty.dtype is not DType.string):
                value = np.asarray(value, dtype=ty.dtype.numpy)
            elif isinstance(value, (list, tuple, str)):
                value = np.asarray(value, dtype=object)
            else:
                raise InputValidationError(f"input '{name}': expected a numpy array of {ty}, got "
                                           f"{type(value).__name__}")
        except (ValueError, TypeError, OverflowError) as e:  # ragged lists, "abc" as a number
            raise InputValidationError(f"input '{name}': a {type(value).__name__} that is not an "
                                       f"array of {ty}: {e}") from None
    got = value.dtype
    if ty.dtype is DType.string:
        if got.kind not in "OUS":
            raise InputValidationError(f"input '{name}': expected dtype string, got {got}")
        value = value.astype(object) if got.kind != "O" else value
        if got.kind == "O" and not all(isinstance(s, str) for s in value.reshape(-1)):
            raise InputValidationError(f"input '{name}': a string tensor must hold only str "
                                       "elements (a ragged list, or numbers?)")
    elif got != ty.dtype.numpy:
        raise InputValidationError(f"input '{name}': expected dtype {ty.dtype.name}, got {got}")
    if ty.shape is not None:
        if value.ndim != len(ty.shape):
            raise InputValidationError(f"input '{name}': expected rank {len(ty.shape)} ({ty}), "
                                       f"got shape {list(value.shape)}")
        for axis, (want, have) in enumerate(zip(ty.shape, value.shape)):
            if isinstance(want, int) and want != have:
                raise InputValidationError(f"input '{name}': dim {axis} must be {want} ({ty}), "
                                           f"got shape {list(value.shape)}")
            if isinstance(want, str) and want != UNKNOWN:
                bound = bindings.setdefault(want, have)
                if bound != have:
                    raise InputValidationError(
                        f"input '{name}': dim {axis} is symbol '{want}', bound to {bound} by an "
                        f"earlier input, but is {have} here")
    return value


def check_bounds(value: Any, ty: Type, name: str, bounds: Mapping[str, tuple]) -> None:
    """A checked input's symbolic dims against their declared ``(min, max)`` ranges."""
    shape = getattr(value, "shape", None)  # a numpy or a device array
    if not isinstance(ty, TensorType) or ty.shape is None or shape is None:
        return
    for axis, (want, have) in enumerate(zip(ty.shape, shape)):
        lo, hi = bounds.get(want, (None, None)) if isinstance(want, str) else (None, None)
        if (lo is not None and have < lo) or (hi is not None and have > hi):
            raise InputValidationError(
                f"input '{name}': dim {axis} ('{want}') is {have}, outside its declared range "
                f"{lo}..{'' if hi is None else hi}")


# -- the registry -------------------------------------------------------------------------
_BACKENDS: dict[str, type[Backend] | Backend] = {}


def register_backend(name: str, backend: type[Backend] | Backend) -> None:
    _BACKENDS[name] = backend


def _load_entry_points() -> None:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python < 3.10 API
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    for ep in eps:
        if ep.name not in _BACKENDS:
            _BACKENDS[ep.name] = ep  # loaded lazily


def get_backend(name: str) -> Backend:
    """The backend registered under ``name`` (built-in or from an entry point)."""
    _builtin()
    if name not in _BACKENDS:
        _load_entry_points()
    entry = _BACKENDS.get(name)
    if entry is None:
        raise CompileError(f"no backend named '{name}'; available: {sorted(available_backends())}")
    if isinstance(entry, metadata.EntryPoint):
        try:
            entry = entry.load()
        except Exception as e:
            raise CompileError(f"backend plugin '{name}' failed to load: {e}") from e
        _BACKENDS[name] = entry
    return entry() if isinstance(entry, type) else entry


def available_backends() -> list[str]:
    _builtin()
    _load_entry_points()
    return sorted(_BACKENDS)


def _builtin() -> None:
    if "numpy" not in _BACKENDS:
        from .numpy import NumpyBackend
        _BACKENDS["numpy"] = NumpyBackend
    if "cpu" not in _BACKENDS:
        try:
            from .cpu import CpuBackend
        except ImportError:
            return
        _BACKENDS["cpu"] = CpuBackend
    if "cuda" not in _BACKENDS:
        from .cuda import CudaBackend  # imports no cupy: that happens when a module is compiled
        _BACKENDS["cuda"] = CudaBackend


def _install_resolver() -> None:
    """Let the passes name their target (galaxir/passes/target.py) without importing backends."""
    from ..passes import target
    target.set_resolver(get_backend)


_install_resolver()
