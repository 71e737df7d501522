"""Property tests: random well-typed graphs (several inputs and outputs, symbolic dims,
constants of every size, nested if/loop regions) round-trip through print/parse and clone,
the verifier accepts them, and the round-tripped module computes the same values."""
import numpy as np
from hypothesis import given, settings, strategies as st, HealthCheck

import galaxir as gx
from galaxir.ir import GraphBuilder, parse, tensor, verify

UNARY = ["relu", "neg", "abs", "sigmoid", "tanh"]
BINARY = ["add", "sub", "mul"]


@st.composite
def graphs(draw):
    dims = draw(st.lists(st.sampled_from(["N", "M", 2, 3]), min_size=1, max_size=3))
    n_inputs = draw(st.integers(1, 3))
    gb = GraphBuilder()
    ty = tensor("f32", *dims)
    values = [gb.input(f"in{i}", ty) for i in range(n_inputs)]
    cond = gb.input("cond", tensor("bool")) if draw(st.booleans()) else None

    def emit(b, pool, depth):
        kind = draw(st.sampled_from(["unary", "binary", "const"] + (["if", "loop"] if depth < 2 else [])))
        if kind == "unary":
            return b.op(draw(st.sampled_from(UNARY)), draw(st.sampled_from(pool)))
        if kind == "binary":
            return b.op(draw(st.sampled_from(BINARY)), draw(st.sampled_from(pool)), draw(st.sampled_from(pool)))
        if kind == "const":
            c = b.constant(np.float32(draw(st.floats(-2, 2, width=32))))
            return b.op("add", draw(st.sampled_from(pool)), c)
        if kind == "if" and cond is not None:
            n = draw(st.integers(1, 2))

            def branch(rb):
                inner = list(pool)
                outs = []
                for _ in range(n):
                    v = emit(rb, inner, depth + 1)
                    inner.append(v)
                    outs.append(v)
                return outs
            op = b.create("if", cond, regions=[b.region(body=branch), b.region(body=branch)])
            return op.results[-1]
        if kind in ("if", "loop"):
            trip = b.constant(np.int64(draw(st.integers(0, 3))))
            init = draw(st.sampled_from(pool))

            def body(rb, i, c, acc):
                inner = list(pool) + [acc]
                v = emit(rb, inner, depth + 1)
                return [c, v]
            op = b.create("loop", trip, None, init, regions=[b.region([tensor("i64"), tensor("bool"), init.type], body)])
            return op.results[0]
        return draw(st.sampled_from(pool))

    for _ in range(draw(st.integers(1, 8))):
        values.append(emit(gb, values, 0))
    outs = draw(st.lists(st.sampled_from(values[n_inputs:] or values), min_size=1, max_size=3))
    for i, v in enumerate(outs):
        gb.output(v, f"out{i}")
    if draw(st.booleans()):  # a big constant prints as a resource blob
        gb.output(gb.constant(np.random.RandomState(len(outs)).rand(10, 30).astype(np.float32)), "big")
    return gb.module({"seed": "hypothesis"}), dims, n_inputs, cond is not None


def _inputs(dims, n_inputs, has_cond, seed):
    rng = np.random.RandomState(seed)
    shape = [4 if isinstance(d, str) else d for d in dims]
    xs = [rng.randn(*shape).astype(np.float32) for _ in range(n_inputs)]
    if has_cond:
        xs.append(np.array(bool(seed % 2)))
    return xs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(0, 1000))
def test_random_graphs_round_trip(case, seed):
    m, dims, n_inputs, has_cond = case
    verify(m)
    text = m.to_text()
    m2 = parse(text)
    verify(m2)
    assert m2 == m
    assert m2.to_text() == text
    c = m.clone()
    verify(c)
    assert c == m
    xs = _inputs(dims, n_inputs, has_cond, seed)
    want = gx.compile(m, target="numpy", level=0)(*xs)
    got = gx.compile(m2, target="numpy", level=0)(*xs)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
