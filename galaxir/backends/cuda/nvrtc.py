"""Compiling generated kernels with NVRTC, which needs no GPU: the compile tests run it on
machines without one, and the runtime uses the same options through ``cupy.RawModule``.

``compile_ptx(kernels, arch)`` builds one translation unit (the prelude and each distinct
kernel once) and returns its PTX, cached in memory by (source hash, architecture).  A
failure raises ``CompileError`` with NVRTC's log and the name of each kernel that fails."""
from __future__ import annotations

import hashlib
import threading
from typing import Iterable, Sequence

from ...errors import CompileError
from .kernels import Kernel
from .source import PRELUDE

OPTIONS = ("-std=c++17",)  # IEEE math: fast-math flushes denormals (the node suite checks them)
ARCHS = ("sm_80", "sm_90")
_CACHE: dict[tuple[str, str], bytes] = {}
_LOCK = threading.Lock()


def translation_unit(kernels: Iterable[Kernel]) -> str:
    """The prelude and each distinct kernel once, in first-seen order."""
    seen: dict[str, str] = {}
    for k in kernels:
        seen.setdefault(k.name, k.source)
    return PRELUDE + "\n" + "\n\n".join(seen.values()) + "\n"


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # cupy missing, or libnvrtc not found
        raise CompileError("the cuda backend needs NVRTC: install the 'cuda' extra "
                           f"(cupy-cuda13x and nvidia-cuda-nvrtc); loading it failed: {e}") from None
    return nvrtc


def options_for(arch: str) -> list[str]:
    if not arch.startswith("sm_") or not arch[3:].isdigit():
        raise CompileError(f"cuda: architecture must look like 'sm_80', got {arch!r}")
    return [f"--gpu-architecture=compute_{arch[3:]}", *OPTIONS]


def compile_source(source: str, arch: str, name: str = "galaxir.cu") -> bytes:
    """PTX for ``source`` (cached by hash and architecture); CompileError with the log."""
    key = (hashlib.sha256(source.encode()).hexdigest(), arch)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(source, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options_for(arch))
        except Exception as e:
            log = ""
            try:
                log = nvrtc.getProgramLog(prog)
            except Exception:
                pass
            raise CompileError(f"NVRTC failed for {arch}: {e}\n{log[:4000]}") from None
        ptx = nvrtc.getPTX(prog)
    finally:
        try:
            nvrtc.destroyProgram(prog)
        except Exception:
            pass
    with _LOCK:
        _CACHE[key] = ptx
    return ptx


def compile_ptx(kernels: Sequence[Kernel], arch: str) -> bytes:
    """PTX of every kernel in one translation unit; when it fails, each kernel is compiled
    alone so that the error names the ones that do not compile."""
    kernels = list({k.name: k for k in kernels}.values())
    try:
        return compile_source(translation_unit(kernels), arch)
    except CompileError:
        bad = []
        for k in kernels:
            try:
                compile_source(translation_unit([k]), arch)
            except CompileError as e:
                bad.append(f"{k.kind} kernel {k.name}:\n{k.source}\n{e}")
        if not bad:
            raise
        raise CompileError(f"{len(bad)} of {len(kernels)} generated kernels do not compile:\n"
                           + "\n\n".join(bad[:3])) from None
