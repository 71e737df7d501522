"""Small float models the quantization tests share (a CNN with a residual add and a
classifier, and a transformer-style MLP with 3-D matmuls, softmax and layer norm)."""
import numpy as np

from galaxir.ir.builder import GraphBuilder
from galaxir.ir.types import tensor


def cnn(seed=0):
    rng = np.random.default_rng(seed)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3, 16, 16))
    w1 = gb.constant(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3)
    y = gb.relu(gb.conv(x, w1, gb.constant(rng.standard_normal(8).astype(np.float32)), pads=(1, 1, 1, 1)))
    y2 = gb.conv(y, gb.constant(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3))
    f = gb.reshape(gb.add(y2, y), gb.constant(np.array([0, -1], np.int64)))
    z = gb.gemm(f, gb.constant(rng.standard_normal((10, 2048)).astype(np.float32) * 0.02),
                gb.constant(np.ones(10, np.float32)), transB=1)
    gb.output(z, "z")
    return gb.module()


def mlp(seed=0, k=64, n=96):
    rng = np.random.default_rng(seed)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 8, k))
    h = gb.matmul(x, gb.constant((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)))
    h = gb.add(h, gb.constant(rng.standard_normal(n).astype(np.float32) * 0.1))
    h = gb.softmax(h, axis=-1)
    h = gb.layer_norm(h, gb.constant(np.ones(n, np.float32)), gb.constant(np.zeros(n, np.float32)))
    o = gb.matmul(h, gb.constant((rng.standard_normal((n, k)) / np.sqrt(n)).astype(np.float32)))
    gb.output(gb.exp(gb.mul(o, gb.constant(np.float32(0.1)))), "y")
    return gb.module()


def attention_block(seed=0, t=16, d=32):
    """One attention head as an exporter writes it: softmax(q @ k^T * s) @ v, then an
    MLP with the erf gelu (the decomposed forms O2 recognizes)."""
    rng = np.random.default_rng(seed)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, t, d))

    def proj(n):
        return gb.matmul(x, gb.constant((rng.standard_normal((d, n)) / np.sqrt(d)).astype(np.float32)))
    q, k, v = proj(d), proj(d), proj(d)
    s = gb.mul(gb.matmul(q, gb.transpose(k, perm=(0, 2, 1))), gb.constant(np.float32(d ** -0.5)))
    a = gb.matmul(gb.softmax(s, axis=-1), v)
    h = gb.matmul(a, gb.constant((rng.standard_normal((d, 2 * d)) / np.sqrt(d)).astype(np.float32)))
    g = gb.mul(gb.mul(h, gb.constant(np.float32(0.5))),
               gb.add(gb.erf(gb.div(h, gb.constant(np.float32(np.sqrt(2))))), gb.constant(np.float32(1))))
    gb.output(g, "y")
    return gb.module()


def feeds(name, shape, count, seed):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]
