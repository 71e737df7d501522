"""Kernels for ai.onnx.ml ops, the preview training optimizers and the random generators."""
from __future__ import annotations

import math
import weakref

import numpy as np

from ...errors import ExecutionError, UnsupportedOpError
from ...ir.opdef import describe
from ..registry import kernel

# -- ai.onnx.ml -----------------------------------------------------------------------------


@kernel("ml.label_encoder")
def label_encoder(ctx, x):
    keys = ctx.attr("keys_tensor")
    values = ctx.attr("values_tensor")
    default = ctx.attr("default_tensor")
    x = np.asarray(x)
    if default is None or default.size == 0:
        fill = "_Unused" if values.dtype == object else (-1 if values.dtype.kind in "iu" else -0.0)
    else:
        fill = default.reshape(-1)[0]
    if keys.dtype == object or x.dtype == object:
        table = dict(zip(keys.tolist(), values.tolist()))  # a repeated key: the last one wins
        flat = [table.get(k, fill) for k in x.reshape(-1).tolist()]
        return np.array(flat, dtype=values.dtype).reshape(x.shape)
    # numeric keys: sort once, look up with searchsorted (NaN keys match NaN inputs)
    last = {}
    nan_value = None
    for k, v in zip(keys.tolist(), values.tolist()):
        if isinstance(k, float) and math.isnan(k):
            nan_value = v
        else:
            last[k] = v
    sk = np.array(list(last.keys()), dtype=keys.dtype)
    sv = np.array(list(last.values()), dtype=values.dtype)
    order = np.argsort(sk, kind="stable")
    sk, sv = sk[order], sv[order]
    out = np.full(x.shape, fill, dtype=values.dtype)
    if sk.size:
        pos = np.clip(np.searchsorted(sk, x), 0, sk.size - 1)
        hit = sk[pos] == x
        out[hit] = sv[pos[hit]]
    if nan_value is not None and x.dtype.kind == "f":
        out[np.isnan(x)] = nan_value
    return out


@kernel("ml.array_feature_extractor")
def array_feature_extractor(ctx, x, indices):
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    last = x.shape[-1] if x.ndim else 1
    if idx.size and (idx.min() < 0 or idx.max() >= last):
        raise ExecutionError(f"{describe(ctx.op)}: indices {idx.tolist()} out of range for a last "
                             f"axis of {last}")
    out = x[..., idx]
    return out.reshape(1, -1) if x.ndim <= 1 else out


_MODES_LEQ, _MODES_LT, _MODES_GTE, _MODES_GT, _MODES_EQ, _MODES_NEQ, _MODES_MEMBER = range(7)
_TREES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tree_arrays(ctx) -> dict:
    cached = _TREES.get(ctx.op)
    if cached is not None:
        return cached
    a = ctx.attr
    n = len(a("nodes_featureids"))
    modes = np.asarray(a("nodes_modes"), dtype=np.int64).reshape(-1)
    members: dict[int, np.ndarray] = {}
    if (modes == _MODES_MEMBER).any():
        mv = np.asarray(a("membership_values"), dtype=np.float64).reshape(-1)
        cuts = np.flatnonzero(np.isnan(mv))
        sets = np.split(mv, cuts)
        sets = [s[~np.isnan(s)] for s in sets]
        for k, node in enumerate(np.flatnonzero(modes == _MODES_MEMBER)):
            if k >= len(sets):
                raise ExecutionError(f"{describe(ctx.op)}: membership_values has fewer sets than "
                                     "BRANCH_MEMBER nodes")
            members[int(node)] = sets[k]
    tracks = a("nodes_missing_value_tracks_true")
    arrays = dict(
        feature=np.asarray(a("nodes_featureids"), dtype=np.int64),
        split=np.asarray(a("nodes_splits"), dtype=np.float64).reshape(-1),
        mode=modes,
        true_id=np.asarray(a("nodes_truenodeids"), dtype=np.int64),
        false_id=np.asarray(a("nodes_falsenodeids"), dtype=np.int64),
        true_leaf=np.asarray(a("nodes_trueleafs"), dtype=bool),
        false_leaf=np.asarray(a("nodes_falseleafs"), dtype=bool),
        nan_true=np.asarray(tracks if tracks else [0] * n, dtype=bool),
        members=members,
        roots=np.asarray(a("tree_roots"), dtype=np.int64),
        targets=np.asarray(a("leaf_targetids"), dtype=np.int64),
        weights=np.asarray(a("leaf_weights"), dtype=np.float64).reshape(-1),
    )
    _TREES[ctx.op] = arrays
    return arrays


def _tree_leaves(ctx, t: dict, x: np.ndarray, root: int) -> np.ndarray:
    """The leaf index every row of ``x`` reaches in the tree rooted at node ``root``."""
    rows = x.shape[0]
    node = np.full(rows, root, dtype=np.int64)
    leaf = np.full(rows, -1, dtype=np.int64)
    active = np.arange(rows)
    for _ in range(len(t["feature"]) + 1):
        if active.size == 0:
            return leaf
        nd = node[active]
        v = x[active, t["feature"][nd]]
        s = t["split"][nd]
        m = t["mode"][nd]
        cond = np.select([m == _MODES_LEQ, m == _MODES_LT, m == _MODES_GTE, m == _MODES_GT,
                          m == _MODES_EQ, m == _MODES_NEQ],
                         [v <= s, v < s, v >= s, v > s, v == s, v != s], default=False)
        for k in np.flatnonzero(m == _MODES_MEMBER):
            cond[k] = np.isin(v[k], t["members"][int(nd[k])])
        nan = np.isnan(v)
        cond = np.where(nan, t["nan_true"][nd], cond)
        nxt = np.where(cond, t["true_id"][nd], t["false_id"][nd])
        is_leaf = np.where(cond, t["true_leaf"][nd], t["false_leaf"][nd])
        leaf[active[is_leaf]] = nxt[is_leaf]
        node[active] = nxt
        active = active[~is_leaf]
    raise ExecutionError(f"{describe(ctx.op)}: a tree has a cycle (no leaf reached)")


def _probit(p: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erfinv
    except ImportError:
        raise UnsupportedOpError("ml.tree_ensemble: post_transform PROBIT needs scipy") from None
    return np.sqrt(2.0) * erfinv(2.0 * p - 1.0)


@kernel("ml.tree_ensemble")
def tree_ensemble(ctx, x):
    t = _tree_arrays(ctx)
    x2 = np.asarray(x, dtype=np.float64).reshape(x.shape[0] if x.ndim else 1, -1)
    n_targets = ctx.attr("n_targets")
    agg = ctx.attr("aggregate_function", 1)
    rows = x2.shape[0]
    init = {0: 0.0, 1: 0.0, 2: np.inf, 3: -np.inf}[agg]
    out = np.full((rows, n_targets), init, dtype=np.float64)
    hit = np.zeros((rows, n_targets), dtype=bool)
    for root in t["roots"]:
        leaves = _tree_leaves(ctx, t, x2, int(root))
        tgt, w = t["targets"][leaves], t["weights"][leaves]
        r = np.arange(rows)
        if agg in (0, 1):
            np.add.at(out, (r, tgt), w)
        elif agg == 2:
            np.minimum.at(out, (r, tgt), w)
        else:
            np.maximum.at(out, (r, tgt), w)
        hit[r, tgt] = True
    if agg == 0 and len(t["roots"]):
        out /= len(t["roots"])
    out[~hit] = 0.0
    post = ctx.attr("post_transform", 0)
    if post == 1:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
    elif post == 2:
        out = 1.0 / (1.0 + np.exp(-out))
    elif post == 3:  # softmax over the non-zero scores; zeros stay zero
        nz = out != 0
        m = np.where(nz, out, -np.inf).max(axis=1, keepdims=True)
        e = np.where(nz, np.exp(out - np.where(np.isfinite(m), m, 0)), 0.0)
        s = e.sum(axis=1, keepdims=True)
        out = np.divide(e, s, out=np.zeros_like(e), where=s > 0)
    elif post == 4:
        out = _probit(out)
    return out.astype(x.dtype)


# -- ai.onnx.preview.training ---------------------------------------------------------------
def _groups(ctx, tensors, k: int) -> list[list[np.ndarray]]:
    if len(tensors) % k:
        raise ExecutionError(f"{describe(ctx.op)}: {len(tensors)} tensors do not form {k} groups")
    n = len(tensors) // k
    return [list(tensors[i * n:(i + 1) * n]) for i in range(k)]


def _scalar(x, dtype) -> np.ndarray:
    return np.asarray(x).reshape(-1)[0].astype(dtype)


@kernel("training.adagrad")
def adagrad(ctx, r, t, *tensors):
    xs, gs, hs = _groups(ctx, tensors, 3)
    decay, eps, norm = ctx.attr("decay_factor"), ctx.attr("epsilon"), ctx.attr("norm_coefficient")
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        dt = x.dtype
        rate = _scalar(r, dt) / (1 + _scalar(t, dt) * dt.type(decay))
        g_reg = dt.type(norm) * x + g
        h_new = h + g_reg * g_reg
        new_x.append(x - rate * g_reg / (np.sqrt(h_new) + dt.type(eps)))
        new_h.append(h_new)
    return tuple(new_x + new_h)


@kernel("training.adam")
def adam(ctx, r, t, *tensors):
    xs, gs, vs, hs = _groups(ctx, tensors, 4)
    alpha, beta = ctx.attr("alpha"), ctx.attr("beta")
    eps, norm, post = ctx.attr("epsilon"), ctx.attr("norm_coefficient"), ctx.attr("norm_coefficient_post")
    steps = int(np.asarray(t).reshape(-1)[0])
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        dt = x.dtype
        g_reg = dt.type(norm) * x + g
        v_new = dt.type(alpha) * v + dt.type(1 - alpha) * g_reg
        h_new = dt.type(beta) * h + dt.type(1 - beta) * g_reg * g_reg
        rate = _scalar(r, dt)
        if steps > 0:
            rate = rate * dt.type(math.sqrt(1 - beta ** steps) / (1 - alpha ** steps))
        x_new = x - rate * v_new / (np.sqrt(h_new) + dt.type(eps))
        new_x.append(dt.type(1 - post) * x_new)
        new_v.append(v_new)
        new_h.append(h_new)
    return tuple(new_x + new_v + new_h)


@kernel("training.momentum")
def momentum(ctx, r, t, *tensors):
    xs, gs, vs = _groups(ctx, tensors, 3)
    alpha, beta, norm = ctx.attr("alpha"), ctx.attr("beta"), ctx.attr("norm_coefficient")
    mode = ctx.attr("mode")
    if mode not in ("standard", "nesterov"):
        raise ExecutionError(f"{describe(ctx.op)}: mode must be 'standard' or 'nesterov', got {mode!r}")
    steps = int(np.asarray(t).reshape(-1)[0])
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        dt = x.dtype
        rate = _scalar(r, dt)
        g_reg = dt.type(norm) * x + g
        b = dt.type(beta if steps > 0 else 1.0)
        v_new = dt.type(alpha) * v + b * g_reg
        if mode == "nesterov":
            new_x.append(x - rate * (g_reg + dt.type(alpha) * v_new))
        else:
            new_x.append(x - rate * v_new)
        new_v.append(v_new)
    return tuple(new_x + new_v)


# -- random generators ----------------------------------------------------------------------
def _rng(ctx) -> np.random.Generator:
    seed = ctx.attr("seed")
    if seed is None:
        return np.random.default_rng()
    # a seeded op gives the same values on every run: reproducible, like a fixed graph
    return np.random.default_rng(int(np.float32(seed).view(np.uint32)))


def _out_dtype(ctx) -> np.dtype:
    return ctx.result_dtype(0)


@kernel("random_uniform")
def random_uniform(ctx):
    rng = _rng(ctx)
    low, high = ctx.attr("low"), ctx.attr("high")
    return rng.uniform(low, high, size=tuple(ctx.attr("shape"))).astype(_out_dtype(ctx))


@kernel("random_normal")
def random_normal(ctx):
    rng = _rng(ctx)
    return rng.normal(ctx.attr("mean"), ctx.attr("scale"),
                      size=tuple(ctx.attr("shape"))).astype(_out_dtype(ctx))


@kernel("random_uniform_like")
def random_uniform_like(ctx, x):
    return _rng(ctx).uniform(ctx.attr("low"), ctx.attr("high"),
                             size=np.shape(x)).astype(_out_dtype(ctx))


@kernel("random_normal_like")
def random_normal_like(ctx, x):
    return _rng(ctx).normal(ctx.attr("mean"), ctx.attr("scale"),
                            size=np.shape(x)).astype(_out_dtype(ctx))


@kernel("bernoulli")
def bernoulli(ctx, p):
    """1 with probability p.  The ONNX suite's expected values come from numpy's global
    legacy generator in the state its test script left it; no sound implementation
    reproduces them (onnxruntime fails those cases too), so only shape, dtype and values
    in {0, 1} (exact for p in {0, 1}) can be checked."""
    p = np.asarray(p, dtype=np.float64)
    return (_rng(ctx).random(p.shape) < p).astype(_out_dtype(ctx))


@kernel("multinomial")
def multinomial(ctx, logits):
    logits = np.asarray(logits, dtype=np.float64)
    n = ctx.attr("sample_size")
    rng = _rng(ctx)
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((logits.shape[0], n))
    idx = np.empty((logits.shape[0], n), dtype=np.int64)
    for b in range(logits.shape[0]):
        idx[b] = np.searchsorted(cdf[b], u[b], side="right")
    return np.minimum(idx, logits.shape[1] - 1).astype(_out_dtype(ctx))
