"""galaxir cpu vs TensorFlow and LiteRT on the Keras applications (weights=None, seeded).

For each model: TensorFlow runs it as a tf.function; LiteRT runs the float32 .tflite that
tf.lite.TFLiteConverter makes of it; galaxir runs both imports (the Keras model through the
TF frontend, the .tflite file through the TFLite frontend) compiled for cpu.  Everyone
gets 2 threads.  In one process the engines take turns in blocks (A, B, C, A, B, C, ...)
so a burst of load on this shared machine hits them alike; the table gives the median and
the minimum latency, and the ratios galaxir / framework (< 1: galaxir is faster).

    python benchmarks/bench_frontends.py                      # the six CNNs at 224x224
    python benchmarks/bench_frontends.py --models ResNet50 --size 160 --rounds 5
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's galaxir
import numpy as np  # noqa: E402

THREADS = 2  # --threads
MODELS = ["ResNet50", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "DenseNet121",
          "ConvNeXtTiny"]


def _block(fn, x, n: int) -> float:
    """Median ms per call over a block of n calls."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def bench_model(name: str, size: int, rounds: int, block: int) -> dict:
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    import galaxir as gx
    from galaxir.frontends.tflite import import_tflite

    keras.utils.set_random_seed(0)
    kw = {"include_preprocessing": False} if "MobileNetV3" in name else {}
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                              classifier_activation=None, **kw)
    x = np.random.RandomState(0).uniform(0, 1, (1, size, size, 3)).astype(np.float32)
    tf_fn = tf.function(lambda t: model(t, training=False))
    t0 = time.perf_counter()
    exe_tf = gx.compile(gx.import_model(model), target="cpu", num_threads=THREADS)
    t_import = time.perf_counter() - t0
    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    it = Interpreter(model_content=blob, num_threads=THREADS)
    it.allocate_tensors()
    din, dout = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    exe_tfl = gx.compile(import_tflite(blob), target="cpu", num_threads=THREADS)

    def run_litert(v):
        it.set_tensor(din, v)
        it.invoke()
        return it.get_tensor(dout)

    engines = {"tf": lambda v: tf_fn(v).numpy(), "gx(tf)": lambda v: exe_tf(v)[0],
               "litert": run_litert, "gx(tflite)": lambda v: exe_tfl(v)[0]}
    ref = engines["tf"](x)
    for k, f in engines.items():  # warm up, and check the answers agree
        out = f(x)
        err = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-6))
        if err > 1e-3:
            print(f"# {name}: {k} differs from TF by {err:.2e}", file=sys.stderr)
    samples = {k: [] for k in engines}
    for _ in range(rounds):
        for k, f in engines.items():
            samples[k].append(_block(f, x, block))
    return {"name": name, "import_compile_s": t_import,
            **{k: (statistics.median(v), min(v)) for k, v in samples.items()}}


def main(argv=None) -> None:
    global THREADS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block", type=int, default=5, help="calls per engine per round")
    p.add_argument("--threads", type=int, default=THREADS)
    args = p.parse_args(argv)
    THREADS = args.threads
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rows = []
    print(f"| model ({args.size}x{args.size}, batch 1, {THREADS} threads) | TF ms | galaxir(tf) ms "
          "| ratio vs TF | LiteRT ms | galaxir(tflite) ms | ratio vs LiteRT |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        r = bench_model(name, args.size, args.rounds, args.block)
        rows.append(r)
        rt = r["gx(tf)"][0] / r["tf"][0]
        rl = r["gx(tflite)"][0] / r["litert"][0]
        print(f"| {name} | {r['tf'][0]:.1f} (min {r['tf'][1]:.1f}) | {r['gx(tf)'][0]:.1f} "
              f"(min {r['gx(tf)'][1]:.1f}) | {rt:.2f}x | {r['litert'][0]:.1f} (min {r['litert'][1]:.1f}) "
              f"| {r['gx(tflite)'][0]:.1f} (min {r['gx(tflite)'][1]:.1f}) | {rl:.2f}x |", flush=True)
    if rows:
        geo = lambda xs: math.exp(sum(math.log(v) for v in xs) / len(xs))  # noqa: E731
        print(f"\ngeomean galaxir/TF: {geo([r['gx(tf)'][0] / r['tf'][0] for r in rows]):.2f}x, "
              f"galaxir/LiteRT float32: {geo([r['gx(tflite)'][0] / r['litert'][0] for r in rows]):.2f}x "
              "(median latencies; < 1 means galaxir is faster)")


if __name__ == "__main__":
    main()
