"""The IR's data structures: Value, Operation, Block, Region, Graph, Module.

SSA: every Value is defined once (an op result or a block argument) and knows its uses.
A Block keeps its ops in a doubly linked list, so insert and erase cost O(1) and a pass
can rewrite while it walks.  The order of ops in a block is the schedule; the verifier
checks that every use comes after its definition.
"""
from __future__ import annotations

import itertools
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import opdef as _opdef
from .types import DType, Type

_ids = itertools.count()

#: How deep regions may nest: an op of the main graph is at depth 0, an op in one of its
#: regions (an If branch, a Loop body) at depth 1, and so on.  Sequence/optional types and
#: attribute lists nest at most as deep.  Every entry point refuses deeper IR with a clear
#: error (the verifier, the text parser, clone, the ONNX importer, .gxm save and load), so
#: the code that walks a module may recurse over its regions.
MAX_NESTING = 64


class Value:
    """An SSA value: the result of an op or an argument of a block."""

    __slots__ = ("type", "name", "owner", "index", "uses", "_id")

    def __init__(self, type: Type, owner: "Operation | Block | None" = None, index: int = 0,
                 name: str | None = None):
        self.type = type
        self.name = name
        self.owner = owner
        self.index = index
        # (op, operand index) -> None: an insertion-ordered set, so that dropping one use of a
        # value with 20,000 users is O(1) rather than a scan
        self.uses: dict[tuple[Operation, int], None] = {}
        self._id = next(_ids)

    @property
    def producer(self) -> "Operation | None":
        """The op that defines this value, or None for a block argument."""
        return self.owner if isinstance(self.owner, Operation) else None

    def constant_value(self) -> "np.ndarray | None":
        """The array when a ``constant`` op defines this value, else None."""
        p = self.producer
        return p.attrs.get("value") if p is not None and p.name == "constant" else None

    @property
    def is_block_arg(self) -> bool:
        return isinstance(self.owner, Block)

    @property
    def users(self) -> list["Operation"]:
        seen: dict[int, Operation] = {}
        for op, _ in self.uses:
            seen.setdefault(id(op), op)
        return list(seen.values())

    def replace_all_uses_with(self, new: "Value") -> None:
        if new is self:
            return
        for op, i in list(self.uses):
            op.set_operand(i, new)

    def __repr__(self) -> str:
        where = self.owner.name if isinstance(self.owner, Operation) else "arg"
        return f"<Value {self.name or '#' + str(self._id)}: {self.type} ({where})>"


def freeze_attr(value: Any) -> Any:
    """Make an attribute value immutable and canonical (lists become tuples, arrays read-only)."""
    if isinstance(value, (bool, str, DType, Type)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.flags.writeable:
            value = value.copy() if not value.flags.c_contiguous else value.view()
            value.flags.writeable = False
        return value
    if isinstance(value, (list, tuple)):
        return tuple(freeze_attr(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    raise TypeError(f"unsupported attribute value {value!r} of type {type(value).__name__}")


class Operation:
    """One op: a kind name, operands, results, attributes and nested regions.

    ``operands`` may hold ``None`` for an omitted optional operand.  ``provenance`` lists
    the source nodes (e.g. ONNX node names) this op came from; ``created_by`` names the
    rule or pass that made it.
    """

    def __init__(self, name: str, operands: Sequence[Value | None] = (),
                 result_types: Sequence[Type] = (), attrs: Mapping[str, Any] | None = None,
                 regions: Sequence["Region"] = (), result_names: Sequence[str | None] | None = None,
                 provenance: Sequence[str] = (), created_by: str | None = None):
        self.name = name
        self._operands: list[Value | None] = []
        for v in operands:
            self._append_operand(v)
        names = list(result_names) if result_names else [None] * len(result_types)
        self.results: list[Value] = [Value(t, self, i, n) for i, (t, n) in
                                     enumerate(zip(result_types, names))]
        self._attrs = MappingProxyType({k: freeze_attr(v) for k, v in (attrs or {}).items()})
        self.regions: list[Region] = []
        for r in regions:
            self.add_region(r)
        self.parent: Block | None = None
        self.prev: Operation | None = None
        self.next: Operation | None = None
        self.provenance: tuple[str, ...] = tuple(provenance)
        self.created_by = created_by

    # -- operands -------------------------------------------------------------------------
    def _append_operand(self, v: Value | None) -> None:
        if v is not None and not isinstance(v, Value):
            raise TypeError(f"operand of {self.name} must be a Value or None, got {v!r}")
        idx = len(self._operands)
        self._operands.append(v)
        if v is not None:
            v.uses[(self, idx)] = None

    @property
    def operands(self) -> tuple[Value | None, ...]:
        return tuple(self._operands)

    def operand(self, i: int) -> Value | None:
        return self._operands[i] if i < len(self._operands) else None

    def set_operand(self, i: int, v: Value | None) -> None:
        old = self._operands[i]
        if old is not None:
            del old.uses[(self, i)]
        self._operands[i] = v
        if v is not None:
            v.uses[(self, i)] = None

    def set_operands(self, values: Sequence[Value | None]) -> None:
        self.drop_operands()
        for v in values:
            self._append_operand(v)

    def drop_operands(self) -> None:
        for i, v in enumerate(self._operands):
            if v is not None:
                del v.uses[(self, i)]
        self._operands = []

    @property
    def operand_types(self) -> list[Type | None]:
        return [None if v is None else v.type for v in self._operands]

    # -- results and attributes -----------------------------------------------------------
    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.name} has {len(self.results)} results, not one")
        return self.results[0]

    @property
    def attrs(self) -> Mapping[str, Any]:
        return self._attrs

    def attr(self, key: str, default: Any = None) -> Any:
        """An attribute, falling back to the op definition's default, then ``default``."""
        if key in self._attrs:
            return self._attrs[key]
        od = self.opdef
        if od is not None and key in od.attrs and od.attrs[key].default is not None:
            return od.attrs[key].default
        return default

    def set_attr(self, key: str, value: Any) -> None:
        d = dict(self._attrs)
        if value is None:
            d.pop(key, None)
        else:
            d[key] = freeze_attr(value)
        self._attrs = MappingProxyType(d)

    @property
    def opdef(self):
        return _opdef.lookup(self.name)  # (a module attribute: an import statement here cost ~1 us per call)

    def has_trait(self, cls: type) -> bool:
        """Does this op's definition carry trait ``cls`` (galaxir/ir/traits.py)?  False for
        an op without a definition."""
        od = _opdef.lookup(self.name)
        return od is not None and od.has_trait(cls)

    def trait(self, cls: type):
        """This op's trait of class ``cls``, or None."""
        od = _opdef.lookup(self.name)
        return None if od is None else od.trait(cls)

    # -- regions --------------------------------------------------------------------------
    def add_region(self, region: "Region") -> None:
        region.parent = self
        self.regions.append(region)

    # -- structure ------------------------------------------------------------------------
    @property
    def is_terminator(self) -> bool:
        return self.name == "return"

    def erase(self) -> None:
        """Detach from the block and drop operand uses; results must be unused."""
        for r in self.results:
            if r.uses:
                users = ", ".join(sorted({u.name for u, _ in r.uses}))
                raise ValueError(f"cannot erase {self.name}: result still used by {users}")
        self.drop_operands()
        for region in self.regions:
            for op in list(region.walk()):
                op.drop_operands()
        if self.parent is not None:
            self.parent._unlink(self)

    def replace_with(self, values: Sequence[Value]) -> None:
        """Replace every use of this op's results with ``values`` and erase it."""
        if len(values) != len(self.results):
            raise ValueError(f"{self.name}: {len(values)} replacements for {len(self.results)} results")
        for old, new in zip(self.results, values):
            if new is not None:
                old.replace_all_uses_with(new)
        self.erase()

    def read_values(self) -> list[Value]:
        """Values this op reads: its operands, then the outer-scope values its regions
        read (each once).  Liveness analyses need the latter to keep them alive."""
        vals = [v for v in self._operands if v is not None]
        if not self.regions:
            return vals
        inner: set[int] = set()
        for r in self.regions:
            inner.update(id(a) for a in r.block.args)
            for nested in r.walk():
                inner.update(id(x) for x in nested.results)
                for x in nested.regions:
                    inner.update(id(a) for a in x.block.args)
        seen = {id(v) for v in vals}
        for r in self.regions:
            for nested in r.walk():
                for v in nested.operands:
                    if v is not None and id(v) not in inner and id(v) not in seen:
                        seen.add(id(v))
                        vals.append(v)
        return vals

    def walk(self) -> Iterator["Operation"]:
        """This op, then every op nested in its regions (pre-order)."""
        yield self
        for region in self.regions:
            yield from region.walk()

    @property
    def ancestors(self) -> Iterator["Operation"]:
        blk = self.parent
        while blk is not None and blk.parent is not None and blk.parent.parent is not None:
            op = blk.parent.parent
            yield op
            blk = op.parent

    def __repr__(self) -> str:
        return f"<Operation {self.name} ({len(self._operands)} -> {len(self.results)})>"


class Block:
    """A list of ops (doubly linked) with typed arguments; ends with a ``return`` op."""

    def __init__(self, arg_types: Sequence[Type] = (), arg_names: Sequence[str | None] | None = None):
        names = list(arg_names) if arg_names else [None] * len(arg_types)
        self.args: list[Value] = [Value(t, self, i, n) for i, (t, n) in enumerate(zip(arg_types, names))]
        self.first: Operation | None = None
        self.last: Operation | None = None
        self.parent: Region | None = None
        self._len = 0

    def add_arg(self, type: Type, name: str | None = None) -> Value:
        v = Value(type, self, len(self.args), name)
        self.args.append(v)
        return v

    # -- the linked list -----------------------------------------------------------------
    def __iter__(self) -> Iterator[Operation]:
        """Iterate ops; safe when the current op is erased or ops are inserted after it."""
        op = self.first
        while op is not None:
            nxt = op.next
            yield op
            op = nxt if op.parent is not self else op.next

    def __len__(self) -> int:
        return self._len

    @property
    def ops(self) -> list[Operation]:
        return list(self)

    def _link(self, op: Operation, prev: Operation | None, nxt: Operation | None) -> None:
        if op.parent is not None:
            raise ValueError(f"{op.name} is already in a block")
        op.parent, op.prev, op.next = self, prev, nxt
        if prev is None:
            self.first = op
        else:
            prev.next = op
        if nxt is None:
            self.last = op
        else:
            nxt.prev = op
        self._len += 1

    def _unlink(self, op: Operation) -> None:
        if op.prev is None:
            self.first = op.next
        else:
            op.prev.next = op.next
        if op.next is None:
            self.last = op.prev
        else:
            op.next.prev = op.prev
        op.parent = op.prev = op.next = None
        self._len -= 1

    def append(self, op: Operation) -> Operation:
        self._link(op, self.last, None)
        return op

    def insert_before(self, anchor: Operation, op: Operation) -> Operation:
        if anchor.parent is not self:
            raise ValueError("anchor is not in this block")
        self._link(op, anchor.prev, anchor)
        return op

    def insert_after(self, anchor: Operation, op: Operation) -> Operation:
        if anchor.parent is not self:
            raise ValueError("anchor is not in this block")
        self._link(op, anchor, anchor.next)
        return op

    def remove(self, op: Operation) -> None:
        """Unlink without touching uses (for moving an op elsewhere)."""
        if op.parent is not self:
            raise ValueError("op is not in this block")
        self._unlink(op)

    @property
    def terminator(self) -> Operation | None:
        return self.last if self.last is not None and self.last.is_terminator else None

    @property
    def results(self) -> tuple[Value | None, ...]:
        t = self.terminator
        return t.operands if t is not None else ()

    def walk(self) -> Iterator[Operation]:
        for op in self:
            yield from op.walk()


class Region:
    """A nested graph owned by an op (If branches, Loop/Scan bodies): one block."""

    def __init__(self, block: Block | None = None):
        self.block = block if block is not None else Block()
        self.block.parent = self
        self.parent: Operation | None = None

    @property
    def args(self) -> list[Value]:
        return self.block.args

    def walk(self) -> Iterator[Operation]:
        return self.block.walk()


class Graph(Region):
    """The top-level graph: a region whose block arguments are the named inputs and whose
    ``return`` operands are the named outputs."""

    def __init__(self, input_types: Sequence[Type] = (), input_names: Sequence[str] | None = None):
        super().__init__(Block(input_types, input_names))
        self.output_names: list[str] = []

    @property
    def inputs(self) -> list[Value]:
        return self.block.args

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.block.args]

    @property
    def outputs(self) -> list[Value]:
        return list(self.block.results)

    def add_input(self, name: str, type: Type) -> Value:
        return self.block.add_arg(type, name)

    def set_outputs(self, values: Sequence[Value], names: Sequence[str] | None = None) -> None:
        """(Re)place the terminator returning ``values`` under ``names``."""
        t = self.block.terminator
        if t is not None:
            t.drop_operands()
            self.block.remove(t)
        self.block.append(Operation("return", list(values)))
        self.output_names = list(names) if names is not None else [
            v.name or f"output_{i}" for i, v in enumerate(values)]

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.block)


class Module:
    """A compilation unit: the main graph plus metadata (producer, opsets, passes run)."""

    def __init__(self, graph: Graph | None = None, name: str = "main",
                 metadata: Mapping[str, str] | None = None):
        self.graph = graph if graph is not None else Graph()
        self.name = name
        self.metadata: dict[str, str] = dict(metadata or {})

    def walk(self) -> Iterator[Operation]:
        return self.graph.walk()

    @property
    def num_ops(self) -> int:
        return sum(1 for op in self.walk() if not op.is_terminator)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.walk():
            if not op.is_terminator:
                counts[op.name] = counts.get(op.name, 0) + 1
        return counts

    def clone(self) -> "Module":
        from .clone import clone_module
        return clone_module(self)

    def verify(self) -> "Module":
        from .verifier import verify
        verify(self)
        return self

    def __str__(self) -> str:
        from .printer import print_module
        return print_module(self, resources=False)

    def to_text(self, resources: bool = True) -> str:
        from .printer import print_module
        return print_module(self, resources=resources)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Module):
            return NotImplemented
        from .printer import structural_key
        return structural_key(self) == structural_key(other)

    __hash__ = object.__hash__


def nesting_depth(root: "Module | Block") -> int:
    """The deepest region nesting under ``root`` (0: no regions), without recursion."""
    block = root.graph.block if isinstance(root, Module) else root
    deepest, stack = 0, [(block, 0)]
    while stack:
        blk, depth = stack.pop()
        deepest = max(deepest, depth)
        for op in blk:
            for r in op.regions:
                stack.append((r.block, depth + 1))
    return deepest


def walk_values(block: Block) -> Iterable[Value]:
    yield from block.args
    for op in block:
        yield from op.results
