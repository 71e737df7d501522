"""The CUDA backend: generated CUDA C kernels compiled with NVRTC, cuBLAS through cupy.

Importing this package needs neither cupy nor a GPU: kernel generation and lowering are
plain Python (lower.py, kernels.py); only running a compiled module touches the device
(runtime.py)."""
from .backend import CudaBackend

__all__ = ["CudaBackend"]
