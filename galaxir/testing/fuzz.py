"""A mutation fuzzer for galaxir's promise about bad input: every outcome is a result or a
``galaxir.errors`` exception -- never a crash, a hang, another exception or a wrong answer.

Three kinds of case, each generated from a seed (so a case is a few numbers, and replays):

``onnx``  a small valid seed model, mutated structurally (wrong attribute types, dangling
          names, cycles, negative or huge dims, unknown ops and opsets, bad element types,
          dropped or extra inputs...) or byte by byte, then imported, optimized at a random
          level, compiled and run on random inputs;
``gxm``   a seed model saved as .gxm, its bytes mutated, then loaded, compiled and run;
``feed``  a seed model compiled for numpy and cpu, called with a mutated feed (dtypes,
          ranks, zero-size and huge dims, non-contiguous and read-only arrays, lists,
          scalars, strings, missing and unknown names); where both targets accept the
          feed, their outputs must agree.

Cases run in worker processes (``python -m galaxir.testing.fuzz --worker``) that read one
JSON case per line and answer one JSON outcome per line, so a crash or a hang is pinned on
its case: the parent restarts the worker and goes on.  The command line runs a campaign::

    python -m galaxir.testing.fuzz --cases 10000 --workers 2     # prints the figures
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

KINDS = ("onnx", "gxm", "feed")
#: outcomes that keep the promise: "ok" and "galaxir:<ErrorClass>"
GOOD_PREFIXES = ("ok", "galaxir:")
CASE_TIMEOUT_S = 60.0
#: a worker may not take more memory than this (a runaway allocation is an outcome, not an OOM)
WORKER_MEMORY_BYTES = 6 << 30


# =========================================================================================
# Seed models: small, valid, covering the op families and a control-flow region
# =========================================================================================
def seed_models() -> dict[str, bytes]:
    """name -> serialized ONNX model."""
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    def model(nodes, inputs, outputs, inits=(), opset=17):
        g = h.make_graph(nodes, "seed", inputs, outputs, list(inits))
        return h.make_model(g, opset_imports=[h.make_opsetid("", opset)]).SerializeToString()

    vi = h.make_tensor_value_info
    rng = np.random.default_rng(1234)

    def arr(name, *shape, dtype=np.float32):
        return nh.from_array(rng.standard_normal(shape).astype(dtype), name)

    out: dict[str, bytes] = {}
    out["add_relu"] = model(
        [h.make_node("Add", ["x", "w"], ["s"]), h.make_node("Relu", ["s"], ["y"])],
        [vi("x", T.FLOAT, ["N", 4])], [vi("y", T.FLOAT, ["N", 4])], [arr("w", 1, 4)])
    out["conv_pool"] = model(
        [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
         h.make_node("Relu", ["c"], ["r"]),
         h.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        [vi("x", T.FLOAT, [1, 2, 6, 6])], [vi("y", T.FLOAT, [1, 3, 3, 3])],
        [arr("w", 3, 2, 3, 3), arr("b", 3)])
    out["gemm_softmax"] = model(
        [h.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
         h.make_node("Softmax", ["g"], ["y"], axis=1)],
        [vi("x", T.FLOAT, ["N", 8])], [vi("y", T.FLOAT, ["N", 5])], [arr("w", 5, 8), arr("b", 5)])
    out["shape_ops"] = model(
        [h.make_node("Reshape", ["x", "shape"], ["r"]),
         h.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
         h.make_node("Concat", ["t", "t"], ["c"], axis=0),
         h.make_node("Gather", ["c", "idx"], ["g"], axis=1),
         h.make_node("ReduceSum", ["g", "axes"], ["y"], keepdims=1)],
        [vi("x", T.FLOAT, [2, 3, 4])], [vi("y", T.FLOAT, [8, 1])],
        [nh.from_array(np.array([6, 4], np.int64), "shape"),
         nh.from_array(np.array([0, 2, 5], np.int64), "idx"),
         nh.from_array(np.array([1], np.int64), "axes")])
    then_g = h.make_graph([h.make_node("Add", ["x", "one"], ["t"])], "then", [],
                          [vi("t", T.FLOAT, [3])], [nh.from_array(np.ones(3, np.float32), "one")])
    else_g = h.make_graph([h.make_node("Mul", ["x", "two"], ["e"])], "else", [],
                          [vi("e", T.FLOAT, [3])], [nh.from_array(np.full(3, 2, np.float32), "two")])
    out["if"] = model(
        [h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("cond", T.BOOL, []), vi("x", T.FLOAT, [3])], [vi("y", T.FLOAT, [3])])
    out["int_cast"] = model(
        [h.make_node("Cast", ["x"], ["f"], to=T.FLOAT),
         h.make_node("Mul", ["f", "k"], ["m"]),
         h.make_node("Cast", ["m"], ["i"], to=T.INT32),
         h.make_node("Abs", ["i"], ["y"])],
        [vi("x", T.INT64, ["N"])], [vi("y", T.INT32, ["N"])],
        [nh.from_array(np.array([1.5], np.float32), "k")])
    out["matmul_tanh"] = model(
        [h.make_node("MatMul", ["a", "b"], ["m"]), h.make_node("Add", ["m", "c"], ["s"]),
         h.make_node("Tanh", ["s"], ["y"])],
        [vi("a", T.FLOAT, ["B", 3, 4])], [vi("y", T.FLOAT, ["B", 3, 5])],
        [arr("b", 4, 5), arr("c", 5)])
    out["pool_norm"] = model(
        [h.make_node("AveragePool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         h.make_node("BatchNormalization", ["p", "s", "o", "mu", "var"], ["b"]),
         h.make_node("GlobalAveragePool", ["b"], ["y"])],
        [vi("x", T.FLOAT, [1, 3, 5, 5])], [vi("y", T.FLOAT, [1, 3, 1, 1])],
        [arr("s", 3), arr("o", 3), arr("mu", 3),
         nh.from_array(np.abs(rng.standard_normal(3)).astype(np.float32) + 0.5, "var")])
    out["two_inputs"] = model(
        [h.make_node("Sub", ["a", "b"], ["d"]), h.make_node("Where", ["c", "d", "a"], ["y"])],
        [vi("a", T.FLOAT, ["N", 2]), vi("b", T.FLOAT, ["N", 2]), vi("c", T.BOOL, ["N", 2])],
        [vi("y", T.FLOAT, ["N", 2])])
    # shapes, indexes and sizes that come from the feed: values decide what the kernels do
    out["dynamic_shapes"] = model(
        [h.make_node("Expand", ["x", "shape"], ["e"]),
         h.make_node("Slice", ["e", "starts", "ends"], ["s"]),
         h.make_node("Gather", ["s", "idx"], ["y"], axis=0)],
        [vi("x", T.FLOAT, [1, 3]), vi("shape", T.INT64, [2]), vi("starts", T.INT64, [1]),
         vi("ends", T.INT64, [1]), vi("idx", T.INT64, ["K"])],
        [vi("y", T.FLOAT, ["Y0", "Y1"])])
    out["concat_pad"] = model(
        [h.make_node("Concat", ["a", "b"], ["c"], axis=1),
         h.make_node("Pad", ["c", "pads", "v"], ["p"]),
         h.make_node("LayerNormalization", ["p", "g"], ["y"], axis=-1)],
        [vi("a", T.FLOAT, ["N", 2]), vi("b", T.FLOAT, ["N", 3]), vi("pads", T.INT64, [4])],
        [vi("y", T.FLOAT, ["Y0", "Y1"])],
        [nh.from_array(np.array(0.5, np.float32), "v"), arr("g", 1)])
    out["range_topk"] = model(
        [h.make_node("Range", ["start", "limit", "delta"], ["r"]),
         h.make_node("Cast", ["r"], ["f"], to=T.FLOAT),
         h.make_node("TopK", ["f", "k"], ["v", "i"], axis=0)],
        [vi("start", T.INT64, []), vi("limit", T.INT64, []), vi("delta", T.INT64, []),
         vi("k", T.INT64, [1])],
        [vi("v", T.FLOAT, ["K"]), vi("i", T.INT64, ["K"])])
    out["scatter_reshape"] = model(
        [h.make_node("ScatterND", ["data", "indices", "updates"], ["s"]),
         h.make_node("Reshape", ["s", "shape"], ["y"])],
        [vi("data", T.FLOAT, [4, 3]), vi("indices", T.INT64, ["K", 1]), vi("updates", T.FLOAT, ["K", 3]),
         vi("shape", T.INT64, [2])],
        [vi("y", T.FLOAT, ["Y0", "Y1"])])
    # operands whose dtypes must agree (a retyped input must be refused, not miscomputed)
    out["concat_gather"] = model(
        [h.make_node("Concat", ["a", "b"], ["c"], axis=1),
         h.make_node("Gather", ["c", "i"], ["g"], axis=1),
         h.make_node("Gemm", ["g", "w"], ["y"])],
        [vi("a", T.FLOAT, ["N", 2]), vi("b", T.FLOAT, ["N", 3]), vi("i", T.INT64, [4])],
        [vi("y", T.FLOAT, ["N", 2])], [arr("w", 4, 2)])
    del onnx
    return out


# =========================================================================================
# Mutations
# =========================================================================================
ONNX_OPS = ["Add", "Relu", "Conv", "MaxPool", "Gemm", "Reshape", "Concat", "Gather", "Slice",
            "Transpose", "ReduceSum", "Cast", "Softmax", "MatMul", "Pad", "Expand", "Tile",
            "Range", "ConstantOfShape", "Split", "Squeeze", "Unsqueeze", "Resize", "Where",
            "TopK", "Einsum", "NoSuchOp", "If", "Loop", "Scan", "LSTM", "OneHot", "NonZero"]
INT_ATTRS = ["axis", "keepdims", "to", "group", "transB", "kernel_shape", "pads", "strides",
             "dilations", "perm", "axes", "auto_pad", "mode", "epsilon", "alpha", "value", "k"]
EXTREME_INTS = [0, -1, -2, 1, 2, 3, 7, 64, 255, 1 << 31, -(1 << 31), (1 << 62), -(1 << 62), 99]


def mutate_onnx(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One to three mutations of a serialized model; returns the bytes and what was done."""
    import onnx
    if rng.random() < 0.15:
        return _mutate_bytes(data, rng), "bytes"
    m = onnx.ModelProto()
    m.ParseFromString(data)
    done = []
    for _ in range(1 if rng.random() < 0.7 else 2):
        done.append(_structural(m, rng))
    try:
        return m.SerializeToString(), "+".join(done)
    except Exception:  # the protobuf library refused what we built: mutate bytes instead
        return _mutate_bytes(data, rng), "bytes"


def _all_graphs(m):
    out = [m.graph]
    for g in out:
        for n in g.node:
            for a in n.attribute:
                if a.type == a.GRAPH:
                    out.append(a.g)
    return out


def _structural(m, rng) -> str:
    import onnx
    from onnx import helper as h, numpy_helper as nh
    graphs = _all_graphs(m)
    g = graphs[int(rng.integers(len(graphs)))]
    nodes = list(g.node)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    names = [o for n in nodes for o in n.output] + [i.name for i in g.input] + \
        [t.name for t in g.initializer]
    choice = int(rng.integers(20))
    if choice >= 16:  # retype an input or an initializer (operands of disagreeing dtypes)
        codes = [1, 6, 7, 9, 10, 11]  # f32, i32, i64, bool, f16, f64
        if not g.input and not g.initializer:
            return "retype:none"
        if g.input and (rng.random() < 0.6 or not g.initializer):
            v = pick(list(g.input))
            if v.type.HasField("tensor_type"):
                v.type.tensor_type.elem_type = int(pick(codes))
            return f"retype:{v.name}"
        t = pick(list(g.initializer))
        dt = pick([np.int64, np.int32, np.float64, np.bool_, np.float16])
        t.CopyFrom(nh.from_array(nh.to_array(t).astype(dt), t.name))
        return f"retype:{t.name}"
    if choice == 0 and nodes:  # an attribute of the wrong type or an extreme value
        n = pick(nodes)
        name = pick([a.name for a in n.attribute] + INT_ATTRS)
        keep = [a for a in n.attribute if a.name != name]
        del n.attribute[:]
        n.attribute.extend(keep)
        kind = int(rng.integers(6))
        val: Any = [pick(EXTREME_INTS) for _ in range(int(rng.integers(0, 5)))] if kind == 0 else \
            pick(EXTREME_INTS) if kind == 1 else float(pick([0.0, -1.0, np.nan, np.inf, 1e30])) \
            if kind == 2 else pick(["", "BOGUS", "SAME_UPPER", "VALID", "\x00\xff"]) if kind == 3 \
            else nh.from_array(rng.standard_normal(int(rng.integers(0, 4))).astype(np.float32)) \
            if kind == 4 else [float(x) for x in rng.standard_normal(3)]
        try:
            n.attribute.append(h.make_attribute(name, val))
        except Exception:
            n.attribute.append(h.make_attribute(name, 3))
        return f"attr:{n.op_type}.{name}"
    if choice == 1 and nodes:  # a dangling operand name
        n = pick(nodes)
        if n.input:
            n.input[int(rng.integers(len(n.input)))] = pick(["nowhere", "", "x_undefined"])
        return "dangling"
    if choice == 2 and len(nodes) >= 1:  # a cycle: a node reads its own or a later output
        k = int(rng.integers(len(nodes)))
        later = [o for n in nodes[k:] for o in n.output]
        if nodes[k].input and later:
            nodes[k].input[0] = pick(later)
        return "cycle"
    if choice == 3:  # negative / huge / zero dims on an input or output
        vals = list(g.input) + list(g.output) + list(g.value_info)
        if vals:
            v = pick(vals)
            if v.type.HasField("tensor_type"):
                dims = v.type.tensor_type.shape.dim
                if len(dims):
                    d = dims[int(rng.integers(len(dims)))]
                    d.dim_value = int(pick([-1, -7, 0, 1 << 40, 1 << 62, 3]))
        return "dims"
    if choice == 4 and nodes:  # an unknown op, or a known one in the wrong place
        n = pick(nodes)
        n.op_type = pick(ONNX_OPS)
        return f"op:{n.op_type}"
    if choice == 5:  # an unknown or odd opset / domain
        del m.opset_import[:]
        m.opset_import.extend([h.make_opsetid(pick(["", "com.microsoft", "ai.onnx.ml", "bogus"]),
                                              int(pick([1, 6, 11, 17, 23, 99, 0, -1])))])
        if rng.random() < 0.3 and nodes:
            pick(nodes).domain = "bogus.domain"
        return "opset"
    if choice == 6:  # an element type that does not exist or does not fit
        vals = list(g.input) + list(g.output)
        if vals:
            v = pick(vals)
            if v.type.HasField("tensor_type"):
                v.type.tensor_type.elem_type = int(pick([0, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 99, 1000]))
        return "elem_type"
    if choice == 7 and g.initializer:  # an initializer whose dims do not match its data
        t = pick(list(g.initializer))
        if len(t.dims):
            t.dims[int(rng.integers(len(t.dims)))] = int(pick([0, -1, 1 << 33, 2, 1000]))
        else:
            t.dims.append(5)
        return "init_dims"
    if choice == 8 and g.initializer:  # an initializer of another dtype, or dropped
        t = pick(list(g.initializer))
        if rng.random() < 0.5:
            arr = nh.to_array(t)
            new = nh.from_array(arr.astype(pick([np.int64, np.float64, np.int8, np.bool_, np.float16])), t.name)
            t.CopyFrom(new)
        else:
            g.initializer.remove(t)
        return "init_dtype"
    if choice == 9 and nodes:  # operands dropped or added
        n = pick(nodes)
        if rng.random() < 0.5 and n.input:
            del n.input[-1]
        else:
            for _ in range(int(rng.integers(1, 4))):
                n.input.append(pick(names) if names else "x")
        return "arity"
    if choice == 10 and nodes:  # duplicate output names
        n = pick(nodes)
        if n.output and names:
            n.output[0] = pick(names)
        return "dup_output"
    if choice == 11 and nodes:  # operands swapped (type mismatches: int with float ...)
        n = pick(nodes)
        if len(n.input) >= 1 and names:
            n.input[int(rng.integers(len(n.input)))] = pick(names)
        return "swap_operand"
    if choice == 12 and nodes:  # a node removed, or one duplicated
        n = pick(nodes)
        if rng.random() < 0.5:
            g.node.remove(n)
        else:
            c = g.node.add()
            c.CopyFrom(n)
        return "node_count"
    if choice == 13:  # graph outputs renamed, declared types contradicting
        if g.output:
            o = pick(list(g.output))
            if rng.random() < 0.5:
                o.name = pick(names + ["nothing"]) if names else "nothing"
            elif o.type.HasField("tensor_type"):
                o.type.tensor_type.elem_type = int(pick([6, 7, 9, 11]))
        return "output"
    if choice == 14:  # an initializer with a huge or zero-size shape, or a sparse one
        t = nh.from_array(np.zeros(int(pick([0, 1, 4])), np.float32), pick(names) if names else "w")
        if rng.random() < 0.5:
            del t.dims[:]
            t.dims.extend([int(pick([0, 1 << 20, 1 << 31, 3])), int(pick([0, 1 << 20, 1 << 31, 3]))])
        g.initializer.append(t)
        return "init_shape"
    # an If/Loop/Scan node with a broken or missing subgraph
    n = h.make_node(pick(["If", "Loop", "Scan"]), [pick(names) if names else "x"], ["sub_out"])
    if rng.random() < 0.5:
        body = onnx.GraphProto(name="body")
        n.attribute.append(h.make_attribute(pick(["then_branch", "else_branch", "body"]), body))
    g.node.insert(int(rng.integers(len(nodes) + 1)), n)
    return "region"


def _mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        if not b:
            break
        op = int(rng.integers(6))
        i = int(rng.integers(len(b)))
        if op == 0:
            b[i] ^= 1 << int(rng.integers(8))
        elif op == 1:
            b[i] = int(rng.integers(256))
        elif op == 2:
            del b[i:i + int(rng.integers(1, 16))]
        elif op == 3:
            b[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
        elif op == 4:
            b = b[:i]
        else:
            n = int(rng.integers(1, 9))
            b[i:i + n] = bytes([0xFF] * n) if rng.random() < 0.5 else bytes(n)
    return bytes(b)


def mutate_gxm(data: bytes, rng: np.random.Generator) -> bytes:
    """Byte mutations, biased towards the header and the first KB where offsets live."""
    b = bytearray(data)
    for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 5))):
        if not b:
            break
        where = int(rng.integers(min(len(b), 256))) if rng.random() < 0.3 else int(rng.integers(len(b)))
        op = int(rng.integers(5))
        if op == 0:
            b[where] ^= 1 << int(rng.integers(8))
        elif op == 1:
            b[where:where + 8] = int(rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1])).to_bytes(8, "little")
        elif op == 2:
            b = b[:where]
        elif op == 3:
            b[where:where] = bytes(int(rng.integers(1, 64)))
        else:
            b[where] = int(rng.integers(256))
    return bytes(b)


# -- feeds ----------------------------------------------------------------------------------
def feed_spec(module, rng: np.random.Generator) -> list[dict]:
    """A JSON description of a (possibly bad) feed for ``module``'s inputs."""
    specs = []
    for v in module.graph.inputs:
        t = v.type
        shape = [d if isinstance(d, int) else int(rng.choice([0, 1, 2, 3])) for d in (t.shape or [])]
        dtype = t.dtype.numpy.str if hasattr(t, "dtype") else "<f4"
        spec = {"name": v.name, "dtype": dtype, "shape": shape, "form": "array", "flags": []}
        what = int(rng.integers(14))
        if what == 0:
            spec["dtype"] = str(rng.choice(["<f8", "<f2", "<i4", "<i8", "|b1", "|u1", "<c8", "<U3", "|O"]))
        elif what == 1:
            spec["shape"] = shape + [int(rng.integers(1, 3))] if rng.random() < 0.5 else shape[:-1]
        elif what == 2 and shape:
            spec["shape"][int(rng.integers(len(shape)))] = 0
        elif what == 3 and shape:
            spec["shape"][int(rng.integers(len(shape)))] = int(rng.choice([1 << 20, 1 << 31, 1 << 40]))
            spec["flags"].append("broadcast")  # zero strides: huge shapes cost no memory
        elif what == 4:
            spec["flags"].append(str(rng.choice(["strided", "transposed", "fortran"])))
        elif what == 5:
            spec["flags"].append("readonly")
        elif what == 6:
            spec["form"] = str(rng.choice(["list", "scalar", "string", "none", "ragged", "dict", "bytes"]))
        elif what == 7:
            spec["fill"] = str(rng.choice(["nan", "inf", "-inf", "max", "min", "zero"]))
        elif what == 8:
            spec["name"] = str(rng.choice(["", "unknown", v.name + "_"]))
        elif what == 9:
            spec["form"] = "missing"
        elif what == 10 and shape:
            spec["shape"][int(rng.integers(len(shape)))] = int(rng.integers(2, 9))
        elif what == 11:
            spec["ints"] = "wide"
        specs.append(spec)
    if rng.random() < 0.1:
        specs.append({"name": "extra_input", "dtype": "<f4", "shape": [1], "form": "array", "flags": []})
    return specs


def build_feed(specs: list[dict], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for s in specs:
        form = s["form"]
        if form == "missing":
            continue
        shape = tuple(s["shape"])
        dt = np.dtype(s["dtype"])
        if "broadcast" in s["flags"]:
            base = np.zeros((), dt) if dt.kind not in "OU" else np.array("a", dt)
            value: Any = np.broadcast_to(base, shape)
        else:
            n = int(np.prod(shape)) if shape else 1
            if dt.kind == "f" or dt.kind == "c":
                arr = rng.standard_normal(n).astype(dt)
            elif dt.kind == "b":
                arr = rng.random(n) < 0.5
            elif dt.kind in "iu":
                hi = int(rng.choice([3, 5, 8, 1 << 20])) if s.get("ints") != "wide" else 1 << 62
                lo = -hi if rng.random() < 0.3 else 0
                arr = rng.integers(lo, hi, n).astype(dt)
            elif dt.kind == "U":
                arr = np.array(["ab"] * n, dt)
            else:
                arr = np.array([object()] * n, dtype=object) if n else np.zeros(0, object)
            value = arr.reshape(shape)
            fill = s.get("fill")
            if fill and value.dtype.kind in "fiu" and value.size:
                info = np.finfo(value.dtype) if value.dtype.kind == "f" else np.iinfo(value.dtype)
                v = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "max": info.max, "min": info.min,
                     "zero": 0}[fill]
                if value.dtype.kind in "iu" and fill in ("nan", "inf", "-inf"):
                    v = info.max
                value = value.copy()
                value.reshape(-1)[::2] = v
            if "strided" in s["flags"] and value.ndim:
                value = np.repeat(value, 2, axis=-1)[..., ::2]
            if "transposed" in s["flags"] and value.ndim >= 2:
                value = np.ascontiguousarray(np.swapaxes(value, -1, -2)).swapaxes(-1, -2)
            if "fortran" in s["flags"]:
                value = np.asfortranarray(value)
            if "readonly" in s["flags"]:
                value.flags.writeable = False
        if form == "list":
            value = value.tolist()
        elif form == "scalar":
            value = 1.5
        elif form == "string":
            value = "not an array"
        elif form == "none":
            value = None
        elif form == "ragged":
            value = [[1.0, 2.0], [3.0]]
        elif form == "dict":
            value = {"a": 1}
        elif form == "bytes":
            value = b"\x00\x01"
        feeds[s["name"]] = value
    return feeds


# =========================================================================================
# Running one case (inside a worker)
# =========================================================================================
@dataclass
class Case:
    """What one case needs; ``data`` (ONNX or .gxm bytes) travels as a file path."""

    kind: str
    seed: int
    seed_model: str = ""
    level: int = 0
    cpu: bool = False
    check: bool = True
    data_path: str | None = None
    feed: list | None = None
    note: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


def make_case(kind: str, seed: int, workdir: Path, models: dict[str, bytes]) -> Case:
    """The case ``seed`` of ``kind``: deterministic, its bytes written under ``workdir``."""
    rng = np.random.default_rng([KINDS.index(kind), seed])
    names = sorted(models)
    name = names[int(rng.integers(len(names)))]
    case = Case(kind, seed, name, level=int(rng.integers(0, 4)), cpu=bool(rng.random() < 0.4),
                check=bool(rng.random() < 0.3))
    if kind == "onnx":
        data, case.note = mutate_onnx(models[name], rng)
        case.data_path = str(workdir / f"{kind}-{seed}.onnx")
        Path(case.data_path).write_bytes(data)
    elif kind == "gxm":
        import galaxir as gx
        m = gx.import_model(models[name])
        if rng.random() < 0.5:
            m = gx.optimize(m, level=int(rng.integers(1, 4)), target="cpu")
        src = workdir / f"{kind}-{seed}.src.gxm"
        gx.save(m, src)
        data = mutate_gxm(src.read_bytes(), rng)
        src.unlink()
        case.data_path = str(workdir / f"{kind}-{seed}.gxm")
        Path(case.data_path).write_bytes(data)
        case.cpu = bool(rng.random() < 0.3)
    else:
        import galaxir as gx
        case.feed = feed_spec(gx.import_model(models[name]), rng)
        case.cpu = True
    return case


class Mismatch(Exception):
    """cpu and numpy both accepted a feed and disagree (a wrong answer)."""


def run_case(case: dict, models: dict[str, bytes], compiled: dict) -> None:
    """Run one case; returns normally on success, raises whatever galaxir raises."""
    import galaxir as gx
    from galaxir.passes.bisect import random_inputs
    kind = case["kind"]
    if kind == "selftest":  # the harness's own test: each way a case can go wrong
        what = case["note"]
        if what == "abort":
            os.abort()
        if what == "hang":
            time.sleep(3600)
        if what == "raise":
            raise KeyError("a raw exception")
        if what == "galaxir":
            raise gx.errors.ExecutionError("a galaxir error")
        return
    if kind in ("onnx", "gxm"):
        data = Path(case["data_path"]).read_bytes()
        if kind == "onnx":
            m = gx.import_model(data, check=case["check"])
        else:
            m = gx.load(case["data_path"])
            m.verify()
        del data
        target = "cpu" if case["cpu"] else "numpy"
        source = m
        if case["level"]:
            m = gx.optimize(m, level=case["level"], target=target)
        exe = gx.compile(m, target=target, level=0)
        feeds = random_inputs(m, seed=case["seed"], sym_dim=2)
        got = exe.run(dict(feeds))
        if target == "cpu":  # the optimized cpu result against the plain reference
            try:
                want = gx.compile(source, target="numpy", level=0).run(dict(feeds))
            except gx.errors.GalaxirError:
                want = None  # the reference refuses what cpu ran: not a wrong answer by itself
            if want is not None:
                _compare(want, got, rtol=1e-3, atol=1e-4)
        if kind == "onnx" and case["level"] and case["cpu"]:
            gx.parse(m.to_text())
        return
    name = case["seed_model"]
    if name not in compiled:
        m = gx.import_model(models[name])
        compiled[name] = (gx.compile(m, target="numpy"), gx.compile(m, target="cpu"))
    ref_exe, cpu_exe = compiled[name]
    feeds = build_feed(case["feed"], case["seed"])
    results = []
    errors = []
    for exe in (ref_exe, cpu_exe):
        try:
            results.append(exe.run(dict(feeds)))
        except gx.errors.GalaxirError as e:
            errors.append(e)
    if len(results) == 2 and all(not s.get("fill") or s["fill"] == "zero" for s in case["feed"]):
        _compare(results[0], results[1])  # (extreme values: summation order may give inf or nan)
    if errors:
        raise errors[0]


def _compare(ref: dict, got: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for k, want in ref.items():
        have = got[k]
        if isinstance(want, np.ndarray):
            if not isinstance(have, np.ndarray) or have.shape != want.shape or have.dtype != want.dtype:
                raise Mismatch(f"output '{k}': numpy gives {want.dtype}{list(want.shape)}, cpu "
                               f"{getattr(have, 'dtype', type(have))}{list(getattr(have, 'shape', []))}")
            if want.dtype.kind in "fc":
                ok = np.allclose(have, want, rtol=rtol, atol=atol, equal_nan=True)
            else:
                ok = np.array_equal(have, want)
            if not ok:
                raise Mismatch(f"output '{k}': cpu and numpy disagree")


def outcome_of(exc: BaseException | None) -> str:
    from galaxir.errors import GalaxirError
    if exc is None:
        return "ok"
    if isinstance(exc, GalaxirError):
        return f"galaxir:{type(exc).__name__}"
    if isinstance(exc, Mismatch):
        return f"mismatch:{exc}"
    return f"other:{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def worker_main() -> int:
    """Read JSON cases from stdin, answer one JSON outcome each on stdout."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    import warnings
    warnings.simplefilter("ignore")
    models = seed_models()
    compiled: dict = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a case prints must not break the protocol
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        case = json.loads(line)
        t = time.perf_counter()
        try:
            run_case(case, models, compiled)
            exc = None
        except BaseException as e:  # noqa: BLE001 -- classifying every exception is the point
            exc = e
            if not isinstance(e, Exception):
                raise
        res = {"id": case["id"], "outcome": outcome_of(exc), "seconds": time.perf_counter() - t}
        if exc is not None and not res["outcome"].startswith("galaxir:"):
            res["traceback"] = "".join(traceback.format_exception(exc))[-2000:]
        out.write(json.dumps(res) + "\n")
        out.flush()
    return 0


# =========================================================================================
# The parent: workers, timeouts, crashes
# =========================================================================================
@dataclass
class Result:
    case: dict
    outcome: str
    seconds: float = 0.0
    traceback: str = ""

    @property
    def good(self) -> bool:
        return self.outcome.startswith(GOOD_PREFIXES)


class Worker:
    """One worker process; ``run(case)`` returns its Result, restarting after a crash."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "galaxir.testing.fuzz", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=self.env,
                                     start_new_session=True)
        self.lines = queue.Queue()
        proc = self.proc
        lines = self.lines

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)
        threading.Thread(target=pump, daemon=True).start()
        first = self.lines.get(timeout=300)
        if first is None or "ready" not in first:
            raise RuntimeError("the fuzz worker did not start")

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None

    def run(self, case: dict, timeout: float) -> Result:
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self._start()
        try:
            self.proc.stdin.write(json.dumps(case) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            return Result(case, f"hang: no answer in {timeout:.0f} s", timeout)
        if line is None:
            code = self.proc.wait()
            self.proc = None
            sig = -code if code < 0 else None
            what = f"signal {signal.Signals(sig).name}" if sig else f"exit status {code}"
            return Result(case, f"crash: {what}")
        res = json.loads(line)
        return Result(case, res["outcome"], res.get("seconds", 0.0), res.get("traceback", ""))


def run_cases(cases: Iterable[dict], workers: int = 2, timeout: float = CASE_TIMEOUT_S,
              env: dict[str, str] | None = None, progress=None) -> list[Result]:
    """Run cases over ``workers`` processes; results in case order."""
    cases = list(cases)
    env = dict(os.environ if env is None else env)
    env.setdefault("GALAXIR_NUM_THREADS", "1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    todo: queue.Queue = queue.Queue()
    for i, c in enumerate(cases):
        c.setdefault("id", i)
        todo.put(i)
    results: list[Result | None] = [None] * len(cases)
    lock = threading.Lock()

    def loop():
        w = Worker(env)
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                r = w.run(cases[i], timeout)
                with lock:
                    results[i] = r
                    if progress is not None:
                        progress(r)
        finally:
            w.stop()

    threads = [threading.Thread(target=loop) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def generate(n: int, start: int, workdir: Path, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """``n`` cases, the kinds in turn, seeds from ``start``."""
    models = seed_models()
    return [make_case(kinds[i % len(kinds)], start + i, workdir, models).to_json() for i in range(n)]


# =========================================================================================
# The corpus of failing cases (tests/data/fuzz_corpus): one JSON file, plus its bytes
# =========================================================================================
def save_to_corpus(result: Result, corpus: Path) -> Path:
    """Keep a failing case: ``<kind>-<seed>.json`` and its ONNX/.gxm bytes beside it."""
    corpus.mkdir(parents=True, exist_ok=True)
    case = dict(result.case)
    stem = f"{case['kind']}-{case['seed']}"
    if case.get("data_path"):
        suffix = Path(case["data_path"]).suffix
        (corpus / f"{stem}{suffix}").write_bytes(Path(case["data_path"]).read_bytes())
        case["data_path"] = f"{stem}{suffix}"
    case.pop("id", None)
    case["first_outcome"] = result.outcome
    path = corpus / f"{stem}.json"
    path.write_text(json.dumps(case, indent=1, sort_keys=True) + "\n")
    return path


def load_corpus(corpus: Path) -> list[dict]:
    cases = []
    for p in sorted(corpus.glob("*.json")):
        case = json.loads(p.read_text())
        case["_file"] = p.name
        if case.get("data_path"):
            case["data_path"] = str(corpus / case["data_path"])
        cases.append(case)
    return cases


def summary(results: list[Result], seconds: float) -> str:
    """The figures docs/reliability.md quotes."""
    counts = collections.Counter()
    for r in results:
        key = r.outcome.split(":")[0] if not r.outcome.startswith("galaxir:") else r.outcome
        if r.outcome.startswith("other:"):
            key = "other:" + r.outcome.split(":")[1]
        counts[(r.case["kind"], key)] += 1
    lines = [f"{len(results)} cases in {seconds:.0f} s"]
    by_kind = collections.Counter(r.case["kind"] for r in results)
    for kind in KINDS:
        if by_kind[kind]:
            parts = ", ".join(f"{k[1]} {v}" for k, v in sorted(counts.items()) if k[0] == kind)
            lines.append(f"  {kind:5} {by_kind[kind]:6}: {parts}")
    bad = [r for r in results if not r.good]
    lines.append(f"crashes {sum(r.outcome.startswith('crash') for r in results)}, "
                 f"hangs {sum(r.outcome.startswith('hang') for r in results)}, "
                 f"non-galaxir exceptions {sum(r.outcome.startswith('other') for r in results)}, "
                 f"wrong answers {sum(r.outcome.startswith('mismatch') for r in results)}")
    for r in bad[:50]:
        lines.append(f"  FAIL {r.case['kind']}-{r.case['seed']} ({r.case.get('seed_model')}, "
                     f"{r.case.get('note', '')}): {r.outcome}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S)
    p.add_argument("--corpus", help="save failing cases to this folder")
    p.add_argument("--json", help="write every outcome to this file")
    a = p.parse_args(argv)
    if a.worker:
        return worker_main()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="galaxir-fuzz-") as tmp:
        cases = generate(a.cases, a.start, Path(tmp))
        done = [0]

        def progress(r: Result) -> None:
            done[0] += 1
            if not r.good:
                print(f"FAIL {r.case['kind']}-{r.case['seed']}: {r.outcome}", file=sys.stderr, flush=True)
            if done[0] % 500 == 0:
                print(f"{done[0]}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
        results = run_cases(cases, workers=a.workers, timeout=a.timeout, progress=progress)
        if a.corpus:
            for r in results:
                if not r.good:
                    save_to_corpus(r, Path(a.corpus))
        if a.json:
            Path(a.json).write_text(json.dumps([{"case": r.case, "outcome": r.outcome,
                                                 "traceback": r.traceback} for r in results]))
    print(summary(results, time.perf_counter() - t0))
    return 0 if all(r.good for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
