"""Ops defined by an ONNX function body: model-local functions, and standard ops whose
schema carries a (possibly context-dependent) function.  Both are inlined at import, which
is how galaxir gets a decomposition for ops it has no direct converter for."""
from __future__ import annotations


import onnx
import onnx.defs

from ...ir import Value
from ...ir.types import AnyType
from .exporter import type_proto


def _bind_attrs(node: onnx.NodeProto, actual: dict[str, onnx.AttributeProto],
                defaults: dict[str, onnx.AttributeProto]) -> onnx.NodeProto:
    """Replace attribute references (ref_attr_name) by the calling node's values."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    del out.attribute[:]
    for a in node.attribute:
        if a.ref_attr_name:
            src = actual.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
            if src is None:
                continue  # optional attribute the caller left out
            b = onnx.AttributeProto()
            b.CopyFrom(src)
            b.name = a.name
            out.attribute.append(b)
        else:
            out.attribute.append(a)
    return out


def expand(ctx, fn: onnx.FunctionProto, defaults: dict[str, onnx.AttributeProto] | None = None) -> list[Value | None]:
    """Import ``fn``'s body in place of ``ctx.node``, returning the node's outputs."""
    from .importer import GraphImporter, ModelInfo

    opsets = dict(ctx.importer.info.opsets)
    for o in fn.opset_import:
        opsets["" if o.domain == "ai.onnx" else o.domain] = o.version
    sub = GraphImporter(ModelInfo(opsets, ctx.importer.info.functions, ctx.importer.info.base_dir))
    for formal, actual in zip(fn.input, ctx.inputs):
        if formal and actual is not None:
            sub.scope[formal] = actual
    actual_attrs = {a.name: a for a in ctx.node.attribute}
    dflt = dict(defaults or {})
    for a in fn.attribute_proto:
        dflt.setdefault(a.name, a)
    prefix = (ctx.node.name or ctx.node.op_type) + "/"
    block = ctx.b.block
    for node in fn.node:
        bound = _bind_attrs(node, actual_attrs, dflt)
        if not bound.name:
            bound.name = prefix + (node.op_type + "_" + "_".join(node.output))
        else:
            bound.name = prefix + bound.name
        sub.convert_node(bound, block, before=ctx.b.before)
    return [sub.scope.get(o) for o in fn.output][:len(ctx.node.output)]


def inline_function(fn: onnx.FunctionProto):
    return lambda ctx: expand(ctx, fn)


def _as_function(raw) -> onnx.FunctionProto | None:
    if raw is None or isinstance(raw, onnx.FunctionProto):
        return raw
    fn = onnx.FunctionProto()
    fn.ParseFromString(raw)
    return fn


def schema_function(domain: str, op_type: str, opset: int):
    """A converter that expands a standard op's function body, or None if it has none."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        return None
    if not (schema.has_function or schema.has_context_dependent_function):
        return None

    def convert(ctx) -> list[Value | None]:
        fn = None
        if schema.has_function:
            try:
                fn = schema.get_function_with_opset_version(opset)
            except Exception:
                fn = schema.function_body
            fn = _as_function(fn)
            if fn is not None and not fn.node:
                fn = None
        if fn is None and schema.has_context_dependent_function:
            types = [type_proto(v.type if v is not None else AnyType()).SerializeToString() for v in ctx.inputs]
            try:
                raw = schema.get_context_dependent_function_with_opset_version(
                    opset, ctx.node.SerializeToString(), types)
            except Exception:
                raw = schema.get_context_dependent_function(ctx.node.SerializeToString(), types)
            fn = _as_function(raw)
        if fn is None or not fn.node:
            raise ctx.unsupported("no converter, and its ONNX function body could not be built")
        defaults = {name: a.default_value for name, a in schema.attributes.items()
                    if a.default_value is not None and a.default_value.type != 0}
        return expand(ctx, fn, defaults)
    return convert
