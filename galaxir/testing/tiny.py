"""Tiny ONNX models for the call-overhead tests and benchmarks/bench_overhead.py: a chain of
elementwise ops that does not fuse (so each pair of ops is its own native kernel), and a
model with static control flow (an If on a constant condition and a Loop with a constant
trip count)."""
from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper

F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64


def chain_model(n_ops: int, shape=(4, 8)) -> ModelProto:
    """``n_ops`` ops alternating ``y = Softmax(y)`` and ``y = Add(y, c_k)`` (c_k a constant
    row): a softmax is a kernel of its own that no elementwise loop takes in, so the chain
    does not fuse into one loop and the cpu backend runs ``n_ops`` kernels."""
    nodes, inits, prev = [], [], "x"
    for k in range(n_ops):
        out = "y" if k == n_ops - 1 else f"t{k}"
        if k % 2 == 0:
            nodes.append(helper.make_node("Softmax", [prev], [out], axis=-1))
        else:
            c = np.full(shape[-1], 0.01 * (k % 7), np.float32)
            inits.append(helper.make_tensor(f"c{k}", F, [shape[-1]], c))
            nodes.append(helper.make_node("Add", [prev, f"c{k}"], [out]))
        prev = out
    g = helper.make_graph(nodes, f"chain{n_ops}", [vi("x", F, list(shape))],
                          [vi("y", F, list(shape))], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def unary_model(op: str, n: int) -> ModelProto:
    """One elementwise ``op`` on ``n`` floats: a single op whose call is the fixed cost
    plus one kernel (``Exp`` on 65536 floats: the issue's single-op case)."""
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], f"{op.lower()}{n}",
                          [vi("x", F, [n])], [vi("y", F, [n])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def control_flow_model(trip=4, cond=True, keep=True, scan=True, trip_input=False,
                       stop_below=None):
    """x -> If(constant cond) -> Loop(trip, carried acc, scan output tanh(acc)) -> sigmoid.
    ``stop_below``: the body's condition is ``sum(acc) > stop_below`` (a data-dependent
    stop); ``trip_input``: the trip count is a graph input."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["a"])], "then", [],
                               [vi("a", F, [2, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [],
                               [vi("b", F, [2, 8])])
    body_nodes = [helper.make_node("Cast", ["i"], ["fi"], to=F),
                  helper.make_node("Mul", ["acc_in", "w"], ["t"]),
                  helper.make_node("Add", ["t", "fi"], ["acc_out"]),
                  helper.make_node("Tanh", ["acc_out"], ["s"])]
    if stop_below is None:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    else:
        body_nodes += [helper.make_node("ReduceSum", ["acc_out"], ["tot"], keepdims=0),
                       helper.make_node("Greater", ["tot", "limit"], ["cond_out"])]
    outs = [vi("cond_out", B, []), vi("acc_out", F, [2, 8])]
    outs += [vi("s", F, [2, 8])] if scan else []
    body = helper.make_graph(body_nodes, "body", [vi("i", I64, []), vi("cond_in", B, []),
                                                  vi("acc_in", F, [2, 8])], outs)
    nodes = [helper.make_node("If", ["c"], ["h"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Loop", ["n", "keep", "h"], ["acc"] + (["ss"] if scan else []),
                              body=body),
             helper.make_node("Sigmoid", ["acc"], ["y"])]
    inits = [helper.make_tensor("c", B, [], [cond]), helper.make_tensor("keep", B, [], [keep]),
             helper.make_tensor("w", F, [8], np.linspace(0.5, 1.0, 8).astype(np.float32)),
             helper.make_tensor("limit", F, [], [float(stop_below or 0)])]
    inputs = [vi("x", F, [2, 8])]
    if trip_input:
        inputs.append(vi("n", I64, []))
    else:
        inits.append(helper.make_tensor("n", I64, [], [trip]))
    outputs = [vi("y", F, [2, 8])] + ([vi("ss", F, [None, 2, 8])] if scan else [])
    g = helper.make_graph(nodes, "cf", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
