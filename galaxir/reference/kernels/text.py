"""Kernels for string ops (object arrays of Python str) and TfIdfVectorizer."""
from __future__ import annotations

import functools
import operator
import re
import weakref

import numpy as np

from ...errors import ExecutionError
from ...ir.opdef import describe
from ..registry import kernel

_concat = np.frompyfunc(operator.add, 2, 1)


def _as_str(x) -> np.ndarray:
    x = np.asarray(x, dtype=object)
    return x


@kernel("string_concat")
def string_concat(ctx, x, y):
    out = _concat(_as_str(x), _as_str(y))
    return np.asarray(out, dtype=object)


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


@kernel("regex_full_match")
def regex_full_match(ctx, x):
    rx = _compiled(ctx.attr("pattern"))
    x = _as_str(x)
    flat = [rx.fullmatch(s) is not None for s in x.reshape(-1)]
    return np.array(flat, dtype=bool).reshape(x.shape)


@kernel("string_split")
def string_split(ctx, x):
    delim = ctx.attr("delimiter") or None  # None: runs of whitespace
    maxsplit = ctx.attr("maxsplit")
    maxsplit = -1 if maxsplit is None else maxsplit
    x = _as_str(x)
    pieces = [s.split(delim, maxsplit) for s in x.reshape(-1)]
    width = max((len(p) for p in pieces), default=0)
    y = np.full((len(pieces), width), "", dtype=object)
    for i, p in enumerate(pieces):
        y[i, :len(p)] = p
    counts = np.array([len(p) for p in pieces], dtype=np.int64)
    return y.reshape(x.shape + (width,)), counts.reshape(x.shape)


@kernel("string_normalizer")
def string_normalizer(ctx, x):
    x = _as_str(x)
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise ExecutionError(f"{describe(ctx.op)}: input must be [C] or [1, C], got shape "
                             f"{list(x.shape)}")
    action = ctx.attr("case_change_action", "NONE")
    sensitive = bool(ctx.attr("is_case_sensitive", 0))
    stops = ctx.attr("stopwords") or ()
    words = list(x.reshape(-1))
    if stops:
        if sensitive:
            stopset = set(stops)
            words = [w for w in words if w not in stopset]
        else:
            stopset = {s.lower() for s in stops}
            words = [w for w in words if w.lower() not in stopset]
    if action == "LOWER":
        words = [w.lower() for w in words]
    elif action == "UPPER":
        words = [w.upper() for w in words]
    if not words:
        words = [""]
    out = np.array(words, dtype=object)
    return out.reshape(1, -1) if x.ndim == 2 else out


_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # op -> its n-gram table


def _ngram_table(ctx) -> tuple[dict[tuple, int], set[int]]:
    """Pool n-gram (as a tuple) -> output index, for n in [min_gram_length, max_gram_length]."""
    cached = _TABLES.get(ctx.op)
    if cached is not None:
        return cached
    pool = ctx.attr("pool_int64s")
    if pool is None:
        pool = ctx.attr("pool_strings")
    pool = list(pool)
    counts = list(ctx.attr("ngram_counts"))
    idx = list(ctx.attr("ngram_indexes"))
    lo, hi = ctx.attr("min_gram_length"), ctx.attr("max_gram_length")
    table: dict[tuple, int] = {}
    sizes = set()
    gram_id = 0
    for k, start in enumerate(counts):
        n = k + 1
        end = counts[k + 1] if k + 1 < len(counts) else len(pool)
        for j in range(start, end - n + 1, n):
            if lo <= n <= hi:
                if gram_id >= len(idx):
                    raise ExecutionError(f"{describe(ctx.op)}: ngram_indexes has {len(idx)} "
                                         "entries, fewer than the pool's n-grams")
                table[tuple(pool[j:j + n])] = idx[gram_id]
                sizes.add(n)
            gram_id += 1
    result = (table, sizes)
    _TABLES[ctx.op] = result
    return result


@kernel("tf_idf_vectorizer")
def tf_idf_vectorizer(ctx, x):
    x = np.asarray(x)
    if x.ndim not in (1, 2):
        raise ExecutionError(f"{describe(ctx.op)}: input must be [C] or [N, C], got {list(x.shape)}")
    table, sizes = _ngram_table(ctx)
    idx = ctx.attr("ngram_indexes") or ()
    width = max(idx) + 1 if idx else 0
    rows = x.reshape(-1, x.shape[-1]) if x.ndim == 2 else x.reshape(1, -1)
    max_skip = ctx.attr("max_skip_count")
    counts = np.zeros((rows.shape[0], width), dtype=np.float32)
    for r, row in enumerate(rows):
        items = row.tolist()
        c = len(items)
        for n in sorted(sizes):
            skips = [0] if n == 1 else range(max_skip + 1)
            for s in skips:
                step = s + 1
                span = (n - 1) * step
                for i in range(c - span):
                    j = table.get(tuple(items[i:i + span + 1:step]))
                    if j is not None:
                        counts[r, j] += 1
    mode = ctx.attr("mode")
    if mode == "IDF":
        counts = (counts > 0).astype(np.float32)
    if mode in ("IDF", "TFIDF") and ctx.attr("weights"):
        # weight i scales output coordinate i, as onnxruntime and the onnx reference do
        w = np.ones(width, dtype=np.float32)
        given = np.asarray(ctx.attr("weights"), dtype=np.float32)[:width]
        w[:len(given)] = given
        counts *= w
    return counts if x.ndim == 2 else counts[0]
