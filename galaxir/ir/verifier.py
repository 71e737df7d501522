"""The verifier: SSA dominance, no cycles, op signatures, types against inference, region
signatures, unique graph names.  Every error names the op and its position."""
from __future__ import annotations

from ..errors import VerificationError
from .bounds import verify_bounds
from .builder import check_signature
from .core import MAX_NESTING, Block, Module, Operation, Value
from .opdef import describe
from .types import TensorType, type_depth, types_compatible


def verify(m: Module) -> None:
    g = m.graph
    names = [v.name for v in g.inputs]
    for i, n in enumerate(names):
        if not n:
            raise VerificationError(f"graph input {i} has no name")
        if names.index(n) != i:
            raise VerificationError(f"graph input name '{n}' is used twice")
    term = g.block.terminator
    if term is None:
        raise VerificationError("the main graph does not end with a return op")
    if len(g.output_names) != len(term.operands):
        raise VerificationError(f"the graph has {len(g.output_names)} output names but returns "
                                f"{len(term.operands)} values")
    seen = set()
    for n in g.output_names:
        if n in seen:
            raise VerificationError(f"graph output name '{n}' is used twice")
        seen.add(n)
    for i, v in enumerate(term.operands):
        if v is None:
            raise VerificationError(f"graph output '{g.output_names[i]}' is not defined")
    verify_block(g.block, set())
    verify_bounds(m)


def verify_block(block: Block, visible: set[int], depth: int = 0) -> None:
    """Check ``block``; ``visible`` holds ids of values defined in enclosing scopes before it,
    ``depth`` is how deep the block is nested (at most ``MAX_NESTING``)."""
    defined = set(visible)
    for a in block.args:
        if a.owner is not block:
            raise VerificationError(f"block argument {a!r} does not belong to its block")
        _check_type_depth(a.type, f"block argument {a!r}")
        defined.add(id(a))
    later = {id(r): op for op in block for r in op.results}
    for op in block:
        if op.parent is not block:
            raise VerificationError(f"{describe(op)}: its parent link is broken")
        if op.is_terminator and op is not block.last:
            raise VerificationError(f"{describe(op)}: return must be the last op of its block")
        for i, v in enumerate(op.operands):
            if v is None:
                continue
            if id(v) not in defined:
                if id(v) in later:
                    _raise_order(op, i, v, block)
                raise VerificationError(
                    f"{describe(op)}: operand {i} ({_vname(v)}) is not defined in this scope "
                    "(a dangling value, or one from another graph)")
            if (op, i) not in v.uses:
                raise VerificationError(f"{describe(op)}: operand {i} is missing from its value's use list")
        if not op.is_terminator:
            check_signature(op)
        if op.regions and depth >= MAX_NESTING:
            raise VerificationError(f"{describe(op)}: its regions would nest {depth + 1} deep; "
                                    f"galaxir allows at most {MAX_NESTING} levels")
        for region in op.regions:
            verify_block(region.block, defined, depth + 1)
        if not op.is_terminator:
            check_op_semantics(op)
        for r in op.results:
            if not isinstance(r.type, TensorType):
                _check_type_depth(r.type, f"{describe(op)}: result {r.index}")
            defined.add(id(r))
    if block.terminator is None:
        raise VerificationError(f"a block {'of ' + describe(block.parent.parent) if block.parent and block.parent.parent else ''} "
                                "does not end with a return op")


def _check_type_depth(t, what: str) -> None:
    if not isinstance(t, TensorType) and type_depth(t) > MAX_NESTING:
        raise VerificationError(f"{what} has a type that nests {type_depth(t)} deep; galaxir "
                                f"allows at most {MAX_NESTING} levels")


def check_op_semantics(op: Operation) -> None:
    """The checks that need the op object itself: its definition's own verifier, then its
    result types against inference.  A .gxm load runs only these per op: it proves the
    structural invariants (dominance, signatures, terminators) on the file's columns."""
    od = op.opdef
    if od is not None and od.verify is not None:
        od.verify(op)
    _check_types(op)


def _vname(v: Value) -> str:
    src = v.producer.name if v.producer is not None else "block argument"
    return f"%{v.name or '?'} from {src}"


def _raise_order(op: Operation, i: int, v: Value, block: Block) -> None:
    """A use before its definition: a cycle when the definition depends on this op."""
    start = v.producer
    stack, seen = [start], set()
    while stack:
        cur = stack.pop()
        if cur is op:
            raise VerificationError(
                f"{describe(op)}: cycle: operand {i} ({_vname(v)}) depends on this op's own results")
        if id(cur) in seen or cur is None:
            continue
        seen.add(id(cur))
        for u in cur.operands:
            if u is not None and u.producer is not None and u.producer.parent is block:
                stack.append(u.producer)
    raise VerificationError(f"{describe(op)}: operand {i} ({_vname(v)}) is used before it is defined")


def _check_types(op: Operation) -> None:
    od = op.opdef
    inferred = od.infer_types(op) if od is not None else None
    if inferred is None:
        return
    if len(inferred) != len(op.results):
        raise VerificationError(f"{describe(op)}: has {len(op.results)} results, its type rule gives {len(inferred)}")
    for i, (r, t) in enumerate(zip(op.results, inferred)):
        if not types_compatible(r.type, t):
            raise VerificationError(f"{describe(op)}: result {i} is declared {r.type} but its "
                                    f"operands give {t}")
