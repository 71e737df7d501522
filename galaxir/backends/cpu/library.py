"""Shape-generic kernels shared by every compiled model of the process.

A heavy kernel (the packed GEMM behind conv/gemm, pooling, ...) is generated once per
*variant* (what changes the code: source kind, epilogue, ...) with its shapes and strides
read at run time from an ``i64`` parameter block.  Each variant is compiled into its own
small LLVM module the first time a model needs it (through the object cache of jit.py,
so also from disk), loaded, and its entry bound by name with ``llvm.add_symbol``.  Model
modules only declare the symbol and call it from a tiny wrapper with a constant
parameter block, so a model's own LLVM module stays small whatever its number of convs.

The symbol name carries a hash of the variant's LLVM IR: a model's object code (cached by
the hash of its own IR, which names the symbol) can never be linked against a different
version of the kernel.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Callable, Sequence

import llvmlite.ir as ir

from . import jit

_PLACEHOLDER = "GX_LIBRARY_FUNCTION_NAME"
_lock = threading.RLock()
_symbols: dict[str, str] = {}       # variant name -> bound symbol
_loaded: list = []                  # keep the engines alive
stats = {"compiled": 0, "reused": 0}


def ensure(variant: str, build: Callable[[ir.Module, str], None]) -> str:
    """The symbol of library function ``variant`` (compiled and bound on first use).

    ``build(module, name)`` defines an externally visible function ``name`` in ``module``.
    """
    with _lock:
        sym = _symbols.get(variant)
        if sym is not None:
            stats["reused"] += 1
            return sym
        llvm = jit._llvm()
        mod = ir.Module(name=f"gx_lib_{variant}")
        mod.triple = jit.target_triple()
        mod.data_layout = jit.target_data_layout()
        build(mod, _PLACEHOLDER)
        text = str(mod)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in variant)
        sym = f"gx_lib_{safe}_{digest}"
        text = text.replace(_PLACEHOLDER, sym)
        obj, _ = jit.compile_ir(text, jit.default_cache_dir())
        loaded = jit.LoadedObject(obj)
        llvm.add_symbol(sym, loaded.address(sym))
        _loaded.append(loaded)
        _symbols[variant] = sym
        stats["compiled"] += 1
        return sym


def declare(module: ir.Module, sym: str, arg_types: Sequence[ir.Type]) -> ir.Function:
    fn = module.globals.get(sym)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), list(arg_types)), sym)
    return fn


def param_block(module: ir.Module, values: Sequence[int], hint: str = "params") -> ir.GlobalVariable:
    """An internal constant ``[n x i64]`` holding ``values`` (deduplicated per module); in
    a dynamic module (codegen.begin_dynamic) a fresh external mutable block whose values
    the loader writes per specialization (the IR holds only its length)."""
    from .codegen import dynamic_blocks, dynamic_values
    from .shapetrace import Traced
    if dynamic_values(module) is not None:  # traced numbers stay traced (shapetrace.py)
        vals = tuple(v if isinstance(v, Traced) else int(v) for v in values)
        ty = ir.ArrayType(ir.IntType(64), len(vals))
        g = ir.GlobalVariable(module, ty, module.get_unique_name(f"gx_dyn_{hint}"))
        g.initializer = ir.Constant(ty, None)
        dynamic_blocks(module)[g.name] = vals
        return g
    vals = tuple(int(v) for v in values)
    cache = module.__dict__.setdefault("_gx_param_blocks", {})
    g = cache.get(vals)
    if g is None:
        ty = ir.ArrayType(ir.IntType(64), len(vals))
        g = ir.GlobalVariable(module, ty, module.get_unique_name(f"gx_{hint}"))
        g.initializer = ir.Constant(ty, list(vals))
        g.global_constant = True
        g.linkage = "internal"
        cache[vals] = g
    return g
