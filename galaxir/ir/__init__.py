"""galaxir's SSA tensor IR: types, values, ops, graphs, builder, verifier, text form."""
from . import opdef
from .bounds import dim_bounds, set_dim_bounds
from .builder import Builder, GraphBuilder, create_op
from .clone import clone_module, clone_op, clone_region
from .core import Block, Graph, Module, Operation, Region, Value
from .opdef import AttrSpec, OpDef, attr, define, lookup
from .parser import parse
from .printer import print_module, print_op
from .types import (UNKNOWN, AnyType, DType, MapType, OptionalType, SequenceType, TensorType,
                    Type, tensor)
from .verifier import verify

__all__ = [
    "opdef", "dim_bounds", "set_dim_bounds", "Builder", "GraphBuilder", "create_op", "clone_module", "clone_op", "clone_region",
    "Block", "Graph", "Module", "Operation", "Region", "Value", "AttrSpec", "OpDef", "attr",
    "define", "lookup", "parse", "print_module", "print_op", "UNKNOWN", "AnyType", "DType",
    "MapType", "OptionalType", "SequenceType", "TensorType", "Type", "tensor", "verify",
]
