"""Regression tests for issue 13's runtime findings: threads sharing the cpu worker pool,
the compile cache's integrity, long elementwise chains, external data confinement, .gxm
files changed while in use and .gxm checksums, plus RSS growth over many calls/compiles.

Tests that could crash or hang the interpreter on a regression run in a subprocess with a
timeout, so a regression fails the test instead of killing the run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from conftest import CONV_MODELS, run_script


# -- thread safety of the cpu worker pool (finding 2 and the concurrency requirement) -------
@pytest.mark.parametrize("n_models", [4, 1], ids=["4-executables", "1-executable"])
def test_threads_share_the_worker_pool(n_models):
    """4 threads calling 4 different (or one) cpu executables with a 2-thread pool get
    exactly the single-threaded answers and do not hang (before: 125 of 300 calls wrong)."""
    r = run_script(CONV_MODELS + f"""
models = [conv_model(s, 8 + 4 * s) for s in range({n_models})]
exes = [gx.compile(gx.import_model(m), target="cpu", num_threads=2) for m in models]
ref = [gx.compile(gx.import_model(m), target="cpu", num_threads=1) for m in models]
expected = [[e(x)[0] for x in feeds] for e in ref]
for k, e in enumerate(exes):   # single-threaded use of the pool agrees with no pool
    assert all(np.array_equal(e(x)[0], y) for x, y in zip(feeds, expected[k]))
from galaxir.backends.cpu.program import POOL_MIN_BYTES
assert all(e.pool is not None and e.last.work_bytes >= POOL_MIN_BYTES for e in exes)  # uses the pool
bad = hammer(exes, feeds, expected, 60)
print("BAD", len(bad))
assert not bad, bad[:5]
""", timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "BAD 0" in r.stdout


# -- compile cache integrity (finding 3) ----------------------------------------------------
CACHE_SCRIPT = """
import sys, os, numpy as np
from pathlib import Path
from onnx import TensorProto, helper
import galaxir as gx
from galaxir.backends.cpu import jit
nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
w = np.linspace(-1, 1, 4 * 3 * 9, dtype=np.float32).reshape(4, 3, 3, 3)
g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 9, 9])],
    [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
m = gx.import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
x = np.linspace(-2, 2, 243, dtype=np.float32).reshape(1, 3, 9, 9)
ref = gx.compile(m, target="numpy")(x)[0]
cache = Path(sys.argv[1]); mode = sys.argv[2]
exe = gx.compile(m, target="cpu", cache_dir=cache)
print("SOURCE", exe.cache_source)
np.testing.assert_allclose(exe(x)[0], ref, rtol=1e-4, atol=1e-5)
"""


def _corrupt(path: Path, mode: str) -> None:
    data = path.read_bytes()
    rng = np.random.default_rng(1)
    if mode == "truncate":
        path.write_bytes(data[:100])
    elif mode == "random":
        path.write_bytes(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif mode == "zeros":
        path.write_bytes(bytes(len(data)))
    elif mode == "flip":  # flip bits in the last half (code and tables, past any header)
        b = bytearray(data)
        for i in rng.integers(len(b) // 2, len(b), 16):
            b[i] ^= 0x5A
        path.write_bytes(bytes(b))
    elif mode == "empty":
        path.write_bytes(b"")


def test_corrupt_cache_entry_is_recompiled(tmp_path):
    """A damaged on-disk cache entry (truncated, random bytes, zeros, flipped code bytes,
    empty) is detected and recompiled, never handed to LLVM (before: SIGSEGV, LLVM abort or
    a hang), and replaced by a good entry; all in one subprocess (a crash fails the test)."""
    script = CACHE_SCRIPT.replace("sys.argv[1]", repr(str(tmp_path / "cache")))
    r = run_script(script.replace("mode = sys.argv[2]", "") + f"""
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from test_hardening_runtime import _corrupt
for mode in ("truncate", "random", "zeros", "flip", "empty"):
    entries = sorted(cache.glob("*.o"))
    assert entries
    good = {{p: p.read_bytes() for p in entries}}
    for p in entries:
        _corrupt(p, mode)
    jit.clear_memory_cache()
    exe = gx.compile(m, target="cpu", cache_dir=cache)
    assert exe.cache_source == "compiled", (mode, exe.cache_source)   # the bad entry was not used
    np.testing.assert_allclose(exe(x)[0], ref, rtol=1e-4, atol=1e-5)
    for p in entries:   # and was replaced by a good one, which the next compile uses
        assert p.read_bytes() == good[p], mode
    jit.clear_memory_cache()
    assert gx.compile(m, target="cpu", cache_dir=cache).cache_source == "disk"
assert not list(cache.glob("*.tmp*"))  # no temp file left behind
print("OK")
""", timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, f"rc={r.returncode}\n{r.stderr[-3000:]}"


def test_cache_writers_publish_whole_files(tmp_path):
    """Concurrent writers of one entry leave one whole, verified file (temp file + rename)."""
    from galaxir.backends.cpu import jit
    obj = bytes(range(256)) * 64
    path = tmp_path / "k.o"
    import threading
    ts = [threading.Thread(target=jit.write_cache_entry, args=(path, obj)) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert jit.read_cache_entry(path) == obj
    assert [p.name for p in tmp_path.iterdir()] == ["k.o"]
    path.write_bytes(path.read_bytes()[:-1])
    assert jit.read_cache_entry(path) is None


# -- .gxm weight checksums (finding 7) ------------------------------------------------------
def _weights_model(seed=0, n=64):
    """x[1, n] @ w[n, n] + b: a model whose result depends on every weight bit."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        f"w{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)])
    return gx.import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _flip_weight_bit(data: bytes) -> bytes:
    from galaxir.serialize import gxm
    _, _, w_off, w_len, _ = gxm.read_header(data)
    b = bytearray(data)
    b[w_off + 100] ^= 0x40  # one bit of an exponent inside the first weight
    return bytes(b)


def test_gxm_flipped_weight_bit_is_detected(tmp_path):
    """One flipped weight bit loads zero-copy but fails its checksum on first use, naming the
    tensor; ``verify=True`` checks at load (before: loaded fine, changed the output)."""
    from galaxir.errors import FormatError
    m = _weights_model()
    path = tmp_path / "m.gxm"
    gx.save(m, path)
    assert gx.load(path, verify=True) == m
    path.write_bytes(_flip_weight_bit(path.read_bytes()))
    with pytest.raises(FormatError, match="checksum"):
        gx.load(path, verify=True)
    lazy = gx.load(path)  # zero-copy load: the weights are not read yet
    with pytest.raises(FormatError, match=r"m\.gxm.*checksum"):
        gx.compile(lazy, target="numpy")
    from galaxir.serialize import gxm
    with pytest.raises(FormatError, match="checksum"):
        gxm.load(path, lazy=False)
    with pytest.raises(FormatError, match="checksum"):
        gxm.loads(_flip_weight_bit(gxm.dumps(m)), lazy=False)


# -- a .gxm file changed on disk while in use (finding 6) -----------------------------------
def test_gxm_truncated_in_place_while_in_use(tmp_path):
    """``cp other.gxm model.gxm`` over a loaded model (same inode, shorter file): compiled
    executables own their weights and keep giving the same answers; compiling or optimizing
    the loaded module again raises FormatError; nothing crashes (before: SIGBUS)."""
    r = run_script(f"""
import shutil, numpy as np
import galaxir as gx
from galaxir.errors import FormatError
from onnx import TensorProto, helper
sys_path = {str(Path(__file__).resolve().parent)!r}
import sys; sys.path.insert(0, sys_path)
from test_hardening_runtime import _weights_model
big, small = {str(tmp_path / "big.gxm")!r}, {str(tmp_path / "small.gxm")!r}
gx.save(_weights_model(0, n=512), big)
gx.save(_weights_model(1, n=8), small)
m = gx.load(big)
x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(1, 512)
exes = {{t: gx.compile(m, target=t) for t in ("cpu", "numpy")}}
before = {{t: e(x)[0] for t, e in exes.items()}}
shutil.copyfile(small, big)   # rewrites the same inode: the mapping loses its pages
for t, e in exes.items():
    assert np.array_equal(e(x)[0], before[t]), t
for f in (lambda: gx.compile(m, target="cpu"), lambda: gx.compile(m, target="numpy"),
          lambda: gx.optimize(m, level=2)):
    try:
        f()
    except FormatError as e:
        assert "truncated" in str(e), e
    else:
        raise AssertionError("no error")
m2 = gx.load(big)   # the new content loads normally
assert gx.compile(m2, target="numpy")(x[:, :8])[0].shape == (1, 8)
print("OK")
""", timeout=180)
    assert r.returncode == 0 and "OK" in r.stdout, f"rc={r.returncode}\n{r.stderr[-3000:]}"


def test_gxm_save_over_a_loaded_file_keeps_the_old_mapping(tmp_path):
    """gx.save replaces a file by rename: a module loaded from the old file keeps working
    (lazily built after the save included) and no temp file is left behind."""
    path = tmp_path / "m.gxm"
    gx.save(_weights_model(0), path)
    old = gx.load(path)
    gx.save(_weights_model(1, n=8), path)
    x = np.ones((1, 64), np.float32)
    ref = gx.compile(_weights_model(0), target="numpy")(x)[0]
    assert np.array_equal(gx.compile(old, target="numpy")(x)[0], ref)
    assert [p.name for p in tmp_path.iterdir()] == ["m.gxm"]


# -- external data stays inside the model's folder (finding 5) ------------------------------
def _external_model(location: str, sparse: bool = False) -> "onnx.ModelProto":
    """y = x + c where c (4 floats, or a sparse tensor's values) is external data at ``location``."""
    import onnx
    c = helper.make_tensor("c", TensorProto.FLOAT, [4], [0.0] * 4)
    c.ClearField("float_data")
    c.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = c.external_data.add()
        e.key, e.value = k, v
    inits, sparse_inits = [c], []
    if sparse:
        idx = helper.make_tensor("ci", TensorProto.INT64, [4], [0, 1, 2, 3])
        sparse_inits = [helper.make_sparse_tensor(c, idx, [4])]
        inits = []
    g = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "ext",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    g.sparse_initializer.extend(sparse_inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert isinstance(m, onnx.ModelProto)
    return m


def _ext_values(m) -> np.ndarray:
    return gx.compile(m, target="numpy")(np.zeros(4, np.float32))[0]


@pytest.mark.parametrize("form", ["bytes", "proto"])
@pytest.mark.parametrize("check", [True, False])
def test_external_data_of_in_memory_models_needs_base_dir(tmp_path, monkeypatch, form, check):
    """A model given as bytes or a ModelProto has no folder: its external data needs
    ``base_dir``, else a clear error; a symlinked folder leading outside is refused (before:
    read the outside file relative to the current directory)."""
    from galaxir.errors import ModelImportError
    outside, work = tmp_path / "outside", tmp_path / "work"
    outside.mkdir()
    work.mkdir()
    (outside / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (work / "linkdir").symlink_to(outside, target_is_directory=True)
    monkeypatch.chdir(work)
    m = _external_model("linkdir/secret.bin")
    src = m.SerializeToString() if form == "bytes" else m
    with pytest.raises(ModelImportError, match="base_dir"):
        gx.import_model(src, check=check)
    with pytest.raises(ModelImportError, match="escapes"):
        gx.import_model(src, check=check, base_dir=work)
    # inside the base dir it works, and a ModelProto given in is left unchanged
    (work / "c.bin").write_bytes(np.full(4, 7, np.float32).tobytes())
    m2 = _external_model("c.bin")
    before = m2.SerializeToString()
    src2 = m2.SerializeToString() if form == "bytes" else m2
    assert _ext_values(gx.import_model(src2, check=check, base_dir=work)).tolist() == [7.0] * 4
    assert m2.SerializeToString() == before


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_external_data_is_read_from_the_model_folder(tmp_path, monkeypatch, sparse):
    """A model given as a path reads its external data (sparse values included) from its own
    folder, never from the current directory (before: sparse values came from the cwd)."""
    import onnx
    from galaxir.errors import ModelImportError
    model_dir, cwd = tmp_path / "model", tmp_path / "cwd"
    model_dir.mkdir()
    cwd.mkdir()
    (model_dir / "c.bin").write_bytes(np.full(4, 2, np.float32).tobytes())
    (cwd / "c.bin").write_bytes(np.full(4, 9, np.float32).tobytes())
    onnx.save(_external_model("c.bin", sparse=sparse), model_dir / "m.onnx")
    monkeypatch.chdir(cwd)
    assert _ext_values(gx.import_model(str(model_dir / "m.onnx"))).tolist() == [2.0] * 4
    (model_dir / "c.bin").unlink()
    with pytest.raises(ModelImportError, match="not found"):
        gx.import_model(str(model_dir / "m.onnx"))
    # a symlinked folder inside the model folder that leads outside is refused
    (model_dir / "linkdir").symlink_to(cwd, target_is_directory=True)
    onnx.save(_external_model("linkdir/c.bin", sparse=sparse), model_dir / "m2.onnx")
    with pytest.raises(ModelImportError, match="escapes"):
        gx.import_model(str(model_dir / "m2.onnx"))


# -- long elementwise chains (finding 4) ----------------------------------------------------
def _chain_model(n: int):
    """x -> (+c, *c, +c, ...) n ops -> y, as ONNX."""
    nodes, prev = [], "x"
    for i in range(n):
        out = "y" if i == n - 1 else f"t{i}"
        nodes.append(helper.make_node("Add" if i % 2 == 0 else "Mul", [prev, "c"], [out]))
        prev = out
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor("c", TensorProto.FLOAT, [1], [0.9999])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _check_chain(n: int, tmp_path, budget_s: float):
    import time
    t0 = time.perf_counter()
    m = gx.import_model(_chain_model(n))
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
    ref = gx.compile(m, target="numpy", level=0)(x)[0]
    for level in range(4):
        mo = gx.optimize(m, level=level, target="cpu")
        (y,) = gx.compile(mo, target="cpu", level=level)(x)
        np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-5)
        if level == 2:  # fused in groups of at most MAX_GROUP_OPS ops, which the cpu's
            # own rule (cpu-fuse-elementwise) joins into loops of at most MAX_EXPR_DEPTH
            from galaxir.backends.cpu.lower import MAX_EXPR_DEPTH
            counts = mo.op_counts()
            assert counts.get("fused_elementwise", 0) >= n // MAX_EXPR_DEPTH
    gx.save(m, tmp_path / "chain.gxm")
    assert gx.load(tmp_path / "chain.gxm") == m
    assert gx.parse(m.to_text()) == m
    took = time.perf_counter() - t0
    assert took < budget_s, f"{n}-op chain took {took:.1f} s"


def test_elementwise_chain_2000(tmp_path):
    """A 2,000-op chain through import, O0-O3, cpu compile, save/load and print/parse
    (before: RecursionError at 500 ops on cpu)."""
    _check_chain(2000, tmp_path, budget_s=120)


@pytest.mark.slow
def test_elementwise_chain_20000(tmp_path):
    """20,000 ops in seconds per stage: nothing quadratic (before: O2 took 108 s)."""
    _check_chain(20000, tmp_path, budget_s=600)


def test_fuse_elementwise_is_linear(monkeypatch):
    """Grouping a chain looks at each op a bounded number of times (before: once per op per
    round of a fixed-point loop, quadratic), counted, not timed."""
    from galaxir.passes.fusion import elementwise as ew
    calls = []
    real = ew._fusible
    monkeypatch.setattr(ew, "_fusible", lambda op: calls.append(1) or real(op))
    for n in (1000, 8000):
        m = gx.import_model(_chain_model(n))
        last = [op for op in m.graph.block if not op.is_terminator][-1]
        calls.clear()
        g = ew.collect_group(last, max_ops=n + 1)
        assert len(g) == n and g[-1] is last
        assert len(calls) <= 3 * n, (n, len(calls))
        assert len(ew.collect_group(last)) == ew.MAX_GROUP_OPS


def test_fusion_asks_fusible_a_few_times_per_op(monkeypatch):
    """The cpu's elementwise fusion over a long chain asks ``fusible`` a few times per op,
    not once for each of the CHAIN_LOOKAHEAD ops looking ahead past it (before: 35 per op;
    the answers are kept until the IR changes, Rewriter.memo); counted, not timed."""
    from galaxir.backends.cpu.lower import MAX_EXPR_DEPTH
    from galaxir.backends.cpu.rules import FuseNativeElementwise
    from galaxir.passes.rewrite import apply_patterns_greedily
    calls = []
    real = FuseNativeElementwise.fusible
    monkeypatch.setattr(FuseNativeElementwise, "fusible",
                        lambda self, op: calls.append(1) or real(self, op))
    for n in (300, 2000):
        m = gx.import_model(_chain_model(n))
        calls.clear()
        st = apply_patterns_greedily(m, [FuseNativeElementwise()])
        assert st.rewrites["cpu-fuse-elementwise"] == -(-n // MAX_EXPR_DEPTH)
        assert len(calls) <= 6 * n, (n, len(calls))


def test_lowered_expressions_are_bounded():
    """A deep chain lowers to several elementwise kernels, each at most MAX_EXPR_DEPTH deep."""
    from galaxir.backends.cpu import lower
    from galaxir.backends.cpu.prepare import prepare
    from galaxir.passes.memory import specialize_types as specialize
    m = gx.import_model(_chain_model(1000))
    steps = lower.lower_module(specialize(prepare(m), {"x": (4, 8)}))
    depths = [lower.expr_depth(s.kernel.expr) for s in steps]
    assert len(steps) >= 1000 // lower.MAX_EXPR_DEPTH
    assert max(depths) <= lower.MAX_EXPR_DEPTH and sum(depths) == 1000


# -- memory stays flat over many calls and compiles (concurrency/memory requirement) --------
RSS_SCRIPT = CONV_MODELS + """
import gc, sys
def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
m = gx.import_model(conv_model(0, 8))
what = sys.argv[1] if len(sys.argv) > 1 else "{what}"
if what == "calls":
    exe = gx.compile(m, target="cpu")
    for i in range(300):
        exe(feeds[i % 3])
    before = rss()
    for i in range(2000):
        exe(feeds[i % 3])
else:
    for i in range(10):
        gx.compile(m, target="cpu")(feeds[0])
    before = rss()
    for i in range(50):
        gx.compile(m, target="cpu")(feeds[0])
after = rss()
print("RSS", before, after, (after - before) / before)
assert after < before * 1.05, (before, after)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
@pytest.mark.parametrize("what", ["calls", "compiles"])
def test_rss_stays_flat(what):
    """2,000 calls of one executable, and 50 compiles of one model, grow RSS by < 5% after
    warm-up (no leak per call or per compiled executable)."""
    r = run_script(RSS_SCRIPT.replace("{what}", what), timeout=400)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    assert "RSS" in r.stdout
