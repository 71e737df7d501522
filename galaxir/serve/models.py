"""A model the server serves: its compiled executable, its KServe metadata and whether
requests to it may be merged along a batch dimension."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import GalaxirError
from .protocol import RequestError, datatype_of


@dataclass
class ServedModel:
    name: str
    exe: Any  # a galaxir Executable
    version: str = "1"
    platform: str = "galaxir"

    def __post_init__(self):
        self.input_names = [i.name for i in self.exe.inputs]
        self.output_names = [o.name for o in self.exe.outputs]
        self.batch_symbol = _batch_symbol(self.exe)

    @property
    def batchable(self) -> bool:
        """Every input and output has the same symbolic leading dim (the batch)."""
        return self.batch_symbol is not None

    def metadata(self) -> dict:
        def tensor(info):
            shape = None if info.shape is None else [d if isinstance(d, int) else -1
                                                     for d in info.shape]
            return {"name": info.name, "datatype": datatype_of(info.dtype),
                    "shape": shape if shape is not None else [-1]}
        return {"name": self.name, "versions": [self.version], "platform": self.platform,
                "inputs": [tensor(i) for i in self.exe.inputs],
                "outputs": [tensor(o) for o in self.exe.outputs]}

    def check_version(self, version: str | None) -> None:
        if version not in (None, "", self.version):
            raise RequestError(f"model '{self.name}' has no version {version!r} (versions: "
                               f"{self.version})", 404)

    def check_outputs(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise RequestError(f"model '{self.name}' has no output(s) {unknown}; outputs: "
                               f"{self.output_names}")

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict:
        """One executable run (validation errors name the input; they answer 400)."""
        return self.exe.run(feeds, outputs=list(outputs) if outputs is not None else None)


def _batch_symbol(exe) -> str | None:
    syms = set()
    for info in list(exe.inputs) + list(exe.outputs):
        if info.shape is None or not info.shape or isinstance(info.shape[0], int) \
                or info.shape[0] == "?":
            return None
        syms.add(info.shape[0])
    return syms.pop() if len(syms) == 1 else None


def parse_model_arg(arg: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is the file name without its suffix)."""
    name, sep, path = arg.partition("=")
    if not sep:
        path, name = arg, Path(arg).name.split(".")[0]
    if not name or "/" in name:
        raise GalaxirError(f"bad model name {name!r} in {arg!r} (use NAME=PATH)")
    return name, Path(path)


def load_models(args: Sequence[str], target: str = "cpu", num_threads: int | None = None,
                **compile_options: Any) -> dict[str, ServedModel]:
    """Compile each ``NAME=PATH`` (.onnx, .gxm, textual IR) once for ``target``."""
    import galaxir as gx
    models: dict[str, ServedModel] = {}
    for arg in args:
        name, path = parse_model_arg(arg)
        if name in models:
            raise GalaxirError(f"two models named '{name}': name them with NAME=PATH")
        if not os.path.exists(path):
            raise GalaxirError(f"model file {str(path)!r} does not exist")
        opts = dict(compile_options)
        if target == "cpu" and num_threads is not None:
            opts["num_threads"] = num_threads
        exe = gx.compile(gx.import_model(str(path)), target=target, **opts)
        models[name] = ServedModel(name, exe)
    return models
