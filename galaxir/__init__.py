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
           "galaxir's textual IR (a .gxir path), a MindSpore .mindir file, a torch.nn.Module "
           "(with example_inputs=), a Keras model, tf.function or tf.Module with an input "
           "signature, a SavedModel folder, a .tflite file, or a galaxir Module")

#: Model files galaxir does not read, by suffix, with what to do instead.
FOREIGN_SUFFIXES = {
    ".pb": "a TensorFlow graph: pass its SavedModel folder (or the loaded model) instead",
    ".h5": "a Keras model file: load it with keras.models.load_model and pass the model",
    ".keras": "a Keras model file: load it with keras.models.load_model and pass the model",
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
    if _is_tensorflow(source):
        from .frontends.tf import import_tf
        return import_tf(source, **options)
    if isinstance(source, (bytes, bytearray, memoryview)) and bytes(source[4:8]) == b"TFL3":
        from .frontends.tflite import import_tflite
        return import_tflite(source, **options)
    if isinstance(source, (bytes, bytearray, memoryview)) or _is_onnx_model(source):
        from .frontends.onnx import import_onnx
        return import_onnx(source, **options)
    kind = f"{type(source).__module__}.{type(source).__qualname__}"
    raise errors.ModelImportError(f"cannot import a {kind}; galaxir reads {FORMATS}")


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
    if suffix == ".tflite":
        from .frontends.tflite import import_tflite
        return import_tflite(path, **options)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        from .frontends.tf import import_tf
        return import_tf(path, **options)
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


def _is_tensorflow(obj: Any) -> bool:
    """A Keras model, tf.function, tf.Module or ConcretFunction (checked by module name, so
    TensorFlow is imported only when one is given)."""
    return any(c.__module__.split(".")[0] in ("keras", "tensorflow", "tf_keras")
               for c in type(obj).__mro__)


def _is_torch_module(obj: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(obj).__mro__)


def optimize(model: Any, level: int = 1, target: Any = None, **options: Any) -> Module:
    """Run the pass pipeline of ``level`` (0-3), plus ``target``'s own rules, on a copy.
    ``target``: a backend name or a Backend object (resolved once, here)."""
    from .backends import get_backend
    from .ir.mapped import check_constants
    from .passes import optimize as _optimize
    module = import_model(model)
    check_constants(module)  # a truncated .gxm: FormatError, not SIGBUS
    backend = get_backend(target) if isinstance(target, str) else target
    return _optimize(module, level=level, target=backend, **options)


def compile(model: Any, target: str = "cpu", level: int | None = None, **options: Any):
    """Compile for ``target``; ``level`` (default: the target's own default) optimizes first.

    ``options`` are the target's compile options (``cpu``: ``cache_dir``, ``num_threads``)
    and those of ``optimize`` (``disable_passes``, ``print_after``, ``timing``, ...); any
    other name raises ``errors.OptionError`` listing the valid ones.  Ops the target's
    capabilities leave out run on the numpy reference (galaxir/backends/partition.py;
    ``exe.report()`` lists where each op ran)."""
    from .backends import get_backend
    from .backends.partition import compile_partitioned
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
        level = backend.default_level
    if level or opt_kw:
        # a compiled module keeps its weights in memory, not in a file: fold without the
        # growth limit (conv + batch_norm folding needs the splat weights as constants)
        opt_kw.setdefault("fold_max_growth", float("inf"))
        module = optimize(module, level=level, target=backend, **opt_kw)
    own_kw = {k: v for k, v in options.items() if k not in opt_kw}
    exe = compile_partitioned(module, backend, **own_kw)
    # run(outputs=[...]) compiles a pruned copy of the (optimized) module the same way
    exe.compile_like = lambda m: compile_partitioned(m, backend, **own_kw)
    return exe


def default_level(target: str) -> int:
    """The optimization level ``compile`` uses for ``target`` when none is given."""
    from .backends import get_backend
    return int(get_backend(target).default_level)


def save(module: Module, path: str | os.PathLike) -> None:
    from .serialize import save as _save
    _save(module, path)


def load(path: str | os.PathLike, verify: bool = False) -> Module:
    """A .gxm file, mapped (weights are zero-copy views; each is checked against its CRC32
    on first use, or all of them here with ``verify=True``)."""
    from .serialize import load as _load
    return _load(path, verify=verify)


def quantize(model: Any, calibration: Any = None, **options: Any) -> Module:
    """A quantized copy of ``model``: static int8 QDQ (with ``calibration``, an iterable of
    feed dicts), dynamic int8 (``calibration=None``) or int4 weights (``weight_bits=4``);
    see ``galaxir.precision.quantize``."""
    from .precision import quantize as _quantize
    return _quantize(model, calibration, **options)


def quantization_report(float_module: Any, quant_module: Any, feeds: Any, **options: Any):
    """Each quantized op's output SQNR against the float model, worst first."""
    from .precision import quantization_report as _report
    return _report(import_model(float_module), import_model(quant_module), feeds, **options)


def convert_float(model: Any, dtype: str = "f16", keep: Any = None) -> Module:
    """A copy of ``model`` in f16 or bf16, sensitive ops kept in f32."""
    from .precision import convert_float as _convert
    return _convert(model, dtype, keep)


def print_ir(module: Module) -> str:
    return module.to_text()


__all__ = ["errors", "Module", "parse", "import_model", "optimize", "compile", "save", "load",
           "print_ir", "default_level", "quantize", "quantization_report", "convert_float",
           "__version__"]
