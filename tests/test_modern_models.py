"""Networks built the way people build them today (galaxir.testing.modern: torchvision and
transformers code, seeded random weights) compile for the cpu target at its default level
and agree with onnxruntime.  They need the torch and bench extras; each is skipped with
the reason where it cannot be built.  Export plus compile takes 10-60 s each: slow."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.testing import modern

ort = pytest.importorskip("onnxruntime")

#: ops that still run on the numpy reference in these networks: none (the attention-mask
#: arithmetic on int64/bool runs on the typed kernels, backends/cpu/kernels_typed.py)
KNOWN_FALLBACKS: dict[str, set] = {}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(modern.MODELS) + sorted(modern.HELDOUT))
def test_modern_model_matches_onnxruntime(name, tmp_path):
    why = modern.available(name)
    if why:
        pytest.skip(why)
    path, feeds = modern.export(name, str(tmp_path))
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
    exe = gx.compile(path, target="cpu")
    got = exe(*(feeds[n] for n in exe.input_names))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = max(float(np.max(np.abs(w))), 1.0)
        np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-4 * scale)
    # every other op of these networks has a native kernel
    assert set(exe.fallback_ops) <= KNOWN_FALLBACKS.get(name, set()), exe.report()


def test_unknown_modern_model_is_reported():
    assert "unknown model" in modern.available("no-such-net")


def test_heldout_set_is_disjoint_from_the_bench_set():
    """The held-out architectures check that speedups generalize: none may be tuned on."""
    assert modern.HELDOUT and not set(modern.HELDOUT) & set(modern.MODELS)
