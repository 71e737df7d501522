"""TensorFlow Lite flatbuffers to galaxir modules.

``reader.read_model`` turns the file into checked plain data; each TFLite builtin op then
has a converter ``fn(ctx) -> Value | list[Value]`` registered with ``@converter("CONV_2D")``
(see ``ops.py``).  Images stay NHWC (``layout="NHWC"`` convs and pools); fused activations
become the op after; float16 weights arrive through their DEQUANTIZE ops.

Quantized (int8/uint8/int16) tensors are carried as integers and each quantized op is
written as ``dequantize_linear -> float op -> quantize_linear`` with the tensors' own
scales and zero points, so the result is TFLite's within a rounding step, and a backend's
integer kernels can take the pattern over.
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
from .reader import ModelData, Operator, Subgraph, Tensor, read_model

Converter = Callable[["TfliteContext"], Any]
#: converters of TFLite builtin ops (``"CONV_2D"``...); ``@converter`` registers one
CONVERTERS = ConverterTable(__package__ + ".ops")
converter = CONVERTERS.register

#: file size galaxir reads (a flatbuffer cannot address more than 2 GiB plus its data)
MAX_FILE_BYTES = 1 << 34


def converters() -> dict[str, Converter]:
    return CONVERTERS.loaded()


@dataclass
class TfliteContext:
    """What a converter sees of the TFLite operator it converts."""

    importer: "SubgraphConverter"
    tfl: Operator
    b: Builder

    @property
    def name(self) -> str:
        outs = self.tfl.outputs
        return self.tensor(outs[0]).name if outs else f"op{self.tfl.index}"

    @property
    def options(self) -> Any:
        return self.tfl.options

    def tensor(self, index: int) -> Tensor:
        return self.importer.graph.tensors[index]

    def input_tensor(self, i: int) -> Tensor | None:
        idx = self.tfl.inputs[i] if i < len(self.tfl.inputs) else -1
        return None if idx < 0 else self.tensor(idx)

    def output_tensor(self, i: int = 0) -> Tensor:
        return self.tensor(self.tfl.outputs[i])

    def value(self, i: int) -> Value | None:
        """Input i as a Value as stored (quantized tensors stay integers)."""
        idx = self.tfl.inputs[i] if i < len(self.tfl.inputs) else -1
        return None if idx < 0 else self.importer.value(idx)

    def real(self, i: int) -> Value | None:
        """Input i as a float Value: quantized tensors dequantized with their parameters."""
        idx = self.tfl.inputs[i] if i < len(self.tfl.inputs) else -1
        return None if idx < 0 else self.importer.real(idx, self.b)

    def static(self, i: int) -> np.ndarray | None:
        t = self.input_tensor(i)
        if t is None:
            return None
        if t.data is not None:
            return t.data
        v = self.importer.env.get(t.index)
        p = v.producer if isinstance(v, Value) else None
        return p.attrs["value"] if p is not None and p.name == "constant" else None

    def need_static(self, i: int, what: str) -> np.ndarray:
        v = self.static(i)
        if v is None:
            raise self.unsupported(f"{what} (input {i}) must be a constant")
        return v

    def real_static(self, i: int) -> np.ndarray | None:
        """A constant input as float (dequantized with its parameters when quantized)."""
        t = self.input_tensor(i)
        v = self.static(i)
        if v is None or t is None:
            return None
        if has_real_value(t):
            return dequantize_array(v, t)
        return v.astype(np.float32) if v.dtype == np.float16 else v

    def op(self, name: str, *operands: Value | None, num_results: int | None = None, **attrs):
        return self.b.op(name, *operands, num_results=num_results, **attrs)

    def const(self, value: Any, dtype: Any = None) -> Value:
        return self.b.op("constant", value=np.asarray(value, dtype=dtype))

    def i64(self, values: Any) -> Value:
        return self.const(np.asarray(values, dtype=np.int64))

    def finish(self, y: Value, i: int = 0, activation: int = 0) -> Value:
        """The float result ``y`` of output i: its fused activation applied, quantized when
        the output tensor is."""
        return self.importer.finish(y, self.output_tensor(i), activation, self.b)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"TFLite operator {self.tfl.index} '{self.name}' "
                                  f"({self.tfl.code}): {why}")


def is_quantized(t: Tensor) -> bool:
    return t.quant is not None and t.type in (3, 7, 9)  # uint8, int16, int8 activations


def has_real_value(t: Tensor) -> bool:
    """Whether the tensor's integers stand for reals (activations, weights, int32 biases)."""
    return t.quant is not None and (is_quantized(t) or
                                    (t.data is not None and t.data.dtype.kind in "iu"))


def dequantize_array(v: np.ndarray, t: Tensor) -> np.ndarray:
    q = t.quant
    shape = [1] * v.ndim
    if q.scale.size > 1:
        if not 0 <= q.axis < v.ndim or v.shape[q.axis] != q.scale.size:
            raise ModelImportError(f"TFLite tensor '{t.name}': {q.scale.size} scales along "
                                   f"axis {q.axis} of shape {list(v.shape)}")
        shape[q.axis] = q.scale.size
    scale = q.scale.reshape(shape).astype(np.float64)
    zp = q.zero_point.reshape(shape)
    return ((v.astype(np.float64) - zp) * scale).astype(np.float32)


_ACT = {0: None, 1: "relu", 2: (-1.0, 1.0), 3: (0.0, 6.0), 4: "tanh", 5: "sign"}


def apply_activation(b: Builder, y: Value, act: int, where: str) -> Value:
    kind = _ACT.get(act, "?")
    if kind is None:
        return y
    if kind == "?":
        raise UnsupportedOpError(f"{where}: fused activation {act} is not supported")
    if isinstance(kind, tuple):
        dt = y.type.dtype.numpy
        return b.op("clip", y, b.op("constant", value=np.asarray(kind[0], dt)),
                    b.op("constant", value=np.asarray(kind[1], dt)))
    return b.op(kind, y)


class SubgraphConverter:
    def __init__(self, model: ModelData, graph: Subgraph, dim_names: dict | None = None):
        self.model = model
        self.graph = graph
        self.env: dict[int, Value] = {}
        self.dim_names = dim_names or {}
        self._real: dict[int, Value] = {}

    # values
    def value(self, index: int) -> Value:
        if index in self.env:
            return self.env[index]
        t = self.graph.tensors[index]
        if t.data is None:
            raise ModelImportError(f"TFLite tensor '{t.name}' is read before it is written")
        b = Builder(self.block, provenance=(t.name,))
        v = b.op("constant", value=t.data)
        v.name = _clean(t.name)
        self.env[index] = v
        return v

    def real(self, index: int, b: Builder) -> Value:
        t = self.graph.tensors[index]
        if not has_real_value(t):
            return self.value(index)
        if index in self._real:
            return self._real[index]
        if t.data is not None:  # quantized weights: dequantized once, as a constant
            v = Builder(self.block, provenance=(t.name,)).op(
                "constant", value=dequantize_array(t.data, t))
        else:
            v = dequantize(b, self.value(index), t)
        self._real[index] = v
        return v

    def finish(self, y: Value, t: Tensor, activation: int, b: Builder) -> Value:
        y = apply_activation(b, y, activation, f"TFLite tensor '{t.name}'")
        if is_quantized(t):
            return quantize(b, y, t)
        want = DType.from_numpy(t.dtype)
        if y.type.dtype != want:
            y = b.op("cast", y, to=want)
        return y

    def run(self, gb: GraphBuilder, names: dict[int, str]) -> None:
        self.block = gb.graph.block
        g = self.graph
        for i in g.inputs:
            t = g.tensors[i]
            self.env[i] = gb.input(names.get(i) or _clean(t.name), self.input_type(t))
        table = converters()
        for op in g.operators:
            fn = table[op.code]
            b = Builder(self.block, provenance=(self.tensor_name(op),))
            ctx = TfliteContext(self, op, b)
            try:
                out = fn(ctx)
            except UnsupportedOpError as e:
                if f"TFLite operator {op.index} " in str(e):
                    raise
                raise UnsupportedOpError(f"TFLite operator {op.index} '{ctx.name}' ({op.code}): "
                                         f"{e}") from e
            except GalaxirError as e:  # shapes or types that do not fit: a corrupt file
                raise ModelImportError(f"TFLite operator {op.index} '{ctx.name}' ({op.code}): "
                                       f"{e}") from e
            except Exception as e:  # a corrupt options table, an inconsistent shape...
                raise ModelImportError(f"TFLite operator {op.index} '{ctx.name}' ({op.code}): "
                                       f"conversion failed: {type(e).__name__}: {e}") from e
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            if len(outs) != len(op.outputs):
                raise ModelImportError(f"TFLite operator {op.index} ({op.code}) has "
                                       f"{len(op.outputs)} outputs, the converter made {len(outs)}")
            for idx, v in zip(op.outputs, outs):
                if v.name is None:
                    v.name = _clean(g.tensors[idx].name)
                self.env[idx] = v
        used = set(gb.graph.input_names)
        for k, i in enumerate(g.outputs):
            v = self.value(i)
            name = names.get(i) or _clean(g.tensors[i].name)
            if name in used:
                name = f"output_{k}"
            used.add(name)
            if v in gb.graph.inputs or any(v is o for o in gb.graph.outputs):
                v = Builder(self.block).op("identity", v)
            gb.output(v, name)

    def tensor_name(self, op: Operator) -> str:
        return self.graph.tensors[op.outputs[0]].name if op.outputs else f"op{op.index}"

    def input_type(self, t: Tensor) -> TensorType:
        dims = []
        for i, (d, s) in enumerate(zip(t.shape, t.signature)):
            if s < 0:
                dims.append(self.dim_names.get((t.name, i)) or ("batch" if i == 0 else f"{_clean(t.name)}_d{i}"))
            else:
                dims.append(int(d))
        return TensorType(DType.from_numpy(t.dtype), tuple(dims))


def dequantize(b: Builder, x: Value, t: Tensor) -> Value:
    q = t.quant
    axis = q.axis if q.scale.size > 1 else 1
    scale = q.scale if q.scale.size > 1 else q.scale.reshape(())
    zp = q.zero_point.astype(t.dtype)
    zp = zp if q.scale.size > 1 else zp.reshape(())
    return b.op("dequantize_linear", x, b.op("constant", value=scale), b.op("constant", value=zp),
                axis=int(axis))


def quantize(b: Builder, y: Value, t: Tensor) -> Value:
    q = t.quant
    if q.scale.size != 1:
        raise UnsupportedOpError(f"TFLite tensor '{t.name}': per-channel quantized activations")
    scale = b.op("constant", value=q.scale.reshape(()))
    zp = b.op("constant", value=q.zero_point.astype(t.dtype).reshape(()))
    return b.op("quantize_linear", y, scale, zp)


def _clean(name: str) -> str:
    return name.split(";")[0].replace(":0", "") or "t"


def unsupported_ops(model: ModelData, graph: Subgraph) -> list[str]:
    table = converters()
    return [f"operator {op.index} '{graph.tensors[op.outputs[0]].name if op.outputs else ''}' "
            f"({op.code})" for op in graph.operators if op.code not in table]


def import_tflite(source: Any, signature: str | None = None, subgraph: int | None = None,
                  dim_names: dict | None = None) -> Module:
    """A galaxir Module from a .tflite path or its bytes.

    The first signature's subgraph (else subgraph 0) is imported; ``signature=`` or
    ``subgraph=`` pick another.  Inputs and outputs take the signature's names.  Dims
    that the file marks dynamic (-1 in the shape signature) become symbolic: ``"batch"``
    for the first."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ModelImportError(f"no such file: '{path}'")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ModelImportError(f"'{path}' is larger than a TensorFlow Lite file can be")
        with open(path, "rb") as f:
            buf = f.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        buf = bytes(source)
    else:
        raise ModelImportError(f"import_tflite reads a path or bytes, not a {type(source).__name__}")
    model = read_model(buf)
    names: dict[int, str] = {}
    index = 0
    if signature is not None:
        if signature not in model.signatures:
            raise ModelImportError(f"the TFLite file has no signature {signature!r}; it has "
                                   f"{sorted(model.signatures) or 'none'}")
    if subgraph is not None:
        index = int(subgraph)
        if not 0 <= index < len(model.subgraphs):
            raise ModelImportError(f"the TFLite file has {len(model.subgraphs)} subgraph(s), "
                                   f"not {index}")
        sig = next((s for s in model.signatures.values() if s["subgraph"] == index), None)
    else:
        sig = model.signatures.get(signature) if signature else \
            next(iter(model.signatures.values()), None)
        if sig is not None:
            index = sig["subgraph"]
            if not 0 <= index < len(model.subgraphs):
                raise ModelImportError(f"corrupt TensorFlow Lite file: a signature names "
                                       f"subgraph {index} of {len(model.subgraphs)}")
    if sig is not None:
        names = {t: n for n, t in sig["inputs"] + sig["outputs"]}
    graph = model.subgraphs[index]
    missing = unsupported_ops(model, graph)
    if missing:
        raise UnsupportedOpError(f"{len(missing)} TFLite operator(s) are not supported by "
                                 f"galaxir's TFLite frontend: {', '.join(missing)}")
    gb = GraphBuilder()
    SubgraphConverter(model, graph, dim_names).run(gb, names)
    module = gb.module({"producer": "tflite", "source": "tflite",
                        "tflite_schema_version": str(model.version)})
    try:
        module.verify()
    except GalaxirError as e:
        raise ModelImportError(f"the imported TFLite graph does not verify: {e}") from e
    return module
