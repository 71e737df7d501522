"""Types of the IR: element dtypes, dims (int or named symbol), tensor/sequence/optional.

A dim is an ``int`` (static), a ``str`` naming a symbol (``"N"``) or ``UNKNOWN`` (``"?"``),
a dim nobody named.  A ``TensorType`` with ``shape=None`` has unknown rank.
"""
from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Union

import ml_dtypes
import numpy as np

Dim = Union[int, str]
UNKNOWN = "?"


class DType(enum.Enum):
    """Element types: every ONNX tensor element type numpy (with ml_dtypes) can hold.

    The value is (short text name, ONNX TensorProto enum, numpy dtype).
    """

    float32 = ("f32", 1, np.dtype(np.float32))
    uint8 = ("u8", 2, np.dtype(np.uint8))
    int8 = ("i8", 3, np.dtype(np.int8))
    uint16 = ("u16", 4, np.dtype(np.uint16))
    int16 = ("i16", 5, np.dtype(np.int16))
    int32 = ("i32", 6, np.dtype(np.int32))
    int64 = ("i64", 7, np.dtype(np.int64))
    string = ("str", 8, np.dtype(object))
    bool = ("bool", 9, np.dtype(np.bool_))
    float16 = ("f16", 10, np.dtype(np.float16))
    float64 = ("f64", 11, np.dtype(np.float64))
    uint32 = ("u32", 12, np.dtype(np.uint32))
    uint64 = ("u64", 13, np.dtype(np.uint64))
    complex64 = ("c64", 14, np.dtype(np.complex64))
    complex128 = ("c128", 15, np.dtype(np.complex128))
    bfloat16 = ("bf16", 16, np.dtype(ml_dtypes.bfloat16))
    float8e4m3fn = ("f8e4m3fn", 17, np.dtype(ml_dtypes.float8_e4m3fn))
    float8e4m3fnuz = ("f8e4m3fnuz", 18, np.dtype(ml_dtypes.float8_e4m3fnuz))
    float8e5m2 = ("f8e5m2", 19, np.dtype(ml_dtypes.float8_e5m2))
    float8e5m2fnuz = ("f8e5m2fnuz", 20, np.dtype(ml_dtypes.float8_e5m2fnuz))
    uint4 = ("u4", 21, np.dtype(ml_dtypes.uint4))
    int4 = ("i4", 22, np.dtype(ml_dtypes.int4))
    float4e2m1 = ("f4e2m1", 23, np.dtype(ml_dtypes.float4_e2m1fn))
    float8e8m0 = ("f8e8m0", 24, np.dtype(ml_dtypes.float8_e8m0fnu))
    uint2 = ("u2", 25, np.dtype(ml_dtypes.uint2))
    int2 = ("i2", 26, np.dtype(ml_dtypes.int2))

    @property
    def short(self) -> str:
        return self.value[0]

    @property
    def onnx(self) -> int:
        return self.value[1]

    @property
    def numpy(self) -> np.dtype:
        return self.value[2]

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_int(self) -> bool:
        return self in _INTS

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    @staticmethod
    def from_short(text: str) -> "DType":
        try:
            return _BY_SHORT[text]
        except KeyError:
            raise ValueError(f"unknown dtype name {text!r}") from None

    @staticmethod
    def from_onnx(code: int) -> "DType":
        try:
            return _BY_ONNX[code]
        except KeyError:
            raise ValueError(f"ONNX element type {code} has no galaxir dtype") from None

    @staticmethod
    def from_numpy(dtype) -> "DType":
        dt = np.dtype(dtype)
        if dt.kind in "OUS":
            return DType.string
        try:
            return _BY_NUMPY[dt]
        except KeyError:
            raise ValueError(f"numpy dtype {dt} has no galaxir dtype") from None


_FLOATS = {DType.float16, DType.float32, DType.float64, DType.bfloat16, DType.float8e4m3fn,
           DType.float8e4m3fnuz, DType.float8e5m2, DType.float8e5m2fnuz, DType.float4e2m1,
           DType.float8e8m0}
_INTS = {DType.int8, DType.int16, DType.int32, DType.int64, DType.uint8, DType.uint16,
         DType.uint32, DType.uint64, DType.int4, DType.uint4, DType.int2, DType.uint2}
_BY_SHORT = {d.short: d for d in DType}
_BY_ONNX = {d.onnx: d for d in DType}
_BY_NUMPY = {d.numpy: d for d in DType if d is not DType.string}


class Type:
    """Base of all value types."""


@dataclass(frozen=True)
class TensorType(Type):
    dtype: DType
    shape: tuple[Dim, ...] | None  # None: unknown rank

    def __post_init__(self):
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(_check_dim(d) for d in self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int | None:
        if not self.is_static:
            return None
        n = 1
        for d in self.shape:
            n *= d
        return n

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, None if shape is None else tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[*]"
        return f"{self.dtype.short}[{','.join(format_dim(d) for d in self.shape)}]"


@dataclass(frozen=True)
class SequenceType(Type):
    elem: Type

    def __str__(self) -> str:
        return f"seq<{self.elem}>"


@dataclass(frozen=True)
class OptionalType(Type):
    elem: Type

    def __str__(self) -> str:
        return f"opt<{self.elem}>"


@dataclass(frozen=True)
class MapType(Type):
    """ONNX map type (only carried through, for ONNX-ML completeness)."""

    key: DType
    value: Type

    def __str__(self) -> str:
        return f"map<{self.key.short},{self.value}>"


#: numpy's (and the C ABI's) bound on an array's size in bytes, zero dims left out
MAX_ARRAY_BYTES = 2 ** 63 - 1


def fits_in_memory(t: Type) -> bool:
    """False for a static tensor type no array can have: its non-zero dims times its
    itemsize pass 2^63 bytes (e.g. a zero-size [0, 2^62, 2^62] reshape)."""
    if not isinstance(t, TensorType) or t.shape is None:
        return True
    n = t.dtype.itemsize
    for d in t.shape:
        if isinstance(d, int) and d:
            n *= d
    return n <= MAX_ARRAY_BYTES


def type_depth(t: Type) -> int:
    """How deep sequence/optional types nest in ``t`` (a tensor type: 0)."""
    depth = 0
    while isinstance(t, (SequenceType, OptionalType, MapType)):
        t = t.value if isinstance(t, MapType) else t.elem
        depth += 1
    return depth


def format_dim(d: Dim) -> str:
    """A dim as text: ints and plain symbols bare, odd symbol names quoted."""
    if isinstance(d, int) or d == UNKNOWN or _SYMBOL.match(d):
        return str(d)
    return json.dumps(d)


_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_dim(d) -> Dim:
    if isinstance(d, (bool,)):
        raise TypeError(f"dim must be int or symbol name, got {d!r}")
    if isinstance(d, (int, np.integer)):
        if d < 0:
            raise ValueError(f"static dim must be >= 0, got {d}")
        return int(d)
    if isinstance(d, str) and d:
        return d
    if d is None:
        return UNKNOWN
    raise TypeError(f"dim must be int or symbol name, got {d!r}")


def tensor(dtype: DType | str, *shape: Dim) -> TensorType:
    """Shorthand: ``tensor("f32", "N", 3)``."""
    if isinstance(dtype, str):
        dtype = DType.from_short(dtype)
    return TensorType(dtype, tuple(shape))


def is_unknown(d: Dim) -> bool:
    return d == UNKNOWN


def dims_compatible(a: Dim, b: Dim) -> bool:
    """Could a dim declared ``a`` hold a value whose inferred dim is ``b``?"""
    if is_unknown(a) or is_unknown(b):
        return True
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    # A symbol against a number, or a number against a symbol: allowed, as ONNX does
    # (a symbol may be bound to that number at run time).
    return True


def types_compatible(declared: Type, inferred: Type) -> bool:
    """True when ``declared`` does not contradict ``inferred`` (unknowns are wildcards)."""
    if isinstance(declared, TensorType) and isinstance(inferred, TensorType):
        if declared.dtype != inferred.dtype:
            return False
        if declared.shape is None or inferred.shape is None:
            return True
        if len(declared.shape) != len(inferred.shape):
            return False
        return all(dims_compatible(a, b) for a, b in zip(declared.shape, inferred.shape))
    if isinstance(declared, SequenceType) and isinstance(inferred, SequenceType):
        return types_compatible(declared.elem, inferred.elem)
    if isinstance(declared, OptionalType) and isinstance(inferred, OptionalType):
        return types_compatible(declared.elem, inferred.elem)
    if isinstance(declared, AnyType) or isinstance(inferred, AnyType):
        return True
    return declared == inferred


@dataclass(frozen=True)
class AnyType(Type):
    """A type inference could not determine at all (e.g. an opaque custom op result)."""

    def __str__(self) -> str:
        return "any"


def refine(declared: Type, inferred: Type) -> Type:
    """The more precise of two compatible types, dim by dim."""
    if isinstance(declared, TensorType) and isinstance(inferred, TensorType):
        if declared.shape is None:
            return inferred
        if inferred.shape is None or len(inferred.shape) != len(declared.shape):
            return declared
        dims = []
        for a, b in zip(declared.shape, inferred.shape):
            if is_unknown(a):
                dims.append(b)
            elif isinstance(b, int) and not isinstance(a, int):
                dims.append(b)
            else:
                dims.append(a)
        return TensorType(declared.dtype, tuple(dims))
    if isinstance(declared, AnyType):
        return inferred
    return declared
