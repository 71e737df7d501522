"""An ``onnx.backend.base.Backend`` adapter so onnx's own tooling (its backend test runner,
``onnx.backend.test.BackendTest``) can drive galaxir.

    from galaxir.onnx_backend import GalaxirBackend
    rep = GalaxirBackend.prepare(model_proto, device="CPU")
    outputs = rep.run([x])
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

import galaxir as gx

DEFAULT_TARGET = "numpy"


class GalaxirBackendRep(BackendRep):
    def __init__(self, exe, data_input_names: list[str]):
        self.exe = exe
        self.data_input_names = data_input_names

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        if isinstance(inputs, dict):
            feeds = inputs
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feeds = dict(zip(self.data_input_names, inputs))
        out = self.exe.run(feeds)
        return tuple(out[n] for n in self.exe.output_names)


class GalaxirBackend(Backend):
    """Runs ONNX models with galaxir; ``target`` picks the galaxir backend (numpy or cpu)."""

    target = DEFAULT_TARGET

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return device.upper().startswith("CPU")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> GalaxirBackendRep:
        target = kwargs.pop("target", cls.target)
        level = kwargs.pop("level", 0)
        module = gx.import_model(model, check=kwargs.pop("check", True))
        exe = gx.compile(module, target=target, level=level)
        inits = {t.name for t in model.graph.initializer}
        names = [i.name for i in model.graph.input if i.name not in inits]
        return GalaxirBackendRep(exe, names)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info=None, **kwargs: Any) -> tuple:
        """Run one node by wrapping it in a model with inputs typed from the given arrays."""
        graph_inputs = []
        for name, arr in zip(node.input, inputs):
            if name:
                arr = np.asarray(arr)
                graph_inputs.append(onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
        outs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
        graph = onnx.helper.make_graph([node], "run_node", graph_inputs, outs)
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        # outputs carry no types here, which onnx's checker rejects: type inference fills them
        return cls.run_model(model, [np.asarray(x) for n, x in zip(node.input, inputs) if n],
                             device, check=False, **kwargs)


prepare = GalaxirBackend.prepare
run_model = GalaxirBackend.run_model
run_node = GalaxirBackend.run_node
supports_device = GalaxirBackend.supports_device
