"""The ONNX frontend: import ONNX models into galaxir modules (and export them back)."""
from __future__ import annotations

from ...ir import Module
from .importer import CONVERTERS, ConvertContext, GraphImporter, ModelInfo, converter, simple
from .loader import ModelSource, check_model, load_model


def import_onnx(source: ModelSource, check: bool = True, base_dir=None) -> Module:
    """Import a ModelProto, a path or serialized bytes; the result is verified.  External
    data is read from the model file's folder, or from ``base_dir`` (required for bytes
    and ModelProtos that have external data); nothing outside that folder is read."""
    model, base_dir = load_model(source, base_dir)
    if check:
        check_model(model)
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    if "" not in opsets:
        opsets[""] = 1
    functions = {(f.domain, f.name): f for f in model.functions}
    imp = GraphImporter(ModelInfo(opsets, functions, base_dir))
    graph = imp.import_main(model.graph)
    meta = {"producer": model.producer_name or "", "source": "onnx",
            "onnx_opset": str(opsets.get("", 1)), "ir_version": str(model.ir_version)}
    for domain, version in opsets.items():
        if domain:
            meta[f"onnx_opset:{domain}"] = str(version)
    if model.producer_version:
        meta["producer_version"] = model.producer_version
    for p in model.metadata_props:
        meta[f"onnx.{p.key}"] = p.value
    m = Module(graph, name=model.graph.name or "main", metadata=meta)
    m.verify()
    return m


__all__ = ["import_onnx", "converter", "simple", "ConvertContext", "CONVERTERS"]
