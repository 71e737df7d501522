"""Fused attention in a dynamic module (issue 15): with symbolic batch and sequence dims the
kernel takes the panel products with run-time sizes (kernels_panel_rt) and splits its
heads over the pool as a static compile does, instead of single-threaded sgemm; one LLVM
compile serves every length up to the panel path's bound, and a longer one is a second
variant (a guard of the shape trace), on sgemm."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.backends.cpu import dynreuse, jit
from galaxir.ir import GraphBuilder, tensor

RNG = np.random.default_rng(3)


def _attention(h: int, d: int, dv: int, kt_perm: bool, masked: bool) -> gx.Module:
    """softmax(q k^T / sqrt(d) [+ mask]) v over q [B, h, S, d] (k as BERT's export
    transposes it with ``kt_perm``), the mask from a bool input [B, 1, 1, S]."""
    gb = GraphBuilder()
    q = gb.input("q", tensor("f32", "B", h, "S", d))
    if kt_perm:
        kt = gb.transpose(gb.input("k", tensor("f32", "B", "S", h, d)), perm=(0, 2, 3, 1))
    else:
        kt = gb.transpose(gb.input("k", tensor("f32", "B", h, "S", d)), perm=(0, 1, 3, 2))
    v = gb.input("v", tensor("f32", "B", h, "S", dv))
    s = gb.mul(gb.matmul(q, kt), gb.constant(np.float32(d ** -0.5)))
    if masked:  # transformers' form: where(keep, 0, finite minimum), never a dead row
        keep = gb.input("keep", tensor("bool", "B", 1, 1, "S"))
        s = gb.add(s, gb.where(keep, gb.constant(np.float32(0)), gb.constant(np.float32(-1e4))))
    gb.output(gb.matmul(gb.softmax(s, axis=-1), v), "y")
    return gb.module()


def _feeds(b, s, h, d, dv, kt_perm, masked) -> list:
    r = RNG.standard_normal
    out = [r((b, h, s, d)), r((b, s, h, d) if kt_perm else (b, h, s, d)), r((b, h, s, dv))]
    out = [x.astype(np.float32) for x in out]
    if masked:
        out.append(RNG.random((b, 1, 1, s)) > 0.25)
    return out


def _calls_sgemm(llvm_ir: str) -> bool:
    return any("call" in line and '@"gx_sgemm"' in line for line in llvm_ir.splitlines())


def _check(exe, ref, feeds) -> None:
    np.testing.assert_allclose(exe(*feeds)[0], ref(*feeds)[0], rtol=1e-4, atol=1e-4)


#: lengths below one 8 x 8 transpose, off the panel width and the 6/12-row tile, past
#: one 64-row block, and batches whose work is split over the pool (and not)
SHAPES = [(1, 3), (2, 13), (1, 33), (3, 64), (2, 65), (4, 130), (1, 201)]


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("kt_perm,masked", [(False, True), (True, False)])
def test_dynamic_attention_takes_the_panel_path_with_one_compile(monkeypatch, wide, kt_perm, masked):
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    h, d, dv = 2, 24, 40
    m = _attention(h, d, dv, kt_perm, masked)
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy", level=0)
    before = jit.stats["compiled"]
    for b, s in SHAPES:
        _check(exe, ref, _feeds(b, s, h, d, dv, kt_perm, masked))
        att = [st.kernel for st in exe.last.steps
               if st.kind == "native" and st.kernel.name == "attention"]
        assert len(att) == 1 and att[0].small and att[0].wide == (wide == "1"), exe.report()
        assert not _calls_sgemm(exe.last.llvm_ir)
    assert jit.stats["compiled"] == before


def test_long_sequence_is_a_second_variant_on_sgemm():
    """Skv * D past the panel bound fails the trace's guard on ``small``: the shape is
    emitted again (the sgemm variant, one more compile) and later long shapes reuse it."""
    h, d, dv = 2, 64, 64
    m = _attention(h, d, dv, False, True)
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy", level=0)
    _check(exe, ref, _feeds(2, 40, h, d, dv, False, True))
    before, traced = jit.stats["compiled"], dynreuse.stats["traced"]
    _check(exe, ref, _feeds(1, 300, h, d, dv, False, True))   # 300 * 64 > ATT_SMALL
    assert _calls_sgemm(exe.last.llvm_ir)
    assert jit.stats["compiled"] == before + 1 and dynreuse.stats["traced"] == traced + 1
    _check(exe, ref, _feeds(2, 310, h, d, dv, False, True))
    _check(exe, ref, _feeds(3, 50, h, d, dv, False, True))    # the panel variant again
    assert jit.stats["compiled"] == before + 1 and dynreuse.stats["traced"] == traced + 1
