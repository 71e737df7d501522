"""Backends: the plugin contract (base), the numpy reference, and native targets."""
from .base import (Backend, Capabilities, Executable, available_backends, get_backend,
                   register_backend)

__all__ = ["Backend", "Capabilities", "Executable", "available_backends", "get_backend",
           "register_backend"]
