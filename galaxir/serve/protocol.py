"""The KServe v2 inference request/response codec: JSON tensors and the binary tensor
data extension (``Inference-Header-Content-Length``: a JSON header, then the raw bytes of
each binary tensor in order).  Pure functions over bytes and numpy arrays, no web server,
so every malformed request is tested here and answered with a ``RequestError``."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputValidationError

#: KServe datatype <-> numpy dtype (BYTES: numpy object arrays of str)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES = {dt: name for name, dt in DATATYPES.items() if name != "BYTES"}

#: most elements a request may declare for one tensor (the body limit bounds the data)
MAX_ELEMENTS = 1 << 31


class RequestError(InputValidationError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def datatype_of(dtype: np.dtype | None) -> str:
    """The KServe datatype name of a numpy dtype (BYTES for strings and objects)."""
    if dtype is None or dtype.kind in "OUS":
        return "BYTES"
    name = _NAMES.get(np.dtype(dtype))
    if name is None:
        raise RequestError(f"dtype {dtype} has no KServe v2 datatype", 500)
    return name


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    #: requested outputs in order: (name, binary?); None: every output
    outputs: list[tuple[str, bool]] | None
    binary_output: bool = False  # the request-level default (binary_data_output)
    parameters: dict[str, Any] = field(default_factory=dict)


def _params(obj: dict, where: str) -> dict:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise RequestError(f"{where}: 'parameters' must be an object")
    return p


def _shape(t: dict, where: str) -> tuple[int, ...]:
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(f"{where}: 'shape' must be a list of non-negative integers, got "
                           f"{shape!r}")
    if int(np.prod(shape, dtype=object)) > MAX_ELEMENTS:
        raise RequestError(f"{where}: shape {shape} has too many elements", 413)
    return tuple(shape)


def _bytes_elements(raw: memoryview, count: int, where: str) -> np.ndarray:
    """BYTES binary data: each element a 4-byte little-endian length, then its bytes."""
    out = np.empty(count, object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise RequestError(f"{where}: BYTES data ends inside element {i}")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise RequestError(f"{where}: BYTES element {i} runs past the data")
        out[i] = bytes(raw[pos:pos + n]).decode("utf-8", errors="replace")
        pos += n
    if pos != len(raw):
        raise RequestError(f"{where}: {len(raw) - pos} bytes left after {count} BYTES elements")
    return out


def _json_data(data: Any, dt: np.dtype, shape: tuple, where: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    try:
        if dt.kind == "O":
            flat = np.asarray(data, dtype=object).reshape(-1)
            if not all(isinstance(s, str) for s in flat):
                raise RequestError(f"{where}: BYTES data must be strings")
            arr = flat
        else:
            arr = np.asarray(data).reshape(-1)
            if arr.dtype.kind not in "biuf" or (dt.kind in "iub" and arr.dtype.kind == "f"):
                raise RequestError(f"{where}: data of kind {arr.dtype} does not fit "
                                   f"datatype {datatype_of(dt)}")
            arr = arr.astype(dt)
    except (ValueError, TypeError, OverflowError) as e:
        raise RequestError(f"{where}: 'data' is not a flat or nested list of "
                           f"{datatype_of(dt)} values: {e}") from None
    want = int(np.prod(shape, dtype=np.int64))
    if arr.size != want:
        raise RequestError(f"{where}: 'data' has {arr.size} elements, shape {list(shape)} "
                           f"needs {want}")
    return arr.reshape(shape)


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse an infer request body (with the binary extension when ``header_length``)."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise RequestError(f"Inference-Header-Content-Length {header_length} does not fit "
                               f"a body of {len(body)} bytes")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        req = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise RequestError("the request must be a JSON object with an 'inputs' list")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError("'id' must be a string")
    params = _params(req, "request")
    tensors = req.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise RequestError("the request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    pos = 0
    for k, t in enumerate(tensors):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise RequestError(f"inputs[{k}] must be an object with a 'name'")
        name = t["name"]
        where = f"input '{name}'"
        if name in inputs:
            raise RequestError(f"{where} is given twice")
        dt = DATATYPES.get(t.get("datatype"))
        if dt is None:
            raise RequestError(f"{where}: unknown datatype {t.get('datatype')!r}; expected one "
                               f"of {', '.join(DATATYPES)}")
        shape = _shape(t, where)
        size = _params(t, where).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or pos + size > len(binary):
                raise RequestError(f"{where}: binary_data_size {size!r} does not fit the "
                                   f"{len(binary) - pos} binary bytes left")
            raw = binary[pos:pos + size]
            pos += size
            count = int(np.prod(shape, dtype=np.int64))
            if dt.kind == "O":
                arr = _bytes_elements(raw, count, where).reshape(shape)
            else:
                if size != count * dt.itemsize:
                    raise RequestError(f"{where}: {size} binary bytes, shape {list(shape)} of "
                                       f"{t['datatype']} needs {count * dt.itemsize}")
                arr = np.frombuffer(raw, dtype=dt).reshape(shape)
        elif "data" in t:
            arr = _json_data(t["data"], dt, shape, where)
        else:
            raise RequestError(f"{where}: neither 'data' nor a binary_data_size parameter")
        inputs[name] = arr
    if pos != len(binary):
        raise RequestError(f"{len(binary) - pos} binary bytes after the last binary input")
    outputs = None
    if req.get("outputs") is not None:
        if not isinstance(req["outputs"], list):
            raise RequestError("'outputs' must be a list")
        outputs = []
        for k, o in enumerate(req["outputs"]):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise RequestError(f"outputs[{k}] must be an object with a 'name'")
            b = _params(o, f"output '{o['name']}'").get("binary_data",
                                                        params.get("binary_data_output", False))
            outputs.append((o["name"], bool(b)))
    return InferRequest(rid, inputs, outputs, bool(params.get("binary_data_output", False)),
                        params)


def _flat_json(arr: np.ndarray) -> list:
    flat = arr.reshape(-1)
    if flat.dtype.kind == "O":
        return [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in flat]
    if flat.dtype.kind == "f":
        flat = flat.astype(np.float64)  # exact decimal text of float16/32 values
    return flat.tolist()


def _bytes_payload(arr: np.ndarray) -> bytes:
    parts = []
    for s in arr.reshape(-1):
        b = s if isinstance(s, bytes) else str(s).encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def encode_response(model: str, version: str, rid: str | None,
                    outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """(body, header length or None): the JSON response, then each binary output's bytes."""
    tensors, blobs = [], []
    for name, arr, binary in outputs:
        arr = np.asarray(arr)
        t: dict[str, Any] = {"name": name, "datatype": datatype_of(arr.dtype),
                             "shape": [int(d) for d in arr.shape]}
        if binary:
            blob = _bytes_payload(arr) if arr.dtype.kind in "OUS" else \
                np.ascontiguousarray(arr).tobytes()
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            t["data"] = _flat_json(arr)
        tensors.append(t)
    resp: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if rid is not None:
        resp["id"] = rid
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
