"""The cpu backend's native resize (galaxir/backends/cpu/kernels_resize.py, lowering in
lower_resize.py): every mode, coordinate transformation and nearest mode, up- and
downscaling by integer and non-integer factors, sizes instead of scales, axes,
keep_aspect_ratio_policy, exclude_outside, antialias, tf_crop_and_resize with its
extrapolation value, odd shapes, runs natively and agrees with the numpy reference; what
the kernel does not take (runtime scales, blending integers, too many taps) still runs, on
the reference."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(7)

COORDS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
          "half_pixel_symmetric", "tf_half_pixel_for_nn")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def rand(*shape, dtype=np.float32):
    return (RNG.standard_normal(shape) * 3).astype(dtype)


def resize_module(shape, variants, dtype="f32"):
    """One input x, one resize output per variant: (scales, sizes, roi, attrs)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor(dtype, *shape))
    for k, (scales, sizes, roi, attrs) in enumerate(variants):
        sc = None if scales is None else gb.constant(np.asarray(scales, np.float32))
        sz = None if sizes is None else gb.constant(np.asarray(sizes, np.int64))
        ro = None if roi is None else gb.constant(np.asarray(roi, np.float32))
        gb.output(gb.resize(x, ro, sc, sz, **attrs), f"y{k}")
    return gb.module()


def check(shape, variants, native=True, dtype="f32", x=None, rtol=1e-5, atol=1e-6):
    """Compile for cpu and numpy, compare every output; resize native (or not)."""
    m = resize_module(shape, variants, dtype)
    if x is None:
        x = rand(*shape, dtype=np.float32 if dtype == "f32" else np.dtype(dtype))
    cpu = gx.compile(m, target="cpu")
    got = cpu(x)
    want = gx.compile(m, target="numpy", level=0)(x)
    assert len(got) == len(want) == len(variants)
    for g, w, v in zip(got, want, variants):
        assert g.shape == w.shape and g.dtype == w.dtype, v
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=str(v))
    if native:
        assert "resize" in cpu.native_ops and "resize" not in cpu.fallback_ops, cpu.report()
    else:
        assert "resize" in cpu.fallback_ops, cpu.report()
    return cpu


def S(scales, **attrs):
    return (scales, None, None, attrs)


def Z(sizes, **attrs):
    return (None, sizes, None, attrs)


# -- nearest --------------------------------------------------------------------------------
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("scales", [
    [1, 1, 2, 3],           # integer upsampling
    [1, 1, 1.7, 2.5],       # non-integer upsampling
    [1, 1, 0.5, 0.34],      # downsampling
    [1, 1, 0.6, 1.8],       # down one axis, up the other
])
def test_nearest_modes(coord, scales):
    check((2, 3, 5, 7), [S(scales, mode="nearest", coordinate_transformation_mode=coord,
                           nearest_mode=nm) for nm in NEAREST])


@pytest.mark.parametrize("sizes", [[1, 2, 9, 4], [1, 2, 3, 11], [1, 2, 1, 1], [1, 2, 6, 6]])
def test_nearest_sizes(sizes):
    check((1, 2, 6, 5), [Z(sizes, mode="nearest", coordinate_transformation_mode=c,
                           nearest_mode=nm)
                         for c, nm in [("half_pixel", "round_prefer_floor"),
                                       ("align_corners", "floor"),
                                       ("asymmetric", "round_prefer_ceil"),
                                       ("pytorch_half_pixel", "ceil")]])


def test_nearest_every_axis_and_odd_ranks():
    check((3, 4, 5), [S([2, 0.5, 1.5], mode="nearest"),
                      S([1, 1, 3], mode="nearest", coordinate_transformation_mode="asymmetric",
                        nearest_mode="floor")])
    check((7,), [S([2.3], mode="nearest"), S([0.4], mode="nearest", nearest_mode="ceil")])
    check((2, 3, 4, 5, 3), [S([1, 1, 2, 1.5, 2], mode="nearest")])


@pytest.mark.parametrize("dtype", ["i64", "u8", "f16", "i32"])
def test_nearest_other_dtypes_gather(dtype):
    np_dt = {"i64": np.int64, "u8": np.uint8, "f16": np.float16, "i32": np.int32}[dtype]
    x = (RNG.integers(0, 100, (2, 3, 4, 5))).astype(np_dt)
    check((2, 3, 4, 5), [S([1, 1, 2, 1.5], mode="nearest"),
                         Z([2, 3, 3, 9], mode="nearest", nearest_mode="floor")],
          dtype=dtype, x=x, rtol=0, atol=0)


# -- linear ---------------------------------------------------------------------------------
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("scales", [
    [1, 1, 2, 2],           # integer upsampling
    [1, 1, 1.7, 2.3],       # non-integer upsampling
    [1, 1, 0.5, 0.6],       # downsampling
    [1, 1, 0.8, 3.0],       # mixed
])
def test_bilinear(coord, scales):
    check((2, 3, 5, 7), [S(scales, mode="linear", coordinate_transformation_mode=coord)])


@pytest.mark.parametrize("sizes", [[2, 3, 9, 4], [2, 3, 1, 13], [2, 3, 5, 1], [2, 3, 8, 8]])
def test_bilinear_sizes(sizes):
    check((2, 3, 6, 5), [Z(sizes, mode="linear", coordinate_transformation_mode=c)
                         for c in ("half_pixel", "pytorch_half_pixel", "align_corners",
                                   "asymmetric")])


def test_linear_other_axes():
    # only H: the innermost loop reads and writes contiguous rows
    check((2, 3, 6, 37), [S([1, 1, 1.5, 1], mode="linear"),
                          S([1, 1, 0.5, 1], mode="linear",
                            coordinate_transformation_mode="align_corners")])
    # 1-d and trilinear, and every axis of a 3-d tensor
    check((3, 4, 9), [S([1, 1, 2.2], mode="linear"), S([2, 0.5, 1.3], mode="linear")])
    check((1, 2, 3, 4, 5), [S([1, 1, 2, 1.5, 0.6], mode="linear",
                              coordinate_transformation_mode="align_corners")])


def test_linear_exclude_outside_and_antialias():
    check((2, 2, 9, 11), [S([1, 1, 0.6, 0.45], mode="linear", exclude_outside=1),
                          S([1, 1, 1.6, 2.5], mode="linear", exclude_outside=1),
                          S([1, 1, 0.6, 0.45], mode="linear", antialias=1),
                          Z([2, 2, 3, 4], mode="linear", antialias=1,
                            coordinate_transformation_mode="pytorch_half_pixel"),
                          S([1, 1, 0.6, 0.45], mode="linear", antialias=1, exclude_outside=1)])


def test_cubic():
    check((2, 2, 6, 7), [S([1, 1, 1.7, 2.0], mode="cubic"),
                         S([1, 1, 0.6, 0.5], mode="cubic",
                           coordinate_transformation_mode="align_corners"),
                         S([1, 1, 2, 2], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
                         S([1, 1, 0.7, 0.5], mode="cubic", antialias=1),
                         S([1, 1, 2.5, 1.5], mode="cubic",
                           coordinate_transformation_mode="asymmetric")],
          atol=1e-5)


# -- axes, policies, crop ---------------------------------------------------------------------
def test_axes_attribute():
    check((2, 3, 5, 4), [S([2.5, 1.5], mode="nearest", axes=[2, 3]),
                         S([1.5, 2.5], mode="nearest", axes=[3, 2]),
                         S([0.6, 1.4], mode="linear", axes=[-1, -2]),
                         Z([7, 2], mode="linear", axes=[1, 3]),
                         Z([3], mode="linear", axes=[0],
                           coordinate_transformation_mode="align_corners")])


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_keep_aspect_ratio_policy(policy):
    check((2, 2, 5, 8), [Z([7, 9], mode="nearest", axes=[2, 3], keep_aspect_ratio_policy=policy),
                         Z([3, 4], mode="linear", axes=[2, 3], keep_aspect_ratio_policy=policy),
                         Z([4, 4, 10, 3], mode="linear", keep_aspect_ratio_policy=policy)])


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_tf_crop_and_resize(mode):
    check((1, 2, 6, 7), [
        (None, [1, 2, 4, 5], [0, 0, 0.2, 0.3, 1, 1, 0.8, 0.9],
         dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize")),
        (None, [1, 2, 5, 9], [0, 0, -0.3, 0.4, 1, 1, 0.9, 1.3],
         dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize",
              extrapolation_value=10.0)),
        ([0.7, 1.8], None, [0.1, -0.2, 0.6, 1.2],
         dict(mode=mode, axes=[3, 2], coordinate_transformation_mode="tf_crop_and_resize",
              extrapolation_value=-2.5)),
    ], atol=1e-5)


def test_identity_and_copy():
    check((2, 3, 4), [S([1, 1, 1], mode="linear"), Z([2, 3, 4], mode="nearest")])


# -- bigger: split over the thread pool ---------------------------------------------------------
def test_large_parallel():
    check((1, 16, 60, 80), [S([1, 1, 2, 2], mode="nearest"),
                            S([1, 1, 2, 2], mode="linear"),
                            S([1, 1, 1.5, 1.5], mode="linear",
                              coordinate_transformation_mode="align_corners")])
    check((1, 1, 150, 130), [S([1, 1, 1.9, 2.1], mode="linear")])


# -- what falls back --------------------------------------------------------------------------
def test_runtime_scales_fall_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 2, 3, 4))
    s = gb.input("s", tensor("f32", 4))
    gb.output(gb.resize(x, None, s, None, mode="linear"), "y")
    m = gb.module()
    xv, sv = rand(1, 2, 3, 4), np.array([1, 1, 2, 2], np.float32)
    cpu = gx.compile(m, target="cpu")
    np.testing.assert_allclose(cpu(xv, sv)[0], gx.compile(m, target="numpy")(xv, sv)[0],
                               rtol=1e-6)
    assert "resize" in cpu.fallback_ops
    assert "not constant" in cpu.report(), cpu.report()


def test_linear_on_integers_falls_back():
    x = RNG.integers(0, 50, (1, 1, 4, 4)).astype(np.int32)
    check((1, 1, 4, 4), [S([1, 1, 2, 2], mode="linear")], native=False, dtype="i32", x=x)


def test_too_many_taps_falls_back():
    cpu = check((1, 1, 64, 64), [S([1, 1, 0.05, 0.05], mode="linear", antialias=1)],
                native=False)
    assert "taps" in cpu.report(), cpu.report()


# -- the ONNX way in: Upsample and Resize with constant inputs ------------------------------------
def test_onnx_upsample_and_resize_import():
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 5])
    up = helper.make_model(helper.make_graph(
        [helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")], "up", [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 15])],
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 3])]),
        opset_imports=[helper.make_opsetid("", 9)])
    rs = helper.make_model(helper.make_graph(
        [helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="linear",
                          coordinate_transformation_mode="pytorch_half_pixel")], "rs", [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 7, 4])],
        [helper.make_tensor("sz", TensorProto.INT64, [4], [1, 2, 7, 4])]),
        opset_imports=[helper.make_opsetid("", 19)])
    xv = rand(1, 2, 3, 5)
    for model in (up, rs):
        onnx.checker.check_model(model)
        m = gx.import_model(model)
        cpu = gx.compile(m, target="cpu")
        np.testing.assert_allclose(cpu(xv)[0], gx.compile(m, target="numpy")(xv)[0],
                                   rtol=1e-5, atol=1e-6)
        assert "resize" in cpu.native_ops and not cpu.fallback_ops, cpu.report()
