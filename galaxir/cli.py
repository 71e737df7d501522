"""The ``galaxir`` command line.

    galaxir convert IN -o OUT [-O N] [--target T]   .onnx/.gxm/.gxir in; .gxm, .onnx or .gxir out
    galaxir show FILE [--full] [-O N]               textual IR and op statistics
    galaxir run FILE [--input name=x.npy ...]       run (random inputs when none are given)
    galaxir bench FILE [--target T] [--compare onnxruntime] [--profile] [--trace OUT.json]
    galaxir bisect FILE [-O N]                      which pass changes the outputs?
    galaxir viz FILE -o graph.svg [-O N]            graphviz drawing (DOT without `dot`)
    galaxir demo                                    compile and run the zoo ResNet-50
    galaxir quantize IN -o OUT [--calibration data.npz] [--method M] [--weight-bits 4] [--report]
    galaxir convert-float IN -o OUT [--dtype f16|bf16] [--keep OP ...]

``-O`` defaults to the target's own level, the one ``gx.compile`` uses (3 on cpu), in
every command (``-O 0``: the model as imported).  The pass switches of ``gx.optimize``
(``--disable-pass``, ``--disable-rule``, ``--print-after``, ``--timing``, ``--dump-dir``...)
are on every command that optimizes.  Errors print one line and exit with status 1;
``--debug`` shows the traceback.
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


def level_of(a) -> int:
    """-O as given, else the target's default level (what gx.compile uses)."""
    return gx.default_level(a.target) if a.O is None else a.O


def pass_options(a) -> dict[str, Any]:
    """The pass-manager switches given on the command line, as optimize's keywords."""
    out: dict[str, Any] = {}
    for key, attr in [("disable_passes", "disable_pass"), ("disable_rules", "disable_rule"),
                      ("print_before", "print_before"), ("print_after", "print_after")]:
        if getattr(a, attr, None):
            out[key] = list(getattr(a, attr))
    for key in ("timing", "verify_each"):
        if getattr(a, key, False):
            out[key] = True
    for key in ("dump_dir", "stop_after"):
        if getattr(a, key, None) is not None:
            out[key] = getattr(a, key)
    return out


def optimized(a, m: gx.Module) -> gx.Module:
    """The module at the command's level (the pass switches checked even at -O 0)."""
    level, opts = level_of(a), pass_options(a)
    if not level and not opts:
        return m
    return gx.optimize(m, level=level, target=a.target, **opts)


def compiled(a, m: gx.Module):
    return gx.compile(m, target=a.target, level=level_of(a), **pass_options(a))


def cmd_convert(a) -> int:
    m = optimized(a, load_any(a.input))
    write_any(m, a.output)
    print(f"wrote {a.output} ({m.num_ops} ops, O{level_of(a)} for {a.target})")
    return 0


def cmd_show(a) -> int:
    m = optimized(a, load_any(a.file))
    print(f"// O{level_of(a)} for {a.target}" + (" (-O 0 shows the file as it is)" if level_of(a) else ""))
    print(m.to_text() if a.full else str(m))
    counts = m.op_counts()
    print(f"// {m.num_ops} ops, {len(m.graph.inputs)} inputs, {len(m.graph.outputs)} outputs")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"//   {name:<28}{n:>6}")
    return 0


def cmd_run(a) -> int:
    m = load_any(a.file)
    t = time.perf_counter()
    exe = compiled(a, m)
    compile_ms = 1e3 * (time.perf_counter() - t)
    feeds = parse_inputs(m, a.input or [], a.seed, a.dim)
    t = time.perf_counter()
    out = exe.run(feeds)
    first_ms = 1e3 * (time.perf_counter() - t)
    steady = []
    for _ in range(max(0, a.runs)):
        t = time.perf_counter()
        exe.run(feeds)
        steady.append(1e3 * (time.perf_counter() - t))
    for name, v in out.items():
        print(_describe(name, v))
        if a.save:
            Path(a.save).mkdir(parents=True, exist_ok=True)
            if isinstance(v, np.ndarray) and v.dtype != object:
                np.save(Path(a.save) / f"{name.replace('/', '_')}.npy", v)
    print(f"// O{level_of(a)} on {a.target}: compile {compile_ms:.1f} ms, first call {first_ms:.2f} ms "
          f"(includes one-time work: JIT, weight packing)")
    if steady:
        print(f"// run: median {float(np.median(steady)):.2f} ms, min {min(steady):.2f} ms "
              f"over {len(steady)} more calls")
    return 0


def _median_ms(fn, runs: int, desc: str) -> float:
    from galaxir.testing.timing import median_ms
    return median_ms(fn, runs, wrap=lambda it: _progress(it, desc, runs))


def cmd_bench(a) -> int:
    m = load_any(a.file)
    t = time.perf_counter()
    exe = compiled(a, m)
    compile_ms = 1e3 * (time.perf_counter() - t)
    feeds = parse_inputs(m, a.input or [], a.seed, a.dim)
    sess = None
    if a.compare == "onnxruntime":
        sess = _ort_session(m, a.threads)
        check_agreement(exe, sess, feeds, a.rtol, a.atol)
    ours = _median_ms(lambda: exe.run(feeds), a.runs, f"galaxir {a.target}")
    print(f"galaxir {a.target} O{level_of(a)}: compile {compile_ms:.0f} ms, median {ours:.3f} ms "
          f"over {a.runs} runs")
    if a.profile or a.trace:
        prof = exe.profile(feeds, runs=a.runs)
        if a.profile:
            print(prof.table(top=a.top))
        if a.trace:
            prof.save_chrome_trace(a.trace)
            print(f"wrote {a.trace} (chrome://tracing or https://ui.perfetto.dev)")
    if sess is not None:
        theirs = _median_ms(lambda: sess.run(None, feeds), a.runs, "onnxruntime")
        print(f"onnxruntime: median {theirs:.3f} ms ({a.threads} threads)")
        print(f"ratio galaxir/onnxruntime: {ours / theirs:.2f}")
    return 0


def _ort_session(m: gx.Module, threads: int):
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CliError("--compare onnxruntime needs onnxruntime installed (pip install onnxruntime)") from None
    from galaxir.frontends.onnx.exporter import export_onnx
    from galaxir.quiet import ort_session
    try:
        return ort_session(export_onnx(m).SerializeToString(), threads)
    except GalaxirError:
        raise
    except Exception as e:
        raise CliError(f"onnxruntime cannot load the model (exported from galaxir): "
                       f"{' '.join(str(e).split())[:300]}") from None


def check_agreement(exe, sess, feeds: dict, rtol: float, atol: float) -> None:
    """Compare galaxir's outputs with onnxruntime's before timing anything: a fast wrong
    answer is not a result.  Prints the largest difference; raises CliError on a mismatch."""
    ours = exe.run(feeds)
    theirs = sess.run(None, feeds)
    worst = 0.0
    for name, want in zip(exe.output_names, theirs):
        got = ours[name]
        if not isinstance(got, np.ndarray) or not isinstance(want, np.ndarray):
            continue
        if got.shape != want.shape:
            raise CliError(f"output '{name}': galaxir gives shape {list(got.shape)}, onnxruntime "
                           f"{list(want.shape)}: not timing a model whose outputs disagree")
        if got.size == 0 or got.dtype.kind not in "fiub" or want.dtype.kind not in "fiub":
            continue
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        bad = ~(diff <= atol + rtol * np.abs(want.astype(np.float64)))
        worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf"))
        if bad.any():
            raise CliError(f"output '{name}': galaxir and onnxruntime disagree at {int(bad.sum())} of "
                           f"{bad.size} elements (max |diff| {float(np.nanmax(diff)):.3g}, rtol={rtol}, "
                           f"atol={atol}): not timing a model whose outputs disagree "
                           f"(galaxir bisect finds the pass; -O 0 turns the passes off)")
    print(f"outputs agree with onnxruntime: max |diff| {worst:.3g} (rtol={rtol}, atol={atol})")


def cmd_bisect(a) -> int:
    from galaxir.passes import bisect
    m = load_any(a.file)
    feeds = parse_inputs(m, a.input or [], a.seed, a.dim)
    bar = BisectProgress()
    try:
        res = bisect(m, feeds, level=level_of(a), target=a.target, rtol=a.rtol, atol=a.atol,
                     progress=bar)
    finally:
        bar.close()
    print(res)
    return 0 if not res.found else 2


class BisectProgress:
    """Shows which pass bisect checks: a tqdm bar on a terminal, else one line per pass."""

    def __init__(self):
        self.bar = None
        self.tty = sys.stderr.isatty()

    def __call__(self, index: int, total: int, name: str) -> None:
        if not self.tty:
            print(f"bisect: checking pass {index}/{total} '{name}'", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="bisect", file=sys.stderr, leave=False)
        self.bar.set_postfix_str(name)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: ops drawn inside their consumer's label instead of as nodes of their own (weights)
_FOLDED_INTO_CONSUMER = ("constant", "constant_of_shape")


def _weight_label(op) -> str:
    if op.name == "constant":
        v = np.asarray(op.attrs["value"])
        return f"{v.dtype}{list(v.shape)}"
    return f"{op.results[0].type} ({op.name})"


def to_dot(m: gx.Module, constants: bool = False) -> str:
    """A DOT drawing of the main graph (ops as boxes, values as edges).  Constants (weights)
    are listed in their consumer's label unless ``constants``: drawn, a ResNet is mostly
    weight boxes."""
    lines = ["digraph galaxir {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
    ids: dict[int, str] = {}
    weights: dict[int, str] = {}
    for i, v in enumerate(m.graph.inputs):
        ids[id(v)] = f"in{i}"
        lines.append(f'  in{i} [label="{_esc(v.name)}\\n{_esc(str(v.type))}", shape=ellipse];')
    for k, op in enumerate(m.graph.block):
        if op.is_terminator:
            for j, (v, name) in enumerate(zip(op.operands, m.graph.output_names)):
                lines.append(f'  out{j} [label="{_esc(name)}", shape=ellipse];')
                if v is not None and id(v) in ids:
                    lines.append(f"  {ids[id(v)]} -> out{j};")
            continue
        if not constants and op.name in _FOLDED_INTO_CONSUMER and all(
                o is None or id(o) not in ids or id(o) in weights for o in op.operands):
            weights[id(op.results[0])] = _weight_label(op)
            continue
        node = f"op{k}"
        label = op.name if op.name != "constant" else f"constant {list(op.attrs['value'].shape)}"
        extra = [f"{_esc(v.name or 'w')}: {_esc(weights[id(v)])}" for v in op.operands
                 if v is not None and id(v) in weights]
        label = "\\n".join([_esc(label), *extra])
        lines.append(f'  {node} [label="{label}"{", style=dashed" if op.name == "constant" else ""}];')
        for v in op.operands:
            if v is not None and id(v) in ids and id(v) not in weights:
                lines.append(f'  {ids[id(v)]} -> {node} [label="{_esc(str(v.type))}", fontsize=8];')
        for r in op.results:
            ids[id(r)] = node
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def cmd_viz(a) -> int:
    m = optimized(a, load_any(a.file))
    dot = to_dot(m, constants=a.constants)
    out = Path(a.output)
    if out.suffix == ".dot":
        out.write_text(dot)
        print(f"wrote {out} (O{level_of(a)} for {a.target})")
        return 0
    exe = shutil.which("dot")
    if exe is None:
        fallback = out.with_suffix(".dot")
        fallback.write_text(dot)
        print(f"galaxir: warning: the graphviz program 'dot' is not installed, so {out} was NOT "
              f"written; wrote the DOT source {fallback} instead (install graphviz, e.g. "
              f"apt-get install graphviz, then: dot -T{out.suffix.lstrip('.') or 'svg'} {fallback} "
              f"-o {out})", file=sys.stderr)
        print(f"wrote {fallback}")
        return 0
    fmt = out.suffix.lstrip(".") or "svg"
    proc = subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot, text=True, capture_output=True)
    if proc.returncode != 0:
        raise CliError(f"dot failed: {proc.stderr.strip()}")
    print(f"wrote {out}")
    return 0


def calibration_feeds(module: gx.Module, path: str) -> list[dict[str, np.ndarray]]:
    """Feed dicts from a .npz holding one array per model input: a leading sample axis
    (rank + 1: one item per sample) or the input's own rank (one item per row, kept as a
    batch of one)."""
    if not Path(path).is_file():
        raise CliError(f"no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CliError(f"cannot read '{path}' as .npz: {e}") from None
    if not hasattr(data, "files"):
        raise CliError(f"'{path}' is a single array; --calibration wants a .npz with one array per "
                       f"input ({', '.join(module.graph.input_names)})")
    names = module.graph.input_names
    missing = [n for n in names if n not in data.files]
    if missing:
        raise CliError(f"'{path}' has no array for input(s) {missing}; it has {data.files}")
    arrays = {n: data[n] for n in names}
    items = []
    counts = set()
    for n, t in zip(names, module.graph.inputs):
        rank = len(t.type.shape) if getattr(t.type, "shape", None) is not None else arrays[n].ndim - 1
        counts.add(arrays[n].shape[0] if arrays[n].ndim else 0)
        arrays[n] = arrays[n] if arrays[n].ndim == rank + 1 else arrays[n][:, None]
    if len(counts) != 1:
        raise CliError(f"the arrays in '{path}' hold different numbers of samples: {sorted(counts)}")
    for i in range(counts.pop()):
        items.append({n: arrays[n][i] for n in names})
    return items


def cmd_quantize(a) -> int:
    from galaxir.precision import quantization_info, weight_bytes
    m = load_any(a.input)
    cal = calibration_feeds(m, a.calibration) if a.calibration else None
    if a.weight_bits == 8 and cal is None and not a.dynamic:
        raise CliError("give --calibration data.npz for static quantization, or --dynamic "
                       "(or --weight-bits 4 for int4 weights)")
    qm = gx.quantize(m, cal, method=a.method, per_channel=a.per_channel, weight_type=a.weight_type,
                     activation_type=a.activation_type, exclude=a.exclude or (),
                     weight_bits=a.weight_bits, block_size=a.block_size, symmetric=not a.asymmetric,
                     min_sqnr=a.min_sqnr, progress=sys.stderr.isatty())
    write_any(qm, a.output)
    info = quantization_info(qm)
    print(f"wrote {a.output}: {info['mode']} quantization, weights {weight_bytes(m) / 1e6:.2f} MB -> "
          f"{weight_bytes(qm) / 1e6:.2f} MB ({weight_bytes(m) / max(weight_bytes(qm), 1):.1f}x)")
    if info.get("kept_float"):
        print(f"kept in float (min_sqnr {a.min_sqnr} dB): {', '.join(info['kept_float'])}")
    if a.report:
        feeds = cal or [parse_inputs(m, [], a.seed, 1)]
        print(gx.quantization_report(m, qm, feeds))
    return 0


def cmd_convert_float(a) -> int:
    m = load_any(a.input)
    hm = gx.convert_float(m, a.dtype, keep=a.keep)
    write_any(hm, a.output)
    print(f"wrote {a.output}: {hm.metadata.get('float_conversion', a.dtype)}")
    return 0


def serve_config(a, token: str | None = None):
    """The ServeConfig for parsed ``galaxir serve`` arguments (CliError on bad flags)."""
    from galaxir.serve.app import ServeConfig
    from galaxir.serve.batcher import check_sizes
    sizes = None
    if a.batch_sizes is not None:
        try:
            sizes = [int(b) for b in a.batch_sizes.split(",") if b.strip()]
        except ValueError:
            raise CliError(f"--batch-sizes takes comma-separated integers, got {a.batch_sizes!r}") \
                from None
        try:
            sizes = check_sizes(sizes)
        except ValueError as e:
            raise CliError(f"--batch-sizes: {e}") from None
        if a.max_batch is not None and a.max_batch != sizes[-1]:
            raise CliError(f"--max-batch {a.max_batch} differs from the largest of --batch-sizes "
                           f"({sizes[-1]}); give one of them")
    max_batch = a.max_batch if a.max_batch is not None else (sizes[-1] if sizes else 0)
    if not 0 <= max_batch <= 128:
        raise CliError("--max-batch must be 0..128")
    if a.warmup_runs < 1:
        raise CliError("--warmup-runs must be at least 1 (--no-warmup skips the warm-up)")
    if a.batch_instances is not None and a.batch_instances < 1:
        raise CliError("--batch-instances must be at least 1 (leave it out: chosen at warm-up)")
    return ServeConfig(max_batch=max_batch, max_delay_ms=a.max_delay_ms,
                       max_body_bytes=int(a.max_body_mb * (1 << 20)), token=token,
                       run_threads=a.run_threads, batch_instances=a.batch_instances,
                       batch_sizes=sizes, warm=not a.no_warmup, warmup_runs=a.warmup_runs)


def cmd_serve(a) -> int:
    import os
    try:
        from galaxir.serve.app import create_app
        from galaxir.serve.models import load_models
        from galaxir.serve.server import serve
    except ImportError as e:
        raise CliError(f"galaxir serve needs the serve extra (starlette, uvicorn, "
                       f"prometheus_client): {e}") from None
    token = a.token or os.environ.get("GALAXIR_SERVE_TOKEN") or None
    config = serve_config(a, token)
    if a.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print("galaxir serve: warning: listening beyond loopback without --token",
              file=sys.stderr)
    models = load_models(a.models, target=a.target, num_threads=a.threads)
    for name, m in models.items():
        how = "dynamic batching" if config.batching and m.batchable else "no batching"
        print(f"galaxir serve: model '{name}' ({how})", flush=True)
    try:
        serve(create_app(models, config), host=a.host, port=a.port, log_level=a.log_level)
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT after its graceful shutdown
        pass
    print("galaxir serve: stopped", flush=True)
    return 0


def cmd_demo(a) -> int:
    from galaxir.demo import main as demo
    return demo(a.rest)


def _targets_help() -> str:
    from galaxir.backends import available_backends
    parts = []
    for name in available_backends():
        try:
            parts.append(f"{name} (default -O {gx.default_level(name)})")
        except GalaxirError:
            parts.append(f"{name} (fails to load)")
    return ", ".join(parts)


class _DefaultsShown(argparse.HelpFormatter):
    """Help text that shows each option's default (where it has a value worth showing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "(default:" not in text \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    targets = _targets_help()
    fmt = _DefaultsShown
    p = argparse.ArgumentParser(prog="galaxir", formatter_class=fmt,
                                description="galaxir: an inference compiler. Targets: " + targets,
                                epilog="galaxir COMMAND --help shows each command's options")
    p.add_argument("--version", action="version", version=f"galaxir {gx.__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def level_opts(sp, target_default="cpu"):
        sp.add_argument("-O", type=int, default=None, choices=range(4), metavar="N",
                        help="optimization level 0-3 (default: the target's own level, the one "
                             "gx.compile uses: " + targets + ")")
        sp.add_argument("--target", default=target_default, help=f"compilation target: {targets}")
        inst = sp.add_argument_group("pass switches (as gx.optimize's keywords; unknown names fail)")
        inst.add_argument("--disable-pass", action="append", metavar="PASS", help="switch a pass off")
        inst.add_argument("--disable-rule", action="append", metavar="RULE", help="switch a rewrite rule off")
        inst.add_argument("--print-before", action="append", metavar="PASS", help="print the IR before a pass")
        inst.add_argument("--print-after", action="append", metavar="PASS",
                          help="print the IR after a pass (a name, a number or '*')")
        inst.add_argument("--timing", action="store_true", help="time and op counts per pass")
        inst.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
        inst.add_argument("--dump-dir", metavar="DIR", help="write the IR after every pass to DIR")
        inst.add_argument("--stop-after", metavar="K", help="stop after pass K (a number or a name)")

    def model_opts(sp):
        level_opts(sp)
        sp.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                        help="an input from a .npy file (random inputs for the others)")
        sp.add_argument("--seed", type=int, default=0, help="seed of random inputs")
        sp.add_argument("--dim", type=int, default=1, help="value of symbolic dims in random inputs")

    c = sub.add_parser("convert", help="convert between .onnx, .gxm and textual IR", formatter_class=fmt)
    c.add_argument("input")
    c.add_argument("-o", "--output", required=True)
    level_opts(c)
    c.set_defaults(fn=cmd_convert)

    s = sub.add_parser("show", help="print the textual IR and op statistics", formatter_class=fmt)
    s.add_argument("file")
    s.add_argument("--full", action="store_true", help="include weights (round-trippable text)")
    level_opts(s)
    s.set_defaults(fn=cmd_show)

    r = sub.add_parser("run", help="run a model", formatter_class=fmt)
    r.add_argument("file")
    model_opts(r)
    r.add_argument("--runs", type=int, default=5,
                   help="calls after the first (timed apart from it: the first call includes the JIT)")
    r.add_argument("--save", metavar="DIR", help="write outputs as .npy files")
    r.set_defaults(fn=cmd_run)

    b = sub.add_parser("bench", help="time a model (optionally against onnxruntime)", formatter_class=fmt)
    b.add_argument("file")
    model_opts(b)
    b.add_argument("--runs", type=int, default=20)
    b.add_argument("--threads", type=int, default=2, help="onnxruntime's intra-op threads")
    b.add_argument("--compare", choices=["onnxruntime"],
                   help="also time onnxruntime, after checking that its outputs agree with galaxir's")
    b.add_argument("--rtol", type=float, default=1e-3, help="agreement tolerance (relative)")
    b.add_argument("--atol", type=float, default=1e-4, help="agreement tolerance (absolute)")
    b.add_argument("--profile", action="store_true",
                   help="print the time of each op / fused kernel and per op kind")
    b.add_argument("--top", type=int, default=None, metavar="K",
                   help="with --profile: list only the K slowest steps")
    b.add_argument("--trace", metavar="OUT.json", help="write a Chrome trace of the profiled runs")
    b.set_defaults(fn=cmd_bench)

    bi = sub.add_parser("bisect", help="find the pass that changes a model's outputs", formatter_class=fmt)
    bi.add_argument("file")
    model_opts(bi)
    bi.add_argument("--rtol", type=float, default=1e-4)
    bi.add_argument("--atol", type=float, default=1e-5)
    bi.set_defaults(fn=cmd_bisect)

    v = sub.add_parser("viz", help="draw the graph (graphviz)", formatter_class=fmt)
    v.add_argument("file")
    v.add_argument("-o", "--output", required=True, help=".svg/.png/.pdf (needs graphviz's dot) or .dot")
    v.add_argument("--constants", action="store_true",
                   help="draw constants (weights) as nodes instead of listing them in their consumer")
    level_opts(v)
    v.set_defaults(fn=cmd_viz)

    q = sub.add_parser("quantize", help="int8 (static or dynamic) or int4-weight quantization",
                       formatter_class=fmt)
    q.add_argument("input")
    q.add_argument("-o", "--output", required=True, help=".gxm, .onnx (QDQ) or .gxir")
    q.add_argument("--calibration", metavar="DATA.npz",
                   help="one array per input, samples along a leading axis (static quantization)")
    q.add_argument("--dynamic", action="store_true", help="dynamic int8 (no calibration data)")
    q.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"])
    q.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="per-output-channel weight scales (the default)")
    q.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one scale per weight")
    q.add_argument("--weight-type", default="s8", choices=["s8", "u8"])
    q.add_argument("--activation-type", default="u8", choices=["u8", "s8"])
    q.add_argument("--weight-bits", type=int, default=8, choices=[8, 4])
    q.add_argument("--block-size", type=int, default=32, help="with --weight-bits 4")
    q.add_argument("--asymmetric", action="store_true", help="with --weight-bits 4: uint4 with zero points")
    q.add_argument("--exclude", action="append", metavar="OP", help="an op (result name or kind) to keep float")
    q.add_argument("--min-sqnr", type=float, default=None, metavar="DB",
                   help="keep in float the ops that take the output SQNR below DB")
    q.add_argument("--report", action="store_true", help="print each quantized op's SQNR, worst first")
    q.add_argument("--seed", type=int, default=0, help="seed of the random inputs --report uses without data")
    q.set_defaults(fn=cmd_quantize)

    cf = sub.add_parser("convert-float", help="f16/bf16 weights and activations", formatter_class=fmt)
    cf.add_argument("input")
    cf.add_argument("-o", "--output", required=True)
    cf.add_argument("--dtype", default="f16", choices=["f16", "bf16"])
    cf.add_argument("--keep", action="append", metavar="OP",
                    help="op kinds kept in f32 (replaces the default: softmax, norms, reductions, exp/log)")
    cf.set_defaults(fn=cmd_convert_float)

    sv = sub.add_parser("serve", help="serve models over HTTP (KServe v2 / Open Inference Protocol)",
                        formatter_class=fmt)
    sv.add_argument("models", nargs="+", metavar="MODEL", help="NAME=PATH or PATH (.onnx/.gxm/.gxir)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless told)")
    sv.add_argument("--target", default="cpu")
    sv.add_argument("--threads", type=int, default=None, help="cpu threads per run (default: all cores)")
    sv.add_argument("--run-threads", type=int, default=4, help="model runs at the same time")
    sv.add_argument("--max-batch", type=int, default=None,
                    help="merge concurrent requests into batches of up to this many rows (models "
                         "with a symbolic batch dim; padded to powers of two, sizes that cost "
                         "more per row dropped at warm-up; default 0: off, or the largest of "
                         "--batch-sizes)")
    sv.add_argument("--batch-sizes", metavar="B1,B2,...",
                    help="batch sizes to pad to, used as given (e.g. 1,2,4,8,16; turns "
                         "batching on, up to the largest)")
    sv.add_argument("--max-delay-ms", type=float, default=2.0,
                    help="how long a request may wait for others to batch with")
    sv.add_argument("--batch-instances", type=int, default=None,
                    help="batches of one model running at once (default: chosen at warm-up, "
                         "the count with the most rows/s; without warm-up, cores / threads)")
    sv.add_argument("--warmup-runs", type=int, default=2, metavar="N",
                    help="timed runs per batch size at warm-up (best of N, after the run that "
                         "compiles it)")
    sv.add_argument("--no-warmup", action="store_true",
                    help="report ready at once: batch sizes compile on first use, nothing is "
                         "timed (all sizes kept, padding only)")
    sv.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit")
    sv.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (or GALAXIR_SERVE_TOKEN)")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sv.set_defaults(fn=cmd_serve)

    d = sub.add_parser("demo", help="compile and run the model-zoo ResNet-50")
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from galaxir.quiet import silence_third_party_warnings
    silence_third_party_warnings()
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
