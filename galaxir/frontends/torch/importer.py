"""PyTorch programs to galaxir modules, through ``torch.export``.

``torch.export`` traces a module into an FX graph of ATen ops; ``run_decompositions()``
brings that graph down to the small core ATen op set, except for the few high-level ops
galaxir has a composite for (scaled_dot_product_attention, lstm, gru, rnn, upsampling),
which are kept whole so they become one galaxir op each.

Each ATen op has a converter ``fn(ctx) -> Value | tuple | scalar`` (see ``aten``) that
builds galaxir ops with ``ctx.b``.  Arguments reach converters already translated:
FX nodes become Values (tensors, and symbolic ints as 0-d int64 tensors), lists stay
lists, Python scalars stay scalars; ``ctx.arg(name)`` reads them by their schema name.
"""
from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram

from ...errors import GalaxirError, ModelImportError, UnsupportedOpError
from ...ir import Builder, GraphBuilder, Module, Value
from ...ir.bounds import input_symbols, set_dim_bounds
from ...ir.types import UNKNOWN, DType, TensorType, refine, types_compatible
from ..registry import ConverterTable

aten = torch.ops.aten

Converter = Callable[["TorchContext"], Any]
#: ATen converters: ``"add"`` (every overload) or ``"add.Tensor"``; ``@converter`` registers one
CONVERTERS = ConverterTable(__package__ + ".ops")
converter = CONVERTERS.register

# ATen ops kept whole by run_decompositions: galaxir has a (composite) op for each.
KEEP = ("scaled_dot_product_attention.default", "lstm.input", "gru.input", "rnn_tanh.input",
        "rnn_relu.input", "upsample_nearest2d.vec", "upsample_bilinear2d.vec",
        "upsample_nearest1d.vec", "upsample_linear1d.vec", "pixel_shuffle.default",
        "_adaptive_avg_pool2d.default", "adaptive_max_pool2d.default", "silu.default",
        "hardswish.default", "hardsigmoid.default", "mish.default", "softplus.default",
        "_prelu_kernel.default", "tril.default", "triu.default")

# Nodes that only assert facts about shapes; they compute nothing.
_SKIP = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range",
         "sym_constrain_range_for_size", "_assert_async", "_print"}


def get_converter(target: Any) -> Converter | None:
    CONVERTERS.loaded()
    if isinstance(target, torch._ops.OpOverload):
        packet = target._schema.name.split("::")[-1]
        overload = target._overloadname
        return CONVERTERS.get(f"{packet}.{overload}") or CONVERTERS.get(packet)
    return PY_FUNCTIONS.get(target)


# -- dtypes ---------------------------------------------------------------------------------
_TORCH_DTYPES = {
    torch.float32: DType.float32, torch.float64: DType.float64, torch.float16: DType.float16,
    torch.bfloat16: DType.bfloat16, torch.int64: DType.int64, torch.int32: DType.int32,
    torch.int16: DType.int16, torch.int8: DType.int8, torch.uint8: DType.uint8,
    torch.bool: DType.bool,
}
_FROM_DTYPE = {v: k for k, v in _TORCH_DTYPES.items()}


def gx_dtype(dt: torch.dtype) -> DType:
    try:
        return _TORCH_DTYPES[dt]
    except KeyError:
        raise UnsupportedOpError(f"torch dtype {dt} has no galaxir equivalent") from None


def torch_dtype(dt: DType) -> torch.dtype:
    return _FROM_DTYPE[dt]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy copy of a tensor (bfloat16 through ml_dtypes)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(DType.bfloat16.numpy).copy()
    return t.contiguous().numpy().copy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == DType.bfloat16.numpy:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16).copy()).view(torch.bfloat16)
    if not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, copy=True, order="C")
    return torch.from_numpy(a)


# -- the per-node context ---------------------------------------------------------------------
class Missing:
    """An output of a node that its converter does not produce (e.g. max_pool's indices)."""

    def __init__(self, node: torch.fx.Node, why: str):
        self.node, self.why = node, why


@dataclass
class TorchContext:
    """What a converter sees of the FX node it converts."""

    importer: FxImporter
    node: torch.fx.Node
    args: dict[str, Any]
    b: Builder

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op_name(self) -> str:
        return op_label(self.node.target)

    def arg(self, name: str, default: Any = None) -> Any:
        v = self.args.get(name, default)
        return default if v is None else v

    def has(self, name: str) -> bool:
        return self.args.get(name) is not None

    # meta information recorded by torch.export (FakeTensors)
    @property
    def out_meta(self) -> Any:
        return self.node.meta.get("val")

    @property
    def out_dtype(self) -> DType:
        v = self.out_meta
        if isinstance(v, (tuple, list)):
            v = v[0]
        return gx_dtype(v.dtype)

    def meta(self, name: str) -> Any:
        """The FakeTensor (or list of them) that argument ``name`` had at trace time."""
        schema_args = _schema_args(self.node)
        raw = schema_args.get(name)
        if isinstance(raw, torch.fx.Node):
            return raw.meta.get("val")
        if isinstance(raw, (list, tuple)):
            return [r.meta.get("val") if isinstance(r, torch.fx.Node) else r for r in raw]
        return raw

    def shape_of(self, name: str) -> tuple:
        """The (galaxir) shape argument ``name`` had at trace time: ints and symbols."""
        return self.importer.dims(self.meta(name).shape)

    def rank(self, name: str) -> int:
        return len(self.meta(name).shape)

    # building
    def op(self, name: str, *operands: Value | None, num_results: int | None = None, **attrs):
        return self.b.op(name, *operands, num_results=num_results, **attrs)

    def constant(self, value: Any, dtype: Any = None) -> Value:
        if isinstance(dtype, DType):
            dtype = dtype.numpy
        return self.b.op("constant", value=np.asarray(value, dtype=dtype))

    def i64(self, values: Sequence[int] | int) -> Value:
        return self.constant(np.asarray(values, dtype=np.int64))

    def tensor(self, x: Any, dtype: DType | None = None) -> Value:
        """``x`` as a tensor Value of ``dtype``: Values are cast, scalars become constants."""
        if isinstance(x, Value):
            if dtype is not None and isinstance(x.type, TensorType) and x.type.dtype != dtype:
                return self.op("cast", x, to=dtype)
            return x
        if isinstance(x, torch.Tensor):
            x = to_numpy(x)
        if dtype is None:
            arr = np.asarray(x)
            dtype = DType.from_numpy(arr.dtype) if arr.dtype != np.float64 else DType.float32
        return self.constant(np.asarray(x).astype(dtype.numpy))

    def static(self, v: Any) -> np.ndarray | None:
        """The value of a constant Value (or a Python scalar) as numpy, else None."""
        if isinstance(v, Value):
            p = v.producer
            return p.attrs["value"] if p is not None and p.name == "constant" else None
        if isinstance(v, (int, float, bool)):
            return np.asarray(v)
        return None

    def shape_value(self, dims: Sequence[Any]) -> Value:
        """A 1-D int64 tensor from ints and symbolic-int Values."""
        if all(not isinstance(d, Value) for d in dims):
            return self.i64([int(d) for d in dims])
        parts, run = [], []
        for d in dims:
            if isinstance(d, Value):
                if run:
                    parts.append(self.i64(run))
                    run = []
                d = self.tensor(d, DType.int64)
                parts.append(self.op("reshape", d, self.i64([1])))
            else:
                run.append(int(d))
        if run:
            parts.append(self.i64(run))
        return parts[0] if len(parts) == 1 else self.op("concat", *parts, axis=0)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"torch node '{self.node.name}' ({self.op_name}): {why}")


def op_label(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._schema.name.split('::')[-1]}.{target._overloadname}" \
            if target._schema.name.startswith("aten::") else str(target)
    return getattr(target, "__qualname__", None) or str(target)


def _schema_args(node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in (raw FX objects)."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return {f"arg{i}": a for i, a in enumerate(node.args)} | dict(node.kwargs)
    out: dict[str, Any] = {}
    for i, a in enumerate(target._schema.arguments):
        if i < len(node.args) and not a.kwarg_only:
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            out[a.name] = None
    return out


# -- Python functions on symbolic ints (shape arithmetic in dynamic graphs) ------------------
def _sym_binary(gx_name: str):
    def convert(ctx: TorchContext):
        a, b = ctx.args["arg0"], ctx.args["arg1"]
        if not isinstance(a, Value) and not isinstance(b, Value):
            return PY_OPS[gx_name](a, b)
        return ctx.op(gx_name, ctx.tensor(a, DType.int64), ctx.tensor(b, DType.int64))
    return convert


PY_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.floordiv}


def _getitem(ctx: TorchContext):
    seq, i = ctx.args["arg0"], ctx.args["arg1"]
    return seq[i]


def _floordiv(ctx: TorchContext):
    a, b = ctx.args["arg0"], ctx.args["arg1"]
    if not isinstance(a, Value) and not isinstance(b, Value):
        return a // b
    a, b = ctx.tensor(a, DType.int64), ctx.tensor(b, DType.int64)
    # floor division from truncating division: subtract 1 where signs differ and a % b != 0
    return ctx.op("div", ctx.op("sub", a, ctx.op("mod", a, b)), b)


def _neg(ctx: TorchContext):
    a = ctx.args["arg0"]
    return -a if not isinstance(a, Value) else ctx.op("neg", a)


PY_FUNCTIONS: dict[Any, Converter] = {
    operator.getitem: _getitem,
    operator.add: _sym_binary("add"), operator.sub: _sym_binary("sub"),
    operator.mul: _sym_binary("mul"), operator.floordiv: _floordiv, operator.neg: _neg,
}


# -- the importer ---------------------------------------------------------------------------
@dataclass
class ImportInfo:
    """What the torch.compile backend needs besides the module: how to call and unflatten."""

    module: Module
    tensor_inputs: list[int] = field(default_factory=list)  # positions of tensor user inputs
    out_spec: Any = None  # torch's pytree spec of the user outputs
    num_outputs: int = 0  # user outputs, graph outputs and constants (None, ints) together
    constant_outputs: dict[int, Any] = field(default_factory=dict)  # position -> value


class FxImporter:
    def __init__(self, ep: ExportedProgram, dim_names: dict[str, str]):
        self.ep = ep
        self.dim_names = dim_names
        self.env: dict[torch.fx.Node, Any] = {}

    # symbolic dims
    def dim(self, d: Any) -> Any:
        if isinstance(d, int):
            return d
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            if getattr(expr, "is_number", False):
                return int(expr)
            if getattr(expr, "is_Symbol", False):
                return self.dim_names.get(str(expr), str(expr))
        return UNKNOWN

    def dims(self, shape: Sequence[Any]) -> tuple:
        return tuple(self.dim(d) for d in shape)

    def bounds(self, symbols: set[str]) -> dict[str, tuple[int, int | None]]:
        """``torch.export``'s value ranges of the symbols the inputs use, by galaxir name
        (an infinite upper end: None)."""
        out: dict[str, tuple[int, int | None]] = {}
        for sym, vr in (getattr(self.ep, "range_constraints", None) or {}).items():
            name = self.dim_names.get(str(sym), str(sym))
            if name not in symbols:
                continue
            lo, hi = finite_int(vr.lower), finite_int(vr.upper)
            out[name] = (max(lo or 0, 0), hi)
        return out

    def meta_type(self, val: Any) -> TensorType | None:
        if isinstance(val, torch.Tensor):
            return TensorType(gx_dtype(val.dtype), self.dims(val.shape))
        return None

    def run(self) -> ImportInfo:
        ep, sig = self.ep, self.ep.graph_signature
        gb = GraphBuilder()
        params = dict(sig.inputs_to_parameters)
        buffers = dict(sig.inputs_to_buffers)
        consts = dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        user_inputs = list(sig.user_inputs)
        tensor_inputs: list[int] = []
        constant_outputs: dict[int, Any] = {}
        position = 0
        state = ep.state_dict
        for node in ep.graph.nodes:
            if node.op == "placeholder":
                name = node.target if isinstance(node.target, str) else node.name
                if name in params or name in buffers or name in consts:
                    key = params.get(name) or buffers.get(name) or consts.get(name)
                    t = state[key] if key in state else ep.constants[key]
                    b = Builder(gb.graph.block, provenance=(key,))
                    v = b.op("constant", value=to_numpy(t))
                    v.name = node.name
                    self.env[node] = v
                    continue
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor):
                    tensor_inputs.append(user_inputs.index(name) if name in user_inputs else len(tensor_inputs))
                    self.env[node] = gb.input(node.name, self.meta_type(val))
                elif isinstance(val, torch.SymInt):
                    raise ModelImportError(f"input '{node.name}' is a symbolic int; galaxir graphs "
                                           "take tensors (pass it as a tensor or leave it static)")
                else:
                    self.env[node] = val  # a Python scalar the program was specialized for
            elif node.op == "call_function":
                self.convert(node, gb)
            elif node.op == "output":
                outs = node.args[0]
                used: set[str] = set()
                position = 0
                for spec, o in zip(sig.output_specs, outs):
                    if spec.kind.name != "USER_OUTPUT":
                        continue
                    v = self.lookup(o, node)
                    if not isinstance(v, Value):  # None or a Python scalar: not a graph output
                        constant_outputs[position] = v
                        position += 1
                        continue
                    name = o.name if isinstance(o, torch.fx.Node) else f"output_{position}"
                    if name in used or name in {i.name for i in gb.graph.inputs}:
                        name = f"output_{position}"
                    used.add(name)
                    gb.output(v, name)
                    position += 1
            elif node.op == "get_attr":
                t = getattr(ep.graph_module, node.target)
                if not isinstance(t, torch.Tensor):
                    raise UnsupportedOpError(f"torch node '{node.name}': get_attr of a "
                                             f"{type(t).__name__} is not supported")
                v = Builder(gb.graph.block, provenance=(node.name,)).op("constant", value=to_numpy(t))
                self.env[node] = v
        meta = {"producer": "torch.export", "torch_version": torch.__version__}
        module = gb.module(meta)
        set_dim_bounds(module, self.bounds(input_symbols(module)))
        module.verify()
        return ImportInfo(module, tensor_inputs, ep.call_spec.out_spec, position, constant_outputs)

    def lookup(self, a: Any, user: torch.fx.Node) -> Any:
        if isinstance(a, torch.fx.Node):
            v = self.env.get(a)
            if isinstance(v, Missing):
                raise UnsupportedOpError(f"torch node '{a.name}' is used by '{user.name}', but galaxir "
                                         f"cannot produce it: {v.why}")
            if a not in self.env:
                raise ModelImportError(f"torch node '{user.name}' reads '{a.name}', which is not defined")
            return v
        if isinstance(a, (list, tuple)):
            return type(a)(self.lookup(x, user) for x in a)
        if isinstance(a, torch.Tensor):
            return to_numpy(a)
        return a

    def convert(self, node: torch.fx.Node, gb: GraphBuilder) -> None:
        target = node.target
        val = node.meta.get("val")
        # a scalar the tracer already knows (a specialized symbolic int) needs no ops
        if isinstance(val, (int, float, bool)) and not isinstance(val, torch.SymInt) and \
                target is not operator.getitem:
            self.env[node] = val
            return
        if isinstance(val, torch.SymInt) and isinstance(self.dim(val), int):
            self.env[node] = self.dim(val)
            return
        if isinstance(target, torch._ops.OpOverload) and \
                target._schema.name.split("::")[-1] in _SKIP:
            self.env[node] = None
            return
        if target is operator.getitem:
            seq = self.env.get(node.args[0])
            if isinstance(seq, Missing):
                self.env[node] = seq
                return
            item = seq[node.args[1]] if isinstance(seq, (tuple, list)) else None
            self.env[node] = item if item is not None else Missing(
                node, f"output {node.args[1]} of '{node.args[0].name}' is not supported")
            return
        fn = get_converter(target)
        if fn is None:
            raise UnsupportedOpError(
                f"torch node '{node.name}': op {op_label(target)} is not supported by galaxir's "
                "torch frontend")
        raw = _schema_args(node)
        args = {k: self.lookup(v, node) for k, v in raw.items()}
        b = Builder(gb.graph.block, provenance=(node.name,))
        ctx = TorchContext(self, node, args, b)
        try:
            out = fn(ctx)
        except GalaxirError as e:
            if node.name in str(e):
                raise
            raise type(e)(f"torch node '{node.name}' ({op_label(target)}): {e}") from e
        except Exception as e:
            raise ModelImportError(f"torch node '{node.name}' ({op_label(target)}): conversion "
                                   f"failed: {type(e).__name__}: {e}") from e
        self.env[node] = self._finish(node, out, b)

    def _finish(self, node: torch.fx.Node, out: Any, b: Builder) -> Any:
        """Name results, give them the precise (symbolic) types torch recorded, fix dtypes."""
        val = node.meta.get("val")
        if isinstance(out, Value):
            return self._refine(node, out, val, b, node.name)
        if isinstance(out, (tuple, list)) and isinstance(val, (tuple, list)):
            return tuple(self._refine(node, o, m, b, f"{node.name}_{i}") if isinstance(o, Value) else o
                         for i, (o, m) in enumerate(zip(out, val)))
        return out

    def _refine(self, node, v: Value, meta: Any, b: Builder, name: str) -> Value:
        want = self.meta_type(meta)
        if want is None or not isinstance(v.type, TensorType):
            return v
        if v.type.dtype != want.dtype:
            v = b.op("cast", v, to=want.dtype)
        ours = v.producer is not None and v.producer.provenance == (node.name,)
        if ours:
            if types_compatible(want, v.type):
                v.type = refine(v.type, want)
            if v.name is None:
                v.name = name
        return v


def finite_int(x: Any) -> int | None:
    """A sympy/torch range end as an int; None for (minus) infinity."""
    if isinstance(x, int) or getattr(x, "is_Integer", False):
        return int(x)
    return None  # int_oo, -int_oo, oo


# -- entry point ---------------------------------------------------------------------------
def _dim_names(model: Any, args: Sequence[Any], dynamic_shapes: Any,
               ep: ExportedProgram) -> dict[str, str]:
    """Map torch's symbols (s0, s77...) to the names of the user's ``torch.export.Dim``s."""
    if dynamic_shapes is None:
        return {}
    specs: list[Any]
    if isinstance(dynamic_shapes, dict):
        try:
            fwd = model.forward if isinstance(model, torch.nn.Module) else model
            names = [p for p in inspect.signature(fwd).parameters]
        except (TypeError, ValueError):
            names = list(dynamic_shapes)
        specs = [dynamic_shapes.get(n) for n in names[:len(args)]]
    else:
        specs = list(dynamic_shapes)
    sig = ep.graph_signature
    user = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    out: dict[str, str] = {}
    for name, spec in zip(sig.user_inputs, specs):
        node = user.get(name)
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor) or spec is None:
            continue
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        for i, d in items:
            dname = getattr(d, "__name__", None)
            if dname is None or i >= val.dim() or not isinstance(val.shape[i], torch.SymInt):
                continue
            expr = val.shape[i].node.expr
            if getattr(expr, "is_Symbol", False):
                out[str(expr)] = dname
    return out


def export(model: Any, example_inputs: Any = None, dynamic_shapes: Any = None,
           example_kwargs: dict | None = None, strict: bool = False) -> ExportedProgram:
    """``torch.export.export`` in inference mode (eval, no grad), decomposed to core ATen
    except the ops galaxir keeps whole (see ``KEEP``)."""
    if isinstance(model, ExportedProgram):
        ep = model
    else:
        if example_inputs is None:
            raise ModelImportError("importing a torch module needs example_inputs=(tensor, ...) "
                                   "to trace it")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        was_training = getattr(model, "training", False)
        if isinstance(model, torch.nn.Module):
            model.eval()
        try:
            with torch.no_grad():
                ep = torch.export.export(model, tuple(example_inputs), kwargs=example_kwargs,
                                         dynamic_shapes=dynamic_shapes, strict=strict)
        except GalaxirError:
            raise
        except Exception as e:
            raise ModelImportError(f"torch.export could not trace {type(model).__name__}: "
                                   f"{type(e).__name__}: {e}") from e
        finally:
            if isinstance(model, torch.nn.Module) and was_training:
                model.train()
        return _decompose(ep)
    if all(get_converter(n.target) is not None or _skipped(n.target)
           for n in ep.graph.nodes if n.op == "call_function"):
        return ep  # already in ops galaxir converts: decomposing again only costs time
    return _decompose(ep)


def _skipped(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and \
        target._schema.name.split("::")[-1] in _SKIP


def _decompose(ep: ExportedProgram) -> ExportedProgram:
    table = torch.export.default_decompositions()
    for name in KEEP:
        packet, overload = name.split(".")
        op = getattr(getattr(aten, packet, None), overload, None)
        if op is not None:
            table.pop(op, None)
    try:
        return ep.run_decompositions(table)
    except Exception as e:
        raise ModelImportError(f"torch.export decomposition failed: {type(e).__name__}: {e}") from e


def import_exported(ep: ExportedProgram, dim_names: dict[str, str] | None = None) -> ImportInfo:
    return FxImporter(ep, dim_names or {}).run()


def import_torch(model: Any, example_inputs: Any = None, dynamic_shapes: Any = None, *,
                 example_kwargs: dict | None = None, strict: bool = False,
                 dim_names: dict[str, str] | None = None) -> Module:
    """A galaxir Module from a ``torch.nn.Module`` (traced with ``example_inputs``) or a
    ``torch.export.ExportedProgram``.

    ``dynamic_shapes`` is passed to ``torch.export.export``; the ``torch.export.Dim``s it
    names become galaxir symbolic dims of the same name (``Dim("batch")`` -> ``"batch"``).
    ``dim_names`` maps torch's own symbols (``"s0"``) to names, for exported programs.
    """
    ep = export(model, example_inputs, dynamic_shapes, example_kwargs, strict)
    names = dict(dim_names or {})
    if example_inputs is not None and not isinstance(model, ExportedProgram):
        args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        names = {**_dim_names(model, args, dynamic_shapes, ep), **names}
    return import_exported(ep, names).module
