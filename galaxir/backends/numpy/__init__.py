"""The numpy reference backend: an interpreter over the IR, the oracle for every other
backend and pass.  It favours clarity and exactness over speed."""
from .interpreter import Interpreter, KernelContext, NumpyBackend, NumpyExecutable, run_module
from .registry import get_kernel, kernel

__all__ = ["Interpreter", "KernelContext", "NumpyBackend", "NumpyExecutable", "run_module",
           "get_kernel", "kernel"]
