"""The ``galaxir`` command line.

    galaxir convert IN -o OUT [-O N] [--target T]   .onnx/.gxm/.gxir in; .gxm, .onnx or .gxir out
    galaxir show FILE [--full]                      textual IR and op statistics
    galaxir run FILE [--input name=x.npy ...]       run (random inputs when none are given)
    galaxir bench FILE [--target T] [--compare onnxruntime] [--profile] [--trace OUT.json]
    galaxir bisect FILE [-O N]                      which pass changes the outputs?
    galaxir viz FILE -o graph.svg                   graphviz drawing (DOT without `dot`)
    galaxir demo                                    compile and run the zoo ResNet-50

Errors print one line and exit with status 1; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import galaxir as gx
from galaxir.errors import GalaxirError

TEXT_SUFFIXES = (".gxir", ".mlir", ".txt")


class CliError(GalaxirError):
    """A bad argument or file given on the command line."""


def load_any(path: str) -> gx.Module:
    p = Path(path)
    if not p.exists():
        raise CliError(f"no such file: {path}")
    if p.suffix in TEXT_SUFFIXES:
        return gx.parse(p.read_text())
    return gx.import_model(str(p))


def write_any(module: gx.Module, path: str) -> None:
    p = Path(path)
    if p.suffix == ".gxm":
        gx.save(module, p)
    elif p.suffix == ".onnx":
        import onnx
        from galaxir.frontends.onnx.exporter import export_onnx
        onnx.save(export_onnx(module), str(p))
    elif p.suffix in TEXT_SUFFIXES:
        p.write_text(module.to_text())
    else:
        raise CliError(f"cannot tell the output format of '{path}': use .gxm, .onnx or .gxir")


def parse_inputs(module: gx.Module, specs: Sequence[str], seed: int, dim: int) -> dict[str, Any]:
    from galaxir.passes.bisect import random_inputs
    feeds = random_inputs(module, seed=seed, sym_dim=dim) if len(specs) < len(module.graph.inputs) else {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            raise CliError(f"--input wants name=file.npy, got '{spec}'")
        if name not in module.graph.input_names:
            raise CliError(f"the model has no input '{name}'; its inputs are {module.graph.input_names}")
        if not Path(file).is_file():
            raise CliError(f"no such file: {file}")
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except ValueError as e:
            raise CliError(f"cannot read '{file}' as a .npy array: {e}") from None
    return feeds


def _describe(name: str, v: Any) -> str:
    if isinstance(v, np.ndarray):
        flat = v.reshape(-1)[:6]
        more = " ..." if v.size > 6 else ""
        return f"{name}: {v.dtype}{list(v.shape)} [{', '.join(str(x) for x in flat)}{more}]"
    if isinstance(v, list):
        return f"{name}: sequence of {len(v)}"
    return f"{name}: {v!r}"


def _progress(iterable, desc: str, total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())


def cmd_convert(a) -> int:
    m = load_any(a.input)
    if a.O:
        m = gx.optimize(m, level=a.O, target=a.target, timing=a.timing, verify_each=a.verify_each,
                        print_before=a.print_before or [], print_after=a.print_after or [],
                        dump_dir=a.dump_dir, stop_after=a.stop_after,
                        disable_rules=a.disable_rule or [], disable_passes=a.disable_pass or [])
    write_any(m, a.output)
    print(f"wrote {a.output} ({m.num_ops} ops)")
    return 0


def cmd_show(a) -> int:
    m = load_any(a.file)
    print(m.to_text() if a.full else str(m))
    counts = m.op_counts()
    print(f"// {m.num_ops} ops, {len(m.graph.inputs)} inputs, {len(m.graph.outputs)} outputs")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"//   {name:<28}{n:>6}")
    return 0


def cmd_run(a) -> int:
    m = load_any(a.file)
    exe = gx.compile(m, target=a.target, level=a.O)
    feeds = parse_inputs(m, a.input or [], a.seed, a.dim)
    t = time.perf_counter()
    out = exe.run(feeds)
    ms = 1e3 * (time.perf_counter() - t)
    for name, v in out.items():
        print(_describe(name, v))
        if a.save:
            Path(a.save).mkdir(parents=True, exist_ok=True)
            if isinstance(v, np.ndarray) and v.dtype != object:
                np.save(Path(a.save) / f"{name.replace('/', '_')}.npy", v)
    print(f"// ran in {ms:.2f} ms on {a.target}")
    return 0


def _median_ms(fn, runs: int, desc: str) -> float:
    from galaxir.testing.timing import median_ms
    return median_ms(fn, runs, wrap=lambda it: _progress(it, desc, runs))


def cmd_bench(a) -> int:
    m = load_any(a.file)
    t = time.perf_counter()
    exe = gx.compile(m, target=a.target, level=a.O)
    compile_ms = 1e3 * (time.perf_counter() - t)
    feeds = parse_inputs(m, a.input or [], a.seed, a.dim)
    ours = _median_ms(lambda: exe.run(feeds), a.runs, f"galaxir {a.target}")
    print(f"galaxir {a.target}: compile {compile_ms:.0f} ms, median {ours:.3f} ms over {a.runs} runs")
    if a.profile or a.trace:
        prof = exe.profile(feeds, runs=a.runs)
        if a.profile:
            print(prof.table(top=a.top))
        if a.trace:
            prof.save_chrome_trace(a.trace)
            print(f"wrote {a.trace} (chrome://tracing or https://ui.perfetto.dev)")
    if a.compare == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            raise CliError("--compare onnxruntime needs onnxruntime installed (pip install onnxruntime)") from None
        from galaxir.frontends.onnx.exporter import export_onnx
        proto = export_onnx(m)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        theirs = _median_ms(lambda: sess.run(None, feeds), a.runs, "onnxruntime")
        print(f"onnxruntime: median {theirs:.3f} ms ({a.threads} threads)")
        print(f"ratio galaxir/onnxruntime: {ours / theirs:.2f}")
    return 0


def cmd_bisect(a) -> int:
    from galaxir.passes import bisect
    m = load_any(a.file)
    feeds = parse_inputs(m, a.input or [], a.seed, a.dim)
    res = bisect(m, feeds, level=a.O, target=a.target, rtol=a.rtol, atol=a.atol)
    print(res)
    return 0 if not res.found else 2


def to_dot(m: gx.Module) -> str:
    """A DOT drawing of the main graph (ops as boxes, values as edges)."""
    lines = ["digraph galaxir {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
    ids: dict[int, str] = {}
    for i, v in enumerate(m.graph.inputs):
        ids[id(v)] = f"in{i}"
        lines.append(f'  in{i} [label="{v.name}\\n{v.type}", shape=ellipse];')
    for k, op in enumerate(m.graph.block):
        if op.is_terminator:
            for j, (v, name) in enumerate(zip(op.operands, m.graph.output_names)):
                lines.append(f'  out{j} [label="{name}", shape=ellipse];')
                if v is not None and id(v) in ids:
                    lines.append(f"  {ids[id(v)]} -> out{j};")
            continue
        node = f"op{k}"
        label = op.name if op.name != "constant" else f"constant {list(op.attrs['value'].shape)}"
        lines.append(f'  {node} [label="{label}"{", style=dashed" if op.name == "constant" else ""}];')
        for v in op.operands:
            if v is not None and id(v) in ids:
                lines.append(f'  {ids[id(v)]} -> {node} [label="{v.type}", fontsize=8];')
        for r in op.results:
            ids[id(r)] = node
    lines.append("}")
    return "\n".join(lines) + "\n"


def cmd_viz(a) -> int:
    m = load_any(a.file)
    dot = to_dot(m)
    out = Path(a.output)
    if out.suffix == ".dot":
        out.write_text(dot)
        print(f"wrote {out}")
        return 0
    exe = shutil.which("dot")
    if exe is None:
        fallback = out.with_suffix(".dot")
        fallback.write_text(dot)
        print(f"graphviz 'dot' is not installed: wrote {fallback} instead (apt-get install graphviz)")
        return 0
    fmt = out.suffix.lstrip(".") or "svg"
    proc = subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot, text=True, capture_output=True)
    if proc.returncode != 0:
        raise CliError(f"dot failed: {proc.stderr.strip()}")
    print(f"wrote {out}")
    return 0


def cmd_demo(a) -> int:
    from galaxir.demo import main as demo
    return demo(a.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="galaxir", description="galaxir: an inference compiler")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def model_opts(sp, default_level=0):
        sp.add_argument("-O", type=int, default=default_level, choices=range(4), metavar="N",
                        help="optimization level 0-3")
        sp.add_argument("--target", default="cpu")
        sp.add_argument("--input", action="append", metavar="NAME=FILE.npy")
        sp.add_argument("--seed", type=int, default=0, help="seed of random inputs")
        sp.add_argument("--dim", type=int, default=1, help="value of symbolic dims in random inputs")

    c = sub.add_parser("convert", help="convert between .onnx, .gxm and textual IR")
    c.add_argument("input")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("-O", type=int, default=0, choices=range(4), metavar="N")
    c.add_argument("--target", default=None)
    inst = c.add_argument_group("pass instrumentation (with -O1 and up)")
    inst.add_argument("--timing", action="store_true", help="time and op counts per pass")
    inst.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    inst.add_argument("--print-before", action="append", metavar="PASS", help="print the IR before a pass")
    inst.add_argument("--print-after", action="append", metavar="PASS", help="print the IR after a pass")
    inst.add_argument("--dump-dir", metavar="DIR", help="write the IR after every pass to DIR")
    inst.add_argument("--stop-after", metavar="K", help="stop after pass K (a number or a name)")
    inst.add_argument("--disable-rule", action="append", metavar="RULE", help="switch a rewrite rule off")
    inst.add_argument("--disable-pass", action="append", metavar="PASS", help="switch a pass off")
    c.set_defaults(fn=cmd_convert)

    s = sub.add_parser("show", help="print the textual IR and op statistics")
    s.add_argument("file")
    s.add_argument("--full", action="store_true", help="include weights (round-trippable text)")
    s.set_defaults(fn=cmd_show)

    r = sub.add_parser("run", help="run a model")
    r.add_argument("file")
    model_opts(r)
    r.add_argument("--save", metavar="DIR", help="write outputs as .npy files")
    r.set_defaults(fn=cmd_run)

    b = sub.add_parser("bench", help="time a model (optionally against onnxruntime)")
    b.add_argument("file")
    model_opts(b)
    b.add_argument("--runs", type=int, default=20)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--compare", choices=["onnxruntime"])
    b.add_argument("--profile", action="store_true",
                   help="print the time of each op / fused kernel and per op kind")
    b.add_argument("--top", type=int, default=None, metavar="K",
                   help="with --profile: list only the K slowest steps")
    b.add_argument("--trace", metavar="OUT.json", help="write a Chrome trace of the profiled runs")
    b.set_defaults(fn=cmd_bench)

    bi = sub.add_parser("bisect", help="find the pass that changes a model's outputs")
    bi.add_argument("file")
    model_opts(bi, default_level=3)
    bi.add_argument("--rtol", type=float, default=1e-4)
    bi.add_argument("--atol", type=float, default=1e-5)
    bi.set_defaults(fn=cmd_bisect)

    v = sub.add_parser("viz", help="draw the graph (graphviz)")
    v.add_argument("file")
    v.add_argument("-o", "--output", required=True)
    v.set_defaults(fn=cmd_viz)

    d = sub.add_parser("demo", help="compile and run the model-zoo ResNet-50")
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.fn(a)
    except (GalaxirError, OSError) as e:
        if a.debug:
            raise
        msg = " ".join(str(e).split()) if not isinstance(e, OSError) else str(e)
        print(f"galaxir: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
