"""``torch.compile(model, backend=galaxir_backend)``: dynamo hands over an FX GraphModule;
galaxir exports it to core ATen, imports it, compiles it for ``target`` and returns a
callable over torch tensors.

Each distinct set of input shapes (and Python scalar inputs) is exported and compiled
once, at its first call.  Inference only: results carry no autograd history.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

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
    except Exception:
        return "numpy"


@dataclass
class _Entry:
    info: ImportInfo
    exe: Any


class GalaxirCompiled:
    """The callable ``galaxir_backend`` returns: tensors in, tensors out."""

    def __init__(self, gm: torch.fx.GraphModule, target: str | None = None,
                 level: int | None = None, options: dict | None = None):
        self.gm = gm
        self.target = target or default_target()
        self.level = level
        self.options = options or {}
        self.entries: dict[tuple, _Entry] = {}

    @staticmethod
    def _key(args: Sequence[Any]) -> tuple:
        return tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else
                     (type(a).__name__, a) for a in args)

    def compile_for(self, args: Sequence[Any]) -> _Entry:
        key = self._key(args)
        entry = self.entries.get(key)
        if entry is None:
            import galaxir
            ep = export(self.gm, tuple(args))
            info = import_exported(ep)
            exe = galaxir.compile(info.module, target=self.target, level=self.level, **self.options)
            entry = self.entries[key] = _Entry(info, exe)
        return entry

    def __call__(self, *args: Any) -> Any:
        entry = self.compile_for(args)
        feeds = [to_numpy(args[i]) for i in entry.info.tensor_inputs]
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
    return GalaxirCompiled(gm, target, level, options)


def register_backend(name: str = "galaxir") -> bool:
    """Register ``galaxir_backend`` with dynamo as ``torch.compile(backend=name)``."""
    try:
        from torch._dynamo import list_backends, register_backend as _register
        if name in list_backends(exclude_tags=()):
            return True
        _register(compiler_fn=galaxir_backend, name=name)
        return True
    except (ImportError, AttributeError, AssertionError, GalaxirError):
        return False
