"""TensorFlow graphs to galaxir modules.

A Keras model, a ``tf.function`` / ``tf.Module`` with an input signature, or a SavedModel
folder is first turned into one concrete function; its variables are frozen into
constants (``convert_variables_to_constants_v2``, keeping ``While``/``If`` as functional
ops), and the frozen ``tf.Graph`` is converted op by op.

Each TF op type has a converter ``fn(ctx) -> Value | list[Value]`` registered with
``@converter("OpType", ...)`` (see ``ops/``); ``ctx.inputs`` are the op's data inputs as
galaxir Values, ``ctx.attr(name)`` reads a TF attribute, ``ctx.static(i)`` the value of
a constant input.  Images stay NHWC: convs and pools get ``layout="NHWC"``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import GalaxirError, ModelImportError, UnsupportedOpError
from ...ir import Builder, GraphBuilder, Module, Value
from ...ir.types import DType, TensorType
from ..registry import ConverterTable

Converter = Callable[["TfContext"], Any]
#: converters of TF op types; ``@converter`` registers one
CONVERTERS = ConverterTable(__package__ + ".ops")
converter = CONVERTERS.register

#: ops that compute nothing for inference (control edges, asserts)
SKIPPED = {"NoOp", "Assert", "PrintV2", "Print"}


def converters() -> dict[str, Converter]:
    return CONVERTERS.loaded()


_DTYPES = {"float32": DType.float32, "float64": DType.float64, "float16": DType.float16,
           "bfloat16": DType.bfloat16, "int64": DType.int64, "int32": DType.int32,
           "int16": DType.int16, "int8": DType.int8, "uint8": DType.uint8, "bool": DType.bool}


def gx_dtype(tf_dtype: Any) -> DType:
    try:
        return _DTYPES[tf_dtype.name]
    except KeyError:
        raise UnsupportedOpError(f"TF dtype {tf_dtype.name} has no galaxir equivalent") from None


@dataclass
class TfContext:
    """What a converter sees of the TF op it converts."""

    importer: "GraphConverter"
    tf_op: Any
    inputs: list[Value | Any]
    b: Builder

    @property
    def name(self) -> str:
        return self.tf_op.name

    @property
    def type(self) -> str:
        return self.tf_op.type

    def attr(self, name: str, default: Any = None) -> Any:
        try:
            v = self.tf_op.get_attr(name)
        except ValueError:
            return default
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, list):
            return [x.decode() if isinstance(x, bytes) else x for x in v]
        return v

    def dims(self, t: Any) -> list | None:
        """The shape of TF tensor ``t`` as galaxir knows it (ints, symbol names, "?" for an
        unknown dim), which may be more precise than TF's own (shapes are lost through
        function calls); None when the rank is unknown."""
        v = self.importer.env.get(t.name)
        shape = v.type.shape if isinstance(v, Value) and isinstance(v.type, TensorType) else None
        if shape is None:
            if t.shape.rank is None:
                return None
            return [d if d is not None else "?" for d in t.shape.as_list()]
        return [d if isinstance(d, (int, str)) else "?" for d in shape]

    def out_dtype(self, i: int = 0) -> DType:
        return gx_dtype(self.tf_op.outputs[i].dtype)

    def op(self, name: str, *operands: Value | None, num_results: int | None = None, **attrs):
        return self.b.op(name, *operands, num_results=num_results, **attrs)

    def const(self, value: Any, dtype: Any = None) -> Value:
        return self.b.op("constant", value=np.asarray(value, dtype=dtype))

    def i64(self, values: Any) -> Value:
        return self.const(np.asarray(values, dtype=np.int64))

    def static(self, i: int) -> np.ndarray | None:
        """Input i's value when it is a constant, else None."""
        v = self.inputs[i]
        if isinstance(v, Value):
            p = v.producer
            return p.attrs["value"] if p is not None and p.name == "constant" else None
        return None

    def need_static(self, i: int, what: str) -> np.ndarray:
        v = self.static(i)
        if v is None:
            raise self.unsupported(f"{what} (input {i}) must be a constant")
        return v

    def int64(self, v: Value) -> Value:
        return v if v.type.dtype == DType.int64 else self.op("cast", v, to=DType.int64)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"TF node '{self.name}' ({self.type}): {why}")


class GraphConverter:
    """Converts one frozen tf.Graph (the main graph or a function body) into a galaxir block."""

    def __init__(self, library: FunctionLibrary, dim_names: dict | None = None):
        self.library = library
        self.dim_names = dim_names or {}
        self.env: dict[str, Any] = {}  # the tensors of the graph being converted

    def convert_ops(self, ops: list, env: dict[str, Any], b_block, skip: set[str],
                    folded: dict[str, np.ndarray] | None = None) -> None:
        table = converters()
        folded = folded or {}
        outer, self.env = self.env, env
        for tf_op in ops:
            if tf_op.name in skip or tf_op.type in SKIPPED:
                continue
            if tf_op.outputs and all(t.name in folded for t in tf_op.outputs):
                b = Builder(b_block, provenance=(tf_op.name,))
                for t in tf_op.outputs:
                    env[t.name] = v = b.op("constant", value=folded[t.name])
                    v.name = t.name.replace(":0", "").replace(":", "_")
                continue
            fn = table[tf_op.type]
            inputs = []
            for t in tf_op.inputs:
                if t.name not in env:
                    raise ModelImportError(f"TF node '{tf_op.name}' reads '{t.name}', which is "
                                           "not defined")
                inputs.append(env[t.name])
            b = Builder(b_block, provenance=(tf_op.name,))
            ctx = TfContext(self, tf_op, inputs, b)
            try:
                out = fn(ctx)
            except GalaxirError as e:
                if tf_op.name in str(e):
                    raise
                raise type(e)(f"TF node '{tf_op.name}' ({tf_op.type}): {e}") from e
            except Exception as e:
                raise ModelImportError(f"TF node '{tf_op.name}' ({tf_op.type}): conversion "
                                       f"failed: {type(e).__name__}: {e}") from e
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            if len(outs) < len(tf_op.outputs):
                outs += [None] * (len(tf_op.outputs) - len(outs))
            for t, v in zip(tf_op.outputs, outs):
                if isinstance(v, Value) and v.name is None and v.producer is not None and \
                        v.producer.provenance == (tf_op.name,):
                    v.name = t.name.replace(":0", "").replace(":", "_")
                env[t.name] = v
        self.env = outer


class FunctionLibrary:
    """The TF functions a frozen graph calls (While/If bodies, PartitionedCall), by name,
    each turned into a graph once."""

    def __init__(self, graph: Any):
        self.defs = {f.signature.name: f for f in graph.as_graph_def().library.function}
        self.graphs: dict[str, Any] = {}

    def graph(self, name: str) -> Any:
        if name not in self.graphs:
            from tensorflow.python.framework import function_def_to_graph
            fdef = self.defs.get(name)
            if fdef is None:
                raise ModelImportError(f"TF function '{name}' is not in the graph's library")
            try:
                self.graphs[name] = function_def_to_graph.function_def_to_graph(fdef)
            except Exception as e:
                raise ModelImportError(f"TF function '{name}' cannot be read: "
                                       f"{type(e).__name__}: {e}") from e
        return self.graphs[name]

    def called(self, op: Any) -> list[Any]:
        """The function graphs a functional op (While, If, PartitionedCall) calls."""
        out = []
        for key in ("body", "cond", "then_branch", "else_branch", "f"):
            try:
                fa = op.get_attr(key)
            except ValueError:
                continue
            if hasattr(fa, "name"):
                out.append(self.graph(fa.name))
        return out

    def all_ops(self, graph: Any, seen: set | None = None):
        seen = set() if seen is None else seen
        for op in graph.get_operations():
            yield op
            for fg in self.called(op):
                if id(fg) not in seen:
                    seen.add(id(fg))
                    yield from self.all_ops(fg, seen)


def unsupported_ops(graph: Any, library: FunctionLibrary) -> list[str]:
    """'node (OpType)' for every op of ``graph`` and its functions with no converter."""
    table = converters()
    return [f"'{op.name}' ({op.type})" for op in library.all_ops(graph)
            if op.type not in table and op.type not in SKIPPED and op.type != "Placeholder"]


def convert_function(ctx: "TfContext", fname: str, inputs: list, block: Any) -> list:
    """Convert TF function ``fname`` into ``block`` with its arguments bound to ``inputs``;
    its results as Values."""
    conv = ctx.importer
    fg = conv.library.graph(fname)
    if len(fg.inputs) != len(inputs):
        raise ctx.unsupported(f"function '{fname}' takes {len(fg.inputs)} inputs, got {len(inputs)}")
    env = {t.name: v for t, v in zip(fg.inputs, inputs)}
    skip = {t.op.name for t in fg.inputs}
    conv.convert_ops(fg.get_operations(), env, block, skip)
    outs = []
    for t in fg.outputs:
        if t.name not in env:
            raise ctx.unsupported(f"function '{fname}' output '{t.name}' was not converted")
        outs.append(env[t.name])
    return outs


# -- constant folding -----------------------------------------------------------------------
#: fold results up to this many elements (shape arithmetic, batch-norm factors), not weights
FOLD_MAX_ELEMENTS = 1 << 16
_NO_FOLD = {"Placeholder", "Const", "While", "StatelessWhile", "If", "StatelessIf",
            "PartitionedCall", "StatefulPartitionedCall", "NoOp"}


def fold_constants(graph: Any) -> dict[str, np.ndarray]:
    """Values of the small tensors of ``graph`` computable without its inputs, computed by
    TensorFlow itself in one session run: the shape arithmetic Keras and tf.tensordot emit
    (``tf.shape`` of a static shape, concatenated permutations) and batch-norm factors
    become constants, as TF's own optimizer would make them, so converters see them."""
    import tensorflow as tf
    known: set[str] = set()  # tensors computable from constants
    feeds: dict[str, np.ndarray] = {}
    fetch: list[str] = []
    for op in graph.get_operations():
        if op.type == "Const":
            known.update(t.name for t in op.outputs)
            continue
        if op.type in ("Shape", "Size", "Rank") and op.inputs[0].shape.is_fully_defined():
            dims = np.asarray(op.inputs[0].shape.as_list(), dtype=np.int64)
            value = {"Shape": dims, "Size": np.prod(dims), "Rank": len(dims)}[op.type]
            feeds[op.outputs[0].name] = np.asarray(value, dtype=op.outputs[0].dtype.as_numpy_dtype)
            known.add(op.outputs[0].name)
            fetch.append(op.outputs[0].name)
            continue
        if op.type in _NO_FOLD or op.op_def.is_stateful or not op.outputs or \
                any(t.name not in known for t in op.inputs) or \
                any(t.dtype in (tf.string, tf.resource, tf.variant) for t in op.outputs):
            continue
        if any(t.shape.num_elements() is None or t.shape.num_elements() > FOLD_MAX_ELEMENTS
               for t in op.outputs):
            continue
        known.update(t.name for t in op.outputs)
        fetch.extend(t.name for t in op.outputs)
    if not fetch:
        return {}
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(graph.as_graph_def(), name="")
    try:
        with tf.compat.v1.Session(graph=g) as sess:
            values = sess.run(fetch, feed_dict={g.get_tensor_by_name(k): v for k, v in feeds.items()})
    except Exception as e:
        raise ModelImportError(f"TensorFlow could not evaluate the graph's constant parts: "
                               f"{type(e).__name__}: {e}") from e
    return {name: np.asarray(v) for name, v in zip(fetch, values)}


# -- loading ------------------------------------------------------------------------------
def _specs_of_keras(model: Any) -> list:
    import tensorflow as tf
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ModelImportError("a Keras model without defined inputs (a subclassed model that "
                               "was never built/called): pass input_signature=[tf.TensorSpec...]")
    return [tf.TensorSpec(i.shape, i.dtype, name=getattr(i, "name", None)) for i in inputs]


#: SavedModel objects kept alive while their functions are imported
_OWNERS: dict[int, Any] = {}


def concrete_function(source: Any, input_signature: Any = None) -> Any:
    """One ConcreteFunction for a Keras model, tf.function, tf.Module or SavedModel dir."""
    import tensorflow as tf
    from tensorflow.python.eager.polymorphic_function.concrete_function import ConcreteFunction
    if isinstance(source, ConcreteFunction):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ModelImportError(f"'{path}' is not a SavedModel folder (no saved_model.pb)")
        try:
            loaded = tf.saved_model.load(path)
        except Exception as e:
            raise ModelImportError(f"cannot load the SavedModel '{path}': {type(e).__name__}: "
                                   f"{e}") from e
        sigs = getattr(loaded, "signatures", {})
        if "serving_default" in sigs:
            fn = sigs["serving_default"]
        elif sigs:
            fn = next(iter(sigs.values()))
        else:
            fn = concrete_function(loaded, input_signature)
        _OWNERS[id(fn)] = loaded  # its variables live as long as the loaded object
        return fn
    keras = _keras()
    if keras is not None and isinstance(source, keras.Model):
        specs = input_signature or _specs_of_keras(source)
        nested = specs if len(specs) > 1 else specs[0]
        if len(source.inputs or []) > 1:
            nested = list(specs)

        @tf.function
        def call(x):
            return source(x, training=False)
        return call.get_concrete_function(nested)
    if hasattr(source, "get_concrete_function"):  # a tf.function
        try:
            if input_signature is not None:
                return source.get_concrete_function(*input_signature)
            return source.get_concrete_function()
        except Exception as e:
            raise ModelImportError(f"cannot trace the tf.function: it needs an input signature "
                                   f"(tf.function(input_signature=...) or input_signature=): "
                                   f"{type(e).__name__}: {e}") from e
    if isinstance(source, tf.Module):
        sigs = getattr(source, "signatures", None) or {}
        if sigs:
            return next(iter(sigs.values()))
        call = getattr(source, "__call__", None)
        if call is not None and hasattr(call, "get_concrete_function"):
            return concrete_function(call, input_signature)
        raise ModelImportError("a tf.Module is imported through its __call__, which must be a "
                               "tf.function with an input_signature")
    raise ModelImportError(f"cannot import a {type(source).__name__} as a TensorFlow model")


def _keras():
    try:
        import keras
        return keras
    except ImportError:
        return None


def freeze(fn: Any) -> Any:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    try:
        return convert_variables_to_constants_v2(fn, lower_control_flow=False)
    except Exception as e:
        raise ModelImportError(f"cannot freeze the TF function's variables: {type(e).__name__}: "
                               f"{e}") from e


def _input_type(t: Any, index: int, dim_names: dict) -> TensorType:
    dims = []
    shape = t.shape
    if shape.rank is None:
        return TensorType(gx_dtype(t.dtype), None)
    for i, d in enumerate(shape.as_list()):
        if d is None:
            d = dim_names.get((index, i)) or ("batch" if i == 0 else f"in{index}_d{i}")
        dims.append(d)
    return TensorType(gx_dtype(t.dtype), tuple(dims))


def _output_names(fn: Any, frozen: Any) -> list[str]:
    import tensorflow as tf
    so = fn.structured_outputs
    if isinstance(so, dict):
        return [str(k) for k in sorted(so)] if len(so) == len(frozen.outputs) else []
    flat = tf.nest.flatten(so)
    if len(flat) == len(frozen.outputs) and len(flat) > 1:
        return [f"output_{i}" for i in range(len(flat))]
    return ["output"] if len(flat) == 1 else []


def import_tf(source: Any, input_signature: Any = None, dim_names: dict | None = None) -> Module:
    """A galaxir Module from a ``keras.Model``, a ``tf.function`` / ``tf.Module`` with an
    input signature, a ConcreteFunction or a SavedModel folder.

    Unknown dims (None) become symbolic dims: ``"batch"`` for the first, else
    ``in{i}_d{k}``; ``dim_names={(input, axis): "name"}`` names them."""
    import tensorflow as tf
    fn = concrete_function(source, input_signature)
    try:
        frozen = freeze(fn)
    finally:
        _OWNERS.pop(id(fn), None)
    graph = frozen.graph
    library = FunctionLibrary(graph)
    missing = unsupported_ops(graph, library)
    if missing:
        raise UnsupportedOpError(f"{len(missing)} TF op(s) are not supported by galaxir's "
                                 f"TensorFlow frontend: {', '.join(missing)}")
    dim_names = dim_names or {}
    gb = GraphBuilder()
    env: dict[str, Any] = {}
    skip = set()
    for i, t in enumerate(frozen.inputs):
        if t.dtype == tf.resource:
            raise ModelImportError(f"input '{t.name}' is a resource (a variable left unfrozen)")
        name = t.name.split(":")[0]
        env[t.name] = gb.input(name, _input_type(t, i, dim_names))
        skip.add(t.op.name)
    folded = fold_constants(graph)
    GraphConverter(library, dim_names).convert_ops(graph.get_operations(), env, gb.graph.block,
                                                   skip, folded)
    names = _output_names(fn, frozen)
    used = set(gb.graph.input_names)
    for i, t in enumerate(frozen.outputs):
        v = env.get(t.name)
        if not isinstance(v, Value):
            raise ModelImportError(f"output {i} ('{t.name}') was not produced by the import")
        name = names[i] if i < len(names) else f"output_{i}"
        if name in used:
            name = f"output_{i}"
        used.add(name)
        if v in gb.graph.inputs or any(v is o for o in gb.graph.outputs):
            v = Builder(gb.graph.block).op("identity", v)
        gb.output(v, name)
    module = gb.module({"producer": "tensorflow", "source": "tensorflow",
                        "tf_version": tf.__version__})
    module.verify()
    return module
