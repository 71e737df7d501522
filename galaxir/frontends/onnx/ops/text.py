"""Converters for the string ops and TfIdfVectorizer (all one-to-one)."""
from __future__ import annotations

from ..importer import converter, simple

simple("StringConcat", "string_concat")
simple("RegexFullMatch", "regex_full_match")
simple("StringNormalizer", "string_normalizer")
simple("TfIdfVectorizer", "tf_idf_vectorizer")


@converter("StringSplit")
def string_split(ctx):
    attrs = {k: ctx.attrs[k] for k in ("delimiter", "maxsplit") if k in ctx.attrs}
    return list(ctx.op("string_split", ctx.inputs[0], **attrs))
