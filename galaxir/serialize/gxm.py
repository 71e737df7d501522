"""The .gxm model file: a fixed header, a FlatBuffers graph section (schema: gxm.fbs), and
the weights, each 64-byte aligned, so ``load`` maps the file and hands out numpy views of
the weights without copying them.

    offset 0    header (64 bytes): magic, format version, section offsets/sizes, CRC32s
    graph_off   FlatBuffers Model (galaxir/serialize/gxm.fbs)
    weights_off raw tensor bytes, every tensor 64-byte aligned

A truncated, corrupted or hostile file raises FormatError: the header and graph section
carry CRC32 checksums, every offset and size is bounds-checked before use, decoding work
is capped by the file size (no hang, no huge allocation), and the decoded module is
verified before it is returned.  No pickle anywhere.
"""
from __future__ import annotations

import io
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np

from ..errors import FormatError, GalaxirError
from ..ir import Block, Graph, Module, Operation, Region, Value
from ..ir.types import (UNKNOWN, AnyType, DType, MapType, OptionalType, SequenceType,
                        TensorType, Type)
from .gxm_fb import (Attr as FAttr, Block as FBlock, Dim as FDim, Meta as FMeta,
                     Model as FModel, Op as FOp, TensorRef as FTensorRef, TypeDesc as FTypeDesc)
from .gxm_fb.AttrKind import AttrKind
from .gxm_fb.TypeKind import TypeKind

MAGIC = b"GALAXIR\x00"
FORMAT_VERSION = 1
ALIGN = 64
_HEADER = struct.Struct("<8sIIQQQQI")  # magic, version, flags, graph off/len, weights off/len, graph crc
HEADER_SIZE = 64
MAX_DEPTH = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# -- writing -------------------------------------------------------------------------------------
class _Writer:
    def __init__(self):
        self.b = flatbuffers.Builder(1 << 16)
        self.chunks: list[np.ndarray] = []
        self.weights_size = 0
        self.ids: dict[int, int] = {}
        self.type_ids: dict[str, int] = {}
        self.type_list: list[Type] = []

    def string(self, s: str) -> int:
        return self.b.CreateString(s.encode("utf-8", "surrogateescape"))

    def offsets_vector(self, start_fn, offsets: list[int]) -> int:
        start_fn(self.b, len(offsets))
        for o in reversed(offsets):
            self.b.PrependUOffsetTRelative(o)
        return self.b.EndVector()

    def scalar_vector(self, start_fn, prepend, values) -> int:
        start_fn(self.b, len(values))
        for v in reversed(list(values)):
            prepend(v)
        return self.b.EndVector()

    def type(self, t: Type) -> int:
        b = self.b
        if isinstance(t, TensorType):
            dims = None
            if t.shape is not None:
                offs = []
                for d in t.shape:
                    sym = self.string(d) if isinstance(d, str) else None
                    FDim.Start(b)
                    if sym is not None:
                        FDim.AddSymbol(b, sym)
                    else:
                        FDim.AddValue(b, d)
                    offs.append(FDim.End(b))
                dims = self.offsets_vector(FTypeDesc.StartDimsVector, offs)
            FTypeDesc.Start(b)
            FTypeDesc.AddKind(b, TypeKind.Tensor)
            FTypeDesc.AddDtype(b, t.dtype.onnx)
            FTypeDesc.AddRanked(b, t.shape is not None)
            if dims is not None:
                FTypeDesc.AddDims(b, dims)
            return FTypeDesc.End(b)
        if isinstance(t, (SequenceType, OptionalType, MapType)):
            elem = self.type(t.value if isinstance(t, MapType) else t.elem)
            FTypeDesc.Start(b)
            kind = {SequenceType: TypeKind.Sequence, OptionalType: TypeKind.Optional, MapType: TypeKind.Map}[type(t)]
            FTypeDesc.AddKind(b, kind)
            if isinstance(t, MapType):
                FTypeDesc.AddDtype(b, t.key.onnx)
            FTypeDesc.AddElem(b, elem)
            return FTypeDesc.End(b)
        FTypeDesc.Start(b)
        FTypeDesc.AddKind(b, TypeKind.Any)
        return FTypeDesc.End(b)

    def tensor(self, arr: np.ndarray) -> int:
        b = self.b
        dt = DType.from_numpy(arr.dtype)
        strings = None
        offset = nbytes = 0
        if dt is DType.string:
            strings = self.offsets_vector(FTensorRef.StartStringsVector,
                                          [self.string(str(s)) for s in arr.reshape(-1)])
        else:
            data = np.ascontiguousarray(arr)
            offset = _align(self.weights_size)
            nbytes = data.nbytes
            self.chunks.append((offset, data))
            self.weights_size = offset + nbytes
        shape = self.scalar_vector(FTensorRef.StartShapeVector, b.PrependInt64, arr.shape)
        FTensorRef.Start(b)
        FTensorRef.AddDtype(b, dt.onnx)
        FTensorRef.AddShape(b, shape)
        FTensorRef.AddOffset(b, offset)
        FTensorRef.AddNbytes(b, nbytes)
        if strings is not None:
            FTensorRef.AddStrings(b, strings)
        return FTensorRef.End(b)

    def attr(self, name: str | None, v: Any) -> int:
        b = self.b
        name_off = self.string(name) if name is not None else None
        fields: dict[str, Any] = {}
        if isinstance(v, bool):
            kind, fields["i"] = AttrKind.Bool, int(v)
        elif isinstance(v, int):
            kind, fields["i"] = AttrKind.Int, v
        elif isinstance(v, float):
            kind, fields["f"] = AttrKind.Float, v
        elif isinstance(v, str):
            kind, fields["s"] = AttrKind.Str, self.string(v)
        elif isinstance(v, DType):
            kind, fields["i"] = AttrKind.DType, v.onnx
        elif isinstance(v, Type):
            kind, fields["type"] = AttrKind.Type, self.type(v)
        elif isinstance(v, np.ndarray):
            kind, fields["tensor"] = AttrKind.Tensor, self.tensor(v)
        elif isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            kind = AttrKind.Ints
            fields["ints"] = self.scalar_vector(FAttr.StartIntsVector, b.PrependInt64, v)
        elif isinstance(v, tuple) and all(isinstance(x, float) for x in v):
            kind = AttrKind.Floats
            fields["floats"] = self.scalar_vector(FAttr.StartFloatsVector, b.PrependFloat64, v)
        elif isinstance(v, tuple) and all(isinstance(x, str) for x in v):
            kind = AttrKind.Strs
            fields["strs"] = self.offsets_vector(FAttr.StartStrsVector, [self.string(x) for x in v])
        elif isinstance(v, tuple):
            kind = AttrKind.List
            fields["items"] = self.offsets_vector(FAttr.StartItemsVector, [self.attr(None, x) for x in v])
        else:
            raise FormatError(f"attribute {name!r}: cannot store a value of type {type(v).__name__}")
        FAttr.Start(b)
        if name_off is not None:
            FAttr.AddName(b, name_off)
        FAttr.AddKind(b, kind)
        adders = {"i": FAttr.AddI, "f": FAttr.AddF, "s": FAttr.AddS, "ints": FAttr.AddInts,
                  "floats": FAttr.AddFloats, "strs": FAttr.AddStrs, "tensor": FAttr.AddTensor,
                  "type": FAttr.AddType, "items": FAttr.AddItems}
        for key, val in fields.items():
            adders[key](b, val)
        return FAttr.End(b)

    def type_index(self, t: Type) -> int:
        """Types are stored once each in Model.types; values refer to them by index."""
        key = str(t)
        if key not in self.type_ids:
            self.type_ids[key] = len(self.type_list)
            self.type_list.append(t)
        return self.type_ids[key]

    def names(self, start_fn, values: list[Value]) -> int:
        return self.offsets_vector(start_fn, [self.string(v.name or "") for v in values])

    def block(self, block: Block) -> int:
        b = self.b
        for a in block.args:
            self.ids[id(a)] = len(self.ids)
        arg_types = self.scalar_vector(FBlock.StartArgTypesVector, b.PrependInt32,
                                       [self.type_index(a.type) for a in block.args])
        arg_names = self.names(FBlock.StartArgNamesVector, block.args)
        ops = self.offsets_vector(FBlock.StartOpsVector, [self.op(op) for op in block])
        FBlock.Start(b)
        FBlock.AddArgTypes(b, arg_types)
        FBlock.AddArgNames(b, arg_names)
        FBlock.AddOps(b, ops)
        return FBlock.End(b)

    def op(self, op: Operation) -> int:
        b = self.b
        operand_ids = []
        for v in op.operands:
            if v is None:
                operand_ids.append(-1)
            elif id(v) not in self.ids:
                raise FormatError(f"op '{op.name}' uses a value defined after it: verify the module first")
            else:
                operand_ids.append(self.ids[id(v)])
        name = self.string(op.name)
        operands = self.scalar_vector(FOp.StartOperandsVector, b.PrependInt32, operand_ids)
        attrs = self.offsets_vector(FOp.StartAttrsVector, [self.attr(k, v) for k, v in sorted(op.attrs.items())])
        regions = self.offsets_vector(FOp.StartRegionsVector, [self.block(r.block) for r in op.regions])
        for r in op.results:
            self.ids[id(r)] = len(self.ids)
        result_types = self.scalar_vector(FOp.StartResultTypesVector, b.PrependInt32,
                                          [self.type_index(r.type) for r in op.results])
        result_names = self.names(FOp.StartResultNamesVector, op.results)
        prov = self.offsets_vector(FOp.StartProvenanceVector, [self.string(p) for p in op.provenance])
        created = self.string(op.created_by) if op.created_by else None
        FOp.Start(b)
        FOp.AddName(b, name)
        FOp.AddOperands(b, operands)
        FOp.AddResultTypes(b, result_types)
        FOp.AddResultNames(b, result_names)
        FOp.AddAttrs(b, attrs)
        FOp.AddRegions(b, regions)
        FOp.AddProvenance(b, prov)
        if created is not None:
            FOp.AddCreatedBy(b, created)
        return FOp.End(b)

    def model(self, m: Module) -> bytes:
        b = self.b
        graph = self.block(m.graph.block)
        types = self.offsets_vector(FModel.StartTypesVector, [self.type(t) for t in self.type_list])
        metas = []
        for k, v in sorted(m.metadata.items()):
            ko, vo = self.string(k), self.string(str(v))
            FMeta.Start(b)
            FMeta.AddKey(b, ko)
            FMeta.AddValue(b, vo)
            metas.append(FMeta.End(b))
        meta = self.offsets_vector(FModel.StartMetadataVector, metas)
        outs = self.offsets_vector(FModel.StartOutputNamesVector, [self.string(n) for n in m.graph.output_names])
        name = self.string(m.name)
        FModel.Start(b)
        FModel.AddName(b, name)
        FModel.AddMetadata(b, meta)
        FModel.AddTypes(b, types)
        FModel.AddGraph(b, graph)
        FModel.AddOutputNames(b, outs)
        b.Finish(FModel.End(b))
        return bytes(b.Output())


def _write(module: Module, f) -> None:
    w = _Writer()
    graph = w.model(module)
    graph_off = HEADER_SIZE
    weights_off = _align(graph_off + len(graph))
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, graph_off, len(graph), weights_off,
                          w.weights_size, zlib.crc32(graph))
    header += struct.pack("<I", zlib.crc32(header))
    f.write(header.ljust(HEADER_SIZE, b"\0"))
    f.write(graph)
    pos = graph_off + len(graph)
    for offset, data in w.chunks:
        target = weights_off + offset
        f.write(b"\0" * (target - pos))
        f.write(memoryview(data.reshape(-1).view(np.uint8)) if data.size else b"")
        pos = target + data.nbytes
    f.write(b"\0" * (weights_off + w.weights_size - pos))


def save(module: Module, path: str | os.PathLike) -> None:
    """Write ``module`` to ``path`` as .gxm (graph + 64-byte-aligned weights)."""
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        _write(module, f)
    os.replace(tmp, path)


def dumps(module: Module) -> bytes:
    """The .gxm bytes of ``module`` (``loads`` reads them back)."""
    buf = io.BytesIO()
    _write(module, buf)
    return buf.getvalue()


# -- reading -------------------------------------------------------------------------------------
class _Reader:
    """Decodes the FlatBuffers graph with every length checked and total work capped."""

    def __init__(self, graph: bytes, weights: memoryview | None, weights_len: int, mm):
        self.buf = graph
        self.weights = weights
        self.weights_len = weights_len
        self.mm = mm
        self.budget = 4 * len(graph) + 1024
        self.values: list[Value] = []
        self.types: list[Type] = []

    def spend(self, n: int = 1) -> None:
        self.budget -= n
        if self.budget < 0:
            raise FormatError("the graph section decodes to more items than it can hold (hostile file?)")

    def count(self, n: int, what: str) -> int:
        if n < 0 or n > len(self.buf):
            raise FormatError(f"{what}: length {n} exceeds the graph section")
        self.spend(n)
        return n

    def text(self, raw) -> str | None:
        if raw is None:
            return None
        return raw.decode("utf-8", "surrogateescape")

    def dtype(self, code: int) -> DType:
        try:
            return DType.from_onnx(code)
        except ValueError:
            raise FormatError(f"unknown element type code {code}") from None

    def type(self, t, depth: int = 0) -> Type:
        self.spend()
        if t is None:
            raise FormatError("a value has no type")
        if depth > MAX_DEPTH:
            raise FormatError("types nest too deeply")
        kind = t.Kind()
        if kind == TypeKind.Tensor:
            dtype = self.dtype(t.Dtype())
            if not t.Ranked():
                return TensorType(dtype, None)
            dims = []
            for i in range(self.count(t.DimsLength(), "dims")):
                d = t.Dims(i)
                sym = self.text(d.Symbol())
                if sym is not None:
                    dims.append(sym if sym else UNKNOWN)
                else:
                    if d.Value() < 0:
                        raise FormatError(f"negative dim {d.Value()}")
                    dims.append(d.Value())
            return TensorType(dtype, tuple(dims))
        if kind in (TypeKind.Sequence, TypeKind.Optional, TypeKind.Map):
            elem = self.type(t.Elem(), depth + 1)
            if kind == TypeKind.Sequence:
                return SequenceType(elem)
            if kind == TypeKind.Optional:
                return OptionalType(elem)
            return MapType(self.dtype(t.Dtype()), elem)
        if kind == TypeKind.Any:
            return AnyType()
        raise FormatError(f"unknown type kind {kind}")

    def tensor(self, tr) -> np.ndarray:
        if tr is None:
            raise FormatError("a tensor attribute has no data")
        dt = self.dtype(tr.Dtype())
        shape = self.ints(tr.ShapeLength(), tr.ShapeAsNumpy, "tensor shape")
        if any(d < 0 for d in shape):
            raise FormatError(f"tensor shape {shape} has a negative dim")
        n = 1
        for d in shape:
            n *= d
        if dt is DType.string:
            if tr.StringsLength() != n:
                raise FormatError(f"string tensor of shape {shape} holds {tr.StringsLength()} strings")
            items = [self.text(tr.Strings(i)) for i in range(self.count(n, "strings"))]
            arr = np.empty(n, dtype=object)
            arr[:] = items
            return arr.reshape(shape)
        offset, nbytes = tr.Offset(), tr.Nbytes()
        if nbytes != n * dt.itemsize:
            raise FormatError(f"tensor of {dt.short}{shape} needs {n * dt.itemsize} bytes, the file says {nbytes}")
        if offset % ALIGN or offset + nbytes > self.weights_len:
            raise FormatError(f"tensor data at offset {offset} (+{nbytes} bytes) lies outside the "
                              f"weights section ({self.weights_len} bytes) or is misaligned")
        if n == 0:
            return np.zeros(shape, dtype=dt.numpy)
        arr = np.frombuffer(self.weights, dtype=dt.numpy, count=n, offset=offset)
        return arr.reshape(shape)

    def attr(self, a, depth: int = 0) -> Any:
        self.spend()
        if depth > MAX_DEPTH:
            raise FormatError("attribute lists nest too deeply")
        k = a.Kind()
        if k == AttrKind.Int:
            return int(a.I())
        if k == AttrKind.Bool:
            return bool(a.I())
        if k == AttrKind.Float:
            return float(a.F())
        if k == AttrKind.Str:
            return self.text(a.S()) or ""
        if k == AttrKind.DType:
            return self.dtype(a.I())
        if k == AttrKind.Type:
            return self.type(a.Type(), depth + 1)
        if k == AttrKind.Tensor:
            return self.tensor(a.Tensor())
        if k == AttrKind.Ints:
            return tuple(self.ints(a.IntsLength(), a.IntsAsNumpy, "ints"))
        if k == AttrKind.Floats:
            return tuple(self.ints(a.FloatsLength(), a.FloatsAsNumpy, "floats"))
        if k == AttrKind.Strs:
            return tuple(self.text(a.Strs(i)) or "" for i in range(self.count(a.StrsLength(), "strs")))
        if k == AttrKind.List:
            return tuple(self.attr(a.Items(i), depth + 1) for i in range(self.count(a.ItemsLength(), "list")))
        raise FormatError(f"unknown attribute kind {k}")

    def ints(self, n: int, as_numpy, what: str) -> list:
        """A numeric vector (ints or floats) read in one call, its length checked first."""
        self.count(n, what)
        return as_numpy().tolist() if n else []

    def strings(self, n: int, get, what: str) -> list[str | None]:
        return [self.text(get(i)) or None for i in range(self.count(n, what))]

    def typed(self, idx: int, where: str) -> Type:
        if not 0 <= idx < len(self.types):
            raise FormatError(f"{where}: type index {idx} is outside the type table ({len(self.types)} types)")
        return self.types[idx]

    def block(self, fb, block: Block, depth: int) -> None:
        if fb is None:
            raise FormatError("a region has no block")
        if depth > MAX_DEPTH:
            raise FormatError("regions nest too deeply")
        n = fb.ArgTypesLength()
        types = self.ints(n, fb.ArgTypesAsNumpy, "block arguments")
        names = self.strings(fb.ArgNamesLength(), fb.ArgNames, "argument names")
        if len(names) != n:
            raise FormatError(f"a block has {n} argument types but {len(names)} names")
        for t, name in zip(types, names):
            self.values.append(block.add_arg(self.typed(t, "a block argument"), name))
        for i in range(self.count(fb.OpsLength(), "ops")):
            block.append(self.op(fb.Ops(i), depth))
        if block.terminator is None:
            raise FormatError("a block does not end with a return op")

    def op(self, fo, depth: int) -> Operation:
        self.spend()
        if fo is None:
            raise FormatError("an op entry is missing")
        name = self.text(fo.Name())
        if not name:
            raise FormatError("an op has no name")
        operands: list[Value | None] = []
        n_values = len(self.values)
        for i, vid in enumerate(self.ints(fo.OperandsLength(), fo.OperandsAsNumpy, "operands")):
            if vid == -1:
                operands.append(None)
            elif 0 <= vid < n_values:
                operands.append(self.values[vid])
            else:
                raise FormatError(f"op '{name}': operand {i} refers to value #{vid}, which is not defined before it")
        attrs = {}
        for i in range(self.count(fo.AttrsLength(), "attributes")):
            a = fo.Attrs(i)
            key = self.text(a.Name())
            if not key:
                raise FormatError(f"op '{name}': an attribute has no name")
            attrs[key] = self.attr(a)
        regions = []
        for i in range(self.count(fo.RegionsLength(), "regions")):
            block = Block()
            self.block(fo.Regions(i), block, depth + 1)
            regions.append(Region(block))
        types = [self.typed(t, f"op '{name}'") for t in
                 self.ints(fo.ResultTypesLength(), fo.ResultTypesAsNumpy, "results")]
        names = self.strings(fo.ResultNamesLength(), fo.ResultNames, "result names")
        if len(names) != len(types):
            raise FormatError(f"op '{name}' has {len(types)} result types but {len(names)} names")
        prov = tuple(self.text(fo.Provenance(i)) or "" for i in range(self.count(fo.ProvenanceLength(), "provenance")))
        op = Operation(name, operands, types, attrs, regions, names, prov, self.text(fo.CreatedBy()))
        self.values.extend(op.results)
        return op

    def model(self) -> Module:
        root = FModel.Model.GetRootAs(self.buf, 0)
        self.types = [self.type(root.Types(i)) for i in range(self.count(root.TypesLength(), "types"))]
        graph = Graph()
        self.block(root.Graph(), graph.block, 0)
        graph.output_names = [self.text(root.OutputNames(i)) or "" for i in
                              range(self.count(root.OutputNamesLength(), "output names"))]
        meta = {}
        for i in range(self.count(root.MetadataLength(), "metadata")):
            e = root.Metadata(i)
            meta[self.text(e.Key()) or ""] = self.text(e.Value()) or ""
        return Module(graph, self.text(root.Name()) or "main", meta)


def read_header(data) -> tuple[int, int, int, int, int]:
    if len(data) < HEADER_SIZE:
        raise FormatError(f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte .gxm header (truncated?)")
    magic, version, flags, g_off, g_len, w_off, w_len, g_crc = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError("not a .gxm file (bad magic bytes)")
    if version > FORMAT_VERSION:
        raise FormatError(f"the file uses .gxm format version {version}; this galaxir reads versions "
                          f"up to {FORMAT_VERSION}: upgrade galaxir")
    (h_crc,) = struct.unpack_from("<I", data, _HEADER.size)
    if zlib.crc32(bytes(data[:_HEADER.size])) != h_crc:
        raise FormatError("the header checksum does not match (corrupted file)")
    size = len(data)
    if g_off < HEADER_SIZE or g_off + g_len > size or w_off % ALIGN or w_off < g_off + g_len or w_off + w_len > size:
        raise FormatError(f"section offsets (graph {g_off}+{g_len}, weights {w_off}+{w_len}) do not fit "
                          f"the {size}-byte file (truncated?)")
    return g_off, g_len, w_off, w_len, g_crc


def load(path: str | os.PathLike, verify: bool = True) -> Module:
    """Map a .gxm file; weights are read-only numpy views into the mapping (no copy)."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"no .gxm file at '{p}'")
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER_SIZE:
            raise FormatError(f"'{p}' is {size} bytes, shorter than the .gxm header (truncated?)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _decode(mm, str(p), verify)


def loads(data: bytes, verify: bool = True) -> Module:
    """Decode .gxm bytes (weights are views into ``data``)."""
    return _decode(memoryview(data), "<bytes>", verify)


def _decode(data, where: str, verify: bool) -> Module:
    g_off, g_len, w_off, w_len, g_crc = read_header(data)
    graph = bytes(data[g_off:g_off + g_len])
    if zlib.crc32(graph) != g_crc:
        raise FormatError(f"'{where}': the graph section checksum does not match (corrupted file)")
    weights = memoryview(data)[w_off:w_off + w_len]
    reader = _Reader(graph, weights, w_len, data)
    try:
        module = reader.model()
    except FormatError:
        raise
    except GalaxirError as e:
        raise FormatError(f"'{where}': invalid content: {e}") from None
    except Exception as e:  # flatbuffers accessors on inconsistent offsets
        raise FormatError(f"'{where}': malformed graph section ({type(e).__name__}: {e})") from None
    if verify:
        try:
            module.verify()
        except GalaxirError as e:
            raise FormatError(f"'{where}' decodes to an invalid module: {e}") from None
        except Exception as e:
            raise FormatError(f"'{where}' decodes to an invalid module ({type(e).__name__}: {e})") from None
    return module
