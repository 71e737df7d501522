"""galaxir cpu vs galaxir numpy vs onnxruntime on the 9 light model-zoo CNNs, networks built
the way people build them today (``galaxir.testing.modern``: torchvision and transformers
code with seeded random weights, exported on the fly where torch, torchvision and
transformers are installed, skipped with the reason otherwise), plus a 1024x1024 float32
matmul.  Each (model, engine) runs in its own process so peak memory
(VmHWM) is its own.  Threads: 2 for everyone (GALAXIR_NUM_THREADS, intra_op_num_threads).

    python benchmarks/bench_cpu.py                 # everything, markdown table on stdout
    python benchmarks/bench_cpu.py --models squeezenet resnet50 --runs 10
    python benchmarks/bench_cpu.py --set modern --skip-numpy     # only the modern networks
    python benchmarks/bench_cpu.py --set heldout --skip-numpy    # architectures not tuned on
                                                                 # (modern.HELDOUT; opt-in)
    python benchmarks/bench_cpu.py --cpu-levels 1 2 --skip-numpy   # cpu at O1 and O2

Compile time is cold: a fresh process, no disk cache (GALAXIR_CACHE_DIR unset).  Each
(model, engine) process runs ``--rounds`` times (default 3), the engines taking turns, and
the table gives the median over the rounds of each process's median latency: on this
shared machine a burst of load can slow one process by 1.5-2x, and one round per engine
lets such a burst decide a row.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's galaxir
from galaxir.testing.timing import peak_rss_mb  # noqa: E402

THREADS = 2
LIGHT = os.path.join(os.path.dirname(__import__("onnx").__file__), "backend", "test", "data", "light")


def _feeds_onnx(path):
    """The feeds saved beside an exported model (``.npz``), else onnx's dummy inputs."""
    saved = path[:-5] + ".npz"
    if os.path.exists(saved):
        with np.load(saved, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    import onnx
    from galaxir.testing import zoo
    return zoo.dummy_inputs(onnx.load(path))


def modern_models(folder: str, names: list[str] | None = None) -> list[str]:
    """Export the modern networks into `folder` (with their feeds as .npz); a model that
    cannot be built here is skipped with the reason on stderr."""
    from galaxir.testing import modern
    paths = []
    for name in names or list(modern.MODELS):
        try:
            path, feeds = modern.export(name, folder)
        except Exception as e:   # noqa: BLE001 - report and go on with the others
            print(f"# skipped {name}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr, flush=True)
            continue
        np.savez(path[:-5] + ".npz", **feeds)
        paths.append(path)
    return paths


def torch_models(folder: str) -> list[str]:
    """Where torch is installed: an LSTM and a small transformer encoder with random
    weights, imported through galaxir's torch frontend and written as ONNX so that every
    engine runs the same graph.  Returns the .onnx paths."""
    try:
        import torch
    except ImportError:
        return []
    import onnx
    import galaxir as gx
    from galaxir.frontends.onnx.exporter import export_onnx
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(64, 128, num_layers=2, batch_first=True)
    enc = torch.nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, batch_first=True)
    paths = []
    for name, module, x in (("torch_lstm", lstm, torch.randn(1, 32, 64)),
                            ("torch_transformer", enc, torch.randn(1, 64, 128))):
        path = os.path.join(folder, f"{name}.onnx")
        onnx.save(export_onnx(gx.import_model(module.eval(), example_inputs=(x,))), path)
        paths.append(path)
    return paths


def child(engine: str, model: str, runs: int) -> dict:
    os.environ["GALAXIR_NUM_THREADS"] = str(THREADS)
    path = model if model.endswith(".onnx") else os.path.join(LIGHT, f"light_{model}.onnx")
    feeds = _feeds_onnx(path)
    t0 = time.perf_counter()
    if engine == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        run = lambda: sess.run(None, feeds)  # noqa: E731
    else:
        import galaxir as gx
        os.environ.pop("GALAXIR_CACHE_DIR", None)
        target, _, level = engine.partition(":")
        opts = {"level": int(level)} if level else {}
        exe = gx.compile(path, target=target, **opts)
        run = lambda: exe.run(feeds)  # noqa: E731
    compile_s = time.perf_counter() - t0
    run()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return dict(compile_s=compile_s, latency_ms=statistics.median(times) * 1e3,
                peak_mb=peak_rss_mb())


def matmul_child(engine: str, runs: int) -> dict:
    os.environ["GALAXIR_NUM_THREADS"] = str(THREADS)
    from onnx import TensorProto, helper
    n = 1024
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    if engine == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        run = lambda: sess.run(None, {"a": a, "b": a})  # noqa: E731
    else:
        import galaxir as gx
        exe = gx.compile(model, target=engine)
        run = lambda: exe(a, a)  # noqa: E731
    run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return dict(gflops=2 * n ** 3 / statistics.median(times) / 1e9)


def spawn(args: list[str]) -> dict | None:
    try:
        out = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True,
                             timeout=1800)
    except subprocess.TimeoutExpired:
        return None
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(("{", "[")):
            return json.loads(line)
    sys.stderr.write(out.stderr[-2000:])
    return None


def _median_of_rounds(results: list[dict]) -> dict | None:
    """Each figure's median over the rounds (peak memory: the largest)."""
    if not results:
        return None
    out = {k: statistics.median(r[k] for r in results) for k in results[0]}
    if "peak_mb" in out:
        out["peak_mb"] = max(r["peak_mb"] for r in results)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*",
                    help="model-zoo names, modern names (galaxir.testing.modern.MODELS or HELDOUT), "
                         "'torch', or .onnx paths")
    ap.add_argument("--set", choices=["all", "zoo", "modern", "heldout"], default="all",
                    help="which models when --models is not given ('all' = zoo + modern; "
                         "'heldout' = modern.HELDOUT, architectures kept out of tuning)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--numpy-runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="processes per (model, engine), taking turns; the median is reported")
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--export-child", nargs="+", metavar=("FOLDER", "NAME"))
    ap.add_argument("--matmul-child")
    ap.add_argument("--cpu-levels", nargs="*", type=int,
                    help="optimization levels to run the cpu target at (default: its default)")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.runs)))
        return
    if a.matmul_child:
        print(json.dumps(matmul_child(a.matmul_child, a.runs)))
        return
    if a.export_child:
        folder, names = a.export_child[0], a.export_child[1:]
        modern_names = [n for n in names if n != "torch"]
        paths = modern_models(folder, modern_names) if modern_names else []
        print(json.dumps(paths + (torch_models(folder) if "torch" in names else [])))
        return
    from galaxir.testing import modern
    zoo_names = sorted(os.path.basename(p)[6:-5] for p in glob.glob(os.path.join(LIGHT, "light_*.onnx")))
    tmp = tempfile.mkdtemp(prefix="galaxir_bench_")
    # built in a child process: torch and the exported models would otherwise sit in this
    # process's memory
    if a.models:
        to_build = [m for m in a.models if m in modern.MODELS or m in modern.HELDOUT or m == "torch"]
        models = [m for m in a.models if m not in to_build]
    else:
        models = zoo_names if a.set in ("all", "zoo") else []
        to_build = list(modern.MODELS) + ["torch"] if a.set in ("all", "modern") else []
        if a.set == "heldout":
            to_build = list(modern.HELDOUT)
    if to_build:
        models += spawn(["--export-child", tmp] + to_build) or []
    cpus = [f"cpu:{lv}" for lv in a.cpu_levels] if a.cpu_levels else ["cpu"]
    engines = cpus + ["onnxruntime"] + ([] if a.skip_numpy else ["numpy"])
    rows = []
    for m in models:
        got: dict[str, list[dict]] = {e: [] for e in engines}
        for r in range(a.rounds):
            for e in engines:
                if e == "numpy" and r:
                    continue  # the reference is only shown for scale: one round
                runs = a.numpy_runs if e == "numpy" else a.runs
                out = spawn(["--child", e, m, "--runs", str(runs)])
                if out:
                    got[e].append(out)
        res = {e: _median_of_rounds(v) for e, v in got.items()}
        rows.append((os.path.basename(m)[:-5] if m.endswith(".onnx") else m, res))
        print(f"# {m}: {json.dumps(res)}", file=sys.stderr, flush=True)
    mm_rounds: dict[str, list[dict]] = {"cpu": [], "onnxruntime": []}
    for _ in range(a.rounds):
        for e in mm_rounds:
            out = spawn(["--matmul-child", e, "--runs", str(a.runs)])
            if out:
                mm_rounds[e].append(out)
    mm = {e: _median_of_rounds(v) for e, v in mm_rounds.items()}

    def f(x, k, fmt):
        return "n/a" if not x else format(x[k], fmt)

    print(f"threads: {THREADS}; latency = median over {a.rounds} processes per engine (taking turns) of "
          f"the median of {a.runs} runs (numpy: one process, {a.numpy_runs} runs)\n")
    cols = cpus + ["onnxruntime"] + ([] if a.skip_numpy else ["numpy"])
    print("| model | compile s (" + " / ".join(cols) + ") | latency ms (" + " / ".join(cols)
          + ") | peak MB (" + " / ".join(cols) + ") | " + " | ".join(f"{c}/ort" for c in cpus) + " |")
    print("|---|---|---|---|" + "---|" * len(cpus))
    ratios = {c: [] for c in cpus}
    for m, r in rows:
        o = r.get("onnxruntime")
        rs = []
        for c in cpus:
            x = r.get(c)
            ratio = x["latency_ms"] / o["latency_ms"] if x and o else None
            if ratio:
                ratios[c].append(ratio)
            rs.append("n/a" if ratio is None else format(ratio, ".2f"))
        print(f"| {m} | " + " / ".join(f(r.get(c), "compile_s", ".2f") for c in cols)
              + " | " + " / ".join(f(r.get(c), "latency_ms", ".1f") for c in cols)
              + " | " + " / ".join(f(r.get(c), "peak_mb", ".0f") for c in cols)
              + " | " + " | ".join(rs) + " |")
    print()
    for c in cpus:
        if ratios[c]:
            gm = math.exp(sum(math.log(x) for x in ratios[c]) / len(ratios[c]))
            print(f"{c}: geometric mean latency / onnxruntime: {gm:.2f}; worst: {max(ratios[c]):.2f}")
    c, o = mm.get("cpu"), mm.get("onnxruntime")
    if c and o:
        print(f"matmul 1024x1024 f32: galaxir cpu {c['gflops']:.1f} GFLOP/s, onnxruntime "
              f"{o['gflops']:.1f} GFLOP/s ({c['gflops'] / o['gflops'] * 100:.0f}%)")


if __name__ == "__main__":
    main()
