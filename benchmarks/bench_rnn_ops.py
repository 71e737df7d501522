"""Recurrent layers against onnxruntime in the same process, the engines taking turns call
by call (issue 12: bilstm was 2.23x onnxruntime at two threads).

Cases: the ``bilstm`` network of ``galaxir.testing.modern`` (2-layer bidirectional LSTM
128->256 over 64 steps, then a Linear; needs torch), the ``torch_lstm`` of bench_cpu.py
(2-layer LSTM 64->128, 32 steps, through galaxir's torch frontend), and single ONNX
LSTM / GRU nodes (forward and bidirectional) with seeded random weights.

Each cell: median and minimum over ``--runs`` alternating calls; the ratios are
galaxir / onnxruntime of the per-call medians and of the minima (lower is better).
With ``--threads 2`` onnxruntime's pool is told not to spin after a run (it would take the
core galaxir's worker needs: docs/performance.md, "Reproduce").

    PYTHONPATH=. python benchmarks/bench_rnn_ops.py [--threads 1] [--clock cpu] [--runs 200] [--cases bilstm gru_bi]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from onnx import TensorProto, helper

import galaxir as gx

F = TensorProto.FLOAT


def rnn_node(op: str, seq: int, inp: int, hidden: int, direction: str, batch: int = 1,
             seed: int = 0):
    """A single LSTM/GRU node with constant W, R, B (onnx ModelProto) and its feeds."""
    gates = 4 if op == "LSTM" else 3
    nd = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(hidden)
    W = rng.uniform(-s, s, (nd, gates * hidden, inp)).astype(np.float32)
    R = rng.uniform(-s, s, (nd, gates * hidden, hidden)).astype(np.float32)
    B = rng.uniform(-s, s, (nd, 2 * gates * hidden)).astype(np.float32)
    inits = [helper.make_tensor(n, F, a.shape, a.reshape(-1).tolist()) for n, a in
             (("W", W), ("R", R), ("B", B))]
    node = helper.make_node(op, ["x", "W", "R", "B"], ["y", "yh"], hidden_size=hidden,
                            direction=direction)
    g = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("x", F, [seq, batch, inp])],
                          [helper.make_tensor_value_info("y", F, [seq, nd, batch, hidden]),
                           helper.make_tensor_value_info("yh", F, [nd, batch, hidden])],
                          initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    feeds = {"x": rng.standard_normal((seq, batch, inp)).astype(np.float32)}
    return model.SerializeToString(), feeds


def _modern(name: str, folder: str):
    from galaxir.testing import modern
    path, feeds = modern.export(name, folder)
    with open(path, "rb") as f:
        return f.read(), feeds


def _torch_lstm(folder: str):
    import torch
    from galaxir.frontends.onnx.exporter import export_onnx
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(64, 128, num_layers=2, batch_first=True)
    x = torch.randn(1, 32, 64)
    proto = export_onnx(gx.import_model(lstm.eval(), example_inputs=(x,)))
    name = proto.graph.input[0].name
    return proto.SerializeToString(), {name: x.numpy()}


CASES = {
    "bilstm": lambda d: _modern("bilstm", d),
    "torch_lstm": _torch_lstm,
    "lstm_bi": lambda d: rnn_node("LSTM", 64, 128, 256, "bidirectional"),
    "lstm_fw": lambda d: rnn_node("LSTM", 64, 128, 256, "forward"),
    "gru_bi": lambda d: rnn_node("GRU", 64, 128, 256, "bidirectional"),
    "gru_fw": lambda d: rnn_node("GRU", 64, 128, 256, "forward"),
    "lstm_bi_small": lambda d: rnn_node("LSTM", 32, 64, 64, "bidirectional"),
}


def measure(model: bytes, feeds: dict, threads: int, runs: int, clock: str = "wall") -> tuple[list, list]:
    """Per-call times (ms) of onnxruntime and galaxir, calls alternating; ``clock="cpu"``
    reads the calling thread's CPU time (one thread only: both engines then run on it),
    steady on a machine other processes load."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if threads > 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    exe = gx.compile(gx.import_model(model), target="cpu", num_threads=threads)
    ref = sess.run(None, feeds)
    got = exe.run(feeds)
    got = list(got.values()) if isinstance(got, dict) else list(got) if isinstance(got, (list, tuple)) else [got]
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4)
    for _ in range(3):
        sess.run(None, feeds), exe.run(feeds)
    now = time.thread_time if clock == "cpu" else time.perf_counter
    to, tg = [], []
    for _ in range(runs):
        t = now()
        sess.run(None, feeds)
        to.append(now() - t)
        t = now()
        exe.run(feeds)
        tg.append(now() - t)
    return [1e3 * t for t in to], [1e3 * t for t in tg]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the calling thread's CPU time (with --threads 1)")
    a = p.parse_args(argv)
    if a.clock == "cpu" and a.threads != 1:
        p.error("--clock cpu needs --threads 1 (worker threads' time is not counted)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads={a.threads}, {a.runs} alternating calls, {a.clock} clock, load average {load:.1f}")
    print("| case | ort ms (median / min) | galaxir ms (median / min) | ratio (median / of mins) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in a.cases:
            try:
                model, feeds = CASES[name](folder)
            except (ImportError, RuntimeError) as e:
                print(f"| {name} | skipped: {e} | | |")
                continue
            to, tg = measure(model, feeds, a.threads, a.runs, a.clock)
            mo, mg = statistics.median(to), statistics.median(tg)
            print(f"| {name} | {mo:.3f} / {min(to):.3f} | {mg:.3f} / {min(tg):.3f} | "
                  f"{mg / mo:.2f} / {min(tg) / min(to):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
