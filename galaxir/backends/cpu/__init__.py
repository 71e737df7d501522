"""The cpu backend: galaxir IR lowered to LLVM IR with llvmlite and JIT-compiled for the
host CPU, with a numpy-reference fallback for ops it does not compile natively."""
from .backend import CpuBackend, CpuExecutable

__all__ = ["CpuBackend", "CpuExecutable"]
