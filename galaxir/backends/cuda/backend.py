"""``galaxir.compile(model, target="cuda")``: the backend object.

Its surface, for the backend contract: ``native_ops`` (the ops it generates kernels
for; every other op runs on the numpy reference), ``patterns(level)`` (its own rules: none
beyond the generic O2 fusions, whose fused ops it runs directly), ``default_level`` (O2:
fusion; no O3 layout change, its kernels are NCHW) and ``compile``."""
from __future__ import annotations

from typing import Any

from ...errors import UnsupportedOpError
from ...ir import Module
from ..base import Backend
from ..base import Capabilities
from .lower import CAPABILITIES


class CudaBackend(Backend):
    """CUDA C kernels generated per fused op, compiled with NVRTC through cupy; cuBLAS for
    matrix products and large convolutions; the numpy reference for the rest."""

    name = "cuda"
    default_level = 2
    preferred_layout = "NCHW"
    def supported_ops(self) -> set[str] | None:
        return None  # every op runs: those without a kernel on the numpy reference

    def capabilities(self) -> Capabilities:
        """Every op (it runs what it has no kernel for on the reference itself); the
        generic fusions may create any fused op: it generates kernels for them all."""
        return Capabilities(ops=None)

    def native_ops(self) -> set[str]:
        return set(CAPABILITIES)

    def patterns(self, level: int) -> list:
        return []

    def compile(self, module: Module, device: int | None = None, graphs: bool = True,
                **options: Any):
        """``device``: the CUDA device ordinal (default: cupy's current device);
        ``graphs``: capture each shape's run in a CUDA graph after its first run."""
        from ..numpy.registry import get_kernel
        missing = sorted({op.name for op in module.walk()
                          if not op.is_terminator and get_kernel(op.name) is None
                          and op.name not in CAPABILITIES})
        if missing:
            raise UnsupportedOpError(f"the cuda backend cannot run: {', '.join(missing)} "
                                     "(no CUDA kernel and no numpy reference kernel)")
        from .runtime import CudaExecutable, open_device
        dev = open_device(device)
        return CudaExecutable(module, dev, graphs=graphs)
