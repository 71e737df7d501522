"""galaxir: an inference engine built as a compiler.

    import galaxir as gx
    m = gx.import_model("model.onnx")
    m = gx.optimize(m, level=2, target="cpu")
    exe = gx.compile(m, target="cpu")
    (y,) = exe(x)
"""
from __future__ import annotations

import os
from typing import Any

from . import errors
from .ir import Module, parse

__version__ = "0.1.0"


def import_model(source: Any, **options: Any) -> Module:
    """A Module from a Module, an onnx.ModelProto, an .onnx/.gxm path, ONNX bytes, or a
    torch.nn.Module (with ``example_inputs=``).  ONNX external data is read only from inside
    the model file's folder, or ``base_dir=`` (required for bytes/ModelProto sources that
    have external data)."""
    if isinstance(source, Module):
        return source
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".gxm"):
        from .serialize import load
        return load(source)
    if type(source).__module__.startswith("torch") or _is_torch_module(source):
        from .frontends.torch import import_torch
        return import_torch(source, **options)
    from .frontends.onnx import import_onnx
    return import_onnx(source, **options)


def _is_torch_module(obj: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(obj).__mro__)


def optimize(model: Any, level: int = 1, target: str | None = None, **options: Any) -> Module:
    """Run the pass pipeline of ``level`` (0-3), plus ``target``'s own rules, on a copy."""
    from .ir.mapped import check_constants
    from .passes import optimize as _optimize
    module = import_model(model)
    check_constants(module)  # a truncated .gxm: FormatError, not SIGBUS
    return _optimize(module, level=level, target=target, **options)


def compile(model: Any, target: str = "cpu", level: int | None = None, **options: Any):
    """Compile for ``target``; ``level`` (default: the target's own default) optimizes first."""
    from .backends import get_backend
    from .ir.mapped import check_constants
    module = import_model(model)
    check_constants(module)  # a truncated .gxm: FormatError, not SIGBUS
    backend = get_backend(target)
    if level is None:
        level = getattr(backend, "default_level", 0)
    if level:
        module = optimize(module, level=level, target=target)
    return backend.compile(module, **options)


def save(module: Module, path: str | os.PathLike) -> None:
    from .serialize import save as _save
    _save(module, path)


def load(path: str | os.PathLike, verify: bool = False) -> Module:
    """A .gxm file, mapped (weights are zero-copy views; each is checked against its CRC32
    on first use, or all of them here with ``verify=True``)."""
    from .serialize import load as _load
    return _load(path, verify=verify)


def print_ir(module: Module) -> str:
    return module.to_text()


__all__ = ["errors", "Module", "parse", "import_model", "optimize", "compile", "save", "load",
           "print_ir", "__version__"]
