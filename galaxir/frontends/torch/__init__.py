"""The PyTorch frontend: ``import_torch`` (through ``torch.export``) and ``galaxir_backend``,
a ``torch.compile`` backend (also registered under the name ``"galaxir"``).

    import galaxir as gx
    from galaxir.frontends.torch import import_torch, galaxir_backend
    m = import_torch(model, example_inputs=(x,))
    fast = torch.compile(model, backend=galaxir_backend)
"""
from __future__ import annotations

from .backend import galaxir_backend, register_backend
from .importer import export, import_exported, import_torch

register_backend()

__all__ = ["export", "galaxir_backend", "import_exported", "import_torch", "register_backend"]
