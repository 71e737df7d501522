"""An inference server speaking the KServe v2 / Open Inference Protocol (docs/serving.md).

Small modules with one job each: ``protocol`` (request/response codec, JSON and binary
tensors), ``models`` (a compiled model and its metadata), ``batcher`` (dynamic batching),
``metrics`` (Prometheus), ``app`` (the Starlette routes), ``server`` (uvicorn, sockets,
graceful shutdown).  Needs the ``serve`` extra: starlette, uvicorn, prometheus_client.
"""
from __future__ import annotations

__all__ = ["ServeConfig", "create_app", "load_models", "BackgroundServer", "serve"]


def __getattr__(name):  # the server's dependencies are optional: import them on use
    if name in ("ServeConfig", "create_app"):
        from . import app
        return getattr(app, name)
    if name == "load_models":
        from .models import load_models
        return load_models
    if name in ("BackgroundServer", "serve"):
        from . import server
        return getattr(server, name)
    raise AttributeError(name)
