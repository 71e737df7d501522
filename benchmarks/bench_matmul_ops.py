"""Single matmul/attention ops: galaxir cpu against onnxruntime, in the same process.

The cases of issue 12: an N-d activation times a constant weight plus bias (ConvNeXt's MLP
on a 56x56 map, a transformer's linear layers), the batched products of attention with K
transposed, and one attention block (softmax(Q K^T * scale + mask) @ V) as the torch
exporters write it.  The two engines run taking turns (A, B, A, B, ...) so that a burst of
load on this shared machine hits both; each line gives both medians and the median and
minimum of the per-pair ratios (galaxir / onnxruntime: below 1 is faster).

    python benchmarks/bench_matmul_ops.py                    # 1 and 2 threads, every case
    python benchmarks/bench_matmul_ops.py --threads 1 --runs 30 --cases linear_96_384
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "bench",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
                          [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def linear_case(ashape, k, n):
    """MatMul of an N-d activation by a constant [k, n] weight, then Add of a bias."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])],
               [("x", ashape)], [("z", tuple(ashape[:-1]) + (n,))], [("w", w), ("b", b)])
    return m, {"x": rng.standard_normal(ashape).astype(np.float32)}


def qk_case(b, h, s, d):
    """Q @ K^T of attention: K [b, h, s, d] transposed by a Transpose node."""
    rng = np.random.default_rng(0)
    m = _model([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                helper.make_node("MatMul", ["q", "kt"], ["y"])],
               [("q", (b, h, s, d)), ("k", (b, h, s, d))], [("y", (b, h, s, s))], [])
    return m, {"q": rng.standard_normal((b, h, s, d)).astype(np.float32),
               "k": rng.standard_normal((b, h, s, d)).astype(np.float32)}


def attention_chain_case(b, h, s, d, causal=False):
    """softmax(Q K^T * scale + mask) @ V on [b, h, s, d] operands, as separate ONNX nodes."""
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 1, s, s), np.float32)
    if causal:
        mask[..., np.triu_indices(s, 1)[0], np.triu_indices(s, 1)[1]] = -1e4
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Mul", ["qk", "scale"], ["qs"]),
             helper.make_node("Add", ["qs", "mask"], ["qm"]),
             helper.make_node("Softmax", ["qm"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    m = _model(nodes, [("q", (b, h, s, d)), ("k", (b, h, s, d)), ("v", (b, h, s, d))],
               [("y", (b, h, s, d))],
               [("scale", np.array(1 / np.sqrt(d), np.float32)), ("mask", mask)])
    feeds = {n: rng.standard_normal((b, h, s, d)).astype(np.float32) for n in "qkv"}
    return m, feeds


def mha_case(e, heads, s):
    """torch.nn.MultiheadAttention (self-attention, batch_first) exported by torch.onnx."""
    import io
    import torch
    torch.manual_seed(0)
    mod = torch.nn.MultiheadAttention(e, heads, batch_first=True).eval()

    class Self(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = mod

        def forward(self, x):
            return self.m(x, x, x, need_weights=False)[0]

    x = torch.randn(1, s, e)
    f = io.BytesIO()
    torch.onnx.export(Self().eval(), (x,), f, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return onnx.load_from_string(f.getvalue()), {"x": x.numpy()}


CASES = {
    "linear_96_384": lambda: linear_case((1, 56, 56, 96), 96, 384),
    "linear_384_96": lambda: linear_case((1, 56, 56, 384), 384, 96),
    "linear_bert_768": lambda: linear_case((1, 128, 768), 768, 768),
    "linear_bert_3072": lambda: linear_case((1, 128, 768), 768, 3072),
    "qk_12x128x64": lambda: qk_case(1, 12, 128, 64),
    "qk_12x197x64": lambda: qk_case(1, 12, 197, 64),        # ViT-B/16's 197 tokens
    "qk_12x256x64": lambda: qk_case(1, 12, 256, 64),
    "attention_chain_12x128x64": lambda: attention_chain_case(1, 12, 128, 64),
    "attention_chain_12x197x64": lambda: attention_chain_case(1, 12, 197, 64),
    "attention_chain_12x256x64": lambda: attention_chain_case(1, 12, 256, 64),
    "attention_causal_12x128x64": lambda: attention_chain_case(1, 12, 128, 64, causal=True),
    "mha_torch_768x12x128": lambda: mha_case(768, 12, 128),
}


def compare(model, feeds, threads: int, runs: int, level: int | None = None):
    """(galaxir median ms, onnxruntime median ms, median ratio, min ratio, max abs error)."""
    import onnxruntime as ort
    import galaxir as gx
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    m = gx.import_model(model)
    if level is not None:
        m = gx.optimize(m, level=level, target="cpu")
    exe = gx.compile(m, target="cpu", num_threads=threads)
    names = [a.name for a in model.graph.input]
    args = [feeds[n] for n in names]
    ref = sess.run(None, feeds)[0]
    err = float(np.abs(exe(*args)[0] - ref).max())
    ga, oa = [], []
    for _ in range(2):       # warm-up
        exe(*args)
        sess.run(None, feeds)
    for _ in range(runs):
        t = time.perf_counter()
        exe(*args)
        ga.append(time.perf_counter() - t)
        t = time.perf_counter()
        sess.run(None, feeds)
        oa.append(time.perf_counter() - t)
    ratios = [g / o for g, o in zip(ga, oa)]
    return (1e3 * statistics.median(ga), 1e3 * statistics.median(oa), statistics.median(ratios),
            min(ga) / min(oa), err)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--level", type=int, default=None, help="galaxir optimization level (default: compile's)")
    args = ap.parse_args(argv)
    print("| case | threads | galaxir ms | onnxruntime ms | median ratio | min ratio | max abs err |")
    print("|---|---|---|---|---|---|---|")
    for name in args.cases:
        model, feeds = CASES[name]()
        for t in args.threads:
            g, o, r, rmin, err = compare(model, feeds, t, args.runs, args.level)
            print(f"| {name} | {t} | {g:.3f} | {o:.3f} | {r:.2f} | {rmin:.2f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
