"""Converters for ai.onnx.ml ops, the ai.onnx.preview.training optimizers and the random
generators.  LabelEncoder's many attribute spellings (opset 1 classes_strings, opset 2
keys_*/values_*, opset 4 tensors) all become keys/values/default tensors."""
from __future__ import annotations

import numpy as np

from ....ir.types import DType
from ..importer import converter

ML = "ai.onnx.ml"
TRAINING = "ai.onnx.preview.training"


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


@converter("LabelEncoder", domain=ML)
def label_encoder(ctx):
    a = ctx.attrs
    x = ctx.inputs[0]
    if ctx.opset < 2:  # classes_strings: string -> index, or index -> string
        classes = _strings(a.get("classes_strings", ()))
        index = np.arange(len(classes), dtype=np.int64)
        if x.type.dtype is DType.string:
            keys, values = classes, index
            default = np.array([a.get("default_int64", -1)], np.int64)
        else:
            keys, values = index, classes
            default = np.array([a.get("default_string", "_Unused")], dtype=object)
    else:
        keys = _pick(a, "keys")
        values = _pick(a, "values")
        if keys is None or values is None:
            raise ctx.unsupported("LabelEncoder needs one keys_* and one values_* attribute")
        default = _default(a, values)
    return [ctx.op("ml.label_encoder", x, keys_tensor=keys, values_tensor=values,
                   default_tensor=default)]


def _pick(a, prefix):
    if f"{prefix}_tensor" in a:
        return np.asarray(a[f"{prefix}_tensor"]).reshape(-1)
    if f"{prefix}_strings" in a:
        return _strings(a[f"{prefix}_strings"])
    if f"{prefix}_int64s" in a:
        return np.array(a[f"{prefix}_int64s"], np.int64)
    if f"{prefix}_floats" in a:
        return np.array(a[f"{prefix}_floats"], np.float32)
    return None


def _default(a, values: np.ndarray) -> np.ndarray:
    if "default_tensor" in a:
        return np.asarray(a["default_tensor"]).reshape(-1)[:1].astype(values.dtype)
    if values.dtype == object:
        return np.array([a.get("default_string", "_Unused")], dtype=object)
    if values.dtype.kind in "iu":
        return np.array([a.get("default_int64", -1)], dtype=values.dtype)
    return np.array([a.get("default_float", -0.0)], dtype=values.dtype)


@converter("ArrayFeatureExtractor", domain=ML)
def array_feature_extractor(ctx):
    return [ctx.op("ml.array_feature_extractor", ctx.inputs[0], ctx.inputs[1])]


_TREE_ATTRS = ("aggregate_function", "leaf_targetids", "leaf_weights", "membership_values",
               "n_targets", "nodes_falseleafs", "nodes_falsenodeids", "nodes_featureids",
               "nodes_hitrates", "nodes_missing_value_tracks_true", "nodes_modes", "nodes_splits",
               "nodes_trueleafs", "nodes_truenodeids", "post_transform", "tree_roots")


@converter("TreeEnsemble", domain=ML)
def tree_ensemble(ctx):
    attrs = {k: ctx.attrs[k] for k in _TREE_ATTRS if k in ctx.attrs}
    for k in ("leaf_weights", "membership_values", "nodes_hitrates", "nodes_splits"):
        if k in attrs:
            attrs[k] = np.asarray(attrs[k]).reshape(-1)
    if "nodes_modes" in attrs:
        attrs["nodes_modes"] = np.asarray(attrs["nodes_modes"]).reshape(-1).astype(np.uint8)
    return [ctx.op("ml.tree_ensemble", ctx.inputs[0], **attrs)]


def _training(op_type: str, gx: str):
    @converter(op_type, domain=TRAINING)
    def convert(ctx):
        n = len(ctx.node.output)
        return list(ctx.b.create(gx, *ctx.inputs, num_results=n, **ctx.attrs).results)
    return convert


_training("Adagrad", "training.adagrad")
_training("Adam", "training.adam")
_training("Momentum", "training.momentum")


# -- random generators ----------------------------------------------------------------------
def _random_attrs(ctx, keys) -> dict:
    out = {k: ctx.attrs[k] for k in keys if k in ctx.attrs}
    if "dtype" in out:
        out["dtype"] = DType.from_onnx(out["dtype"])
    return out


@converter("RandomUniform")
def random_uniform(ctx):
    return [ctx.op("random_uniform", **_random_attrs(ctx, ("dtype", "high", "low", "seed", "shape")))]


@converter("RandomNormal")
def random_normal(ctx):
    return [ctx.op("random_normal", **_random_attrs(ctx, ("dtype", "mean", "scale", "seed", "shape")))]


@converter("RandomUniformLike")
def random_uniform_like(ctx):
    return [ctx.op("random_uniform_like", ctx.inputs[0],
                   **_random_attrs(ctx, ("dtype", "high", "low", "seed")))]


@converter("RandomNormalLike")
def random_normal_like(ctx):
    return [ctx.op("random_normal_like", ctx.inputs[0],
                   **_random_attrs(ctx, ("dtype", "mean", "scale", "seed")))]


@converter("Bernoulli")
def bernoulli(ctx):
    return [ctx.op("bernoulli", ctx.inputs[0], **_random_attrs(ctx, ("dtype", "seed")))]


@converter("Multinomial")
def multinomial(ctx):
    return [ctx.op("multinomial", ctx.inputs[0],
                   **_random_attrs(ctx, ("dtype", "sample_size", "seed")))]
