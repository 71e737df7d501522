"""The numpy kernel registry, which lives in galaxir/reference (below the passes, which fold
constants with it); re-exported here, where plugins and older code look for it."""
from ...reference.registry import KERNELS, Kernel, all_kernels, get_kernel, kernel

__all__ = ["KERNELS", "Kernel", "all_kernels", "get_kernel", "kernel"]
