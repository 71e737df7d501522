"""One LLVM compile per model with symbolic input dims (issue 15, item 2): the cpu backend
emits such a module in dynamic mode (galaxir/backends/cpu/codegen.py), every
shape-dependent integer read at run time, so a new input shape costs lowering, the arena
plan and a load of the cached object code, never an LLVM run.  The per-shape cache is
bounded by bytes (backend.SHAPE_CACHE_BYTES), not by a count."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import galaxir as gx
from galaxir.backends.cpu import jit
from galaxir.errors import InputValidationError
from galaxir.ir import GraphBuilder, tensor

RNG = np.random.default_rng(0)


def _encoder_block(hidden: int = 32) -> gx.Module:
    """A transformer-style block over x: f32[B, S, hidden] and an additive mask
    f32[B, S]: linear, layer_norm, softmax over the sequence, a transpose, broadcasting
    adds, a gelu and a second linear."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "B", "S", hidden))
    mask = gb.input("mask", tensor("f32", "B", "S"))
    w1 = gb.constant(RNG.standard_normal((hidden, 2 * hidden)).astype(np.float32) * 0.2)
    b1 = gb.constant(RNG.standard_normal(2 * hidden).astype(np.float32))
    w2 = gb.constant(RNG.standard_normal((2 * hidden, hidden)).astype(np.float32) * 0.2)
    h = gb.add(gb.matmul(x, w1), b1)
    h = gb.op("gelu", h)
    h = gb.matmul(h, w2)
    scale = gb.constant(np.ones(hidden, np.float32))
    y = gb.op("layer_norm", gb.add(h, x), scale, axis=-1, epsilon=1e-5)
    scores = gb.add(gb.transpose(y, perm=[0, 2, 1]),
                    gb.unsqueeze(mask, gb.constant(np.array([1], np.int64))))   # [B, H, S]
    gb.output(gb.softmax(scores, axis=-1), "att")
    gb.output(y, "y")
    return gb.module()


def _feeds(b: int, s: int, hidden: int = 32) -> dict:
    return {"x": RNG.standard_normal((b, s, hidden)).astype(np.float32),
            "mask": np.where(RNG.random((b, s)) < 0.2, -1e4, 0.0).astype(np.float32)}


def _check(exe, ref, feeds) -> None:
    got, want = exe.run(feeds), ref.run(feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_new_shapes_reuse_the_object_code():
    m = _encoder_block()
    jit.clear_memory_cache()
    before = jit.stats["compiled"]
    exe = gx.compile(m, target="cpu")  # compiled here, for representative shapes
    assert jit.stats["compiled"] - before >= 1 and exe._templates and not exe._specs
    ref = gx.compile(m, target="numpy")
    before = jit.stats["compiled"]
    for b, s in [(2, 7), (1, 1), (1, 9), (3, 16), (4, 33), (2, 64), (1, 130)]:
        _check(exe, ref, _feeds(b, s))
        assert exe.cache_source == "memory", (b, s)
    assert jit.stats["compiled"] == before, "a new shape ran LLVM"
    assert "numpy fallback: none" in exe.report()


def test_first_call_compiles_when_not_warmed():
    m = _encoder_block()
    jit.clear_memory_cache()
    exe = gx.compile(m, target="cpu", warm=False)
    assert not exe._templates
    _check(exe, gx.compile(m, target="numpy"), _feeds(2, 7))
    assert exe.cache_source in ("compiled", "disk")


def test_static_models_keep_constants_baked_in():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 8))
    gb.output(gb.relu(gb.add(x, gb.constant(np.ones(8, np.float32)))), "y")
    exe = gx.compile(gb.module(), target="cpu")
    assert not exe.dynamic
    assert "gx_dynp" not in exe.last.llvm_ir


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 70)), min_size=2, max_size=5,
                unique=True))
def test_random_shapes_match_the_reference_with_one_compile(shapes):
    m = _encoder_block(hidden=16)
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy")
    sources = []
    for b, s in shapes:
        _check(exe, ref, _feeds(b, s, hidden=16))
        sources.append(exe.cache_source)
    assert all(src == "memory" for src in sources[1:]), sources


def test_symbolic_dim_mismatch_between_inputs_is_an_input_error():
    exe = gx.compile(_encoder_block(), target="cpu")
    feeds = _feeds(2, 12)
    feeds["mask"] = feeds["mask"][:, :5]
    with pytest.raises(InputValidationError, match=r"'mask'.*dim 1.*'S'"):
        exe.run(feeds)
    exe.run(_feeds(2, 12))  # the executable still works


def test_shape_cache_is_bounded_by_bytes_not_by_count():
    m = _encoder_block(hidden=16)
    exe = gx.compile(m, target="cpu")
    for s in range(1, 13):  # more than the 8 shapes the old cache kept
        exe.run(_feeds(1, s, hidden=16))
    assert len(exe._specs) == 12
    one = max(gx.backends.cpu.backend.spec_bytes(sp) for sp in exe._specs.values())
    small = gx.compile(m, target="cpu", shape_cache_bytes=3 * one)
    for s in range(1, 13):
        small.run(_feeds(1, s, hidden=16))
        assert small.shape_cache_size() <= 3 * one
    assert 1 <= len(small._specs) <= 3
    assert tuple(small._specs)[-1] == tuple(sorted({"x": (1, 12, 16), "mask": (1, 12)}.items()))
    tiny = gx.compile(m, target="cpu", shape_cache_bytes=0)  # the latest shape always stays
    tiny.run(_feeds(2, 3, hidden=16))
    assert len(tiny._specs) == 1


def test_bert_export_twenty_shapes_one_compile(tmp_path):
    pytest.importorskip("torch")
    from galaxir.testing import dynamic_models as dm
    path = dm.export("bert", str(tmp_path / "bert.onnx"), layers=2, hidden=64, heads=4)
    m = gx.import_model(path)
    from galaxir.backends.cpu import library
    jit.clear_memory_cache()
    before, lib_before = jit.stats["compiled"], library.stats["compiled"]
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy")
    rng = np.random.default_rng(1)
    shapes = [(1, 8), (4, 200)]
    while len(shapes) < 20:
        bs = (int(rng.integers(1, 5)), int(rng.integers(1, 257)))
        if bs not in shapes:
            shapes.append(bs)
    from galaxir.backends.cpu import program
    real_emit, emitted = program.Specialization.emit_module, []
    program.Specialization.emit_module = \
        lambda self, *a, **k: emitted.append(1) or real_emit(self, *a, **k)
    try:
        for b, s in shapes:
            f = dm.feeds(b, s)
            got, want = exe.run(f), ref.run(f)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
    finally:
        program.Specialization.emit_module = real_emit
    # the model's one compile (at gx.compile; shared library kernels are LLVM runs of
    # their own, once per process) and no IR emitted for any of the 20 shapes
    assert jit.stats["compiled"] - before - (library.stats["compiled"] - lib_before) == 1
    assert emitted == []
    assert "numpy fallback: none" in exe.report()


def test_concurrent_calls_with_different_shapes():
    """Each shape's specialization owns its copy of the object code and its shape values:
    threads running different shapes at once never read each other's."""
    from concurrent.futures import ThreadPoolExecutor
    m = _encoder_block(hidden=16)
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy")
    shapes = [(1, 5), (3, 17), (2, 40), (4, 9)]
    feeds = [_feeds(b, s, hidden=16) for b, s in shapes]
    want = [ref.run(f) for f in feeds]
    for f in feeds:
        exe.run(f)  # every shape specialized once

    def work(k):
        for _ in range(20):
            got = exe.run(feeds[k])
            for name in want[k]:
                np.testing.assert_allclose(got[name], want[k][name], rtol=1e-4, atol=1e-4)
        return k

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]


# -- a new shape emits no LLVM IR (galaxir/backends/cpu/dynreuse.py, shapetrace.py) ----------
def test_shape_trace_program_guards_decisions():
    """The traced program recomputes values from new leaves and answers None when a
    decision taken on a traced number (a comparison, an int() use) comes out differently."""
    from galaxir.backends.cpu.shapetrace import Tracer, name_of, select, test, tmin
    tr = Tracer()
    a, b = tr.leaf(6), tr.leaf(4)
    x = (a * b) // 3 + tmin(a, b)                  # no guard: min is a value choice
    y = a - 1 if a > 2 else b                      # guarded: a > 2
    z = select(test(b, "==", 1), 0, a * 2)         # no guard
    w = int(np.prod([a, b]))                       # np.prod keeps tracing; int() guards
    fn = tr.program("[" + ", ".join(name_of(v) for v in (x, y, z)) + "]")
    assert [x.v, y.v, z.v, w] == [12, 5, 12, 24]
    assert fn([6, 4]) == [12, 5, 12]
    assert fn([1, 24]) is None                     # a > 2 no longer holds
    assert fn([6, 5]) is None                      # int(a * b) was 24, now 30
    assert fn([4, 6]) == [12, 3, 8]                # both decisions as traced
    assert fn([3, 8]) == [11, 2, 6]


def test_new_shape_emits_no_llvm_ir(monkeypatch):
    """The first shape of a kernel structure is emitted (traced); every later shape takes
    the template's object code and computes its run-time integers from its kernels'
    fields: ``emit_module`` is not called again, and the values are those a plain
    emission for that shape gives."""
    from galaxir.backends.cpu import dynreuse, program
    from galaxir.backends.cpu.codegen import dynamic_blocks, dynamic_values
    m = _encoder_block(hidden=16)
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy")
    _check(exe, ref, _feeds(2, 7, hidden=16))
    emitted = []
    real_emit = program.Specialization.emit_module
    monkeypatch.setattr(program.Specialization, "emit_module",
                        lambda self, *a, **k: emitted.append(1) or real_emit(self, *a, **k))
    reused = dynreuse.stats["reused"]
    shapes = [(1, 3), (3, 16), (4, 33), (2, 64), (1, 130)]
    for b, s in shapes:
        _check(exe, ref, _feeds(b, s, hidden=16))
        assert exe.cache_source == "memory"
    assert emitted == [], "a new shape emitted LLVM IR"
    assert dynreuse.stats["reused"] - reused == len(shapes)
    (tpl,) = [t for ts in exe._templates.values() for t in ts]
    for spec in list(exe._specs.values())[1:]:
        mod, _ = real_emit(spec)  # a plain emission for this shape, to compare with
        assert str(mod) == spec.llvm_ir
        vals, blocks = tpl.values(spec)
        assert vals == dynamic_values(mod) == list(spec._dyn_data)
        assert blocks == {k: list(v) for k, v in dynamic_blocks(mod).items()}


def test_a_shape_that_fails_a_guard_is_emitted_again():
    """A zero-size batch takes another path in the elementwise kernel (a guard of the
    traced program fails): that shape is emitted (traced) as before and becomes a second
    template of the structure; other shapes keep reusing the first."""
    from galaxir.backends.cpu import dynreuse
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 8))
    gb.output(gb.relu(gb.add(x, gb.constant(np.ones(8, np.float32)))), "y")
    exe = gx.compile(gb.module(), target="cpu")
    (kept,) = exe._templates.values()
    assert len(kept) == 1
    traced = dynreuse.stats["traced"]
    for n in (3, 0, 4, 1):
        xs = RNG.standard_normal((n, 8)).astype(np.float32)
        (y,) = exe(xs)
        np.testing.assert_allclose(y, np.maximum(xs + 1, 0), rtol=1e-6)
        assert exe.last.reused == (n != 0), n
    assert dynreuse.stats["traced"] - traced == 1 and len(kept) == 2
