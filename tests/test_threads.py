"""The cpu backend's thread pool (galaxir/backends/cpu/parallel.py) and per-call arenas
(program.CallState): pool sizes 1-8 give the single-threaded answers (on a 2-core machine
the bigger pools oversubscribe on purpose), threads calling one executable at once run
side by side, idle workers go to sleep, and num_threads is resolved against the cores the
process may use.  Scripts that could hang on a regression run in a subprocess."""
from __future__ import annotations

import os

import pytest

from galaxir.backends.cpu import parallel
from galaxir.errors import CompileError

from conftest import CONV_MODELS, run_script

pytest.importorskip("llvmlite")


def test_num_threads_defaults_to_the_usable_cores_and_is_capped(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("GALAXIR_NUM_THREADS", raising=False)
    assert parallel.resolve_threads(None) == cores
    assert parallel.resolve_threads(0) == cores
    assert parallel.resolve_threads(1) == 1
    assert parallel.resolve_threads(cores + 7) == cores
    monkeypatch.setenv("GALAXIR_NUM_THREADS", "1")
    assert parallel.resolve_threads(None) == 1
    assert parallel.get_pool(None) is None
    monkeypatch.setenv("GALAXIR_NUM_THREADS", "lots")
    with pytest.raises(CompileError, match="GALAXIR_NUM_THREADS"):
        parallel.resolve_threads(None)
    with pytest.raises(CompileError, match="num_threads"):
        parallel.resolve_threads(-2)


def test_pools_of_1_to_8_threads_give_the_single_threaded_results():
    r = run_script(CONV_MODELS + """
from galaxir.backends.cpu.parallel import pool_of_size
m = gx.import_model(conv_model(3, 20))
ref = gx.compile(m, target="cpu", num_threads=1)
want = [ref(x)[0] for x in feeds]
exe = gx.compile(m, target="cpu", num_threads=2)
for n in range(1, 9):
    exe.pool = pool_of_size(n)
    assert (exe.pool is None) == (n == 1)
    if n > 1:
        assert exe.pool.size == n and sum(t.is_alive() for t in exe.pool._threads) == n - 1
    for _ in range(3):
        for x, w in zip(feeds, want):
            assert np.array_equal(exe(x)[0], w), n
print("OK")
""", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "OK" in r.stdout


def test_threads_on_one_executable_run_at_once_with_their_own_arenas():
    """4 threads x 40 calls on one executable with an oversubscribed 8-thread pool: every
    answer equals the single-threaded one, and the calls overlapped (the specialization had
    to make more than one call state: nothing serialized them)."""
    r = run_script(CONV_MODELS + """
from galaxir.backends.cpu.parallel import pool_of_size
m = gx.import_model(conv_model(1, 12))
ref = gx.compile(m, target="cpu", num_threads=1)
expected = [[ref(x)[0] for x in feeds]]
exe = gx.compile(m, target="cpu")
exe.pool = pool_of_size(8)
exe(feeds[0])
bad = hammer([exe], feeds, expected, 40)
assert not bad, bad[:5]
print("STATES", len(exe.last._free))
""", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    states = int(r.stdout.split("STATES")[1].split()[0])
    assert states > 1


def test_idle_workers_sleep_and_stop():
    """After a call the workers spin briefly, then sleep on the futex (they must not keep
    the shared cores busy); close() ends them."""
    r = run_script(CONV_MODELS + """
import time
from galaxir.backends.cpu import parallel as P
exe = gx.compile(gx.import_model(conv_model(2, 16)), target="cpu")
pool = P.Pool(3)
exe.pool = pool
exe(feeds[0])
assert pool.state[P.GEN] > 0          # the call published jobs on this pool
deadline = time.time() + 20
while pool.state[P.SLEEPERS] != 2 and time.time() < deadline:
    time.sleep(0.01)
print("SLEEPERS", pool.state[P.SLEEPERS])
exe(feeds[1])                        # sleeping workers are woken and the answer is right
pool.close()
print("ALIVE", sum(t.is_alive() for t in pool._threads))
""", timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "SLEEPERS 2" in r.stdout and "ALIVE 0" in r.stdout


def test_pool_runtime_comes_from_the_disk_cache(monkeypatch, tmp_path):
    """The pool's worker code is kept in the disk cache as model code is: a process that
    sets GALAXIR_CACHE_DIR runs LLVM for none of it at its next start."""
    from galaxir.backends.cpu import jit
    from galaxir.backends.cpu.parallel import Pool
    monkeypatch.setenv("GALAXIR_CACHE_DIR", str(tmp_path))
    jit.clear_memory_cache()
    Pool(2).close()
    assert list(tmp_path.glob("*.o"))
    jit.clear_memory_cache()
    before = jit.stats["compiled"]
    Pool(2).close()
    assert jit.stats["compiled"] == before
