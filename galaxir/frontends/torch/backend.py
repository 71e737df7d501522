"""``torch.compile(model, backend=galaxir_backend)``: dynamo hands over an FX GraphModule;
galaxir exports it to core ATen, imports it, compiles it for ``target`` and returns a
callable over torch tensors.

Each distinct set of input shapes (and Python scalar inputs) is exported and compiled
once, at its first call.  Inference only: results carry no autograd history.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ...errors import GalaxirError
from .importer import ImportInfo, export, from_numpy, import_exported, to_numpy


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


class _Frozen(torch.nn.Module):
    """The dynamo graph with its weight inputs bound as buffers, so that torch.export lifts
    them into constants (foldable by galaxir) and only the real inputs stay inputs."""

    def __init__(self, gm: torch.fx.GraphModule, args: Sequence[Any], weights: list[int]):
        super().__init__()
        self.gm = gm
        self.n = len(args)
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        self.slots: dict[int, str] = {}
        for i in weights:
            name = names[i] if i < len(names) and names[i].isidentifier() else f"weight_{i}"
            self.register_buffer(name, args[i].detach(), persistent=False)
            self.slots[i] = name

    def forward(self, *inputs: Any) -> Any:
        it = iter(inputs)
        return self.gm(*[getattr(self, self.slots[i]) if i in self.slots else next(it)
                         for i in range(self.n)])


class GalaxirCompiled:
    """The callable ``galaxir_backend`` returns: tensors in, tensors out.

    Weights (parameters and buffers) are compiled in as constants; modifying one in place
    (its ``_version`` changes) triggers a recompile at the next call.
    """

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any] = (),
                 target: str | None = None, level: int | None = None,
                 options: dict | None = None):
        self.gm = gm
        self.weights = [i for i, a in enumerate(example_inputs) if _is_weight(a)]
        self.target = target or default_target()
        self.level = level
        self.options = options or {}
        self.entries: dict[tuple, _Entry] = {}

    def _key(self, args: Sequence[Any]) -> tuple:
        return tuple((id(a), a._version) if i in self.weights else
                     (tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else
                     (type(a).__name__, a) for i, a in enumerate(args))

    def compile_for(self, args: Sequence[Any]) -> _Entry:
        key = self._key(args)
        entry = self.entries.get(key)
        if entry is None:
            import galaxir
            inputs = [a for i, a in enumerate(args) if i not in self.weights]
            ep = export(_Frozen(self.gm, args, self.weights), tuple(inputs))
            info = import_exported(ep)
            exe = galaxir.compile(info.module, target=self.target, level=self.level, **self.options)
            entry = self.entries[key] = _Entry(info, exe)
        return entry

    def __call__(self, *args: Any) -> Any:
        entry = self.compile_for(args)
        inputs = [a for i, a in enumerate(args) if i not in self.weights]
        feeds = [to_numpy(inputs[i]) for i in entry.info.tensor_inputs]
        outs = list(entry.exe(*feeds))
        flat: list[Any] = []
        it = iter(outs)
        for i in range(entry.info.num_outputs):
            flat.append(entry.info.constant_outputs[i] if i in entry.info.constant_outputs
                        else from_numpy(next(it)))
        return pytree.tree_unflatten(flat, entry.info.out_spec)


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
