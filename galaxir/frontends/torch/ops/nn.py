"""Neural-network ATen ops: matmul family, convolution, normalization, pooling, softmax,
attention, embedding, resampling."""
from __future__ import annotations

import numpy as np

from ....ir import Value
from ....ir.types import DType
from ..importer import TorchContext, converter


def _ints(v, n: int) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(x) for x in (v * n if len(v) == 1 else v)]


# -- matmul family ---------------------------------------------------------------------------
@converter("addmm")
def addmm(ctx: TorchContext):
    return ctx.op("gemm", ctx.args["mat1"], ctx.args["mat2"], ctx.args["self"],
                  alpha=float(ctx.arg("alpha", 1)), beta=float(ctx.arg("beta", 1)))


@converter("mm", "bmm", "matmul")
def mm(ctx: TorchContext):
    a = ctx.args["self"]
    b = ctx.args.get("mat2", ctx.args.get("other"))
    return ctx.op("matmul", a, b)


@converter("baddbmm", "addbmm")
def baddbmm(ctx: TorchContext):
    prod = ctx.op("matmul", ctx.args["batch1"], ctx.args["batch2"])
    if "addbmm" in ctx.op_name and "baddbmm" not in ctx.op_name:
        prod = ctx.op("reduce_sum", prod, ctx.i64([0]), keepdims=0)
    dt = prod.type.dtype
    alpha, beta = ctx.arg("alpha", 1), ctx.arg("beta", 1)
    if alpha != 1:
        prod = ctx.op("mul", prod, ctx.tensor(alpha, dt))
    if beta == 0:
        return prod
    c = ctx.args["self"]
    if beta != 1:
        c = ctx.op("mul", c, ctx.tensor(beta, dt))
    return ctx.op("add", c, prod)


@converter("linear")
def linear(ctx: TorchContext):
    w = ctx.op("transpose", ctx.args["weight"], perm=[1, 0])
    y = ctx.op("matmul", ctx.args["input"], w)
    return ctx.op("add", y, ctx.args["bias"]) if ctx.has("bias") else y


# -- convolution --------------------------------------------------------------------------------
@converter("convolution")
def convolution(ctx: TorchContext):
    x, w, bias = ctx.args["input"], ctx.args["weight"], ctx.args.get("bias")
    n = ctx.rank("input") - 2
    if n < 1:
        raise ctx.unsupported("convolution of an input without spatial dims")
    strides, pads, dil = (_ints(ctx.args[k], n) for k in ("stride", "padding", "dilation"))
    attrs = {"strides": strides, "pads": pads + pads, "dilations": dil,
             "group": int(ctx.arg("groups", 1)), "kernel_shape": list(ctx.shape_of("weight")[2:])}
    if not all(isinstance(k, int) for k in attrs["kernel_shape"]):
        del attrs["kernel_shape"]
    if ctx.args.get("transposed"):
        out_pad = _ints(ctx.arg("output_padding", 0), n)
        if any(out_pad):
            attrs["output_padding"] = out_pad
        return ctx.op("conv_transpose", x, w, bias, **attrs)
    return ctx.op("conv", x, w, bias, **attrs)


# -- normalization ------------------------------------------------------------------------------
def _channels(ctx: TorchContext, name: str, value: float, like: str, axis: int) -> Value:
    """Argument ``name`` or, when absent (affine=False), a constant of ``value``."""
    v = ctx.args.get(name)
    if v is not None:
        return v
    c = ctx.shape_of(like)[axis]
    if not isinstance(c, int):
        raise ctx.unsupported(f"{name} is absent and the channel count is not static")
    return ctx.constant(np.full((c,), value, ctx.out_dtype.numpy))


@converter("_native_batch_norm_legit_no_training")
def batch_norm_eval(ctx: TorchContext):
    x = ctx.args["input"]
    scale = _channels(ctx, "weight", 1.0, "input", 1)
    bias = _channels(ctx, "bias", 0.0, "input", 1)
    y = ctx.op("batch_norm", x, scale, bias, ctx.args["running_mean"], ctx.args["running_var"],
               epsilon=float(ctx.args["eps"]))
    return y, None, None


@converter("native_batch_norm", "_native_batch_norm_legit")
def batch_norm(ctx: TorchContext):
    if ctx.args.get("running_mean") is None:
        return batch_norm_no_stats(ctx)
    if ctx.args.get("training"):
        raise ctx.unsupported("batch norm in training mode (it updates running statistics); "
                              "export the model in eval mode")
    return batch_norm_eval(ctx)


@converter("_native_batch_norm_legit.no_stats")
def batch_norm_no_stats(ctx: TorchContext):
    """Normalization with the input's own statistics over every dim but 1: what
    nn.InstanceNorm (reshaped to one batch) and norms without running stats compute."""
    x = ctx.args["input"]
    r = ctx.rank("input")
    axes = ctx.i64([0] + list(range(2, r)))
    dt = x.type.dtype
    mean = ctx.op("reduce_mean", x, axes, keepdims=1)
    dev = ctx.op("sub", x, mean)
    var = ctx.op("reduce_mean", ctx.op("mul", dev, dev), axes, keepdims=1)
    y = ctx.op("div", dev, ctx.op("sqrt", ctx.op("add", var, ctx.tensor(float(ctx.args["eps"]), dt))))
    shape = ctx.i64([1, -1] + [1] * (r - 2))
    if ctx.has("weight"):
        y = ctx.op("mul", y, ctx.op("reshape", ctx.args["weight"], shape))
    if ctx.has("bias"):
        y = ctx.op("add", y, ctx.op("reshape", ctx.args["bias"], shape))
    return y, None, None


@converter("native_layer_norm")
def layer_norm(ctx: TorchContext):
    x = ctx.args["input"]
    k = len(ctx.args["normalized_shape"])
    norm_shape = ctx.shape_of("input")[-k:]
    dt = ctx.out_dtype
    if ctx.has("weight"):
        scale = ctx.args["weight"]
    elif all(isinstance(d, int) for d in norm_shape):
        scale = ctx.constant(np.ones(norm_shape, dt.numpy))
    else:
        raise ctx.unsupported("layer norm without weight over a non-static shape")
    y = ctx.op("layer_norm", x, scale, ctx.args.get("bias"), axis=-k, epsilon=float(ctx.args["eps"]))
    return y, None, None


@converter("native_group_norm")
def group_norm(ctx: TorchContext):
    x = ctx.args["input"]
    scale = _channels(ctx, "weight", 1.0, "input", 1)
    bias = _channels(ctx, "bias", 0.0, "input", 1)
    y = ctx.op("group_norm", x, scale, bias, num_groups=int(ctx.args["group"]),
               epsilon=float(ctx.args["eps"]))
    return y, None, None


@converter("_softmax", "softmax")
def softmax(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    return ctx.op("softmax", x, axis=int(ctx.args["dim"]))


@converter("_log_softmax", "log_softmax")
def log_softmax(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    return ctx.op("log_softmax", x, axis=int(ctx.args["dim"]))


# -- pooling ---------------------------------------------------------------------------------
def _pool_attrs(ctx: TorchContext, n: int) -> dict:
    kernel = _ints(ctx.args["kernel_size"], n)
    stride = ctx.args.get("stride") or kernel
    pad = _ints(ctx.arg("padding", 0), n)
    return {"kernel_shape": kernel, "strides": _ints(stride, n), "pads": pad + pad,
            "ceil_mode": int(bool(ctx.args.get("ceil_mode")))}


@converter("max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "max_pool1d", "max_pool2d", "max_pool3d")
def max_pool(ctx: TorchContext):
    n = ctx.rank("self") - 2
    attrs = _pool_attrs(ctx, n)
    dil = _ints(ctx.arg("dilation", 1), n)
    if any(d != 1 for d in dil):
        attrs["dilations"] = dil
    y = ctx.op("max_pool", ctx.args["self"], num_results=1, **attrs)
    return (y, None) if "with_indices" in ctx.op_name else y


@converter("avg_pool1d", "avg_pool2d", "avg_pool3d")
def avg_pool(ctx: TorchContext):
    n = ctx.rank("self") - 2
    if ctx.args.get("divisor_override") is not None:
        raise ctx.unsupported("avg_pool with divisor_override")
    attrs = _pool_attrs(ctx, n)
    attrs["count_include_pad"] = int(bool(ctx.arg("count_include_pad", True)))
    return ctx.op("average_pool", ctx.args["self"], **attrs)


def _adaptive(ctx: TorchContext, kind: str):
    x = ctx.args["self"]
    out = _ints(ctx.args["output_size"], ctx.rank("self") - 2)
    spatial = ctx.shape_of("self")[2:]
    if all(o == 1 for o in out):
        return ctx.op("global_average_pool" if kind == "avg" else "global_max_pool", x)
    if not all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        raise ctx.unsupported(f"adaptive pooling from {spatial} to {out}: only sizes that divide "
                              "evenly are supported")
    k = [s // o for s, o in zip(spatial, out)]
    if kind == "avg":
        return ctx.op("average_pool", x, kernel_shape=k, strides=k)
    return ctx.op("max_pool", x, num_results=1, kernel_shape=k, strides=k)


@converter("_adaptive_avg_pool1d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
           "adaptive_avg_pool1d")
def adaptive_avg_pool(ctx: TorchContext):
    return _adaptive(ctx, "avg")


@converter("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
def adaptive_max_pool(ctx: TorchContext):
    return _adaptive(ctx, "max"), None


# -- attention ------------------------------------------------------------------------------------
@converter("scaled_dot_product_attention")
def sdpa(ctx: TorchContext):
    q, k, v = ctx.args["query"], ctx.args["key"], ctx.args["value"]
    rank = ctx.rank("query")
    if ctx.arg("dropout_p", 0.0):
        raise ctx.unsupported("attention dropout (dropout_p > 0); export in eval mode")
    if rank not in (3, 4):
        raise ctx.unsupported(f"scaled_dot_product_attention on rank-{rank} inputs (3 or 4 supported)")
    mask = ctx.args.get("attn_mask")
    if rank == 3:  # (B, L, E): one head
        one = ctx.i64([1])
        q, k, v = (ctx.op("unsqueeze", t, one) for t in (q, k, v))
        if mask is not None and ctx.rank("attn_mask") == 3:
            mask = ctx.op("unsqueeze", mask, one)
    if mask is not None and mask.type.dtype != DType.bool:
        mask = ctx.tensor(mask, q.type.dtype)
    attrs = {"is_causal": int(bool(ctx.args.get("is_causal")))}
    if ctx.args.get("scale") is not None:
        attrs["scale"] = float(ctx.args["scale"])
    y = ctx.op("attention", q, k, v, mask, **attrs)[0]
    if rank == 3:
        y = ctx.op("squeeze", y, ctx.i64([1]))
    return y


# -- embedding and resampling ---------------------------------------------------------------------
@converter("embedding")
def embedding(ctx: TorchContext):
    return ctx.op("gather", ctx.args["weight"], ctx.args["indices"], axis=0)


def _resize(ctx: TorchContext, mode: str, align_corners: bool | None):
    x = ctx.args.get("input", ctx.args.get("self"))
    n = ctx.rank("input" if "input" in ctx.args else "self") - 2
    axes = list(range(2, 2 + n))
    sizes = ctx.args.get("output_size")
    scales = ctx.args.get("scale_factors")
    if mode == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        attrs = {"mode": "linear", "coordinate_transformation_mode":
                 "align_corners" if align_corners else "pytorch_half_pixel"}
    if scales is not None and not align_corners:
        return ctx.op("resize", x, None, ctx.constant(np.asarray(scales, np.float32)), None,
                      axes=axes, **attrs)
    if sizes is None:
        sizes = [d for d in ctx.importer.dims(ctx.out_meta.shape)[2:]]
    return ctx.op("resize", x, None, None, ctx.shape_value(sizes), axes=axes, **attrs)


@converter("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d")
def upsample_nearest(ctx: TorchContext):
    return _resize(ctx, "nearest", None)


@converter("upsample_bilinear2d", "upsample_linear1d")
def upsample_linear(ctx: TorchContext):
    return _resize(ctx, "linear", bool(ctx.args.get("align_corners")))


@converter("pixel_shuffle")
def pixel_shuffle(ctx: TorchContext):
    if ctx.rank("self") != 4:
        raise ctx.unsupported("pixel_shuffle on a non-4D input")
    return ctx.op("depth_to_space", ctx.args["self"], blocksize=int(ctx.args["upscale_factor"]),
                  mode="CRD")



# -- the fused fast paths torch takes for nn.TransformerEncoderLayer / nn.MultiheadAttention --------
def _linear(ctx: TorchContext, x: Value, w: Value, b: Value | None) -> Value:
    y = ctx.op("matmul", x, ctx.op("transpose", w, perm=[1, 0]))
    return ctx.op("add", y, b) if b is not None else y


def _self_attention(ctx: TorchContext, q: Value, k: Value, v: Value, heads: int, embed: int,
                    qkv_w: Value, qkv_b: Value, proj_w: Value, proj_b: Value) -> Value:
    """Multi-head attention over (B, T, E) inputs with packed in-projection weights."""
    if q is k and k is v:
        qkv = _linear(ctx, q, qkv_w, qkv_b)
        q, k, v = ctx.op("split", qkv, axis=-1, num_outputs=3, num_results=3)
    else:
        ws = ctx.op("split", qkv_w, axis=0, num_outputs=3, num_results=3)
        bs = ctx.op("split", qkv_b, axis=0, num_outputs=3, num_results=3)
        q, k, v = (_linear(ctx, t, w, b) for t, w, b in zip((q, k, v), ws, bs))
    split_heads = ctx.i64([0, 0, heads, embed // heads])
    q, k, v = (ctx.op("transpose", ctx.op("reshape", t, split_heads), perm=[0, 2, 1, 3])
               for t in (q, k, v))
    y = ctx.op("attention", q, k, v)[0]
    y = ctx.op("reshape", ctx.op("transpose", y, perm=[0, 2, 1, 3]), ctx.i64([0, 0, embed]))
    return _linear(ctx, y, proj_w, proj_b)


@converter("_native_multi_head_attention")
def native_mha(ctx: TorchContext):
    if ctx.args.get("mask") is not None:
        raise ctx.unsupported("attention masks in the fused multi-head attention fast path")
    if ctx.rank("query") != 3:
        raise ctx.unsupported("unbatched or nested inputs")
    a = ctx.args
    y = _self_attention(ctx, a["query"], a["key"], a["value"], int(a["num_head"]),
                        int(a["embed_dim"]), a["qkv_weight"], a["qkv_bias"], a["proj_weight"],
                        a["proj_bias"])
    if a.get("need_weights"):
        raise ctx.unsupported("need_weights=True in the fused multi-head attention fast path")
    return y, None


@converter("_transformer_encoder_layer_fwd")
def transformer_encoder_layer(ctx: TorchContext):
    """torch's fused nn.TransformerEncoderLayer (batch_first, taken under no_grad)."""
    a = ctx.args
    if a.get("mask") is not None:
        raise ctx.unsupported("masks in the fused transformer encoder layer fast path")
    if ctx.rank("src") != 3:
        raise ctx.unsupported("unbatched or nested inputs")
    eps, norm_first = float(a["eps"]), bool(a["norm_first"])

    def norm(x, i):
        return ctx.op("layer_norm", x, a[f"norm_weight_{i}"], a[f"norm_bias_{i}"], axis=-1,
                      epsilon=eps)

    src = a["src"]
    x = norm(src, 1) if norm_first else src
    x = _self_attention(ctx, x, x, x, int(a["num_heads"]), int(a["embed_dim"]), a["qkv_weight"],
                        a["qkv_bias"], a["proj_weight"], a["proj_bias"])
    x = ctx.op("add", x, src)
    if not norm_first:
        x = norm(x, 1)
    res = x
    h = norm(x, 2) if norm_first else x
    h = _linear(ctx, h, a["ffn_weight_1"], a["ffn_bias_1"])
    h = ctx.op("gelu", h) if a["use_gelu"] else ctx.op("relu", h)
    x = ctx.op("add", _linear(ctx, h, a["ffn_weight_2"], a["ffn_bias_2"]), res)
    return norm(x, 2) if not norm_first else x
