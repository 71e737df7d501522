"""A .tflite flatbuffer read into plain, checked Python data.

The ``tflite`` package's accessors follow offsets stored in the file without checking
them, so a corrupt file can point anywhere.  Everything the importer needs is read here
once, each vector length and buffer range checked against the file's size, and any
failure becomes a ``ModelImportError``; the importer then never touches the flatbuffer.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ModelImportError

#: TFLite TensorType -> numpy dtype
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
          7: np.int16, 9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16}
TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING",
              6: "BOOL", 7: "INT16", 8: "COMPLEX64", 9: "INT8", 10: "FLOAT64", 11: "COMPLEX128",
              12: "UINT64", 13: "RESOURCE", 14: "VARIANT", 15: "UINT32", 16: "UINT16",
              17: "INT4", 18: "BFLOAT16"}


@dataclass
class Quant:
    scale: np.ndarray  # float32 [1] or [channels]
    zero_point: np.ndarray  # int64, same length
    axis: int


@dataclass
class Tensor:
    index: int
    name: str
    type: int  # TFLite TensorType
    shape: list[int]
    signature: list[int]  # shape with -1 for dynamic dims
    data: np.ndarray | None  # constant data, else None
    quant: Quant | None

    @property
    def dtype(self) -> Any:
        if self.type not in DTYPES:
            raise ModelImportError(f"TFLite tensor '{self.name}' has type "
                                   f"{TYPE_NAMES.get(self.type, self.type)}, which galaxir does not read")
        return np.dtype(DTYPES[self.type])


@dataclass
class Operator:
    index: int
    code: str  # builtin op name, e.g. "CONV_2D", or "CUSTOM:name"
    inputs: list[int]  # tensor indices, -1 for an omitted optional input
    outputs: list[int]
    options: Any  # the tflite options object (already bounds-checked fields only are read)


@dataclass
class Subgraph:
    index: int
    name: str
    tensors: list[Tensor]
    inputs: list[int]
    outputs: list[int]
    operators: list[Operator]


@dataclass
class ModelData:
    version: int
    subgraphs: list[Subgraph]
    signatures: dict[str, dict] = field(default_factory=dict)  # key -> {subgraph, inputs, outputs}


_ERRORS = (struct.error, IndexError, ValueError, TypeError, OverflowError, AttributeError,
           UnicodeDecodeError, RecursionError, MemoryError, KeyError)


class _Reader:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.size = len(buf)

    def count(self, n: int, what: str, elem: int = 1) -> int:
        """A vector length, checked: a vector cannot hold more bytes than the file."""
        if n < 0 or n * elem > self.size:
            raise ModelImportError(f"corrupt TensorFlow Lite file: {what} claims {n} entries in "
                                   f"a {self.size}-byte file")
        return n

    def ints(self, obj: Any, name: str, what: str) -> list[int]:
        n = self.count(getattr(obj, f"{name}Length")(), what, 4)
        get = getattr(obj, name)
        return [int(get(i)) for i in range(n)]

    def floats(self, obj: Any, name: str, what: str, elem: int = 4) -> list:
        n = self.count(getattr(obj, f"{name}Length")(), what, elem)
        get = getattr(obj, name)
        return [get(i) for i in range(n)]

    def text(self, s: Any) -> str:
        if s is None:
            return ""
        return s.decode("utf-8", errors="replace") if isinstance(s, bytes) else str(s)

    def buffer_data(self, model: Any, index: int, what: str) -> bytes | None:
        nbuf = self.count(model.BuffersLength(), "the buffer table", 4)
        if index == 0 or index >= nbuf:
            if index >= nbuf and index != 0:
                raise ModelImportError(f"corrupt TensorFlow Lite file: {what} names buffer {index} "
                                       f"of {nbuf}")
            return None
        b = model.Buffers(index)
        off, size = int(b.Offset()), int(b.Size())
        if off > 1:  # large models keep data after the flatbuffer
            if off + size > self.size:
                raise ModelImportError(f"corrupt TensorFlow Lite file: {what}'s data "
                                       f"[{off}, {off + size}) lies outside the {self.size}-byte file")
            return self.buf[off:off + size]
        n = self.count(b.DataLength(), f"{what}'s data")
        if n == 0:
            return None
        start = b._tab.Vector(b._tab.Offset(4))
        if start < 0 or start + n > self.size:
            raise ModelImportError(f"corrupt TensorFlow Lite file: {what}'s data lies outside the file")
        return self.buf[start:start + n]


def read_model(buf: bytes) -> ModelData:
    """The model's subgraphs, tensors (with constant data) and operators; any malformed
    field raises ModelImportError."""
    if len(buf) < 8:
        raise ModelImportError(f"not a TensorFlow Lite file: {len(buf)} bytes")
    if bytes(buf[4:8]) != b"TFL3":
        raise ModelImportError("not a TensorFlow Lite file (no 'TFL3' identifier at byte 4)")
    try:
        return _read(bytes(buf))
    except ModelImportError:
        raise
    except _ERRORS as e:
        raise ModelImportError(f"corrupt TensorFlow Lite file: {type(e).__name__}: {e}") from None


def _read(buf: bytes) -> ModelData:
    import tflite
    r = _Reader(buf)
    model = tflite.Model.GetRootAsModel(buf, 0)
    ncodes = r.count(model.OperatorCodesLength(), "the operator-code table", 4)
    codes = []
    for i in range(ncodes):
        c = model.OperatorCodes(i)
        code = max(int(c.BuiltinCode()), int(c.DeprecatedBuiltinCode()))
        if code == 32:  # CUSTOM
            codes.append("CUSTOM:" + r.text(c.CustomCode()))
        else:
            codes.append(tflite.BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}"))
    subgraphs = []
    for si in range(r.count(model.SubgraphsLength(), "the subgraph table", 4)):
        g = model.Subgraphs(si)
        tensors = []
        for ti in range(r.count(g.TensorsLength(), f"subgraph {si}'s tensors", 4)):
            t = g.Tensors(ti)
            name = r.text(t.Name()) or f"t{ti}"
            shape = r.ints(t, "Shape", f"tensor '{name}''s shape")
            sig = r.ints(t, "ShapeSignature", f"tensor '{name}''s shape signature") or list(shape)
            if any(d < 0 for d in shape) or len(sig) != len(shape):
                raise ModelImportError(f"corrupt TensorFlow Lite file: tensor '{name}' has shape "
                                       f"{shape} (signature {sig})")
            data = _tensor_data(r, model, t, name, int(t.Type()), shape)
            tensors.append(Tensor(ti, name, int(t.Type()), shape, sig, data, _quant(r, t, name)))
        nt = len(tensors)
        inputs = _indices(r.ints(g, "Inputs", f"subgraph {si}'s inputs"), nt, f"subgraph {si}'s inputs")
        outputs = _indices(r.ints(g, "Outputs", f"subgraph {si}'s outputs"), nt, f"subgraph {si}'s outputs")
        ops = []
        for oi in range(r.count(g.OperatorsLength(), f"subgraph {si}'s operators", 4)):
            o = g.Operators(oi)
            ci = int(o.OpcodeIndex())
            if not 0 <= ci < len(codes):
                raise ModelImportError(f"corrupt TensorFlow Lite file: operator {oi} has opcode "
                                       f"index {ci} of {len(codes)}")
            ins = _indices(r.ints(o, "Inputs", f"operator {oi}'s inputs"), nt, f"operator {oi}'s inputs", True)
            outs = _indices(r.ints(o, "Outputs", f"operator {oi}'s outputs"), nt, f"operator {oi}'s outputs")
            ops.append(Operator(oi, codes[ci], ins, outs, _options(o)))
        subgraphs.append(Subgraph(si, r.text(g.Name()), tensors, inputs, outputs, ops))
    if not subgraphs:
        raise ModelImportError("TensorFlow Lite file has no subgraph")
    sigs = {}
    for i in range(r.count(model.SignatureDefsLength(), "the signature table", 4)):
        s = model.SignatureDefs(i)
        def names(get, n):
            return [(r.text(get(j).Name()), int(get(j).TensorIndex())) for j in range(n)]
        sigs[r.text(s.SignatureKey())] = {
            "subgraph": int(s.SubgraphIndex()),
            "inputs": names(s.Inputs, r.count(s.InputsLength(), "signature inputs", 4)),
            "outputs": names(s.Outputs, r.count(s.OutputsLength(), "signature outputs", 4))}
    return ModelData(int(model.Version()), subgraphs, sigs)


def _indices(idx: list[int], n: int, what: str, optional: bool = False) -> list[int]:
    for i in idx:
        if not (0 <= i < n or (optional and i == -1)):
            raise ModelImportError(f"corrupt TensorFlow Lite file: {what} name tensor {i} of {n}")
    return idx


def _tensor_data(r: _Reader, model: Any, t: Any, name: str, ttype: int, shape: list[int]):
    raw = r.buffer_data(model, int(t.Buffer()), f"tensor '{name}'")
    if raw is None:
        return None
    if ttype not in DTYPES:
        raise ModelImportError(f"TFLite tensor '{name}' holds {TYPE_NAMES.get(ttype, ttype)} "
                               "data, which galaxir does not read")
    dt = np.dtype(DTYPES[ttype]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dt.itemsize != len(raw):
        raise ModelImportError(f"corrupt TensorFlow Lite file: tensor '{name}' of shape {shape} "
                               f"needs {count * dt.itemsize} bytes, its buffer has {len(raw)}")
    return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)


def _quant(r: _Reader, t: Any, name: str) -> Quant | None:
    q = t.Quantization()
    if q is None:
        return None
    scale = r.floats(q, "Scale", f"tensor '{name}''s scales")
    if not scale:
        return None
    zp = r.floats(q, "ZeroPoint", f"tensor '{name}''s zero points", 8)
    if len(zp) not in (0, len(scale)):
        raise ModelImportError(f"corrupt TensorFlow Lite file: tensor '{name}' has {len(scale)} "
                               f"scales but {len(zp)} zero points")
    scale_a = np.asarray(scale, np.float32)
    if not np.all(np.isfinite(scale_a)) or np.any(scale_a <= 0):
        raise ModelImportError(f"TFLite tensor '{name}' has invalid quantization scales")
    return Quant(scale_a, np.asarray(zp or [0] * len(scale), np.int64), int(q.QuantizedDimension()))


def _options(o: Any) -> Any:
    """The operator's builtin options object (its type found from the union tag)."""
    import tflite
    table = o.BuiltinOptions()
    if table is None:
        return None
    kind = int(o.BuiltinOptionsType())
    names = {v: k for k, v in vars(tflite.BuiltinOptions).items() if isinstance(v, int)}
    cls = getattr(tflite, names.get(kind, ""), None)
    if cls is None:
        return None
    opt = cls()
    opt.Init(table.Bytes, table.Pos)
    return opt
