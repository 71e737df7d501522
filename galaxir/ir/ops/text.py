"""String ops (StringConcat, StringNormalizer, StringSplit, RegexFullMatch) and the
n-gram counter TfIdfVectorizer."""
from __future__ import annotations

import re

from ..opdef import attr, define
from ..traits import SizeFromValues
from ..types import UNKNOWN, DType, TensorType, Type
from .rules import broadcast_types, fail, tensor_operand


def _string_operand(op, i: int) -> TensorType:
    t = tensor_operand(op, i)
    if t.dtype is not DType.string:
        raise fail(op, f"operand {i} must be a string tensor, got {t}")
    return t


def _string_concat(op) -> list[Type]:
    return [broadcast_types(op)]


STRING = frozenset({DType.string})
define("string_concat", operands=["x", "y"], infer=_string_concat, types={"x": STRING, "y": STRING},
       doc="Elementwise concatenation of two string tensors (numpy broadcasting).")


def _regex_verify(op) -> None:
    pattern = op.attr("pattern")
    try:
        re.compile(pattern)
    except re.error as e:
        raise fail(op, f"pattern {pattern!r} is not a valid regular expression: {e}") from None


define("regex_full_match", operands=["x"], attrs={"pattern": attr("str", required=True)},
       infer=lambda op: [_string_operand(op, 0).with_dtype(DType.bool)], verify=_regex_verify,
       doc="True where the whole string matches 'pattern' (RE2 syntax; Python's re is used, "
           "which agrees on the common subset).")


def _string_split(op) -> list[Type]:
    t = _string_operand(op, 0)
    if t.shape is None:
        return [TensorType(DType.string, None), TensorType(DType.int64, None)]
    return [TensorType(DType.string, t.shape + (UNKNOWN,)), TensorType(DType.int64, t.shape)]


define("string_split", traits=[SizeFromValues()],
       operands=["x"], num_results=2, infer=_string_split,
       attrs={"delimiter": attr("str"), "maxsplit": attr("int")},
       doc="Splits every string at 'delimiter' (absent or empty: runs of whitespace), at most "
           "'maxsplit' times; results are the pieces padded with '' and their counts.")


def _string_normalizer(op) -> list[Type]:
    t = _string_operand(op, 0)
    if t.shape is None:
        return [t]
    if len(t.shape) not in (1, 2):
        raise fail(op, f"input must be [C] or [1, C], got {t}")
    # stopwords may remove columns: the last dim is data dependent
    shape = t.shape[:-1] + ((UNKNOWN,) if op.attr("stopwords") else t.shape[-1:])
    return [TensorType(DType.string, shape)]


def _normalizer_verify(op) -> None:
    if op.attr("case_change_action") not in ("NONE", "LOWER", "UPPER"):
        raise fail(op, f"case_change_action must be NONE, LOWER or UPPER, got "
                       f"{op.attr('case_change_action')!r}")


define("string_normalizer", operands=["x"], infer=_string_normalizer, verify=_normalizer_verify,
       attrs={"case_change_action": attr("str", "NONE"), "is_case_sensitive": attr("int", 0),
              "locale": attr("str"), "stopwords": attr("strs")},
       doc="Removes stop words (whole strings) and changes case; all removed gives [''].")


def _tfidf(op) -> list[Type]:
    t = tensor_operand(op, 0)
    idx = op.attr("ngram_indexes") or ()
    width = (max(idx) + 1) if idx else 0
    if t.shape is None:
        return [TensorType(DType.float32, None)]
    if len(t.shape) == 1:
        return [TensorType(DType.float32, (width,))]
    if len(t.shape) == 2:
        return [TensorType(DType.float32, (t.shape[0], width))]
    raise fail(op, f"input must be [C] or [N, C], got {t}")


def _tfidf_verify(op) -> None:
    if op.attr("mode") not in ("TF", "IDF", "TFIDF"):
        raise fail(op, f"mode must be TF, IDF or TFIDF, got {op.attr('mode')!r}")
    has_int, has_str = op.attr("pool_int64s") is not None, op.attr("pool_strings") is not None
    if has_int == has_str:
        raise fail(op, "exactly one of pool_int64s and pool_strings must be given")
    pool = op.attr("pool_int64s") if has_int else op.attr("pool_strings")
    if len(op.attr("ngram_indexes") or ()) == 0 and len(pool):
        raise fail(op, "ngram_indexes is required")
    w = op.attr("weights")
    if w is not None and len(w) != len(op.attr("ngram_indexes") or ()):
        raise fail(op, "weights must be as long as ngram_indexes")


define("tf_idf_vectorizer", operands=["x"], infer=_tfidf, verify=_tfidf_verify,
       attrs={"max_gram_length": attr("int", required=True),
              "min_gram_length": attr("int", required=True),
              "max_skip_count": attr("int", required=True), "mode": attr("str", required=True),
              "ngram_counts": attr("ints", required=True), "ngram_indexes": attr("ints"),
              "pool_int64s": attr("ints"), "pool_strings": attr("strs"), "weights": attr("floats")},
       doc="Counts the pool's n-grams (with up to max_skip_count skipped items between "
           "elements) in each row; TF counts, IDF 0/1 times weight, TFIDF counts times weight.")
