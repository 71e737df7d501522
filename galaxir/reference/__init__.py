"""The reference semantics of every op: one numpy kernel per op and a small evaluator.

It sits between ``ir`` and ``passes`` (it imports only ``ir`` and ``errors``), so that a pass
that needs an op's value -- constant folding -- evaluates it here without importing a backend;
the numpy backend (``backends/numpy``) is this evaluator behind the ``Backend`` interface.
"""
from .evaluator import Interpreter, KernelContext, evaluate_op, run_module
from .registry import all_kernels, get_kernel, kernel

__all__ = ["Interpreter", "KernelContext", "evaluate_op", "run_module", "all_kernels",
           "get_kernel", "kernel"]
