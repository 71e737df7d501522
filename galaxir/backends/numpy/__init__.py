"""The numpy reference backend: the reference evaluator (galaxir/reference) behind the
``Backend`` interface, the oracle for every other backend and pass.  It favours clarity and
exactness over speed.  ``kernel``, ``get_kernel`` and ``Interpreter`` are the reference
layer's own, re-exported here where plugins have always found them."""
from .interpreter import Interpreter, KernelContext, NumpyBackend, NumpyExecutable, run_module
from .registry import get_kernel, kernel

__all__ = ["Interpreter", "KernelContext", "NumpyBackend", "NumpyExecutable", "run_module",
           "get_kernel", "kernel"]
