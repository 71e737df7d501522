"""The .gxm model file: a fixed header, a FlatBuffers graph section (schema: gxm.fbs), and
the weights, each 64-byte aligned, so ``load`` maps the file and hands out numpy views of
the weights without copying them.

    offset 0    header (64 bytes): magic, format version, section offsets/sizes, CRC32s
    graph_off   FlatBuffers Model (galaxir/serialize/gxm.fbs): the module as columns
    weights_off raw tensor bytes, every tensor 64-byte aligned

The graph section is columnar (one vector per field, one row per type, block, op,
attribute, tensor), so ``load`` reads each column with one ``numpy.frombuffer`` and checks
the whole file with vectorized comparisons: header and graph CRC32, version, every count
and index range, tensor bounds and alignment, SSA dominance and scoping, terminators, and
every op's signature (registered name, operand count, required operands, attribute names
and kinds, regions).  A truncated, corrupted or hostile file raises FormatError there.

The Python objects (Operation, Value, Block) are built on first access of ``module.graph``
(anything that reads the graph: ``walk``, ``verify``, compile, print ...); that is also
where each op's type rule and own verifier run against the result types the file declares,
the checks that need op objects.  ``load(path, lazy=False)`` builds and checks everything
before it returns.  No pickle anywhere.
"""
from __future__ import annotations

import gc
import io
import mmap
import os
import struct
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np

from ..errors import FormatError, GalaxirError
from ..ir import Block, Graph, Module, Operation, Region
from ..ir.core import MAX_NESTING, nesting_depth
from ..ir.mapped import check_mapping as _check_mapping
from ..ir.opdef import AttrSpec, OpDef, lookup
from ..ir.types import (UNKNOWN, AnyType, DType, MapType, OptionalType, SequenceType,
                        TensorType, Type)
from ..ir.verifier import check_op_semantics
from .gxm_fb import Model as FModel
from .gxm_fb.AttrKind import AttrKind
from .gxm_fb.TypeKind import TypeKind
from .subbyte import PACKED_BITS, pack, packed_nbytes, unpack

MAGIC = b"GALAXIR\x00"
FORMAT_VERSION = 4  # 3: per-tensor CRC32 column (tensor_crcs); 4: 4-/2-bit tensors packed (subbyte.py)
ALIGN = 64
_HEADER = struct.Struct("<8sIIQQQQI")  # magic, version, flags, graph off/len, weights off/len, graph crc
HEADER_SIZE = 64
MAX_DEPTH = MAX_NESTING

# The fields of gxm.fbs's Model table in schema order (a field's position is its vtable
# slot) with their element types (FlatBuffers is little-endian); ``name`` is the one scalar.
_FIELDS: tuple[tuple[str, str | None], ...] = (
    ("strings", "u1"), ("string_ends", "<u4"), ("name", None),
    ("meta_keys", "<i4"), ("meta_values", "<i4"), ("output_names", "<i4"),
    ("type_kinds", "i1"), ("type_dtypes", "<i2"), ("type_ranks", "<i4"),
    ("type_dims", "<i8"), ("type_elems", "<i4"),
    ("block_parents", "<i4"), ("block_num_args", "<u4"), ("block_num_ops", "<u4"),
    ("arg_types", "<i4"), ("arg_names", "<i4"),
    ("op_name_table", "<i4"), ("op_names", "<i4"), ("op_num_operands", "<u4"), ("operands", "<i4"),
    ("op_num_results", "<u4"), ("result_types", "<i4"), ("result_names", "<i4"),
    ("op_num_attrs", "<u4"), ("op_num_provenance", "<u4"), ("provenance", "<i4"),
    ("op_created_by", "<i4"),
    ("attr_name_table", "<i4"), ("attr_names", "<i4"), ("attr_kinds", "i1"), ("attr_values", "<i8"),
    ("attr_counts", "<u4"), ("ints", "<i8"), ("floats", "<f8"), ("strs", "<i4"),
    ("tensor_dtypes", "<i2"), ("tensor_ranks", "<u4"), ("tensor_dims", "<i8"),
    ("tensor_offsets", "<u8"), ("tensor_nbytes", "<u8"),
    ("tensor_num_strings", "<u4"), ("tensor_strings", "<i4"), ("tensor_crcs", "<u4"),
)
_COLUMNS = tuple((name, dtype) for name, dtype in _FIELDS if dtype is not None)


def _camel(field: str) -> str:
    return "".join(p.title() for p in field.split("_"))


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# element sizes by ONNX code (0: no such dtype); string tensors are stored inline
_DTYPE_CODES = 32
_ITEMSIZE = np.zeros(_DTYPE_CODES, np.int64)
_BITS = np.zeros(_DTYPE_CODES, np.int64)  # bits per element in the file (sub-byte types packed)
_VALID_DTYPE = np.zeros(_DTYPE_CODES, bool)
for _d in DType:
    _VALID_DTYPE[_d.onnx] = True
    _ITEMSIZE[_d.onnx] = 0 if _d is DType.string else _d.itemsize
    _BITS[_d.onnx] = PACKED_BITS.get(_d, 8 * _ITEMSIZE[_d.onnx])


# -- writing -------------------------------------------------------------------------------------
class _Writer:
    """Flattens a module into the columns of gxm.fbs (Python lists), then one FlatBuffer."""

    def __init__(self):
        self.col: dict[str, list] = {name: [] for name, _ in _COLUMNS}
        self.strings: dict[str, int] = {}
        self.types: dict[Type, int] = {}
        self.chunks: list[tuple[int, np.ndarray]] = []
        self.weights_size = 0
        self.lists: list[tuple] = []
        self.list_items = 0  # items of the lists so far: where the next list's items start
        self.op_names: dict[str, int] = {}
        self.attr_names: dict[str, int] = {}
        self.name = -1

    def s(self, text: str | None) -> int:
        """The string table index of ``text`` (each distinct string stored once); -1: None."""
        if text is None:
            return -1
        i = self.strings.get(text)
        if i is None:
            i = self.strings[text] = len(self.strings)
        return i

    def name_id(self, table: dict[str, int], column: str, name: str) -> int:
        """The index of ``name`` in an op or attribute name table (each name once)."""
        i = table.get(name)
        if i is None:
            i = table[name] = len(table)
            self.col[column].append(self.s(name))
        return i

    def type_index(self, t: Type) -> int:
        """Types are stored once each; an element type gets its row before its container."""
        i = self.types.get(t)
        if i is not None:
            return i
        c = self.col
        if isinstance(t, TensorType):
            row = (TypeKind.Tensor, t.dtype.onnx, -1 if t.shape is None else len(t.shape), -1)
            for d in t.shape or ():
                c["type_dims"].append(d if isinstance(d, int) else -1 if d == UNKNOWN else -2 - self.s(d))
        elif isinstance(t, (SequenceType, OptionalType)):
            kind = TypeKind.Sequence if isinstance(t, SequenceType) else TypeKind.Optional
            row = (kind, -1, -1, self.type_index(t.elem))
        elif isinstance(t, MapType):
            row = (TypeKind.Map, t.key.onnx, -1, self.type_index(t.value))
        elif isinstance(t, AnyType):
            row = (TypeKind.Any, -1, -1, -1)
        else:
            raise FormatError(f"cannot store a value of type {t} ({type(t).__name__}) in a .gxm file")
        for key, v in zip(("type_kinds", "type_dtypes", "type_ranks", "type_elems"), row):
            c[key].append(v)
        i = self.types[t] = len(self.types)
        return i

    def tensor(self, arr: np.ndarray) -> int:
        c = self.col
        dt = DType.from_numpy(arr.dtype)
        c["tensor_dtypes"].append(dt.onnx)
        c["tensor_ranks"].append(arr.ndim)
        c["tensor_dims"].extend(arr.shape)
        if dt is DType.string:
            items = [self.s(str(x)) for x in arr.reshape(-1)]
            c["tensor_offsets"].append(0)
            c["tensor_nbytes"].append(0)
            c["tensor_num_strings"].append(len(items))
            c["tensor_strings"].extend(items)
            c["tensor_crcs"].append(0)
        else:
            data = np.ascontiguousarray(arr)
            if dt in PACKED_BITS:
                data = pack(data, PACKED_BITS[dt])
            offset = _align(self.weights_size)
            self.chunks.append((offset, data))
            self.weights_size = offset + data.nbytes
            c["tensor_offsets"].append(offset)
            c["tensor_nbytes"].append(data.nbytes)
            c["tensor_num_strings"].append(0)
            c["tensor_crcs"].append(zlib.crc32(data.reshape(-1).view(np.uint8)) if data.size else 0)
        return len(c["tensor_dtypes"]) - 1

    def attr(self, name: int, v: Any) -> None:
        """One attribute row; a list's items become rows later (``finish_lists``)."""
        c = self.col
        value = count = 0
        if isinstance(v, bool):
            kind, value = AttrKind.Bool, int(v)
        elif isinstance(v, int):
            kind, value = AttrKind.Int, v
        elif isinstance(v, float):
            kind, value = AttrKind.Float, struct.unpack("<q", struct.pack("<d", v))[0]
        elif isinstance(v, str):
            kind, value = AttrKind.Str, self.s(v)
        elif isinstance(v, DType):
            kind, value = AttrKind.DType, v.onnx
        elif isinstance(v, Type):
            kind, value = AttrKind.Type, self.type_index(v)
        elif isinstance(v, np.ndarray):
            kind, value = AttrKind.Tensor, self.tensor(v)
        elif isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            kind, value, count = AttrKind.Ints, len(c["ints"]), len(v)
            c["ints"].extend(v)
        elif isinstance(v, tuple) and all(isinstance(x, float) for x in v):
            kind, value, count = AttrKind.Floats, len(c["floats"]), len(v)
            c["floats"].extend(v)
        elif isinstance(v, tuple) and all(isinstance(x, str) for x in v):
            kind, value, count = AttrKind.Strs, len(c["strs"]), len(v)
            c["strs"].extend(self.s(x) for x in v)
        elif isinstance(v, tuple):
            kind, value, count = AttrKind.List, self.list_items, len(v)
            self.list_items += len(v)
            self.lists.append(v)
        else:
            raise FormatError(f"cannot store an attribute value of type {type(v).__name__}")
        c["attr_names"].append(name)
        c["attr_kinds"].append(kind)
        c["attr_values"].append(value)
        c["attr_counts"].append(count)

    def finish_lists(self) -> None:
        """List items follow all named rows, each list's after those of earlier lists, so
        every list's items lie after it (no cycles) and the ranges never overlap."""
        i = 0
        while i < len(self.lists):
            for x in self.lists[i]:
                self.attr(-1, x)
            i += 1

    def module(self, m: Module) -> None:
        c = self.col
        # blocks breadth-first (a region after the block of its op); values numbered block
        # by block: a block's arguments, then its ops' results
        blocks: list[tuple[Block, int]] = [(m.graph.block, -1)]
        ops_of: list[list[Operation]] = []
        ids: dict[int, int] = {}
        n_ops = 0
        for blk, _ in blocks:  # grows while it runs
            ops = list(blk)
            ops_of.append(ops)
            for a in blk.args:
                ids[id(a)] = len(ids)
            for op in ops:
                blocks.extend((r.block, n_ops) for r in op.regions)
                for r in op.results:
                    ids[id(r)] = len(ids)
                n_ops += 1
        _check_order(m.graph.block, set())
        for (blk, parent), ops in zip(blocks, ops_of):
            c["block_parents"].append(parent)
            c["block_num_args"].append(len(blk.args))
            c["block_num_ops"].append(len(ops))
            c["arg_types"].extend(self.type_index(a.type) for a in blk.args)
            c["arg_names"].extend(self.s(a.name or None) for a in blk.args)
            for op in ops:
                c["op_names"].append(self.name_id(self.op_names, "op_name_table", op.name))
                c["op_num_operands"].append(len(op.operands))
                c["operands"].extend(-1 if v is None else ids[id(v)] for v in op.operands)
                c["op_num_results"].append(len(op.results))
                c["result_types"].extend(self.type_index(r.type) for r in op.results)
                c["result_names"].extend(self.s(r.name or None) for r in op.results)
                attrs = sorted(op.attrs.items())
                c["op_num_attrs"].append(len(attrs))
                for k, v in attrs:
                    self.attr(self.name_id(self.attr_names, "attr_name_table", k), v)
                c["op_num_provenance"].append(len(op.provenance))
                c["provenance"].extend(self.s(p) for p in op.provenance)
                c["op_created_by"].append(self.s(op.created_by or None))
        self.finish_lists()
        c["output_names"].extend(self.s(n) for n in m.graph.output_names)
        for k, v in sorted(m.metadata.items()):
            c["meta_keys"].append(self.s(k))
            c["meta_values"].append(self.s(str(v)))
        self.name = self.s(m.name)

    def finish(self) -> bytes:
        encoded = [s.encode("utf-8", "surrogateescape") for s in self.strings]
        self.col["strings"] = np.frombuffer(b"".join(encoded), np.uint8)
        self.col["string_ends"] = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        b = flatbuffers.Builder(1 << 16)
        vectors = {}
        for name, dtype in _COLUMNS:
            try:
                arr = np.asarray(self.col[name], dtype=dtype)
            except (OverflowError, ValueError) as e:
                raise FormatError(f"a value does not fit the .gxm column '{name}' ({dtype}): {e}") from None
            vectors[name] = b.CreateNumpyVector(arr)
        FModel.Start(b)
        for name, _ in _COLUMNS:
            getattr(FModel, "Add" + _camel(name))(b, vectors[name])
        FModel.AddName(b, self.name)
        b.Finish(FModel.End(b))
        return bytes(b.Output())


def _check_order(block: Block, visible: set[int]) -> None:
    """Every operand is defined before its use, in its scope (the file numbers values block
    by block, so the order is not implied by the numbering: check it on save)."""
    defined = set(visible)
    defined.update(id(a) for a in block.args)
    for op in block:
        for i, v in enumerate(op.operands):
            if v is not None and id(v) not in defined:
                raise FormatError(f"op '{op.name}': operand {i} is not defined before it in its scope "
                                  "(a value used before its definition, or from another graph): "
                                  "verify the module first")
        for r in op.regions:
            _check_order(r.block, defined)
        defined.update(id(r) for r in op.results)


def _write(module: Module, f) -> None:
    depth = nesting_depth(module)
    if depth > MAX_DEPTH:  # what load accepts, so every file save writes loads again
        raise FormatError(f"cannot store the module: its regions nest {depth} deep; galaxir "
                          f"allows at most {MAX_DEPTH} levels")
    w = _Writer()
    try:
        w.module(module)
    except KeyError:
        raise FormatError("an operand refers to a value outside the module: verify the module first") from None
    except ValueError as e:  # e.g. a numpy dtype galaxir has no DType for
        raise FormatError(f"cannot store the module: {e}") from None
    _emit(w, f)


def _emit(w: _Writer, f) -> None:
    """Header, graph section and weights of a filled writer."""
    graph = w.finish()
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
    """Write ``module`` to ``path`` as .gxm (graph + 64-byte-aligned weights).  The file is
    written beside ``path`` under a temporary name, flushed to disk and renamed over
    ``path``: a process that has the old file loaded keeps its mapping of the old inode,
    and nobody sees a half-written file."""
    tmp = Path(f"{path}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            _write(module, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def dumps(module: Module) -> bytes:
    """The .gxm bytes of ``module`` (``loads`` reads them back)."""
    buf = io.BytesIO()
    _write(module, buf)
    return buf.getvalue()


# -- reading: checks on the columns --------------------------------------------------------------
# The checks below run once per load over whole columns.  numpy's per-call overhead (a few
# microseconds) is what they cost on real models, so they use the cheap forms:
# count_nonzero(mask) for "any", unsigned views for range checks, look-up tables instead
# of sorting, and Python only per distinct op name / attribute name.
_I32 = struct.Struct("<i")
_SPAN = struct.Struct("<II")  # two neighbouring string ends: where a string starts and ends
_VECTOR_SLOTS = np.array([i for i, (_, dtype) in enumerate(_FIELDS) if dtype is not None], np.int64)
_NAME_SLOT = [name for name, _ in _FIELDS].index("name")
_ITEMSIZES = np.array([np.dtype(dtype).itemsize for _, dtype in _COLUMNS], np.int64)
_MAX_NAME_PAIRS = 1 << 22  # distinct op names x distinct attribute names a file may hold


def _read_columns(buf: bytes) -> dict[str, Any]:
    """Every field of the root Model table, the vectors as read-only numpy views of ``buf``.

    The FlatBuffers wire format read directly (root offset, vtable, one offset per vector,
    all offsets at once with numpy), because the generated accessors (gxm_fb.Model) cost ~10
    Python calls per field; a test checks that both read the same.  A builder aligns every
    offset to 4 bytes; anything else is rejected.  ``strings_at``/``string_ends_at`` are where
    those two vectors' items start."""
    size = len(buf)
    if size < 8 or size % 4:
        raise FormatError(f"the graph section's size ({size} bytes) is not that of a FlatBuffer")
    base = np.frombuffer(buf, "u1")
    words = base.view("<u4")
    root = int(words[0])
    if root % 4 or root > size - 4:
        raise FormatError("the graph section's root offset is malformed")
    vt = root - _I32.unpack_from(buf, root)[0]
    if vt < 0 or vt > size - 4:
        raise FormatError("the graph section's root table is malformed")
    vt_len = buf[vt] | buf[vt + 1] << 8
    if vt_len < 4 or vt_len % 2 or vt + vt_len > size:
        raise FormatError("the graph section's root table is malformed")
    slots = np.zeros(len(_FIELDS), np.int64)
    have = min((vt_len - 4) // 2, len(_FIELDS))
    slots[:have] = base[vt + 4:vt + 4 + 2 * have].view("<u2")
    off = slots[_VECTOR_SLOTS]
    present = off > 0
    pos = root + off[present]
    if np.count_nonzero(pos & 3):
        raise FormatError("the graph section's root table is malformed")
    vec = pos + words[pos >> 2]  # (an offset past the section raises IndexError: malformed)
    if np.count_nonzero(vec & 3):
        raise FormatError("a column of the graph section is misaligned")
    lens = words[vec >> 2]
    ends = vec + 4 + lens * _ITEMSIZES[present]
    if ends.size and ends.max() > size:
        raise FormatError("a column of the graph section runs past its end")
    cols: dict[str, Any] = {"strings_at": 0, "string_ends_at": 0}
    starts, ends = (vec + 4).tolist(), ends.tolist()
    j = 0
    for (name, dtype), o in zip(_COLUMNS, off.tolist()):
        if o:
            cols[name] = base[starts[j]:ends[j]].view(dtype)
            if name in ("strings", "string_ends"):
                cols[name + "_at"] = starts[j]
            j += 1
        else:
            cols[name] = np.zeros(0, dtype)
    o = int(slots[_NAME_SLOT])
    if o and root + o > size - 4:
        raise FormatError("the graph section's root table is malformed")
    cols["name"] = _I32.unpack_from(buf, root + o)[0] if o else -1
    return cols


def _any(mask: np.ndarray) -> bool:
    return np.count_nonzero(mask) != 0


def _running(counts: np.ndarray, pool: int, what: str) -> np.ndarray:
    """Row i's items are pool[out[i]:out[i + 1]]; the counts must fill the pool exactly."""
    out = np.zeros(len(counts) + 1, np.int64)
    np.add.accumulate(counts, out=out[1:])
    if out[-1] != pool:
        raise FormatError(f"{what}: the rows claim {int(out[-1])} items but the file holds {pool}")
    return out


def _same_length(c: dict, names: tuple[str, ...], what: str) -> int:
    n = len(c[names[0]])
    for k in names[1:]:
        if len(c[k]) != n:
            raise FormatError(f"{what}: column '{k}' has {len(c[k])} rows, '{names[0]}' has {n}")
    return n


def _check_indices(columns: dict[str, np.ndarray], n: int, none_ok: bool = False) -> None:
    """Every entry of the int32 columns indexes a table of ``n`` rows (or is -1, none, where
    ``none_ok``): one pass over all of them, and a column-by-column pass only to name the
    column of a bad index."""
    arrs = [a for a in columns.values() if a.size]
    if not arrs:
        return
    every = np.concatenate(arrs) if len(arrs) > 1 else arrs[0]
    if not _any((every < -none_ok) | (every >= n)):
        return
    for what, a in columns.items():
        bad = a[(a < -1 if none_ok else a < 0) | (a >= n)]
        if bad.size:
            raise FormatError(f"{what}: index {int(bad[0])} is outside its table of {n} entries")


_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_VALID16 = np.zeros(1 << 16, bool)  # valid ONNX element type codes, indexed by the uint16 bits
_VALID16[:_DTYPE_CODES] = _VALID_DTYPE
_ITEMSIZE16 = np.zeros(1 << 16, np.int64)
_ITEMSIZE16[:_DTYPE_CODES] = _ITEMSIZE
_BITS16 = np.zeros(1 << 16, np.int64)
_BITS16[:_DTYPE_CODES] = _BITS
# the pool of each attribute kind: ints, floats, strs, list items; 4 = none
_ATTR_POOL = np.array([4, 4, 4, 4, 0, 1, 2, 4, 4, 4, 3], np.int64)
_ACCEPTED: dict[str, int] = {}


def _accepted(spec: AttrSpec) -> int:
    """Bit (2 * kind + empty) is set when ``spec`` accepts a stored attribute of that kind
    (and emptiness); List values are checked one by one, so their bits are always set."""
    cacheable = type(spec) is AttrSpec
    bits = _ACCEPTED.get(spec.kind) if cacheable else None
    if bits is None:
        bits = 3 << (2 * AttrKind.List)
        for kind, samples in _SAMPLES.items():
            for empty, v in enumerate(samples):
                if spec.check(v):
                    bits |= 1 << (2 * kind + empty)
        if cacheable:
            _ACCEPTED[spec.kind] = bits
    return bits


@dataclass(frozen=True)
class _OpInfo:
    """What the load-time signature check needs of an OpDef, derived once per OpDef."""

    min_operands: int
    max_operands: int  # _I64_MAX: variadic
    regions: int
    required: tuple[bool, ...]  # per declared operand: may it not be omitted
    attrs: dict[str, tuple[int, int]]  # name -> (accepted kind bits, its required bit or 0)
    required_mask: int


_OP_INFO: dict[int, tuple[OpDef, _OpInfo]] = {}


def _op_info(od: OpDef) -> _OpInfo:
    """Cached by the OpDef's identity (the cache holds the OpDef, so the id stays its own);
    a redefined op is a new OpDef and gets its own entry."""
    hit = _OP_INFO.get(id(od))
    if hit is not None and hit[0] is od:
        return hit[1]
    required_attrs = [a for a, s in od.attrs.items() if s.required]
    info = _OpInfo(od.min_operands, _I64_MAX if od.max_operands is None else od.max_operands, od.regions,
                   tuple(not o.endswith(("?", "*")) for o in od.operands),
                   {a: (_accepted(s), 1 << required_attrs.index(a) if s.required else 0) for a, s in od.attrs.items()},
                   (1 << len(required_attrs)) - 1)
    if len(_OP_INFO) > 4096:
        _OP_INFO.clear()
    _OP_INFO[id(od)] = (od, info)
    return info


@contextmanager
def _file_errors(where: str):
    """Checks of the graph section raise FormatError naming the file; anything else they
    raise (numpy refusing a column that runs past the section, an index ...) is the file's
    fault too."""
    try:
        yield
    except FormatError as e:
        raise FormatError(f"'{where}': {e}") from None
    except Exception as e:
        raise FormatError(f"'{where}': malformed graph section ({type(e).__name__}: {e})") from None


class _Section:
    """The checked columns of a graph section, in two steps.  ``__init__`` (at load) proves
    the section intact and self-consistent: every column, count, index, bound and kind,
    so that nothing read from it later can point outside its table or the weights.
    ``validate()`` (first thing in ``build()``) proves that what it describes is a valid
    program: blocks ending in their return op, SSA dominance and scoping, op signatures
    against the registry, the graph's input and output names.  ``build()`` makes the Graph.

    Each check is a few numpy operations over whole columns, never a Python loop over
    ops: Python runs per distinct op name and attribute name, and over the rare nested
    things (regions, list attributes, container types)."""

    def __init__(self, buf: bytes, weights: memoryview, where: str):
        self.where = where
        self.buf = buf
        self.weights = weights
        c = self.c = _read_columns(buf)
        self._strings(c)
        self._indices(c)
        self._types(c)
        self._tensors(c, len(weights))
        self._ops(c)
        self._attrs(c)
        self._module_fields(c)

    def validate(self) -> None:
        """The program-level checks (see the class docstring); a bad file raises
        FormatError before any op object is made."""
        c = self.c
        self._blocks(c)
        self._signatures(c)
        self._main_graph(c)

    @staticmethod
    def fail(msg: str) -> None:
        raise FormatError(msg)

    # -- tables -----------------------------------------------------------------------------
    def _strings(self, c) -> None:
        ends = self.str_ends = c["string_ends"]
        n = self.n_str = len(ends)
        if (n and (ends[-1] != len(c["strings"]) or _any(ends[1:] < ends[:-1]))) or (not n and len(c["strings"])):
            self.fail("the string table's offsets do not fit its bytes")
        self.str_len = np.zeros(n + 1, np.int64)  # index -1 (none) has length 0
        self.str_len[:n] = ends
        self.str_len[1:n] -= ends[:-1]
        # names are ASCII almost always: then one decode serves every string by slicing
        blob = self.buf[c["strings_at"]:c["strings_at"] + len(c["strings"])]
        self._ascii = blob.decode("ascii") if blob.isascii() else None
        self._text_cache: dict[int, str] = {}
        self._texts: list[str] | None = None
        self._lists: tuple[list, ...] | None = None
        self._type_objects: list[Type] | None = None

    def text(self, i: int) -> str | None:
        """String ``i`` (-1: None), decoded alone (checks and messages need a few)."""
        if i < 0:
            return None
        start, end = _SPAN.unpack_from(self.buf, self.c["string_ends_at"] + 4 * i - 4) if i else \
            (0, int(self.str_ends[0]))
        if self._ascii is not None:
            return self._ascii[start:end]
        t = self._text_cache.get(i)
        if t is None:
            at = self.c["strings_at"]
            t = self._text_cache[i] = self.buf[at + start:at + end].decode("utf-8", "surrogateescape")
        return t

    def texts(self) -> list[str]:
        """The whole string table, decoded once (for building the graph)."""
        if self._texts is None:
            at, buf, blob = self.c["strings_at"], self.buf, self._ascii
            ends = self.str_ends.tolist()
            self._texts = [blob[s:e] for s, e in zip([0] + ends[:-1], ends)] if blob is not None else \
                [buf[at + s:at + e].decode("utf-8", "surrogateescape") for s, e in zip([0] + ends[:-1], ends)]
        return self._texts

    def _indices(self, c) -> None:
        """Every string and type reference of the file, one pass per table."""
        n = self.n_str
        _check_indices({"a block argument's name": c["arg_names"], "a result's name": c["result_names"],
                        "an op's created_by": c["op_created_by"]}, n, none_ok=True)
        _check_indices({"an op name": c["op_name_table"], "an attribute name": c["attr_name_table"],
                        "a string list attribute": c["strs"],
                        "a string tensor item": c["tensor_strings"], "a provenance entry": c["provenance"],
                        "a metadata key": c["meta_keys"], "a metadata value": c["meta_values"],
                        "an output name": c["output_names"]}, n)
        self.n_types = _same_length(c, ("type_kinds", "type_dtypes", "type_ranks", "type_elems"), "types")
        _check_indices({"a block argument's type": c["arg_types"], "a result's type": c["result_types"]},
                       self.n_types)
        if not -1 <= c["name"] < n:
            self.fail(f"the module name is string #{c['name']}, outside the string table")
        # the op and attribute name tables: distinct, non-empty names
        self.op_texts = [self.text(i) for i in c["op_name_table"].tolist()]
        self.attr_texts = [self.text(i) for i in c["attr_name_table"].tolist()]
        for what, texts in (("op", self.op_texts), ("attribute", self.attr_texts)):
            if len(set(texts)) != len(texts) or "" in texts:
                self.fail(f"the {what} name table holds an empty or repeated name")
        _check_indices({"an op's name": c["op_names"]}, len(self.op_texts))

    def _types(self, c) -> None:
        n = self.n_types
        kinds, dtypes, ranks, elems, dims = (c[k] for k in ("type_kinds", "type_dtypes", "type_ranks",
                                                            "type_elems", "type_dims"))
        if _any(kinds.view(np.uint8) > TypeKind.Any):
            self.fail("a type has an unknown kind")
        tensor = kinds == TypeKind.Tensor
        keyed = tensor | (kinds == TypeKind.Map)
        bad = np.where(keyed, ~_VALID16[dtypes.view("<u2")], dtypes != -1)
        bad |= np.where(tensor, ranks < -1, ranks != -1)
        if _any(bad):
            self.fail(f"type #{int(np.argmax(bad))} has an invalid element type or rank")
        self.type_dim_starts = _running(np.maximum(ranks, 0), len(dims), "type dims")
        if _any(dims < -1):  # symbols: -2 - dim names a non-empty string
            syms = -2 - dims[dims < -1]
            if syms.max() >= self.n_str or _any(self.str_len[syms] == 0):
                self.fail("a dim's symbol name is missing or empty")
        container = (kinds >= TypeKind.Sequence) & (kinds <= TypeKind.Map)
        if _any(container):
            if _any(np.where(container, (elems < 0) | (elems >= np.arange(n)), elems != -1)):
                self.fail("a type's element type is missing or not stored before it")
            depth, el = [0] * n, elems.tolist()
            for i in np.flatnonzero(container).tolist():
                depth[i] = depth[el[i]] + 1
                if depth[i] > MAX_DEPTH:
                    self.fail("types nest too deeply")
        elif _any(elems != -1):
            self.fail("a tensor type has an element type")

    def _tensors(self, c, weights_len: int) -> None:
        n = self.n_tensors = _same_length(c, ("tensor_dtypes", "tensor_ranks", "tensor_offsets", "tensor_nbytes",
                                              "tensor_num_strings", "tensor_crcs"), "tensors")
        self.checked = np.zeros(n, bool)  # tensors whose bytes passed their CRC32
        ranks, dims = c["tensor_ranks"], c["tensor_dims"]
        starts = self.tensor_dim_starts = _running(ranks, len(dims), "tensor shapes")
        self.tensor_str_starts = _running(c["tensor_num_strings"], len(c["tensor_strings"]), "tensor strings")
        self.numel = numel = np.ones(n, np.int64)
        if not n:
            return
        codes = c["tensor_dtypes"].view("<u2")
        if np.count_nonzero(_VALID16[codes]) != n:
            self.fail("a tensor has an unknown element type code")
        bits = _BITS16[codes]
        if dims.size:
            if _any(dims < 0):
                self.fail("a tensor shape has a negative dim")
            # numpy refuses shapes whose non-zero dims multiply past 2**63 bytes, even empty ones
            hi = int(dims.max())
            if hi > 1 and int(ranks.max()) * np.log2(hi) > 56:
                logs = np.zeros(len(dims) + 1)
                np.cumsum(np.log2(np.maximum(dims, 1)), out=logs[1:])
                if _any(logs[starts[1:]] - logs[starts[:-1]] > 56):
                    self.fail("a tensor shape is too large")
            has = np.flatnonzero(ranks)
            numel[has] = np.multiply.reduceat(dims, starts[has])
        strings = codes == DType.string.onnx
        offs, nbytes = c["tensor_offsets"].view("<i8"), c["tensor_nbytes"].view("<i8")
        bad = (nbytes != (numel * bits + 7) // 8) | (c["tensor_num_strings"] != np.where(strings, numel, 0))
        bad |= (offs < 0) | (offs > weights_len - nbytes) | ((offs & (ALIGN - 1)) != 0)
        if _any(bad):  # (nbytes >= 0 here: it equals the packed size; strings ignore offsets)
            self.fail(f"tensor #{int(np.argmax(bad))}: its size does not match its shape, or its data lies "
                      f"outside the weights section ({weights_len} bytes) or is misaligned")

    def _ops(self, c) -> None:
        """The op table's pools: operands, results, attributes, provenance."""
        self.n_ops = _same_length(c, ("op_names", "op_num_operands", "op_num_results", "op_num_attrs",
                                      "op_num_provenance", "op_created_by"), "ops")
        at = np.zeros(self.n_ops + 1, np.int64)
        np.add.accumulate(c["op_num_attrs"], out=at[1:])
        self.n_top = n_top = int(at[-1])
        if n_top > len(c["attr_names"]):
            self.fail(f"ops claim {n_top} attributes but the file holds {len(c['attr_names'])}")
        self.attr_starts = at
        self.operand_starts = _running(c["op_num_operands"], len(c["operands"]), "operands")
        self.result_starts = _running(c["op_num_results"], len(c["result_types"]), "results")
        self.prov_starts = _running(c["op_num_provenance"], len(c["provenance"]), "provenance")
        if len(c["result_names"]) != len(c["result_types"]):
            self.fail("results have as many names as types")

    def _attrs(self, c) -> None:
        n = _same_length(c, ("attr_names", "attr_kinds", "attr_values", "attr_counts"), "attributes")
        kinds, values, counts, names = c["attr_kinds"], c["attr_values"], c["attr_counts"], c["attr_names"]
        n_top = self.n_top
        if _any(kinds.view("u1") > AttrKind.List):
            self.fail("an attribute has an unknown kind")
        top = names[:n_top]
        if _any((top < 0) | (top >= len(self.attr_texts))) or _any(names[n_top:] != -1):
            self.fail("an attribute's name is outside the name table, or a list item has a name")
        # the value of each kind: an index into its table, a bool, a dtype code, or where a
        # vector's items start in its pool (start + count within the pool)
        pools = (len(c["ints"]), len(c["floats"]), len(c["strs"]), n - n_top)
        hi = np.array([_I64_MAX, _I64_MAX, self.n_str - 1, 1, *pools[:3], self.n_tensors - 1, _DTYPE_CODES - 1,
                       self.n_types - 1, pools[3]], np.int64)
        end = np.array([_I64_MAX] * 4 + list(pools[:3]) + [_I64_MAX] * 3 + [pools[3]], np.int64)
        bad = (values < np.where(kinds <= AttrKind.Float, _I64_MIN, 0)) | (values > hi.take(kinds)) | \
            (values + counts > end.take(kinds))  # (scalars ignore counts; a vector's start <= its pool size)
        if _any(bad):
            self.fail(f"attribute row {int(np.argmax(bad))}: its value is out of range for its kind")
        dts = values[kinds == AttrKind.DType]
        if np.count_nonzero(_VALID_DTYPE[dts]) != dts.size:
            self.fail("a dtype attribute has an unknown element type code")
        lists = np.flatnonzero(kinds == AttrKind.List)
        if lists.size or n > n_top:  # list items: each list's right after the previous list's,
            cnt = counts[lists].astype(np.int64)  # after the list itself: a tree, no cycles
            first = values[lists]
            if first.size and (_any(first != np.cumsum(cnt) - cnt) or int(cnt.sum()) != n - n_top
                               or _any((first + n_top <= lists) & (cnt > 0))):
                self.fail("a list attribute's items are not stored after it, one list after another")
            if not first.size:
                self.fail("the file holds list items but no lists")
            depth = [0] * n
            for r, f, k in zip(lists.tolist(), (first + n_top).tolist(), cnt.tolist()):
                for i in range(f, f + k):
                    depth[i] = depth[r] + 1
                    if depth[i] > MAX_DEPTH:
                        self.fail("attribute lists nest too deeply")

    # -- blocks, values ---------------------------------------------------------------------
    def _blocks(self, c) -> None:
        nb = self.n_blocks = _same_length(c, ("block_parents", "block_num_args", "block_num_ops"), "blocks")
        no = self.n_ops
        if nb == 0 or c["block_parents"][0] != -1:
            self.fail("the file has no main graph (block 0 without a parent op)")
        nargs, nops = c["block_num_args"], c["block_num_ops"]
        args_at = self.arg_starts = _running(nargs, len(c["arg_types"]), "block arguments")
        ob = self.op_starts = _running(nops, no, "block ops")
        if len(c["arg_names"]) != len(c["arg_types"]):
            self.fail("block arguments have as many names as types")
        if _any(nops == 0):
            self.fail("a block has no ops (it must end with a return op)")
        rs = self.result_starts
        # value numbering: a block's arguments, then the results of its ops
        if nb == 1:
            self.op_block = np.zeros(no, np.int64)
            self.region_counts = 0
            self.op_first = int(nargs[0]) + rs[:-1]
            self.block_first = np.zeros(1, np.int64)
        else:
            parents = c["block_parents"][1:].astype(np.int64)
            if _any((parents < 0) | (parents >= no)):
                self.fail("a region's parent op is outside the op table")
            op_block = self.op_block = np.repeat(np.arange(nb), nops)
            if _any(op_block[parents] >= np.arange(1, nb)):
                self.fail("a region is stored before the block of its op")
            depth, ob_list = [0] * nb, op_block.tolist()
            for b, p in enumerate(parents.tolist(), start=1):
                depth[b] = depth[ob_list[p]] + 1
                if depth[b] > MAX_DEPTH:
                    self.fail("regions nest too deeply")
            self.region_counts = np.bincount(parents, minlength=no)
            self.op_first = args_at[1:][op_block] + rs[:-1]
            self.block_first = args_at[:-1] + rs[ob[:-1]]
        self.n_values = int(args_at[-1]) + len(c["result_types"])
        # terminators: each block ends with its only return op, which has no results,
        # attributes or regions
        names = c["op_names"]
        self.return_name = self.op_texts.index("return") if "return" in self.op_texts else -2
        is_ret = names == self.return_name
        if np.count_nonzero(is_ret) != nb or _any(names[ob[1:] - 1] != self.return_name):
            self.fail("a block does not end with a return op, or a return op is not the last of its block")
        if _any(c["op_num_results"][is_ret] | c["op_num_attrs"][is_ret]) or \
                (nb > 1 and _any(self.region_counts[is_ret])):
            self.fail("a return op has results, attributes or regions")
        self._dominance(c)

    def _dominance(self, c) -> None:
        """Each operand is -1, or a value of its op's block defined before the op, or one of
        an enclosing block defined before the op that holds the region (SSA scoping)."""
        operands = c["operands"]
        self.owner = owner = np.repeat(np.arange(self.n_ops), c["op_num_operands"])
        if self.n_blocks == 1:  # one block: defined before the op is all there is to it
            bad = (operands >= self.op_first[owner]) | (operands < -1)
            if _any(bad):
                i = int(np.argmax(bad))
                self.fail(f"{self.describe(int(owner[i]))}: operand {i - int(self.operand_starts[owner[i]])} "
                          f"refers to value #{int(operands[i])}, which is not defined before it")
            return
        if _any(operands < -1):
            self.fail(f"an operand refers to value #{int(operands.min())}")
        parents = c["block_parents"].astype(np.int64)
        present = np.flatnonzero(operands >= 0)
        vid, op = operands[present].astype(np.int64), owner[present]
        blk, limit = self.op_block[op], self.op_first[op]
        todo = np.flatnonzero((vid < self.block_first[blk]) | (vid >= limit))
        while todo.size:  # look in the enclosing blocks, one nesting level per round (<= MAX_DEPTH)
            up = parents[blk[todo]]
            if _any(up < 0):
                i = int(todo[np.argmax(up < 0)])
                self.fail(f"{self.describe(int(op[i]))}: an operand refers to value #{int(vid[i])}, "
                          "which is not defined before it in its scope")
            blk[todo], limit[todo] = self.op_block[up], self.op_first[up]
            todo = todo[(vid[todo] < self.block_first[blk[todo]]) | (vid[todo] >= limit[todo])]

    def describe(self, o: int) -> str:
        """How load errors name an op: kind, position in its block, and source node."""
        c = self.c
        b = int(self.op_block[o]) if hasattr(self, "op_block") else 0
        prov = [self.text(int(p)) for p in c["provenance"][self.prov_starts[o]:self.prov_starts[o + 1]]]
        nest = " in a region" if b else ""
        src = f" (from {', '.join(prov)})" if prov else ""
        pos = o - int(self.op_starts[b]) if hasattr(self, "op_starts") else o
        return f"op '{self.op_texts[int(c['op_names'][o])]}' #{pos}{nest}{src}"

    # -- signatures -------------------------------------------------------------------------
    def _signatures(self, c) -> None:
        """What check_signature proves of every op but return: a registered name, its operand
        count, required operands present, region count, attribute names and kinds, required
        attributes.  Python runs once per distinct op name; the ops are checked by table
        look-ups over the columns."""
        names = nid = c["op_names"]
        infos: list[_OpInfo | None] = []
        for n, text in enumerate(self.op_texts):
            if n == self.return_name:
                infos.append(None)
                continue
            od = lookup(text)
            if od is None:
                where = self.describe(int(np.argmax(names == n))) + ": " if _any(names == n) else ""
                self.fail(f"{where}unknown op '{text}' (not in the op registry; define it with "
                          "galaxir.ir.opdef.define before loading)")
            infos.append(_op_info(od))
        k = len(infos)
        table = np.array([0 if i is None else i.min_operands for i in infos]
                         + [_I64_MAX if i is None else i.max_operands for i in infos]
                         + [0 if i is None else i.regions for i in infos], np.int64)
        cnt = c["op_num_operands"].astype(np.int64)
        bad = (cnt < table.take(nid)) | (cnt > table.take(nid + k))
        if self.n_blocks > 1:
            bad |= self.region_counts != table.take(nid + 2 * k)
        elif table[2 * k:].any():
            bad |= table.take(nid + 2 * k) != 0
        if _any(bad):
            o = int(np.argmax(bad))
            od = lookup(self.op_texts[int(names[o])])
            regions = int(np.broadcast_to(self.region_counts, bad.shape)[o])
            if regions != od.regions:
                self.fail(f"{self.describe(o)}: has {regions} regions, expected {od.regions}")
            most = "any" if od.max_operands is None else od.max_operands
            self.fail(f"{self.describe(o)}: takes {od.min_operands}..{most} operands ({', '.join(od.operands)}), "
                      f"got {int(cnt[o])}")
        missing = np.flatnonzero(c["operands"] == -1)
        if missing.size:  # omitted operands are rare: one look-up per omitted operand
            width = max([0] + [len(i.required) for i in infos if i is not None]) + 1
            required = np.zeros(k * width, bool)
            for i, info in enumerate(infos):
                if info is not None:
                    required[i * width:i * width + len(info.required)] = info.required
            o = self.owner[missing]
            pos = np.minimum(missing - self.operand_starts[o], width - 1)
            bad = required.take(nid[o] * width + pos)
            if _any(bad):
                i = int(np.argmax(bad))
                self.fail(f"{self.describe(int(o[i]))}: operand {int(pos[i])} is required but missing")
        self._attr_signatures(c, infos)

    def _attr_signatures(self, c, infos: list) -> None:
        """Attribute names and kinds through a table (op name, attribute name) -> accepted
        kinds, filled per pair in Python; required attributes as a bit mask per op."""
        n_top, nid, na = self.n_top, c["op_names"], max(len(self.attr_texts), 1)
        want = [0 if i is None else i.required_mask for i in infos]
        if not n_top and not any(want):
            return
        if len(infos) * na > _MAX_NAME_PAIRS:
            self.fail("the file has too many distinct op and attribute names")
        column = {text: j for j, text in enumerate(self.attr_texts)}
        accept, req_bit = [0] * (len(infos) * na), [0] * (len(infos) * na)
        for i, info in enumerate(infos):
            for name, (bits, rbit) in (info.attrs.items() if info is not None else ()):
                j = column.get(name)
                if j is not None:
                    accept[i * na + j], req_bit[i * na + j] = bits, rbit
        anames = c["attr_names"][:n_top]
        row_op = np.repeat(np.arange(self.n_ops), c["op_num_attrs"])
        pair = nid.take(row_op) * na + anames
        kinds = c["attr_kinds"][:n_top].astype(np.int64)
        bit = np.left_shift(1, 2 * kinds + (c["attr_counts"][:n_top] == 0))
        bad = (np.array(accept, np.int64).take(pair) & bit) == 0
        if _any(bad):
            r = int(np.argmax(bad))
            text, aname = self.op_texts[int(nid[row_op[r]])], self.attr_texts[int(anames[r])]
            od = lookup(text)
            spec = od.attrs.get(aname) if od is not None else None
            self.fail(f"{self.describe(int(row_op[r]))}: " + (
                f"unknown attribute '{aname}'; expected one of {sorted(od.attrs) if od else 'none'}"
                if spec is None else f"attribute '{aname}' must be {spec.kind}"))
        for r in np.flatnonzero(kinds == AttrKind.List).tolist():  # lists: check the values themselves
            spec = lookup(self.op_texts[int(nid[row_op[r]])]).attrs[self.attr_texts[int(anames[r])]]
            if not spec.check(self.attr_value(r)):
                self.fail(f"{self.describe(int(row_op[r]))}: attribute '{self.attr_texts[int(anames[r])]}' "
                          f"must be {spec.kind}")
        if any(want):
            have = np.zeros(self.n_ops, np.int64)
            has = np.flatnonzero(c["op_num_attrs"])
            if has.size:
                have[has] = np.bitwise_or.reduceat(np.array(req_bit, np.int64).take(pair), self.attr_starts[has])
            bad = have != np.array(want, np.int64).take(nid)
            if _any(bad):
                o = int(np.argmax(bad))
                od = lookup(self.op_texts[int(nid[o])])
                req = [a for a, s in od.attrs.items() if s.required]
                lacking = [a for j, a in enumerate(req) if not int(have[o]) >> j & 1]
                self.fail(f"{self.describe(o)}: required attribute '{lacking[0]}' is missing")

    def _main_graph(self, c) -> None:
        """What Module.verify checks of the graph itself: named, unique inputs and outputs."""
        inputs = [self.text(i) for i in c["arg_names"][:int(c["block_num_args"][0])].tolist()]
        for i, name in enumerate(inputs):
            if not name:
                self.fail(f"graph input {i} has no name")
            if inputs.index(name) != i:
                self.fail(f"graph input name '{name}' is used twice")
        ret = int(self.op_starts[1]) - 1
        outs = c["operands"][self.operand_starts[ret]:self.operand_starts[ret + 1]]
        names = [self.text(i) for i in c["output_names"].tolist()]
        if len(names) != len(outs):
            self.fail(f"the graph has {len(names)} output names but returns {len(outs)} values")
        if len(set(names)) != len(names):
            self.fail("a graph output name is used twice")
        if _any(outs == -1):
            self.fail(f"graph output '{names[int(np.argmax(outs == -1))]}' is not defined")

    def _module_fields(self, c) -> None:
        """The module's name and metadata: what a lazy module shows before it is built."""
        _same_length(c, ("meta_keys", "meta_values"), "metadata")
        self.name = self.text(c["name"]) or "main"
        self.metadata = {self.text(k) or "": self.text(v) or ""
                         for k, v in zip(c["meta_keys"].tolist(), c["meta_values"].tolist())}

    # -- building the objects -------------------------------------------------------------
    def _attr_lists(self) -> tuple[list, ...]:
        """The attribute columns as Python lists (indexing a list is ~10x cheaper than a
        numpy array when building objects one by one)."""
        if self._lists is None:
            c = self.c
            self._lists = (c["attr_kinds"].tolist(), c["attr_values"].tolist(), c["attr_counts"].tolist(),
                           c["ints"].tolist(), c["floats"].tolist(), c["strs"].tolist(),
                           c["attr_values"].view("<f8").tolist())
        return self._lists

    def attr_value(self, r: int) -> Any:
        """The value of attribute row ``r`` (every index was checked in __init__)."""
        kinds, values, counts, ints, floats, strs, as_float = self._attr_lists()
        k = kinds[r]
        if k == AttrKind.Ints:
            s = values[r]
            return tuple(ints[s:s + counts[r]])
        if k == AttrKind.Int:
            return values[r]
        if k == AttrKind.Float:
            return as_float[r]
        if k == AttrKind.Tensor:
            return self.tensor(values[r])
        if k == AttrKind.Str:
            return self.texts()[values[r]]
        if k == AttrKind.Bool:
            return bool(values[r])
        if k == AttrKind.DType:
            return DType.from_onnx(values[r])
        if k == AttrKind.Type:
            return self.type_objects()[values[r]]
        s = values[r]
        if k == AttrKind.Floats:
            return tuple(floats[s:s + counts[r]])
        if k == AttrKind.Strs:
            texts = self.texts()
            return tuple(texts[i] for i in strs[s:s + counts[r]])
        s += self.n_top  # a List: its items are rows after the named ones
        return tuple(self.attr_value(i) for i in range(s, s + counts[r]))

    def tensor(self, t: int) -> np.ndarray:
        """A read-only view of the mapped weights (strings: a new object array)."""
        c = self.c
        dt = DType.from_onnx(int(c["tensor_dtypes"][t]))
        shape = tuple(c["tensor_dims"][self.tensor_dim_starts[t]:self.tensor_dim_starts[t + 1]].tolist())
        n = int(self.numel[t])
        if dt is DType.string:
            texts = self.texts()
            items = c["tensor_strings"][self.tensor_str_starts[t]:self.tensor_str_starts[t + 1]].tolist()
            arr = np.empty(n, dtype=object)
            arr[:] = [texts[i] for i in items]
            arr = arr.reshape(shape)
        elif n == 0:
            arr = np.zeros(shape, dtype=dt.numpy)
        else:
            self.check_tensor(t)
            if dt not in PACKED_BITS:
                return np.frombuffer(self.weights, dtype=dt.numpy, count=n,
                                     offset=int(c["tensor_offsets"][t])).reshape(shape)
            bits = PACKED_BITS[dt]  # sub-byte values are unpacked into a new array
            raw = np.frombuffer(self.weights, dtype=np.uint8, count=packed_nbytes(n, bits),
                                offset=int(c["tensor_offsets"][t]))
            arr = unpack(raw, bits, n, dt.numpy).reshape(shape)
        arr.flags.writeable = False
        return arr

    def check_tensor(self, t: int) -> None:
        """Tensor ``t``'s bytes against its CRC32 (once; load stays zero-copy: this runs when
        the graph is built, or for all tensors at load with ``verify=True``)."""
        if self.checked[t]:
            return
        c = self.c
        off, nb = int(c["tensor_offsets"][t]), int(c["tensor_nbytes"][t])
        if nb:
            _check_mapping(self.weights, f"'{self.where}'")
            if zlib.crc32(self.weights[off:off + nb]) != int(c["tensor_crcs"][t]):
                raise FormatError(f"'{self.where}': tensor #{t} ({nb} bytes at weights offset {off}) fails "
                                  "its checksum (the file is corrupted or was changed after it was saved)")
        self.checked[t] = True

    def check_weights(self) -> None:
        """Every tensor's checksum (``load(..., verify=True)``)."""
        for t in range(self.n_tensors):
            self.check_tensor(t)

    def type_objects(self) -> list[Type]:
        """The type table as Type objects; an element type precedes its container."""
        if self._type_objects is None:
            c, texts = self.c, self.texts()
            dims, starts = c["type_dims"].tolist(), self.type_dim_starts.tolist()
            out: list[Type] = []
            for i, (k, dt, rank, el) in enumerate(zip(c["type_kinds"].tolist(), c["type_dtypes"].tolist(),
                                                      c["type_ranks"].tolist(), c["type_elems"].tolist())):
                if k == TypeKind.Tensor:
                    shape = None if rank < 0 else tuple(
                        d if d >= 0 else UNKNOWN if d == -1 else texts[-2 - d] for d in dims[starts[i]:starts[i + 1]])
                    out.append(TensorType(DType.from_onnx(dt), shape))
                elif k == TypeKind.Sequence:
                    out.append(SequenceType(out[el]))
                elif k == TypeKind.Optional:
                    out.append(OptionalType(out[el]))
                elif k == TypeKind.Map:
                    out.append(MapType(DType.from_onnx(dt), out[el]))
                else:
                    out.append(AnyType())
            self._type_objects = out
        return self._type_objects

    def build(self) -> Graph:
        """The Graph, after ``validate()``; each op is checked against its type rule and own
        verifier once it is in its block (verify_block's order: an op's regions first)."""
        with _file_errors(self.where):
            self.validate()
        c = self.c
        self.rows = {k: c[k].tolist() for k in ("operands", "result_types", "result_names", "op_names",
                                                "op_created_by", "provenance", "arg_types", "arg_names",
                                                "attr_names")}
        for k in ("operand_starts", "result_starts", "attr_starts", "prov_starts", "op_first", "block_first",
                  "op_starts", "arg_starts"):
            self.rows[k] = getattr(self, k).tolist()
        self.children: dict[int, list[int]] = {}
        for b, p in enumerate(c["block_parents"].tolist()[1:], start=1):
            self.children.setdefault(p, []).append(b)
        self.values: list = [None] * self.n_values
        graph = Graph()
        self._block(0, graph.block)
        texts = self.texts()
        graph.output_names = [texts[i] for i in c["output_names"].tolist()]
        del self.values, self.rows
        return graph

    def _block(self, b: int, block: Block) -> None:
        R = self.rows
        texts, types, values, children = self.texts(), self.type_objects(), self.values, self.children
        operands, o_at = R["operands"], R["operand_starts"]
        rtypes, rnames, r_at = R["result_types"], R["result_names"], R["result_starts"]
        anames, a_at, attr_value, atexts = R["attr_names"], R["attr_starts"], self.attr_value, self.attr_texts
        prov, p_at = R["provenance"], R["prov_starts"]
        names, created, first_of, ret = R["op_names"], R["op_created_by"], R["op_first"], self.return_name
        v = R["block_first"][b]
        for j in range(R["arg_starts"][b], R["arg_starts"][b + 1]):
            n = R["arg_names"][j]
            values[v] = block.add_arg(types[R["arg_types"][j]], texts[n] if n >= 0 else None)
            v += 1
        for o in range(R["op_starts"][b], R["op_starts"][b + 1]):
            regions = []
            for child in children.get(o, ()):
                inner = Block()
                self._block(child, inner)
                regions.append(Region(inner))
            r0, r1, a0, a1 = r_at[o], r_at[o + 1], a_at[o], a_at[o + 1]
            cb = created[o]
            op = Operation(self.op_texts[names[o]],
                           [values[x] if x >= 0 else None for x in operands[o_at[o]:o_at[o + 1]]],
                           [types[t] for t in rtypes[r0:r1]],
                           {atexts[anames[r]]: attr_value(r) for r in range(a0, a1)} if a1 > a0 else None,
                           regions,
                           [texts[n] if n >= 0 else None for n in rnames[r0:r1]],
                           [texts[p] for p in prov[p_at[o]:p_at[o + 1]]],
                           texts[cb] if cb >= 0 else None)
            block.append(op)
            if r1 > r0:
                values[first_of[o]:first_of[o] + r1 - r0] = op.results
            if names[o] != ret:
                check_op_semantics(op)


_SAMPLES: dict[int, tuple[Any, Any]] = {  # a value of each attribute kind: (non-empty, empty)
    AttrKind.Int: (0, 0), AttrKind.Bool: (False, False), AttrKind.Float: (0.0, 0.0),
    AttrKind.Str: ("", ""), AttrKind.DType: (DType.float32, DType.float32),
    AttrKind.Type: (AnyType(), AnyType()), AttrKind.Tensor: (np.zeros(0), np.zeros(0)),
    AttrKind.Ints: ((0,), ()), AttrKind.Floats: ((0.0,), ()), AttrKind.Strs: (("",), ()),
}


# -- reading: header, modules ------------------------------------------------------------------
def read_header(data) -> tuple[int, int, int, int, int]:
    if len(data) < HEADER_SIZE:
        raise FormatError(f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte .gxm header (truncated?)")
    magic, version, _flags, g_off, g_len, w_off, w_len, g_crc = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError("not a .gxm file (bad magic bytes)")
    (h_crc,) = struct.unpack_from("<I", data, _HEADER.size)
    if zlib.crc32(bytes(data[:_HEADER.size])) != h_crc:
        raise FormatError("the header checksum does not match (corrupted file)")
    if version > FORMAT_VERSION:
        raise FormatError(f"the file uses .gxm format version {version}; this galaxir reads version "
                          f"{FORMAT_VERSION}: upgrade galaxir")
    if version < FORMAT_VERSION:
        raise FormatError(f"the file uses .gxm format version {version}, written by an older galaxir; this "
                          f"galaxir reads version {FORMAT_VERSION}: save the model again from its source")
    size = len(data)
    if g_off < HEADER_SIZE or g_off + g_len > size or w_off % ALIGN or w_off < g_off + g_len or w_off + w_len > size:
        raise FormatError(f"section offsets (graph {g_off}+{g_len}, weights {w_off}+{w_len}) do not fit "
                          f"the {size}-byte file (truncated?)")
    return g_off, g_len, w_off, w_len, g_crc


class LazyModule(Module):
    """A Module loaded from .gxm whose graph is built on first access of ``graph`` (it then
    becomes a plain Module).  The file was proven intact when it was loaded; building
    first validates the program it describes (``_Section.validate``), then runs the per-op
    type rules, and a file that fails either raises FormatError from that first access."""

    def __init__(self, section: _Section):  # what Module.__init__ sets, but the graph
        self.name = section.name
        self.metadata = dict(section.metadata)
        self._gxm_section = section
        self._gxm_lock = threading.Lock()

    def __getattr__(self, attr: str) -> Any:
        if attr != "graph":
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")
        with self.__dict__["_gxm_lock"]:
            if "graph" not in self.__dict__:
                section = self.__dict__["_gxm_section"]
                self.__dict__["graph"] = _build(section)
                del self.__dict__["_gxm_section"], self.__dict__["_gxm_lock"]
                self.__class__ = Module
        return self.__dict__["graph"]


def _build(section: _Section) -> Graph:
    """Build the graph with the cyclic garbage collector paused: building allocates
    thousands of linked objects, none of them garbage, and the collections that the
    allocations would trigger scan the whole heap (about half the build time)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return section.build()
    except FormatError:
        raise
    except GalaxirError as e:
        raise FormatError(f"'{section.where}' decodes to an invalid module: {e}") from None
    except Exception as e:  # an op's type rule that crashed on odd input
        raise FormatError(f"'{section.where}' decodes to an invalid module ({type(e).__name__}: {e})") from None
    finally:
        if paused:
            gc.enable()


def load(path: str | os.PathLike, lazy: bool = True, verify: bool = False) -> Module:
    """Map a .gxm file and check that it is intact; weights are read-only numpy views into
    the mapping (no copy).  The graph is validated, its Python objects built and each
    weight's CRC32 checked on first access, or here with ``lazy=False`` (then every error
    surfaces in ``load``); ``verify=True`` checks the weights' CRC32s here (reads them all)."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"no .gxm file at '{p}'")
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER_SIZE:
            raise FormatError(f"'{p}' is {size} bytes, shorter than the .gxm header (truncated?)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _decode(mm, str(p), lazy, verify)


def loads(data: bytes, lazy: bool = True, verify: bool = False) -> Module:
    """Decode .gxm bytes (weights are views into ``data``)."""
    return _decode(memoryview(data), "<bytes>", lazy, verify)


def _decode(data, where: str, lazy: bool, verify: bool = False) -> Module:
    g_off, g_len, w_off, w_len, g_crc = read_header(data)
    graph = bytes(data[g_off:g_off + g_len])
    if zlib.crc32(graph) != g_crc:
        raise FormatError(f"'{where}': the graph section checksum does not match (corrupted file)")
    weights = memoryview(data)[w_off:w_off + w_len]
    with _file_errors(where):
        section = _Section(graph, weights, where)
    if verify:
        section.check_weights()
    module = LazyModule(section)
    if not lazy:
        _ = module.graph  # builds and checks every op now
    return module
