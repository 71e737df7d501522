"""The KServe v2 codec (galaxir/serve/protocol.py) and the batcher's bucket sizes, without
a server: every datatype round-trips in JSON and binary form, BYTES tensors use length
prefixes, and malformed requests raise RequestError naming what is wrong."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from galaxir.errors import InputValidationError
from galaxir.serve.batcher import bucket_sizes
from galaxir.serve.protocol import (DATATYPES, RequestError, datatype_of, decode_request,
                                    encode_response)

NUMERIC = [n for n in DATATYPES if n != "BYTES"]


def _binary_request(arrays: dict[str, np.ndarray], outputs=None):
    head = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatype_of(a.dtype),
                        "parameters": {"binary_data_size": a.nbytes}} for n, a in arrays.items()]}
    if outputs is not None:
        head["outputs"] = outputs
    h = json.dumps(head).encode()
    return h + b"".join(a.tobytes() for a in arrays.values()), len(h)


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_datatype_round_trips_json_and_binary(name):
    dt = DATATYPES[name]
    a = (np.arange(6) % 2).astype(dt).reshape(2, 3) if dt.kind == "b" else \
        np.arange(6).astype(dt).reshape(2, 3)
    body, hl = _binary_request({"a": a})
    req = decode_request(body, hl)
    np.testing.assert_array_equal(req.inputs["a"], a)
    assert req.inputs["a"].dtype == dt
    js = json.dumps({"inputs": [{"name": "a", "shape": [2, 3], "datatype": name,
                                 "data": a.tolist()}]}).encode()
    np.testing.assert_array_equal(decode_request(js).inputs["a"], a)
    for binary in (True, False):
        out, hl = encode_response("m", "1", "r1", [("a", a, binary)])
        head = json.loads(out[:hl] if hl else out)
        t = head["outputs"][0]
        assert head["id"] == "r1" and t["datatype"] == name and t["shape"] == [2, 3]
        got = np.frombuffer(out[hl:], dt).reshape(2, 3) if binary else np.array(t["data"], dt).reshape(2, 3)
        np.testing.assert_array_equal(got, a)


def test_bytes_tensors_use_length_prefixes():
    raw = b"".join(struct.pack("<I", len(s)) + s for s in [b"ab", b"", b"\xc3\xa9t\xc3\xa9"])
    h = json.dumps({"inputs": [{"name": "s", "shape": [3], "datatype": "BYTES",
                                "parameters": {"binary_data_size": len(raw)}}]}).encode()
    req = decode_request(h + raw, len(h))
    assert list(req.inputs["s"]) == ["ab", "", "été"]
    out, hl = encode_response("m", "1", None, [("s", req.inputs["s"], True)])
    assert out[hl:] == raw
    bad = raw[:10] + struct.pack("<I", 99) + raw[14:]  # the third element claims 99 bytes
    assert len(bad) == len(raw) and raw[10:14] == struct.pack("<I", 5)
    with pytest.raises(RequestError, match="runs past"):
        decode_request(h + bad, len(h))


def test_requested_outputs_and_binary_defaults():
    a = np.zeros((1, 2), np.float32)
    body, hl = _binary_request({"a": a}, outputs=[{"name": "y", "parameters": {"binary_data": True}},
                                                   {"name": "z"}])
    req = decode_request(body, hl)
    assert req.outputs == [("y", True), ("z", False)]
    js = json.dumps({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
                     "parameters": {"binary_data_output": True}}).encode()
    req = decode_request(js)
    assert req.outputs is None and req.binary_output


@pytest.mark.parametrize("body, hl, match", [
    (b"\xff\xfe", None, "not valid JSON"),
    (b'{"inputs": {}}', None, "non-empty 'inputs'"),
    (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', None, "with a 'name'"),
    (b'{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]}', None,
     "non-negative"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}', None, "neither 'data'"),
    (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}]}', None,
     "does not fit"),
    (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]}', None,
     "not a flat or nested list"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": ["x"]}]}', None,
     "does not fit"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},'
     b' {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}', None, "given twice"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}xx', 74,
     "binary bytes after"),
    (b'{"id": 5, "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}', None,
     "'id' must be a string"),
    (b'{"inputs": [{"name": "a", "shape": [4294967296, 4294967296], "datatype": "FP32", "data": []}]}',
     None, "too many elements"),
])
def test_malformed_requests_raise_request_errors(body, hl, match):
    with pytest.raises(RequestError, match=match) as e:
        decode_request(body, hl)
    assert isinstance(e.value, InputValidationError) and 400 <= e.value.status < 500


def test_bucket_sizes_are_powers_of_two_capped_at_max_batch():
    assert bucket_sizes(16) == [1, 2, 4, 8, 16]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert bucket_sizes(1) == [1]
