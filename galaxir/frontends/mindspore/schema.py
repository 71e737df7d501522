"""The part of MindSpore's MindIR schema that galaxir reads, declared in code.

A ``.mindir`` file is a protobuf ``mind_ir.ModelProto``.  galaxir does not need MindSpore
installed to read one: this module declares the messages and fields the importer uses
(field numbers as in MindSpore's ``mind_ir.proto``) and lets protobuf build the classes
(as proto3, so that the parser itself rejects strings that are not UTF-8).
Fields not declared here are skipped by protobuf's parser, so newer files still parse.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "int64": _F.TYPE_INT64,
            "int32": _F.TYPE_INT32, "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT,
            "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL, "enum": _F.TYPE_INT32}

# message -> [(number, name, type, repeated)]; a type that is not a scalar names a message
_MESSAGES: dict[str, list[tuple[int, str, str, bool]]] = {
    "ModelProto": [(1, "ir_version", "string", False), (2, "producer_name", "string", False),
                   (3, "producer_version", "string", False), (7, "graph", "GraphProto", False),
                   (8, "functions", "GraphProto", True), (10, "little_endian", "bool", False),
                   (12, "primitives", "PrimitiveProto", True),
                   (13, "mind_ir_version", "int32", False)],
    "GraphProto": [(1, "node", "NodeProto", True), (2, "name", "string", False),
                   (3, "parameter", "TensorProto", True), (5, "input", "ValueInfoProto", True),
                   (6, "output", "ValueInfoProto", True),
                   (8, "attribute", "AttributeProto", True)],
    "NodeProto": [(1, "input", "string", True), (2, "output", "string", True),
                  (3, "name", "string", False), (4, "op_type", "string", False),
                  (5, "attribute", "AttributeProto", True), (7, "domain", "string", False)],
    "AttributeProto": [(1, "name", "string", False), (2, "f", "float", False),
                       (3, "i", "int64", False), (4, "d", "double", False),
                       (5, "s", "bytes", False), (6, "t", "TensorProto", False),
                       (7, "g", "GraphProto", False), (8, "floats", "float", True),
                       (9, "doubles", "double", True), (10, "ints", "int64", True),
                       (11, "strings", "bytes", True), (12, "tensors", "TensorProto", True),
                       (15, "ref_attr_name", "string", False), (16, "type", "enum", False),
                       (17, "values", "AttributeProto", True)],
    "TensorProto": [(1, "dims", "int64", True), (2, "data_type", "int32", False),
                    (3, "float_data", "float", True), (4, "int32_data", "int32", True),
                    (6, "int64_data", "int64", True), (7, "name", "string", False),
                    (9, "raw_data", "bytes", False), (10, "double_data", "double", True),
                    (12, "external_data", "ExternalDataProto", False),
                    (16, "compression_type", "enum", False)],
    "ExternalDataProto": [(1, "location", "string", False), (2, "offset", "int64", False),
                          (3, "length", "int64", False)],
    "ValueInfoProto": [(1, "name", "string", False), (2, "tensor", "TensorProto", True),
                       (5, "attr_info", "AttributeProto", False)],
    "PrimitiveProto": [(1, "name", "string", False), (2, "op_type", "string", False),
                       (3, "attribute", "AttributeProto", True),
                       (4, "instance_name", "string", False), (5, "prim_type", "enum", False)],
}

_PACKAGE = "galaxir_mind_ir"


def _build():
    fd = descriptor_pb2.FileDescriptorProto(name="galaxir_mind_ir.proto", package=_PACKAGE,
                                            syntax="proto3")
    for name, fields in _MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for number, fname, ftype, repeated in fields:
            f = msg.field.add(name=fname, number=number,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            else:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{_PACKAGE}.{ftype}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _MESSAGES}


_CLASSES = _build()
ModelProto = _CLASSES["ModelProto"]

# AttributeProto.AttributeType values the importer interprets
class AttrType:
    FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, STRING, BOOL = 1, 2, 3, 4, 5, 6, 7, 8, 9
    FLOAT16, DOUBLE, UINT32, UINT64, BFLOAT16 = 10, 11, 12, 13, 16
    TENSOR, GRAPH, TENSORS, TUPLE, LIST, DICT, UMONAD, IOMONAD, NONE = 17, 18, 19, 20, 21, 22, 23, 24, 25
    TYPE_NULL, SCALAR = 36, 39
