"""Throughput of ``vdpbf16ps`` against ``vfmadd231ps`` on this host (zmm, independent
accumulator chains, one thread, CPU time): the measurement behind
galaxir/backends/cpu/lower_bf16.use_bf16_dot, which keeps bf16 products off vdpbf16ps on
Intel's Sapphire/Emerald Rapids line.  Run it on a new kind of host to check that choice:
the bf16 GEMM gains only where a vdpbf16ps (32 multiply-adds) issues at more than half
the rate of an FMA (16).

    python benchmarks/bench_bf16dot.py [--iters 2000000]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(chains: int):
    """Two functions ``fma(n, x)`` / ``dp(n, x)``: ``chains`` accumulators, n steps."""
    import llvmlite.ir as ir

    from galaxir.backends.cpu import jit
    from galaxir.backends.cpu.kernels_bf16 import BF16X32, DPBF16
    llvm = jit._llvm()
    F32, I32, I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    V = ir.VectorType(F32, 16)
    m = ir.Module()
    m.triple, m.data_layout = jit.target_triple(), jit.target_data_layout()
    fma = ir.Function(m, ir.FunctionType(V, [V, V, V]), "llvm.fma.v16f32")
    dp = ir.Function(m, ir.FunctionType(V, [V, BF16X32, BF16X32]), DPBF16)
    for kind in ("fma", "dp"):
        fn = ir.Function(m, ir.FunctionType(F32, [I64, F32]), kind)
        entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
        b = ir.IRBuilder(entry)
        x = b.insert_element(ir.Constant(V, ir.Undefined), fn.args[1], ir.Constant(I32, 0))
        x = b.shuffle_vector(x, ir.Constant(V, ir.Undefined), ir.Constant(ir.VectorType(I32, 16), [0] * 16))
        y = b.fadd(x, x)
        b.branch(loop)
        b.position_at_end(loop)
        i = b.phi(I64)
        i.add_incoming(ir.Constant(I64, 0), entry)
        accs = []
        for _ in range(chains):
            p = b.phi(V)
            p.add_incoming(ir.Constant(V, [0.0] * 16), entry)
            accs.append(p)
        new = [b.call(fma, [x, y, p]) if kind == "fma" else
               b.call(dp, [p, b.bitcast(x, BF16X32), b.bitcast(y, BF16X32)]) for p in accs]
        for p, v in zip(accs, new):
            p.add_incoming(v, loop)
        i2 = b.add(i, ir.Constant(I64, 1))
        i.add_incoming(i2, loop)
        b.cbranch(b.icmp_signed("<", i2, fn.args[0]), loop, done)
        b.position_at_end(done)
        s = new[0]
        for v in new[1:]:
            s = b.fadd(s, v)
        b.ret(b.extract_element(s, ir.Constant(I32, 0)))
    mod = llvm.parse_assembly(str(m))
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, jit._state["tm"])
    engine.finalize_object()
    proto = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64, ctypes.c_float)
    return engine, {k: proto(engine.get_function_address(k)) for k in ("fma", "dp")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=2_000_000)
    p.add_argument("--chains", type=int, default=12)
    args = p.parse_args()
    from galaxir.backends.cpu import jit
    from galaxir.backends.cpu.lower_bf16 import use_bf16_dot
    if not jit.has_feature("avx512bf16"):
        raise SystemExit("this host has no AVX512-BF16")
    _engine, fns = build(args.chains)
    rate = {}
    for kind in ("fma", "dp", "fma", "dp"):     # taking turns; the best of each
        for _ in range(3):
            t = time.thread_time()
            fns[kind](args.iters, 1.0)
            dt = time.thread_time() - t
            rate[kind] = max(rate.get(kind, 0.0), args.iters * args.chains / dt)
    macs = {"fma": 16 * rate["fma"], "dp": 32 * rate["dp"]}
    for kind, name in (("fma", "vfmadd231ps"), ("dp", "vdpbf16ps")):
        print(f"{name:12s} {rate[kind] / 1e9:6.2f} G instructions/s  {macs[kind] / 1e9:7.1f} G multiply-adds/s")
    print(f"vdpbf16ps / fma multiply-adds: {macs['dp'] / macs['fma']:.2f}; "
          f"galaxir's default on this host: {'vdpbf16ps' if use_bf16_dot() else 'float32 kernels'}")


if __name__ == "__main__":
    main()
