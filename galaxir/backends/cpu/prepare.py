"""Module-level rewrites the cpu backend applies on its own copy before lowering: constant
folding with the numpy reference (model-zoo weights come from ConstantOfShape nodes),
conv + batch_norm folding, batch_norm with constant statistics as a per-channel affine, and
specialization of symbolic input dims to concrete ones (types re-inferred op by op)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...ir import Builder, Graph, Module, Operation
from ...ir.clone import clone_block_into
from ...ir.mapped import detach_constants
from ...ir.types import TensorType

FOLD_LIMIT_BYTES = 1 << 31  # never fold a constant bigger than this (memory)


def _const(v):
    return None if v is None else v.constant_value()


def _replace_with_constants(op: Operation, arrays: Sequence[np.ndarray], tag: str) -> None:
    b = Builder(op.parent, before=op, provenance=op.provenance, created_by=tag)
    new = []
    for r, arr in zip(op.results, arrays):
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            arr = arr.copy(order="C")
        if isinstance(r.type, TensorType) and arr.dtype != r.type.dtype.numpy:
            arr = arr.astype(r.type.dtype.numpy)
        arr.flags.writeable = False
        new.append(b.constant(arr))
    op.replace_with(new)


def fold_constants(module: Module) -> int:
    """Evaluate top-level ops whose operands are all constants (numpy reference kernels)."""
    from ..numpy import Interpreter
    from ..numpy.registry import get_kernel
    interp = Interpreter(module)
    folded = 0
    for op in list(module.graph.block):
        if op.is_terminator or op.name == "constant" or op.regions:
            continue
        od = op.opdef
        if od is None or not od.pure or not op.operands or get_kernel(op.name) is None:
            continue
        vals = [_const(v) if v is not None else None for v in op.operands]
        if any(v is None and o is not None for v, o in zip(vals, op.operands)):
            continue
        if not all(isinstance(r.type, TensorType) for r in op.results):
            continue
        env = {id(o): v for o, v in zip(op.operands, vals) if o is not None}
        try:
            interp.run_op(op, env)
        except Exception:
            continue
        outs = [env.get(id(r)) for r in op.results]
        if any(not isinstance(x, np.ndarray) or x.dtype == object or x.nbytes > FOLD_LIMIT_BYTES
               for x in outs):
            continue
        _replace_with_constants(op, outs, "cpu.fold_constants")
        folded += 1
    return folded


def _single_use(v) -> bool:
    return len(v.uses) == 1


def _is_output(module: Module, v) -> bool:
    return any(o is v for o in module.graph.outputs)


def fold_batch_norm(module: Module) -> int:
    """conv(x, w, b) -> batch_norm(constant stats)  =>  conv(x, w', b'); a lone batch_norm
    with constant stats becomes x * a + c (per channel), which fuses with what follows."""
    n = 0
    for op in list(module.graph.block):
        if op.name != "batch_norm" or len(op.results) != 1:
            continue
        params = [_const(v) for v in op.operands[1:5]]
        x = op.operands[0]
        if any(p is None for p in params) or not isinstance(x.type, TensorType) or x.type.shape is None:
            continue
        if x.type.dtype.numpy != np.float32 or len(x.type.shape) < 2:
            continue
        scale, bias, mean, var = [np.asarray(p, np.float64) for p in params]
        eps = float(op.attr("epsilon") or 1e-5)
        a = scale / np.sqrt(var + eps)
        c = bias - mean * a
        conv = x.producer
        if (conv is not None and conv.name == "conv" and _single_use(x) and not _is_output(module, x)
                and _const(conv.operands[1]) is not None
                and (conv.operand(2) is None or _const(conv.operand(2)) is not None)):
            w = np.asarray(_const(conv.operands[1]), np.float64)
            if w.shape[0] == a.shape[0]:
                b0 = _const(conv.operand(2))
                b0 = np.zeros(w.shape[0]) if b0 is None else np.asarray(b0, np.float64)
                w2 = (w * a.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
                b2 = (b0 * a + c).astype(np.float32)
                bld = Builder(op.parent, before=op, provenance=conv.provenance + op.provenance,
                              created_by="cpu.fold_batch_norm")
                new = bld.op("conv", conv.operands[0], bld.constant(w2), bld.constant(b2),
                             **dict(conv.attrs))
                op.replace_with([new])
                conv.erase()
                n += 1
                continue
        rank = len(x.type.shape)
        shape = (-1,) + (1,) * (rank - 2)
        bld = Builder(op.parent, before=op, provenance=op.provenance, created_by="cpu.batch_norm_affine")
        y = bld.add(bld.mul(x, bld.constant(a.astype(np.float32).reshape(shape))),
                    bld.constant(c.astype(np.float32).reshape(shape)))
        op.replace_with([y])
        n += 1
    return n


def remove_dead(module: Module) -> None:
    ops = list(module.graph.block)
    for op in reversed(ops):
        if op.is_terminator:
            continue
        od = op.opdef
        if od is not None and not od.pure:
            continue
        if all(not r.uses for r in op.results):
            op.erase()


def prepare(module: Module) -> Module:
    m = module.clone()
    detach_constants(m)  # the executable owns its weights: none stay views of a mapped file
    fold_constants(m)
    fold_batch_norm(m)
    remove_dead(m)
    return m


def specialize(module: Module, shapes: dict[str, tuple[int, ...]]) -> Module:
    """A copy whose inputs have the given concrete shapes, result types re-inferred.
    Ops whose inference fails keep their (symbolic) types; they will run on numpy."""
    g = Graph()
    for a in module.graph.inputs:
        t = a.type
        if isinstance(t, TensorType) and a.name in shapes:
            t = TensorType(t.dtype, tuple(shapes[a.name]))
        g.add_input(a.name, t)
    mapping = {id(o): n for o, n in zip(module.graph.inputs, g.inputs)}
    clone_block_into(module.graph.block, g.block, mapping)
    g.output_names = list(module.graph.output_names)
    for op in g.block:
        if op.is_terminator or op.name == "constant":
            continue
        od = op.opdef
        if od is None:
            continue
        if op.name == "fused_elementwise" and op.regions:
            _reinfer_region(op)
        try:
            types = od.infer_types(op)
        except Exception:
            types = None
        if types is None or len(types) != len(op.results):
            continue
        for r, t in zip(op.results, types):
            r.type = t
    return Module(g, module.name, dict(module.metadata))


def _reinfer_region(op: Operation) -> None:
    """Give a fused_elementwise region the operand types, then re-infer its body, so the
    op's result type becomes concrete too."""
    block = op.regions[0].block
    for a, v in zip(block.args, op.operands):
        if v is not None:
            a.type = v.type
    for inner in block:
        if inner.is_terminator or inner.name == "constant" or inner.opdef is None:
            continue
        try:
            types = inner.opdef.infer_types(inner)
        except Exception:
            return
        if types is None or len(types) != len(inner.results):
            return
        for r, t in zip(inner.results, types):
            r.type = t
