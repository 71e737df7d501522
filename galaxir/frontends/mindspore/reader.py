"""Reading a ``.mindir`` file: the protobuf, its tensors and its attribute values.

Everything read from the file is checked before use: a file that does not parse, a tensor
whose data does not match its dims, or external data outside the model's folder is a
``ModelImportError`` naming the tensor, never a crash.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from ...errors import ModelImportError
from .schema import AttrType, ModelProto

#: Largest .mindir read into memory (protobuf's own limit is 2 GiB).
MAX_FILE_BYTES = 2 ** 31 - 1

# mind_ir.TensorProto.DataType -> numpy
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
           7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
           13: np.uint64, 17: np.float64}
_BF16 = 16

# scalar attribute types -> how to read them
_INT_TYPES = {AttrType.UINT8, AttrType.INT8, AttrType.UINT16, AttrType.INT16, AttrType.INT32,
              AttrType.INT64, AttrType.UINT32, AttrType.UINT64}
_FLOAT_TYPES = {AttrType.FLOAT, AttrType.DOUBLE, AttrType.FLOAT16, AttrType.BFLOAT16}


class Monad:
    """MindSpore's side-effect tokens (UMonad/IOMonad, UpdateState): order, not data."""

    def __repr__(self) -> str:
        return "<monad>"


MONAD = Monad()


def load_model(source: Any) -> tuple[Any, Path | None]:
    """The parsed ModelProto and the folder external data may be read from."""
    folder = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelImportError(f"no such file: '{path}'")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ModelImportError(f"'{path}' is larger than 2 GiB, the most a MindIR protobuf holds")
        data = path.read_bytes()
        folder = path.resolve().parent
        what = f"'{path}'"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        what = "the given bytes"
    else:
        raise ModelImportError(f"cannot read MindIR from a {type(source).__name__}; "
                               "pass a .mindir path or its bytes")
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelImportError(f"{what} is not a MindIR model (protobuf: {e})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelImportError(f"{what} is not a MindIR model: it has no graph")
    return model, folder


def numpy_dtype(data_type: int, what: str) -> np.dtype:
    """The numpy dtype of a mind_ir.TensorProto.DataType."""
    if data_type == _BF16:
        from ml_dtypes import bfloat16
        return np.dtype(bfloat16)
    if data_type in _DTYPES:
        return np.dtype(_DTYPES[data_type])
    raise ModelImportError(f"{what}: tensor data type {data_type} is not supported")


def tensor_array(t: Any, folder: Path | None, what: str) -> np.ndarray:
    """The numpy value of a TensorProto (a parameter or a constant)."""
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise ModelImportError(f"{what}: a stored tensor has a negative dim {dims}")
    count = math.prod(dims)
    if t.compression_type:
        raise ModelImportError(f"{what}: compressed MindIR tensors are not supported "
                               f"(compression_type {t.compression_type})")
    dtype = numpy_dtype(t.data_type, what)
    if t.HasField("external_data"):
        raw = _external(t.external_data, folder, count * dtype.itemsize, what)
    elif t.raw_data:
        raw = t.raw_data
    else:
        for field in ("float_data", "int32_data", "int64_data", "double_data"):
            values = getattr(t, field)
            if len(values):
                if len(values) != count:
                    raise ModelImportError(f"{what}: {len(values)} values for dims {dims}")
                return np.asarray(list(values)).astype(dtype).reshape(dims)
        if count:
            raise ModelImportError(f"{what}: tensor of dims {dims} has no data")
        return np.zeros(dims, dtype)
    if len(raw) != count * dtype.itemsize:
        raise ModelImportError(f"{what}: {len(raw)} bytes of data for dims {dims} of "
                               f"{dtype.name} ({count * dtype.itemsize} expected)")
    return np.frombuffer(raw, dtype=dtype).reshape(dims).copy()


def _external(ext: Any, folder: Path | None, nbytes: int, what: str) -> bytes:
    if folder is None:
        raise ModelImportError(f"{what}: its data is in an external file; import the model "
                               "from its path so galaxir knows the folder to read it from")
    target = (folder / ext.location).resolve()
    if folder not in target.parents:
        raise ModelImportError(f"{what}: external data '{ext.location}' is outside the "
                               f"model's folder")
    if not target.is_file():
        raise ModelImportError(f"{what}: external data file '{ext.location}' is missing")
    offset, length = int(ext.offset), int(ext.length) or nbytes
    if offset < 0 or length != nbytes or offset + length > target.stat().st_size:
        raise ModelImportError(f"{what}: external data range {offset}+{length} does not "
                               f"match the tensor ({nbytes} bytes) or the file")
    with open(target, "rb") as f:
        f.seek(offset)
        return f.read(length)


def attr_value(a: Any, folder: Path | None, what: str, depth: int = 0) -> Any:
    """A Python value for an AttributeProto: ints, floats, strings, bools, tuples/lists of
    them, numpy arrays for tensors, None, or MONAD."""
    if depth > 64:
        raise ModelImportError(f"{what}: attribute nesting deeper than 64")
    t = a.type
    if t in (AttrType.TUPLE, AttrType.LIST):
        return tuple(attr_value(v, folder, what, depth + 1) for v in a.values)
    if t in _INT_TYPES:
        return [int(x) for x in a.ints] if len(a.ints) > 1 else int(a.ints[0] if a.ints else a.i)
    if t == AttrType.BOOL:
        return bool(a.ints[0] if a.ints else a.i)
    if t in _FLOAT_TYPES:
        if len(a.floats):
            return float(a.floats[0])
        if len(a.doubles):
            return float(a.doubles[0])
        return float(a.d) if t == AttrType.DOUBLE and a.d else float(a.f)
    if t == AttrType.STRING:
        return (a.strings[0] if len(a.strings) else a.s).decode("utf-8", "replace")
    if t == AttrType.TENSORS:
        if len(a.tensors) != 1:
            raise ModelImportError(f"{what}: a constant holding {len(a.tensors)} tensors")
        return tensor_array(a.tensors[0], folder, what)
    if t == AttrType.TENSOR:
        return tensor_array(a.t, folder, what)
    if t in (AttrType.UMONAD, AttrType.IOMONAD):
        return MONAD
    if t in (AttrType.NONE, AttrType.TYPE_NULL):
        return None
    raise ModelImportError(f"{what}: attribute '{a.name}' has a type ({t}) galaxir does not read")
