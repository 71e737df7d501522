"""Classical-ML ops (ONNX domain ai.onnx.ml, prefix ``ml.``), the preview training
optimizers (ai.onnx.preview.training, prefix ``training.``) and the random generators.

Random ops are not pure (``pure=False``): passes must neither fold nor merge them.  With a
``seed`` attribute a generator gives the same values on every run; without one it draws
fresh values.  No implementation reproduces another's random stream, so their values are
only comparable in distribution.
"""
from __future__ import annotations

from ..opdef import FLOATS, INT64, attr, define
from ..types import UNKNOWN, DType, TensorType, Type
from .rules import fail, tensor_operand

# -- ai.onnx.ml -----------------------------------------------------------------------------


def _label_encoder(op) -> list[Type]:
    t = tensor_operand(op, 0)
    keys, values = op.attr("keys_tensor"), op.attr("values_tensor")
    if keys is None or values is None:
        raise fail(op, "needs keys_tensor and values_tensor")
    if keys.shape != values.shape or keys.ndim != 1:
        raise fail(op, f"keys ({keys.shape}) and values ({values.shape}) must be 1-D and as long")
    kdt = DType.from_numpy(keys.dtype)
    if kdt != t.dtype:
        raise fail(op, f"keys are {kdt.name} but the input is {t.dtype.name}")
    return [t.with_dtype(DType.from_numpy(values.dtype))]


define("ml.label_encoder", operands=["x"], infer=_label_encoder,
       attrs={"keys_tensor": attr("tensor", required=True),
              "values_tensor": attr("tensor", required=True),
              "default_tensor": attr("tensor")},
       doc="Maps each element through keys -> values (NaN keys match NaN); others get the "
           "default (one element, same dtype as values).")


def _feature_extractor(op) -> list[Type]:
    t = tensor_operand(op, 0)
    idx = tensor_operand(op, 1)
    n = UNKNOWN
    if idx.is_static:
        n = idx.numel
    if t.shape is None:
        return [TensorType(t.dtype, None)]
    if len(t.shape) <= 1:
        return [TensorType(t.dtype, (1, n))]
    return [TensorType(t.dtype, t.shape[:-1] + (n,))]


define("ml.array_feature_extractor", operands=["x", "indices"], infer=_feature_extractor,
       types={"indices": INT64},
       doc="Selects elements of the last axis by indices (flattened); 1-D input gives [1, n].")

_TREE_INTS = ("leaf_targetids", "nodes_falseleafs", "nodes_falsenodeids", "nodes_featureids",
              "nodes_missing_value_tracks_true", "nodes_trueleafs", "nodes_truenodeids",
              "tree_roots")


def _tree_infer(op) -> list[Type]:
    t = tensor_operand(op, 0)
    n = op.attr("n_targets")
    batch = t.shape[0] if t.shape else UNKNOWN
    return [TensorType(t.dtype, (batch, n))]


def _tree_verify(op) -> None:
    nodes = len(op.attr("nodes_featureids") or ())
    for k in ("nodes_falseleafs", "nodes_falsenodeids", "nodes_trueleafs", "nodes_truenodeids"):
        if len(op.attr(k) or ()) != nodes:
            raise fail(op, f"{k} has {len(op.attr(k) or ())} entries, nodes_featureids {nodes}")
    for k in ("nodes_modes", "nodes_splits"):
        v = op.attr(k)
        if v is None or v.size != nodes:
            raise fail(op, f"{k} must be a tensor of {nodes} entries")
    leaves = len(op.attr("leaf_targetids") or ())
    if op.attr("leaf_weights") is None or op.attr("leaf_weights").size != leaves:
        raise fail(op, f"leaf_weights must have {leaves} entries (one per leaf_targetids)")
    if op.attr("aggregate_function") not in (0, 1, 2, 3):
        raise fail(op, "aggregate_function must be 0 (AVERAGE), 1 (SUM), 2 (MIN) or 3 (MAX)")
    if op.attr("post_transform") not in (0, 1, 2, 3, 4):
        raise fail(op, "post_transform must be 0..4 (NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT)")


define("ml.tree_ensemble", operands=["x"], infer=_tree_infer, verify=_tree_verify,
       attrs={**{k: attr("ints") for k in _TREE_INTS},
              "aggregate_function": attr("int", 1), "post_transform": attr("int", 0),
              "n_targets": attr("int", required=True), "leaf_weights": attr("tensor"),
              "membership_values": attr("tensor"), "nodes_hitrates": attr("tensor"),
              "nodes_modes": attr("tensor"), "nodes_splits": attr("tensor")},
       doc="ONNX-ML TreeEnsemble (opset 5): sums (or averages, min, max) the leaf weights each "
           "sample reaches per target, then applies post_transform.")

# -- ai.onnx.preview.training ---------------------------------------------------------------


def _optimizer(groups: int, outs: int):
    """Rule for (R, T, X1..Xn, G1..Gn, [V1..Vn], [H1..Hn]) -> outs groups of n."""
    def rule(op) -> list[Type]:
        rest = len(op.operands) - 2
        if rest <= 0 or rest % groups:
            raise fail(op, f"takes R, T and {groups} groups of equally many tensors, got "
                           f"{len(op.operands)} operands")
        n = rest // groups
        xs = [tensor_operand(op, 2 + i) for i in range(n)]
        return [xs[i % n] for i in range(outs * n)]
    return rule


_OPTIMIZER_TYPES = {"R": FLOATS, "T": INT64, "inputs": ("T3", FLOATS)}

define("training.adagrad", operands=["R", "T", "inputs*"], num_results=None,
       infer=_optimizer(3, 2), types=_OPTIMIZER_TYPES,
       attrs={"decay_factor": attr("float", 0.0), "epsilon": attr("float", 0.0),
              "norm_coefficient": attr("float", 0.0)},
       doc="One Adagrad step: (R, T, X..., G..., H...) -> (X_new..., H_new...).")
define("training.adam", operands=["R", "T", "inputs*"], num_results=None,
       infer=_optimizer(4, 3), types=_OPTIMIZER_TYPES,
       attrs={"alpha": attr("float", 0.9), "beta": attr("float", 0.999),
              "epsilon": attr("float", 0.0), "norm_coefficient": attr("float", 0.0),
              "norm_coefficient_post": attr("float", 0.0)},
       doc="One Adam step: (R, T, X..., G..., V..., H...) -> (X_new..., V_new..., H_new...).")
define("training.momentum", operands=["R", "T", "inputs*"], num_results=None,
       infer=_optimizer(3, 2), types=_OPTIMIZER_TYPES,
       attrs={"alpha": attr("float", required=True), "beta": attr("float", required=True),
              "mode": attr("str", required=True), "norm_coefficient": attr("float", required=True)},
       doc="One SGD-with-momentum step (mode standard or nesterov): (R, T, X..., G..., V...) -> "
           "(X_new..., V_new...).")

# -- random generators ----------------------------------------------------------------------
_RANDOM_DTYPES = (DType.float16, DType.float32, DType.float64, DType.bfloat16)


def _random_dtype(op, default: DType) -> DType:
    dt = op.attr("dtype") or default
    if dt not in _RANDOM_DTYPES:
        raise fail(op, f"dtype must be a float type, got {dt.name}")
    return dt


def _random(op) -> list[Type]:
    return [TensorType(_random_dtype(op, DType.float32), tuple(op.attr("shape")))]


def _random_like(op) -> list[Type]:
    t = tensor_operand(op, 0)
    dt = op.attr("dtype") or (t.dtype if t.dtype in _RANDOM_DTYPES else None)
    if dt is None:
        raise fail(op, f"needs a float 'dtype' attribute for a {t.dtype.name} input")
    return [t.with_dtype(dt)]


_SEED = {"seed": attr("float")}
define("random_uniform", infer=_random, pure=False,
       attrs={"dtype": attr("dtype", DType.float32), "high": attr("float", 1.0),
              "low": attr("float", 0.0), "shape": attr("ints", required=True), **_SEED},
       doc="Uniform samples in [low, high) of the given shape.")
define("random_normal", infer=_random, pure=False,
       attrs={"dtype": attr("dtype", DType.float32), "mean": attr("float", 0.0),
              "scale": attr("float", 1.0), "shape": attr("ints", required=True), **_SEED},
       doc="Normal samples N(mean, scale^2) of the given shape.")
define("random_uniform_like", operands=["input"], infer=_random_like, pure=False,
       attrs={"dtype": attr("dtype"), "high": attr("float", 1.0), "low": attr("float", 0.0),
              **_SEED},
       doc="Uniform samples shaped like the input (dtype: the attribute, else the input's).")
define("random_normal_like", operands=["input"], infer=_random_like, pure=False,
       attrs={"dtype": attr("dtype"), "mean": attr("float", 0.0), "scale": attr("float", 1.0),
              **_SEED},
       doc="Normal samples shaped like the input (dtype: the attribute, else the input's).")


def _bernoulli(op) -> list[Type]:
    t = tensor_operand(op, 0)
    return [t.with_dtype(op.attr("dtype") or t.dtype)]


define("bernoulli", operands=["input"], infer=_bernoulli, pure=False,
       attrs={"dtype": attr("dtype"), **_SEED},
       doc="1 with probability input, else 0 (dtype: the attribute, else the input's).")


def _multinomial(op) -> list[Type]:
    t = tensor_operand(op, 0)
    if t.shape is not None and len(t.shape) != 2:
        raise fail(op, f"input must be [batch, classes] logits, got {t}")
    dt = op.attr("dtype")
    if dt not in (DType.int32, DType.int64):
        raise fail(op, f"dtype must be int32 or int64, got {dt.name}")
    batch = t.shape[0] if t.shape is not None else UNKNOWN
    return [TensorType(dt, (batch, op.attr("sample_size")))]


define("multinomial", operands=["input"], infer=_multinomial, pure=False,
       attrs={"dtype": attr("dtype", DType.int32), "sample_size": attr("int", 1), **_SEED},
       doc="sample_size class indices per row, drawn from softmax(input row) (input: "
           "unnormalized log-probabilities).")
