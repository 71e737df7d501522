"""Reading ONNX models from a path, bytes or a ModelProto, safely: external data must stay
inside the model's folder (or the ``base_dir`` given for bytes and ModelProtos; real paths,
symbolic links resolved), and a model the checker rejects is a clear import error."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from ...errors import ModelImportError

ModelSource = Union[onnx.ModelProto, str, os.PathLike, bytes]


def load_model(source: ModelSource, base_dir: str | os.PathLike | None = None
               ) -> tuple[onnx.ModelProto, str | None]:
    """The ModelProto with its external data read in, and the folder that data came from.

    External data is read only from inside one folder: the model file's own folder for a
    path (or ``base_dir`` when given), and ``base_dir`` for bytes or a ModelProto, which
    have no folder (without it, a model with external data is refused).  A ModelProto
    given in is never modified (external data is read into a copy)."""
    if isinstance(source, onnx.ModelProto):
        model = source
        what = "the ModelProto"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except (DecodeError, RuntimeError, ValueError) as e:
            raise ModelImportError(f"the bytes are not a valid ONNX model: {e}") from None
        _check_nonempty(model, "the bytes")
        what = "the bytes"
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelImportError(f"no ONNX model file at '{path}'")
        model = onnx.ModelProto()
        try:
            model.ParseFromString(path.read_bytes())
        except (DecodeError, RuntimeError, ValueError) as e:
            raise ModelImportError(f"'{path}' is not a valid ONNX model (truncated or corrupted?): {e}") from None
        _check_nonempty(model, f"'{path}'")
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
        load_external(model, base)
        return model, str(base.resolve())
    if not any(True for _ in external_tensors(model)):
        return model, None
    if base_dir is None:
        names = ", ".join(sorted({t.name or "?" for t in external_tensors(model)})[:5])
        raise ModelImportError(f"{what} refers to external data (tensors {names}) but has no folder "
                               "to read it from: pass base_dir= (gx.import_model(model, base_dir=...)) "
                               "naming the folder that holds the data files")
    if model is source:
        model = onnx.ModelProto()
        model.CopyFrom(source)
    load_external(model, Path(base_dir))
    return model, str(Path(base_dir).resolve())


def _check_nonempty(model: onnx.ModelProto, what: str) -> None:
    if not model.HasField("graph") and not model.opset_import:
        raise ModelImportError(f"{what} holds no ONNX graph (truncated, or not an ONNX file)")


def external_tensors(model: onnx.ModelProto):
    """Every tensor of ``model`` whose data is external: initializers, sparse initializers'
    values and indices, node attributes, subgraphs (any depth: an explicit stack, not
    recursion) and functions."""
    graphs = [model.graph]
    node_lists = [f.node for f in model.functions]
    while graphs or node_lists:
        tensors = []
        if graphs:
            g = graphs.pop()
            tensors.extend(g.initializer)
            for sp in g.sparse_initializer:
                tensors += [sp.values, sp.indices]
            node_lists.append(g.node)
        else:
            for node in node_lists.pop():
                for a in node.attribute:
                    if a.HasField("t"):
                        tensors.append(a.t)
                    tensors.extend(a.tensors)
                    sparse = ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors)
                    for sp in sparse:
                        tensors += [sp.values, sp.indices]
                    if a.HasField("g"):
                        graphs.append(a.g)
                    graphs.extend(a.graphs)
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                yield t


def load_external(model: onnx.ModelProto, base: Path) -> None:
    """Read external tensor data, refusing any location whose real path (symbolic links
    resolved) lies outside ``base``'s real path."""
    base = base.resolve()
    if not base.is_dir():
        raise ModelImportError(f"the external data folder '{base}' does not exist")
    for t in list(external_tensors(model)):
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")):
            raise ModelImportError(f"tensor '{t.name}': external data location '{loc}' must be a "
                                   "relative path inside the model's folder")
        target = (base / loc).resolve()
        if base != target and base not in target.parents:
            raise ModelImportError(f"tensor '{t.name}': external data location '{loc}' escapes the "
                                   f"model's folder '{base}'")
        if not target.is_file():
            raise ModelImportError(f"tensor '{t.name}': external data file '{loc}' not found in '{base}'")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = target.stat().st_size
        n = size - offset if length is None else int(length)
        if offset < 0 or n < 0 or offset + n > size:
            raise ModelImportError(f"tensor '{t.name}': external data range offset={offset} "
                                   f"length={n} lies outside '{loc}' ({size} bytes)")
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(n)
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]


def check_model(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise ModelImportError(f"the ONNX checker rejects this model: {first}") from None
    except ValueError as e:  # e.g. models over 2 GB given in memory
        raise ModelImportError(f"the ONNX checker could not check this model: {e}") from None
