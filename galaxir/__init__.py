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


#: What ``import_model`` reads, for error messages.
FORMATS = ("an ONNX model (a .onnx path, its bytes or an onnx.ModelProto), a .gxm file, "
           "galaxir's textual IR (a .gxir path), a MindSpore .mindir file, a torch.nn.Module (with example_inputs=) "
           "or a galaxir Module")

#: Model files galaxir does not read, by suffix, with what to do instead.
FOREIGN_SUFFIXES = {
    ".tflite": "a TensorFlow Lite model: convert it to ONNX first (python -m tf2onnx.convert --tflite)",
    ".pb": "a TensorFlow graph: convert it to ONNX first (python -m tf2onnx.convert)",
    ".h5": "a Keras model: convert it to ONNX first (tf2onnx)",
    ".keras": "a Keras model: convert it to ONNX first (tf2onnx)",
    ".pt": "a PyTorch checkpoint: load it with torch and pass the nn.Module (with example_inputs=)",
    ".pth": "a PyTorch checkpoint: load it with torch and pass the nn.Module (with example_inputs=)",
    ".safetensors": "weights without a graph: build the model in torch and pass the nn.Module",
    ".mlmodel": "a Core ML model: galaxir has no Core ML frontend",
    ".engine": "a TensorRT engine: galaxir has no TensorRT frontend",
}


def import_model(source: Any, **options: Any) -> Module:
    """A Module from a Module, an onnx.ModelProto, an .onnx/.gxm/.gxir path, ONNX bytes, or
    a torch.nn.Module (with ``example_inputs=``).  Anything else raises
    ``errors.ModelImportError`` listing what galaxir reads.  ONNX external data is read only
    from inside the model file's folder, or ``base_dir=`` (required for bytes/ModelProto
    sources that have external data)."""
    if isinstance(source, Module):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _import_path(source, options)
    if type(source).__module__.startswith("torch") or _is_torch_module(source):
        from .frontends.torch import import_torch
        return import_torch(source, **options)
    if isinstance(source, (bytes, bytearray, memoryview)) or _is_onnx_model(source):
        from .frontends.onnx import import_onnx
        return import_onnx(source, **options)
    kind = f"{type(source).__module__}.{type(source).__qualname__}"
    hint = ""
    if kind.startswith(("keras", "tensorflow", "tf_keras")):
        hint = " (a Keras/TensorFlow model: export it to ONNX first, e.g. with tf2onnx)"
    raise errors.ModelImportError(f"cannot import a {kind}{hint}; galaxir reads {FORMATS}")


def _import_path(source: str | os.PathLike, options: dict) -> Module:
    path = os.fspath(source)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".gxm":
        from .serialize import load
        return load(source)
    if suffix == ".mindir":
        from .frontends.mindspore import import_mindir
        return import_mindir(source, **options)
    if suffix in (".gxir", ".mlir"):
        if not os.path.isfile(path):
            raise errors.ModelImportError(f"no such file: '{path}'")
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse(f.read())
    if suffix in FOREIGN_SUFFIXES:
        raise errors.ModelImportError(f"'{path}' is {FOREIGN_SUFFIXES[suffix]}; galaxir reads {FORMATS}")
    from .frontends.onnx import import_onnx
    try:
        return import_onnx(source, **options)
    except errors.ModelImportError as e:
        if suffix == ".onnx" or not os.path.isfile(path):
            raise
        raise errors.ModelImportError(f"{e} ('{path}' was read as ONNX, as files without a known "
                                      f"suffix are; galaxir reads {FORMATS})") from None


def _is_onnx_model(obj: Any) -> bool:
    return type(obj).__name__ == "ModelProto" and type(obj).__module__.startswith("onnx")


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
    """Compile for ``target``; ``level`` (default: the target's own default) optimizes first.

    ``options`` are the target's compile options (``cpu``: ``cache_dir``, ``num_threads``)
    and those of ``optimize`` (``disable_passes``, ``print_after``, ``timing``, ...); any
    other name raises ``errors.OptionError`` listing the valid ones."""
    from .backends import get_backend
    from .ir.mapped import check_constants
    from .passes.pipeline import MANAGER_OPTIONS, PASS_OPTIONS, unknown_names
    module = import_model(model)
    check_constants(module)  # a truncated .gxm: FormatError, not SIGBUS
    backend = get_backend(target)
    own = backend.compile_options()
    opt_kw = {k: v for k, v in options.items() if k not in own and
              (k in MANAGER_OPTIONS or k in PASS_OPTIONS)}
    unknown_names("option", [k for k in options if k not in own and k not in opt_kw],
                  [*own, *MANAGER_OPTIONS, *PASS_OPTIONS], f" given to compile for '{target}'")
    if level is None:
        level = default_level(target)
    if level or opt_kw:
        # a compiled module keeps its weights in memory, not in a file: fold without the
        # growth limit (conv + batch_norm folding needs the splat weights as constants)
        opt_kw.setdefault("fold_max_growth", float("inf"))
        module = optimize(module, level=level, target=target, **opt_kw)
    own_kw = {k: v for k, v in options.items() if k not in opt_kw}
    exe = backend.compile(module, **own_kw)
    # run(outputs=[...]) compiles a pruned copy of the (optimized) module the same way
    exe.compile_like = lambda m: backend.compile(m, **own_kw)
    return exe


def default_level(target: str) -> int:
    """The optimization level ``compile`` uses for ``target`` when none is given."""
    from .backends import get_backend
    return int(getattr(get_backend(target), "default_level", 0))


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
           "print_ir", "default_level", "__version__"]
