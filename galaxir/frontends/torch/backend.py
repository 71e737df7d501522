"""``torch.compile(model, backend=galaxir_backend)``: dynamo hands over an FX GraphModule;
galaxir exports it to core ATen, imports it, compiles it for ``target`` and returns a
callable over torch tensors.

A static graph is exported and compiled once per set of input shapes (and Python scalar
inputs); a symbolic one (``dynamic=True``, or after dynamo saw a dim change) once for every
size, as a galaxir module with symbolic dims and their bounds.  Inference only: results
carry no autograd history.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ...errors import GalaxirError
from .importer import ImportInfo, export, finite_int, from_numpy, import_exported, to_numpy


def default_target() -> str:
    """"cpu" (llvmlite JIT) when it can be used here, else the numpy reference."""
    try:
        from ...backends import get_backend
        get_backend("cpu")
        return "cpu"
    except (GalaxirError, ImportError, OSError):
        return "numpy"


@dataclass
class _Entry:
    info: ImportInfo
    exe: Any


def _is_weight(a: Any) -> bool:
    """Parameters and buffers dynamo passes as graph inputs (it marks them static)."""
    return isinstance(a, torch.nn.Parameter) or (
        isinstance(a, torch.Tensor) and getattr(a, "_dynamo_static_input_type", None) is not None)


@dataclass
class _SymbolicPlan:
    """How dynamo's symbolic graph maps to one galaxir module with symbolic dims.

    ``dims[i]``: dim -> symbol name for graph input ``i``; ``derived[i] = (j, d)``: the
    SymInt graph input ``i`` is the size of dim ``d`` of tensor input ``j`` (dynamo passes
    sizes as separate int arguments; galaxir reads them off the tensor instead);
    ``bounds``: symbol -> (min, max or None) from dynamo's shape environment."""

    dims: dict[int, dict[int, str]] = field(default_factory=dict)
    derived: dict[int, tuple[int, int]] = field(default_factory=dict)
    bounds: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    @property
    def symbolic(self) -> bool:
        return bool(self.dims)


def _symbol(v: Any) -> Any:
    """The sympy Symbol of a SymInt that is one plain symbol, else None."""
    if isinstance(v, torch.SymInt):
        expr = v.node.expr
        if getattr(expr, "is_Symbol", False):
            return expr
    return None


def _python_scalars(gm: torch.fx.GraphModule) -> list[int]:
    """Placeholders that stand for Python numbers passed as tensors (``pass_arg_as_tensor``)."""
    nodes = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return [i for i, n in enumerate(nodes)
            if getattr(n.meta.get("grapharg"), "pass_arg_as_tensor", False)]


def _bake_scalars(gm: torch.fx.GraphModule, args: Sequence[Any], scalars: list[int]
                  ) -> torch.fx.GraphModule:
    """A copy of ``gm`` whose ``scalar.item()`` calls are replaced by the values in ``args``
    (export would trace ``.item()`` of a buffer as a data-dependent symbol)."""
    if not scalars:
        return gm
    graph = copy.deepcopy(gm.graph)
    nodes = [n for n in graph.nodes if n.op == "placeholder"]
    for i in scalars:
        a = args[i]
        value = a.item() if isinstance(a, torch.Tensor) else a
        for user in list(nodes[i].users):
            if user.op == "call_method" and user.target == "item":
                for u in list(user.users):
                    u.args = pytree.tree_map(lambda x: value if x is user else x, u.args)
                    u.kwargs = pytree.tree_map(lambda x: value if x is user else x, u.kwargs)
                graph.erase_node(user)
    return torch.fx.GraphModule(gm, graph)


def _range(v: torch.SymInt) -> tuple[int, int | None]:
    try:
        vr = v.node.shape_env.var_to_range[v.node.expr]
    except (AttributeError, KeyError):
        return (0, None)
    return (max(finite_int(vr.lower) or 0, 0), finite_int(vr.upper))


def _plan(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], weights: list[int]
          ) -> _SymbolicPlan:
    """Read the symbolic dims dynamo recorded on the graph's placeholders."""
    plan = _SymbolicPlan()
    nodes = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sources: dict[Any, tuple[int, int]] = {}
    fakes = [n.meta.get("example_value") for n in nodes]
    for i, fake in enumerate(fakes):
        if i in weights or not isinstance(fake, torch.Tensor):
            continue
        for d, size in enumerate(fake.shape):
            sym = _symbol(size)
            if sym is None:
                continue
            sources.setdefault(sym, (i, d))
            plan.dims.setdefault(i, {})[d] = str(sym)
            plan.bounds[str(sym)] = _range(size)
    for i, fake in enumerate(fakes):
        sym = _symbol(fake) if i < len(example_inputs) else None
        if sym is not None and sym in sources:
            plan.derived[i] = sources[sym]
    return plan


class _Frozen(torch.nn.Module):
    """The dynamo graph with its weight inputs bound as buffers, so that torch.export lifts
    them into constants (foldable by galaxir) and only the real inputs stay inputs.  Size
    arguments (``derived``) are read off the tensors, so export traces them as symbols."""

    def __init__(self, gm: torch.fx.GraphModule, args: Sequence[Any], weights: list[int],
                 derived: dict[int, tuple[int, int]] | None = None):
        super().__init__()
        self.gm = gm
        self.n = len(args)
        self.derived = dict(derived or {})
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        self.slots: dict[int, str] = {}
        for i in weights:
            name = names[i] if i < len(names) and names[i].isidentifier() else f"weight_{i}"
            self.register_buffer(name, args[i].detach(), persistent=False)
            self.slots[i] = name

    def forward(self, *inputs: Any) -> Any:
        it = iter(inputs)
        full: list[Any] = [None if i in self.derived else
                           getattr(self, self.slots[i]) if i in self.slots else next(it)
                           for i in range(self.n)]
        for i, (j, d) in self.derived.items():
            full[i] = full[j].shape[d]
        return self.gm(*full)


class GalaxirCompiled:
    """The callable ``galaxir_backend`` returns: tensors in, tensors out.

    Weights (parameters and buffers) are compiled in as constants; modifying one in place
    (its ``_version`` changes) triggers a recompile at the next call.  When dynamo hands over
    a symbolic graph (``dynamic=True``, or a dim it saw change), the graph is exported once
    with those dims as ``torch.export.Dim``s (named like dynamo's symbols, ``s0``, with
    dynamo's ranges as bounds) and compiled into one galaxir executable that serves every
    size; ``compiles`` counts galaxir compiles.
    """

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any] = (),
                 target: str | None = None, level: int | None = None,
                 options: dict | None = None):
        self.gm = gm
        self.weights = [i for i, a in enumerate(example_inputs) if _is_weight(a)]
        #: Python floats dynamo passes as 0-d tensors (a layer norm's eps): constants too,
        #: compiled in per value
        self.scalars = _python_scalars(gm)
        self.frozen = sorted(set(self.weights) | set(self.scalars))
        self.target = target or default_target()
        self.level = level
        self.options = options or {}
        self.entries: dict[tuple, _Entry] = {}
        self.plan = _plan(gm, example_inputs, self.weights)
        #: why a symbolic graph is compiled per shape instead (export refused the dims)
        self.static_reason: str | None = None
        self.compiles = 0

    def _key(self, args: Sequence[Any]) -> tuple:
        dims = self.plan.dims if self.static_reason is None else {}
        key = []
        for i, a in enumerate(args):
            if i in self.weights:
                key.append((id(a), a._version))
            elif i in self.scalars:
                key.append(("scalar", a.item() if isinstance(a, torch.Tensor) else a))
            elif isinstance(a, torch.Tensor):
                sym = dims.get(i, {})
                key.append((tuple(None if d in sym else n for d, n in enumerate(a.shape)), a.dtype))
            elif i in self.plan.derived and self.static_reason is None:
                key.append(None)
            else:
                key.append((type(a).__name__, a))
        return tuple(key)

    def _inputs(self, args: Sequence[Any]) -> list[Any]:
        """The arguments that become galaxir inputs: no weights, no derived sizes."""
        skip = set(self.frozen)
        if self.static_reason is None:
            skip |= set(self.plan.derived)
        return [a for i, a in enumerate(args) if i not in skip]

    def _export(self, args: Sequence[Any]) -> ImportInfo:
        if self.plan.symbolic and self.static_reason is None:
            # Dim.DYNAMIC (not named Dims): export may tie or specialize dims along the
            # guards dynamo already took, instead of refusing; names are mapped back after
            specs: list[Any] = []
            names: list[dict[int, str]] = []
            for i, a in enumerate(args):
                if i in self.frozen or i in self.plan.derived:
                    continue
                dims = self.plan.dims.get(i, {})
                spec = {}
                for d, name in dims.items():
                    lo, hi = self.plan.bounds.get(name, (0, None))
                    spec[d] = torch.export.Dim.DYNAMIC(min=lo) if hi is None else \
                        torch.export.Dim.DYNAMIC(min=lo, max=hi)
                specs.append(spec or None)
                names.append(dims)
            frozen = _Frozen(_bake_scalars(self.gm, args, self.scalars), args, self.frozen,
                             self.plan.derived)
            try:
                ep = export(frozen, tuple(self._inputs(args)), dynamic_shapes=(tuple(specs),))
                return import_exported(ep, _symbol_names(ep, names))
            except GalaxirError as e:
                self.static_reason = str(e)
        gm = _bake_scalars(self.gm, args, self.scalars)
        ep = export(_Frozen(gm, args, self.frozen), tuple(self._inputs(args)))
        return import_exported(ep)

    def compile_for(self, args: Sequence[Any]) -> _Entry:
        key = self._key(args)
        entry = self.entries.get(key)
        if entry is None:
            import galaxir
            info = self._export(args)
            key = self._key(args)  # a refused symbolic export falls back to per-shape keys
            exe = galaxir.compile(info.module, target=self.target, level=self.level, **self.options)
            self.compiles += 1
            entry = self.entries[key] = _Entry(info, exe)
        return entry

    def __call__(self, *args: Any) -> Any:
        entry = self.compile_for(args)
        inputs = self._inputs(args)
        feeds = [to_numpy(inputs[i]) for i in entry.info.tensor_inputs]
        outs = list(entry.exe(*feeds))
        flat: list[Any] = []
        it = iter(outs)
        for i in range(entry.info.num_outputs):
            flat.append(entry.info.constant_outputs[i] if i in entry.info.constant_outputs
                        else from_numpy(next(it)))
        return pytree.tree_unflatten(flat, entry.info.out_spec)


def _symbol_names(ep: Any, names: list[dict[int, str]]) -> dict[str, str]:
    """Export's own symbols -> dynamo's names, by the (input, dim) they stand for."""
    user = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    out: dict[str, str] = {}
    for name, dims in zip(ep.graph_signature.user_inputs, names):
        val = user[name].meta.get("val") if name in user else None
        if not isinstance(val, torch.Tensor):
            continue
        for d, ours in dims.items():
            sym = _symbol(val.shape[d]) if d < val.dim() else None
            if sym is not None:
                out.setdefault(str(sym), ours)
    return out


def galaxir_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
                    target: str | None = None, level: int | None = None,
                    **options: Any) -> Callable[..., Any]:
    """A ``torch.compile`` backend compiling the graph through galaxir for ``target``
    (default: "cpu" where available, else "numpy")."""
    return GalaxirCompiled(gm, example_inputs, target, level, options)


def register_backend(name: str = "galaxir") -> bool:
    """Register ``galaxir_backend`` with dynamo as ``torch.compile(backend=name)``."""
    try:
        from torch._dynamo import list_backends
        from torch._dynamo import register_backend as _register
        if name in list_backends(exclude_tags=()):
            return True
        _register(compiler_fn=galaxir_backend, name=name)
        return True
    except (ImportError, AttributeError, AssertionError, GalaxirError):
        return False
