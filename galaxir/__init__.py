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
    torch.nn.Module (with ``example_inputs=``)."""
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
    from .passes import optimize as _optimize
    return _optimize(import_model(model), level=level, target=target, **options)


def compile(model: Any, target: str = "cpu", level: int | None = None, **options: Any):
    """Compile for ``target``; ``level`` (default: the target's own default) optimizes first.

    ``options`` are the target's compile options (``cpu``: ``cache_dir``, ``num_threads``)
    and those of ``optimize`` (``disable_passes``, ``print_after``, ``timing``, ...); any
    other name raises ``errors.OptionError`` listing the valid ones."""
    from .backends import get_backend
    from .passes.pipeline import MANAGER_OPTIONS, PASS_OPTIONS, unknown_names
    module = import_model(model)
    backend = get_backend(target)
    own = backend.compile_options()
    opt_kw = {k: v for k, v in options.items() if k not in own and
              (k in MANAGER_OPTIONS or k in PASS_OPTIONS)}
    unknown_names("option", [k for k in options if k not in own and k not in opt_kw],
                  [*own, *MANAGER_OPTIONS, *PASS_OPTIONS], f" given to compile for '{target}'")
    if level is None:
        level = default_level(target)
    if level or opt_kw:
        module = optimize(module, level=level, target=target, **opt_kw)
    return backend.compile(module, **{k: v for k, v in options.items() if k not in opt_kw})


def default_level(target: str) -> int:
    """The optimization level ``compile`` uses for ``target`` when none is given."""
    from .backends import get_backend
    return int(getattr(get_backend(target), "default_level", 0))


def save(module: Module, path: str | os.PathLike) -> None:
    from .serialize import save as _save
    _save(module, path)


def load(path: str | os.PathLike) -> Module:
    from .serialize import load as _load
    return _load(path)


def print_ir(module: Module) -> str:
    return module.to_text()


__all__ = ["errors", "Module", "parse", "import_model", "optimize", "compile", "save", "load",
           "print_ir", "default_level", "__version__"]
