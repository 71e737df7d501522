"""Single-op timings of the math modern networks lean on (issue 12): galaxir's cpu backend
against onnxruntime in the same process, taking turns.

Cases: GELU in erf form (``x * 0.5 * (1 + erf(x / sqrt 2))``) and in tanh form on
1x56x56x384, squeeze-excitation (GlobalAveragePool -> Sigmoid -> Mul) on 1x96x56x56,
HardSwish, SiLU and Mish on 1x96x56x56, Erf/Tanh/Exp/Sigmoid alone on 1x56x56x384, and
LayerNormalization over the last dim of an NHWC 1x56x56x96 tensor (ConvNeXt) and of a
1x197x768 one (a ViT's hidden); and a ViT MLP's MatMul + Add + GELU (fused into the GEMM
epilogue).  The "copy ms" column is the time numpy takes to copy an array of the output's
size: the executable copies each output out of its arena, a fixed cost of every case; "galaxir
kernels ms" is the native kernels alone (the profiler's fastest run).  Each cell: the median over ``--rounds`` rounds of each
engine's median over ``--runs`` runs; the ratio is galaxir / onnxruntime (lower is better).

    PYTHONPATH=. python benchmarks/bench_elementwise_ops.py [--threads 1] [--runs 15] [--rounds 5] [--cases gelu_erf se]

``GALAXIR_CPU_FEATURES=-avx512f`` times the code an AVX2 host runs (vmath's portable paths,
8-lane loops) on this one; ``GALAXIR_CPU_STREAM_MIN=0`` turns streaming stores off.
"""
from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import onnx
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.testing.timing import median_ms

F = TensorProto.FLOAT


def _model(nodes, x_shape, y_shape, inits=()):
    g = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", F, x_shape)],
                          [helper.make_tensor_value_info("y", F, y_shape)], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _scalar(name, v):
    return helper.make_tensor(name, F, [], [float(v)])


def gelu_erf(shape=(1, 56, 56, 384)):
    nodes = [helper.make_node("Div", ["x", "s2"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["q"]),
             helper.make_node("Mul", ["q", "half"], ["y"])]
    return _model(nodes, shape, shape, [_scalar("s2", math.sqrt(2)), _scalar("one", 1), _scalar("half", 0.5)])


def gelu_tanh(shape=(1, 56, 56, 384)):
    c = math.sqrt(2 / math.pi)
    nodes = [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x2", "x"], ["x3"]),
             helper.make_node("Mul", ["x3", "k"], ["a"]), helper.make_node("Add", ["x", "a"], ["b"]),
             helper.make_node("Mul", ["b", "c"], ["u"]), helper.make_node("Tanh", ["u"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["q"]),
             helper.make_node("Mul", ["q", "half"], ["y"])]
    return _model(nodes, shape, shape, [_scalar("k", 0.044715), _scalar("c", c), _scalar("one", 1),
                                        _scalar("half", 0.5)])


def unary(op, shape, **attrs):
    return _model([helper.make_node(op, ["x"], ["y"], **attrs)], shape, shape)


def silu(shape=(1, 96, 56, 56)):
    return _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                  shape, shape)


def mish(shape=(1, 96, 56, 56)):
    return _model([helper.make_node("Softplus", ["x"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
                   helper.make_node("Mul", ["x", "t"], ["y"])], shape, shape)


def se(shape=(1, 96, 56, 56)):
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["y"])]
    return _model(nodes, shape, shape)


def layer_norm(shape):
    d = shape[-1]
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("g", F, [d], rng.standard_normal(d).astype(np.float32).tolist()),
             helper.make_tensor("b", F, [d], rng.standard_normal(d).astype(np.float32).tolist())]
    return _model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-6)],
                  shape, shape, inits)


def linear_gelu(rows=197, k=768, n=3072):
    """A ViT MLP's first layer: MatMul + Add + GELU (erf form), fused into one GEMM epilogue."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["z"]),
             helper.make_node("Div", ["z", "s2"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["z", "p"], ["q"]),
             helper.make_node("Mul", ["q", "half"], ["y"])]
    inits = [helper.make_tensor("w", F, [k, n], w.reshape(-1).tolist()),
             helper.make_tensor("bias", F, [n], rng.standard_normal(n).astype(np.float32).tolist()),
             _scalar("s2", math.sqrt(2)), _scalar("one", 1), _scalar("half", 0.5)]
    return _model(nodes, (1, rows, k), (1, rows, n), inits)


CASES = {
    "gelu_erf": lambda: gelu_erf(),
    "gelu_tanh": lambda: gelu_tanh(),
    "se": lambda: se(),
    "hard_swish": lambda: unary("HardSwish", (1, 96, 56, 56)),
    "hard_sigmoid": lambda: unary("HardSigmoid", (1, 96, 56, 56)),
    "silu": lambda: silu(),
    "mish": lambda: mish(),
    "erf": lambda: unary("Erf", (1, 56, 56, 384)),
    "tanh": lambda: unary("Tanh", (1, 56, 56, 384)),
    "exp": lambda: unary("Exp", (1, 56, 56, 384)),
    "exp_4096": lambda: unary("Exp", (4096,)),
    "tanh_96": lambda: unary("Tanh", (1, 96, 56, 56)),
    "sigmoid_96": lambda: unary("Sigmoid", (1, 96, 56, 56)),
    "sigmoid": lambda: unary("Sigmoid", (1, 56, 56, 384)),
    "layer_norm_nhwc": lambda: layer_norm((1, 56, 56, 96)),
    "layer_norm_hidden": lambda: layer_norm((1, 197, 768)),
    "linear_gelu": lambda: linear_gelu(),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    import onnxruntime as ort
    print(f"threads={a.threads}, median of {a.rounds} rounds x {a.runs} runs")
    print("| case | ort ms | galaxir ms | ratio (median) | ratio (best round) | galaxir kernels ms | copy ms |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for name in a.cases:
        proto = CASES[name]()
        shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        feeds = {"x": (3 * rng.standard_normal(shape)).astype(np.float32)}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        exe = gx.compile(gx.import_model(proto), target="cpu", num_threads=a.threads)
        ref = sess.run(None, feeds)[0]
        got = exe.run(feeds)
        got = got[0] if isinstance(got, (list, tuple)) else next(iter(got.values())) if isinstance(got, dict) else got
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        t_o, t_g, t_c = [], [], []
        for _ in range(a.rounds):
            t_o.append(median_ms(lambda: sess.run(None, feeds), a.runs))
            t_g.append(median_ms(lambda: exe.run(feeds), a.runs))
            t_c.append(median_ms(lambda: ref.copy(), a.runs))
        mo, mg, mc = statistics.median(t_o), statistics.median(t_g), statistics.median(t_c)
        best = min(g / o for g, o in zip(t_g, t_o))
        # the native kernels alone (profiler, the fastest run): what is left of a call is
        # input binding, the output copy out of the arena and Python
        prof = exe.profile(feeds, runs=a.runs)
        runs = len(prof.steps[0].dur_us) if prof.steps else 0
        mk = min(sum(st.dur_us[k] for st in prof.steps if st.dur_us) for k in range(runs)) / 1e3 if runs else 0.0
        print(f"| {name} | {mo:.3f} | {mg:.3f} | {mg / mo:.2f}x | {best:.2f}x | {mk:.3f} | {mc:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
