"""The LLVM side of the cpu backend: a target machine for the host CPU, the O3 pipeline,
object code emission, a compile cache (in memory, optionally on disk) and loading object
code into an MCJIT engine.

An on-disk cache entry carries its length and sha256 in a header; an entry that fails the
check is recompiled and rewritten, and entries are published by atomic rename
(docs/reliability.md).

Object code never holds raw addresses: external routines (BLAS sgemm) are reached through
named symbols bound with ``llvm.add_symbol``, so a cached object file stays valid in a new
process.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from pathlib import Path

from ...errors import CompileError

_lock = threading.Lock()
_state: dict = {}
_MEMORY_CACHE: dict[str, bytes] = {}
_MEMORY_CACHE_LIMIT = 256
#: LLVM runs of this process (``compile_ir`` calls that found no cached object code):
#: tests count them (one compile per dynamic model, docs/performance.md)
stats = {"compiled": 0}


def _llvm():
    import llvmlite.binding as llvm
    if "tm" not in _state:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        llvm.initialize_native_asmparser()  # inline asm (pause) in the worker loop
        cpu = llvm.get_host_cpu_name()
        features = turned_off(llvm.get_host_cpu_features().flatten(),
                              os.environ.get("GALAXIR_CPU_FEATURES", ""))
        triple = llvm.get_process_triple()
        target = llvm.Target.from_triple(triple)
        _state["target"] = target
        _state["tm"] = target.create_target_machine(cpu=cpu, features=features, opt=3,
                                                    jit=True, codemodel="jitdefault")
        _state["triple"] = triple
        _state["cpu"] = cpu
        _state["features"] = features
        _bind_symbols(llvm)
    return llvm


def turned_off(features: str, spec: str) -> str:
    """``features`` (LLVM's "+avx2,+fma,...") less those ``spec`` names ("-avx512f,-fma"), so
    this host compiles and runs another host's code paths (``GALAXIR_CPU_FEATURES``, read
    once per process: "-avx512f" gives an AVX2 host's code, for timing it here).  Turning
    off avx512f turns off every AVX-512 extension with it."""
    off = {w.strip()[1:] for w in spec.split(",") if w.strip().startswith("-")}
    if not off:
        return features

    def gone(name):
        return name in off or ("avx512f" in off and name.startswith(("avx512", "evex512", "avx10")))
    return ",".join("-" + f[1:] if f.startswith("+") and gone(f[1:]) else f
                    for f in features.split(","))


def has_feature(name: str) -> bool:
    """Whether the host CPU (as LLVM compiles for it) has feature ``name``, e.g. avx512f."""
    _llvm()
    return f"+{name}" in _state["features"].split(",")


def target_triple() -> str:
    _llvm()
    return _state["triple"]


def target_key() -> str:
    """What object code depends on besides the IR: triple, cpu name and features."""
    _llvm()
    return f"{_state['triple']}|{_state['cpu']}|{_state['features']}"


def target_data_layout() -> str:
    _llvm()
    return str(_state["tm"].target_data)


# -- external symbols ---------------------------------------------------------------------
def _capsule_pointer(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def _bind_symbols(llvm) -> None:
    """Bind ``gx_sgemm`` (Fortran sgemm from scipy's OpenBLAS) and libm routines."""
    addr = None
    try:
        from scipy.linalg import cython_blas
        addr = _capsule_pointer(cython_blas.__pyx_capi__["sgemm"])
    except Exception:  # scipy missing: matmul falls back to generated loops
        addr = None
    _state["has_blas"] = bool(addr)
    if addr:
        llvm.add_symbol("gx_sgemm", addr)
        _single_thread_blas()
    libm = ctypes.CDLL(None)
    for name in ("expf", "logf", "powf", "tanhf", "erff"):
        try:
            fn = getattr(libm, name)
        except AttributeError:
            continue
        llvm.add_symbol(name, ctypes.cast(fn, ctypes.c_void_p).value)


def _single_thread_blas() -> None:
    """scipy's OpenBLAS threads spin after each call and would fight the backend's own
    worker for the cores: native code calls sgemm from one thread only."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "scipy_openblas" in line and "/scipy" in line}
    except OSError:
        return
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "openblas_set_num_threads", "openblas_set_num_threads64_"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(1)
                break


def has_blas() -> bool:
    _llvm()
    return _state["has_blas"]


_warmed = False


def warm_blas() -> None:
    """OpenBLAS runs small GEMMs slowly until one large GEMM has run: run one once."""
    global _warmed
    if _warmed or not has_blas():
        return
    _warmed = True
    try:
        import numpy as np
        from scipy.linalg import blas
        a = np.ones((512, 512), np.float32, order="F")
        blas.sgemm(1.0, a, a)
    except Exception:
        pass


# -- compile and cache --------------------------------------------------------------------
#: LLVM pipeline speed level (2 compiles about 40% faster than 3 with the same kernel
#: speed: the hot loops are written vectorized already); GALAXIR_CPU_OPT overrides it
OPT_LEVEL = int(os.environ.get("GALAXIR_CPU_OPT", "2") or 2)


def cache_key(llvm_ir: str, opt_level: int | None = None) -> str:
    from ... import __version__
    h = hashlib.sha256()
    h.update(f"O{OPT_LEVEL if opt_level is None else opt_level}|".encode())
    h.update(llvm_ir.encode())
    h.update(target_key().encode())
    h.update(f"galaxir-{__version__}".encode())
    return h.hexdigest()


def default_cache_dir() -> Path | None:
    d = os.environ.get("GALAXIR_CACHE_DIR")
    return Path(d) if d else None


def compile_ir(llvm_ir: str, cache_dir: str | os.PathLike | None = None,
               opt_level: int | None = None) -> tuple[bytes, str]:
    """Object code for ``llvm_ir``; returns (object bytes, where it came from:
    'memory', 'disk' or 'compiled')."""
    llvm = _llvm()
    opt_level = OPT_LEVEL if opt_level is None else opt_level
    key = cache_key(llvm_ir, opt_level)
    with _lock:
        obj = _MEMORY_CACHE.get(key)
    if obj is not None:
        return obj, "memory"
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{key}.o"
        obj = read_cache_entry(path)
        if obj is not None:
            _remember(key, obj)
            return obj, "disk"
    try:
        mod = llvm.parse_assembly(llvm_ir)
        mod.verify()
    except RuntimeError as e:
        raise CompileError(f"cpu backend generated invalid LLVM IR: {e}") from e
    tm = _state["tm"]
    with _lock:
        pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = True
        pb = llvm.create_pass_builder(tm, pto)
        mpm = pb.getModulePassManager()
        mpm.run(mod, pb)
        obj = bytes(tm.emit_object(mod))
        stats["compiled"] += 1
    _remember(key, obj)
    if path is not None:
        write_cache_entry(path, obj)
    return obj, "compiled"


# -- the on-disk cache entry: header (magic, payload length, sha256) + object code ---------
_ENTRY_MAGIC = b"GXOBJ\x00\x01\x00"
_ENTRY_HEADER = len(_ENTRY_MAGIC) + 8 + 32


def read_cache_entry(path: Path) -> bytes | None:
    """The object code stored at ``path``, or None when it is missing or fails its check
    (wrong magic, length or sha256): a damaged entry is never handed to LLVM."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < _ENTRY_HEADER or not data.startswith(_ENTRY_MAGIC):
        return None
    m = len(_ENTRY_MAGIC)
    size = int.from_bytes(data[m:m + 8], "little")
    digest = data[m + 8:_ENTRY_HEADER]
    obj = data[_ENTRY_HEADER:]
    if size != len(obj) or size == 0 or hashlib.sha256(obj).digest() != digest:
        return None
    return obj


def write_cache_entry(path: Path, obj: bytes) -> None:
    """Publish ``obj`` at ``path`` whole or not at all: written to a temp file of this
    process and thread, flushed to disk, then renamed over ``path`` (atomic), so concurrent
    writers and readers never see half a file.  Best effort: an unwritable cache is skipped."""
    header = _ENTRY_MAGIC + len(obj).to_bytes(8, "little") + hashlib.sha256(obj).digest()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(obj)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def _remember(key: str, obj: bytes) -> None:
    with _lock:
        if len(_MEMORY_CACHE) >= _MEMORY_CACHE_LIMIT:
            _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
        _MEMORY_CACHE[key] = obj


def clear_memory_cache() -> None:
    with _lock:
        _MEMORY_CACHE.clear()


class LoadedObject:
    """Object code loaded into its own MCJIT engine; keep it alive while calling into it."""

    def __init__(self, obj: bytes):
        llvm = _llvm()
        with _lock:
            # the engine takes ownership of its target machine: give it its own
            tm = _state["target"].create_target_machine(
                cpu=_state["cpu"], features=_state["features"], opt=3, jit=True,
                codemodel="jitdefault")
            self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()

    def global_address(self, name: str) -> int:
        """Address of a global variable, 0 when the object code has none by that name."""
        try:
            return self._engine.get_global_value_address(name) or 0
        except Exception:
            return 0

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:
            raise CompileError(f"cpu backend: symbol '{name}' missing from the object code")
        return addr
