"""Reading ONNX models from a path, bytes or a ModelProto, safely: external data must stay
inside the model's folder, and a model the checker rejects is a clear import error."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from ...errors import ModelImportError

ModelSource = Union[onnx.ModelProto, str, os.PathLike, bytes]


def load_model(source: ModelSource) -> tuple[onnx.ModelProto, str | None]:
    """The ModelProto and the folder its external data is relative to."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except (DecodeError, RuntimeError, ValueError) as e:
            raise ModelImportError(f"the bytes are not a valid ONNX model: {e}") from None
        _check_nonempty(model, "the bytes")
        return model, None
    path = Path(source)
    if not path.is_file():
        raise ModelImportError(f"no ONNX model file at '{path}'")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelImportError(f"'{path}' is not a valid ONNX model (truncated or corrupted?): {e}") from None
    _check_nonempty(model, f"'{path}'")
    base = path.resolve().parent
    load_external(model, base)
    return model, str(base)


def _check_nonempty(model: onnx.ModelProto, what: str) -> None:
    if not model.HasField("graph") and not model.opset_import:
        raise ModelImportError(f"{what} holds no ONNX graph (truncated, or not an ONNX file)")


def _tensors_with_external_data(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors
    for t in _get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


def load_external(model: onnx.ModelProto, base: Path) -> None:
    """Read external tensor data, refusing any location outside ``base``."""
    base = base.resolve()
    for t in _tensors_with_external_data(model):
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
