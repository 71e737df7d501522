"""Ops the held-out model set (galaxir.testing.modern.HELDOUT) found on the numpy reference
or slow, against the numpy reference: 1-d convolutions (audio front ends, wav2vec2's
positional conv), instance_norm (torch's GroupNorm with one channel per group), cumsum /
cumprod (RoBERTa's position ids) and the tiled transpose."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.backends import get_backend
from galaxir.ir import GraphBuilder, tensor
from galaxir.ir.types import DType
from conftest import native_kernels

RNG = np.random.default_rng(5)


def _check(module, feeds, level=0):
    ref = get_backend("numpy").compile(module)(*feeds)
    exe = get_backend("cpu").compile(gx.optimize(module, level=level, target="cpu"))
    got = exe(*feeds)
    assert not exe.fallback_ops, exe.report()
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
    return exe


@pytest.mark.parametrize("C,M,g,k,s,d,pads", [(1, 16, 1, 10, 5, 1, (0, 0)),   # raw audio in
                                              (16, 24, 1, 3, 2, 1, (0, 0)),
                                              (24, 24, 4, 7, 1, 1, (3, 3)),  # grouped, "same"
                                              (16, 16, 16, 5, 1, 2, (4, 2)),  # depthwise dilated
                                              (8, 12, 1, 1, 1, 1, (0, 0))])  # pointwise
@pytest.mark.parametrize("bias,activation", [(True, None), (False, "gelu"), (True, "relu")])
@pytest.mark.parametrize("level", [0, 3])
def test_conv1d_matches_reference(C, M, g, k, s, d, pads, bias, activation, level):
    L = 53
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, C, L))
    ops = [x, gb.constant((RNG.standard_normal((M, C // g, k)) * 0.3).astype(np.float32))]
    if bias:
        ops.append(gb.constant(RNG.standard_normal(M).astype(np.float32)))
    y = gb.conv(*ops, group=g, strides=[s], dilations=[d], pads=list(pads))
    if activation:
        y = gb.create(activation, y, num_results=1).results[0]
    gb.output(y, "y")
    exe = _check(gb.module(), [RNG.standard_normal((2, C, L)).astype(np.float32)], level)
    assert native_kernels(exe)


def test_conv1d_residual_at_o3():
    """The fused residual add of a 1-d conv (z of the conv's [N, M, L] shape)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 8, 40))
    z = gb.input("z", tensor("f32", 1, 8, 40))
    w = gb.constant((RNG.standard_normal((8, 8, 3)) * 0.3).astype(np.float32))
    gb.output(gb.relu(gb.add(gb.conv(x, w, pads=[1, 1]), z)), "y")
    _check(gb.module(), [RNG.standard_normal((1, 8, 40)).astype(np.float32),
                         RNG.standard_normal((1, 8, 40)).astype(np.float32)], level=3)


@pytest.mark.parametrize("shape", [(1, 16, 301), (2, 3, 7, 9), (1, 5, 1), (3, 4, 2, 3, 5)])
@pytest.mark.parametrize("level", [0, 3])
def test_instance_norm_matches_reference(shape, level):
    C = shape[1]
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *shape))
    sc = gb.constant(RNG.standard_normal(C).astype(np.float32))
    bi = gb.constant(RNG.standard_normal(C).astype(np.float32))
    gb.output(gb.op("instance_norm", x, sc, bi, epsilon=1e-5), "y")
    feed = (RNG.standard_normal(shape) * 3 + 1).astype(np.float32)
    exe = _check(gb.module(), [feed], level)
    assert "LayerNorm" in native_kernels(exe)


def test_instance_norm_with_runtime_scale():
    """Scale and bias as graph inputs (not constants) are read per channel too."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 6, 33))
    sc = gb.input("s", tensor("f32", 6))
    bi = gb.input("b", tensor("f32", 6))
    gb.output(gb.op("instance_norm", x, sc, bi, epsilon=1e-3), "y")
    _check(gb.module(), [RNG.standard_normal((2, 6, 33)).astype(np.float32),
                         RNG.standard_normal(6).astype(np.float32),
                         RNG.standard_normal(6).astype(np.float32)])


@pytest.mark.parametrize("dtype", ["int64", "int32", "float32", "float64"])
@pytest.mark.parametrize("shape,axis", [((1, 128), 1), ((3, 5, 4), 1), ((3, 5, 4), -1),
                                        ((6,), 0), ((2, 0, 3), 2)])
@pytest.mark.parametrize("op,exclusive,reverse", [("cumsum", 0, 0), ("cumsum", 1, 0),
                                                  ("cumsum", 0, 1), ("cumsum", 1, 1),
                                                  ("cumprod", 0, 0), ("cumprod", 1, 1)])
def test_scan_matches_reference(dtype, shape, axis, op, exclusive, reverse):
    """cumsum/cumprod natively (RoBERTa's position ids are a cumsum of the mask)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor(DType.from_numpy(np.dtype(dtype)), *shape))
    gb.output(gb.op(op, x, gb.constant(np.asarray(axis, np.int64)), exclusive=exclusive,
                    reverse=reverse), "y")
    if dtype.startswith("int"):
        feed = RNG.integers(-3, 4, shape).astype(dtype)
    else:
        feed = RNG.uniform(0.5, 1.5, shape).astype(dtype)
    exe = _check(gb.module(), [feed])
    if 0 not in shape:
        assert "Scan" in native_kernels(exe)


@pytest.mark.parametrize("shape,perm", [((1, 3199, 512), (0, 2, 1)),   # wav2vec2's front end
                                        ((2, 37, 256), (0, 2, 1)),     # tile remainders
                                        ((2, 13, 5, 256), (0, 3, 1, 2)),
                                        ((2, 33, 47), (0, 2, 1)),      # plain loop
                                        ((16, 16), (1, 0)),
                                        ((2, 5, 40, 17), (0, 3, 1, 2)),  # NHWC -> NCHW
                                        ((2, 17, 5, 40), (0, 2, 3, 1)),  # NCHW -> NHWC
                                        ((3, 20, 4, 18), (2, 0, 3, 1)),
                                        ((1, 12, 128, 64), (0, 2, 1, 3)),  # heads: no tiling
                                        ((40, 3), (1, 0))])               # too narrow to tile
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_transpose_matches_reference(shape, perm, dtype):
    gb = GraphBuilder()
    x = gb.input("x", tensor(DType.from_numpy(np.dtype(dtype)), *shape))
    gb.output(gb.transpose(x, perm=list(perm)), "y")
    feed = RNG.integers(-100, 100, shape).astype(dtype)
    exe = get_backend("cpu").compile(gb.module())
    np.testing.assert_array_equal(exe(feed)[0], np.transpose(feed, perm))


@pytest.mark.parametrize("shape,strides,want", [([512, 3199], [1, 512], 0),
                                                ([2, 3199, 512], [1637888, 1, 512], 1),
                                                ([12, 128, 64], [64, 768, 1], None),
                                                ([3199, 512], [1, 3199], None),  # odd stride
                                                ([40, 3], [1, 40], None)])
def test_transpose_tiles_the_contiguous_input_dim(shape, strides, want):
    from galaxir.backends.cpu.kernels import transpose_tile_dim
    assert transpose_tile_dim(shape, strides) == want


@pytest.mark.parametrize("eq,sa,sb", [
    ("bghid,bghjd->bghij", (1, 2, 3, 7, 8), (1, 2, 3, 5, 8)),   # MaxViT attention scores
    ("bghij,bghjd->bghid", (1, 2, 3, 7, 5), (1, 2, 3, 5, 8)),   # and the weighted sum
    ("ij,jk->ik", (6, 4), (4, 9)),
    ("bij,bkj->bki", (3, 6, 4), (3, 5, 4)),                     # both transposed, output too
    ("nchw,dc->ndhw", (2, 6, 5, 4), (7, 6)),                    # 1x1 conv as an einsum
    ("ik,kj", (3, 5), (5, 4)),                                  # implicit output
    ("i,j->ij", (5,), (3,)),                                    # outer product
    ("bi,bi->b", (4, 6), (4, 6)),                               # row dots
])
@pytest.mark.parametrize("level", [0, 3])
def test_einsum_as_matmul_matches_reference(eq, sa, sb, level):
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", *sa))
    bb = gb.input("b", tensor("f32", *sb))
    gb.output(gb.einsum(a, bb, equation=eq), "y")
    feeds = [RNG.standard_normal(sa).astype(np.float32), RNG.standard_normal(sb).astype(np.float32)]
    exe = _check(gb.module(), feeds, level)
    np.testing.assert_allclose(exe(*feeds)[0], np.einsum(eq, *feeds), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eq,sa,sb", [("ii,ij->j", (4, 4), (4, 3)),     # repeated letter
                                      ("ij,jk->k", (3, 4), (4, 5)),     # i summed out of a alone
                                      ("bij,bjk->bik", (1, 3, 4), (2, 4, 5))])  # broadcast b
def test_einsum_forms_not_rewritten_stay_correct(eq, sa, sb):
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", *sa))
    bb = gb.input("b", tensor("f32", *sb))
    gb.output(gb.einsum(a, bb, equation=eq), "y")
    feeds = [RNG.standard_normal(sa).astype(np.float32), RNG.standard_normal(sb).astype(np.float32)]
    exe = get_backend("cpu").compile(gx.optimize(gb.module(), level=3, target="cpu"))
    np.testing.assert_allclose(exe(*feeds)[0], np.einsum(eq, *feeds), rtol=1e-4, atol=1e-4)
    assert exe.fallback_ops == ["einsum"]
