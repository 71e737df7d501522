"""Shape inference with symbolic dims, op by op, through the Builder (types are inferred as
ops are created, and the verifier re-checks them)."""
import numpy as np
import pytest

from galaxir import errors
from galaxir.ir import GraphBuilder, tensor, verify


def infer(build, *input_types):
    gb = GraphBuilder()
    xs = [gb.input(f"x{i}", t) for i, t in enumerate(input_types)]
    out = build(gb, *xs)
    outs = out if isinstance(out, tuple) else (out,)
    for i, v in enumerate(outs):
        gb.output(v, f"y{i}")
    verify(gb.module())
    return [str(v.type) for v in outs] if len(outs) > 1 else str(outs[0].type)


def c(gb, *values):
    return gb.constant(np.array(values, np.int64))


@pytest.mark.parametrize("a, b, want", [
    (("N", 1), (1, 5), "f32[N,5]"),
    (("N", 3), (3,), "f32[N,3]"),
    ((1, "M"), ("N", 1), "f32[N,M]"),
    (("N", "?"), (1, 4), "f32[N,4]"),
    ((), ("N", 2), "f32[N,2]"),
])
def test_broadcasting(a, b, want):
    assert infer(lambda gb, x, y: gb.add(x, y), tensor("f32", *a), tensor("f32", *b)) == want


def test_broadcast_mismatch_is_an_error_naming_the_op():
    with pytest.raises(errors.ShapeInferenceError, match=r"op 'mul'.*do not broadcast"):
        infer(lambda gb, x, y: gb.mul(x, y), tensor("f32", "N", 3), tensor("f32", 4))


@pytest.mark.parametrize("a, b, want", [
    (("N", "H", "S", 64), ("N", "H", 64, "T"), "f32[N,H,S,T]"),
    (("B", 8, 16), (16, 4), "f32[B,8,4]"),
    ((16,), (16, 4), "f32[4]"),
    (("B", 8, 16), (16,), "f32[B,8]"),
    ((1, 8, 16), ("B", 16, 2), "f32[B,8,2]"),
])
def test_matmul_batch_dims(a, b, want):
    assert infer(lambda gb, x, y: gb.matmul(x, y), tensor("f32", *a), tensor("f32", *b)) == want


@pytest.mark.parametrize("shape, target, want", [
    (("N", 512, 1, 1), (0, -1), "f32[N,512]"),
    (("N", 3, 4), (-1, 12), "f32[N,12]"),
    ((2, 3, 4), (4, -1), "f32[4,6]"),
    (("N", "S", 12, 64), (0, 0, -1), "f32[N,S,768]"),
])
def test_reshape_with_minus_one_and_zero(shape, target, want):
    assert infer(lambda gb, x: gb.reshape(x, c(gb, *target)), tensor("f32", *shape)) == want


def test_concat_transpose_and_squeeze():
    assert infer(lambda gb, x, y: gb.concat(x, y, axis=1),
                 tensor("f32", "N", 3, 8), tensor("f32", "N", 5, 8)) == "f32[N,8,8]"
    assert infer(lambda gb, x, y: gb.concat(x, y, axis=0),
                 tensor("f32", "N", 3), tensor("f32", "M", 3)) == "f32[?,3]"
    assert infer(lambda gb, x: gb.transpose(x, perm=(0, 2, 3, 1)),
                 tensor("f32", "N", 3, "H", "W")) == "f32[N,H,W,3]"
    assert infer(lambda gb, x: gb.unsqueeze(gb.squeeze(x, c(gb, 1)), c(gb, -1)),
                 tensor("f32", "N", 1, 7)) == "f32[N,7,1]"


@pytest.mark.parametrize("keepdims, axes, want", [
    (1, (1,), "f32[N,1,W]"),
    (0, (1,), "f32[N,W]"),
    (0, (-1, 0), "f32[5]"),
    (1, (), "f32[1,1,1]"),
])
def test_reductions_with_keepdims(keepdims, axes, want):
    def build(gb, x):
        ax = c(gb, *axes) if axes else None
        return gb.reduce_mean(x, ax, keepdims=keepdims)
    assert infer(build, tensor("f32", "N", 5, "W")) == want


@pytest.mark.parametrize("attrs, want", [
    (dict(strides=(2, 2), pads=(3, 3, 3, 3)), "f32[N,64,112,112]"),
    (dict(strides=(1, 1), pads=(0, 0, 0, 0)), "f32[N,64,218,218]"),
    (dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(2, 2)), "f32[N,64,212,212]"),
    (dict(strides=(3, 2), pads=(1, 2, 0, 1)), "f32[N,64,73,111]"),
])
def test_conv_output_sizes(attrs, want):
    def build(gb, x):
        w = gb.constant(np.zeros((64, 3, 7, 7), np.float32))
        return gb.conv(x, w, None, kernel_shape=(7, 7), **attrs)
    assert infer(build, tensor("f32", "N", 3, 224, 224)) == want


@pytest.mark.parametrize("attrs, want", [
    (dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), "f32[N,64,56,56]"),
    (dict(kernel_shape=(3, 3), strides=(2, 2)), "f32[N,64,55,55]"),
    (dict(kernel_shape=(3, 3), strides=(2, 2), ceil_mode=1), "f32[N,64,56,56]"),
    (dict(kernel_shape=(2, 2), strides=(1, 1), dilations=(2, 2)), "f32[N,64,110,110]"),
])
def test_pool_output_sizes(attrs, want):
    assert infer(lambda gb, x: gb.max_pool(x, num_results=1, **attrs), tensor("f32", "N", 64, 112, 112)) == want


def test_symbolic_spatial_dims_stay_unknown_not_wrong():
    def build(gb, x):
        w = gb.constant(np.zeros((8, 3, 3, 3), np.float32))
        return gb.conv(x, w, None, kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    assert infer(build, tensor("f32", "N", 3, "H", "W")) in ("f32[N,8,H,W]", "f32[N,8,?,?]")
