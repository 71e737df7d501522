"""Backends: the plugin contract (base), the numpy reference, and native targets."""
from .base import Backend, Executable, available_backends, get_backend, register_backend
from .cuda import CudaBackend  # imports no cupy: that happens when a module is compiled

register_backend("cuda", CudaBackend)

__all__ = ["Backend", "Executable", "available_backends", "get_backend", "register_backend"]
