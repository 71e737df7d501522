"""Deep copies of graphs and modules (weights are shared: attributes are immutable).

The copy recurses over regions; a module nested deeper than ``MAX_NESTING`` is refused
with a VerificationError before any copying starts."""
from __future__ import annotations

from ..errors import VerificationError
from .core import MAX_NESTING, Block, Graph, Module, Operation, Region, Value, nesting_depth


def _check_depth(depth: int) -> None:
    if depth > MAX_NESTING:
        raise VerificationError(f"cannot copy IR whose regions nest {depth} deep; galaxir allows "
                                f"at most {MAX_NESTING} levels")


def clone_op(op: Operation, mapping: dict[int, Value]) -> Operation:
    """Copy ``op`` (regions included), remapping operands through ``mapping``; the copy's
    results are added to ``mapping``.  Values not in ``mapping`` (outer scope) are kept."""
    if op.regions:
        _check_depth(1 + max(nesting_depth(r.block) for r in op.regions))
    return _clone_op(op, mapping)


def _clone_op(op: Operation, mapping: dict[int, Value]) -> Operation:
    operands = [None if v is None else mapping.get(id(v), v) for v in op.operands]
    regions = [_clone_region(r, mapping) for r in op.regions]
    new = Operation(op.name, operands, [r.type for r in op.results], None, regions,
                    [r.name for r in op.results], op.provenance, op.created_by)
    # the attributes are frozen already and copied on write (Operation.set_attr): share
    # them (freezing again walked every long tuple, 5% of a new input shape's cost)
    new._attrs = op._attrs
    for old, r in zip(op.results, new.results):
        mapping[id(old)] = r
    return new


def clone_block_into(src: Block, dst: Block, mapping: dict[int, Value]) -> None:
    _check_depth(nesting_depth(src))
    _clone_block_into(src, dst, mapping)


def _clone_block_into(src: Block, dst: Block, mapping: dict[int, Value]) -> None:
    for op in src:
        dst.append(_clone_op(op, mapping))


def clone_region(region: Region, mapping: dict[int, Value]) -> Region:
    _check_depth(1 + nesting_depth(region.block))
    return _clone_region(region, mapping)


def _clone_region(region: Region, mapping: dict[int, Value]) -> Region:
    block = Block([a.type for a in region.block.args], [a.name for a in region.block.args])
    for old, new in zip(region.block.args, block.args):
        mapping[id(old)] = new
    _clone_block_into(region.block, block, mapping)
    return Region(block)


def clone_module(m: Module) -> Module:
    g = Graph([a.type for a in m.graph.inputs], m.graph.input_names)
    mapping = {id(old): new for old, new in zip(m.graph.inputs, g.inputs)}
    clone_block_into(m.graph.block, g.block, mapping)
    g.output_names = list(m.graph.output_names)
    return Module(g, m.name, dict(m.metadata))
