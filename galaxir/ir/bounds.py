"""Declared ranges of a module's symbolic input dims: ``{"batch": (1, 64), "seq": (1, None)}``.

A frontend that knows the sizes a symbolic dim may take (``torch.export.Dim("batch", min=1,
max=64)``) records them here, so that a backend can check feeds against them and plan for
the largest size.  They live in ``module.metadata["dim_bounds"]`` as JSON
(``{"batch": [1, 64], "seq": [1, null]}``; ``null``: no upper bound), so the text form,
clone and .gxm keep them with no format of their own; the verifier checks them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from ..errors import VerificationError
from .core import Module
from .types import TensorType

KEY = "dim_bounds"

Bounds = dict[str, tuple[int, "int | None"]]


def input_symbols(m: Module) -> set[str]:
    """The symbolic dim names that appear in the graph inputs' types."""
    out: set[str] = set()
    for v in m.graph.inputs:
        t = v.type
        if isinstance(t, TensorType) and t.shape is not None:
            out.update(d for d in t.shape if isinstance(d, str) and d != "?")
    return out


def dim_bounds(m: Module) -> Bounds:
    """The declared bounds, ``{symbol: (min, max or None)}`` ({} when none are declared)."""
    text = m.metadata.get(KEY)
    if not text:
        return {}
    return _parse(text)


def set_dim_bounds(m: Module, bounds: Mapping[str, tuple[int, int | None]]) -> None:
    """Declare ``bounds`` (replacing earlier ones); an empty mapping removes them."""
    if not bounds:
        m.metadata.pop(KEY, None)
        return
    clean = {str(k): [int(lo), None if hi is None else int(hi)] for k, (lo, hi) in bounds.items()}
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"))
    _parse(text)
    m.metadata[KEY] = text


def verify_bounds(m: Module) -> None:
    """Well-formed bounds (0 <= min <= max) on symbols the graph inputs use."""
    if KEY not in m.metadata:
        return
    bounds = _parse(m.metadata[KEY])
    unknown = sorted(set(bounds) - input_symbols(m))
    if unknown:
        raise VerificationError(f"dim_bounds declares {unknown}, which no graph input's shape "
                                "uses as a symbolic dim")


def _parse(text: str) -> Bounds:
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as e:
        raise VerificationError(f"dim_bounds is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise VerificationError("dim_bounds must map symbol names to [min, max]")
    out: Bounds = {}
    for name, pair in raw.items():
        ok = isinstance(pair, list) and len(pair) == 2 and _is_int(pair[0]) and \
            (pair[1] is None or _is_int(pair[1]))
        if not ok or pair[0] < 0 or (pair[1] is not None and pair[1] < pair[0]):
            raise VerificationError(f"dim_bounds of '{name}' is {pair!r}; expected [min, max] "
                                    "with 0 <= min <= max (max null: unbounded)")
        out[name] = (pair[0], pair[1])
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
