"""``python -m galaxir.passes MODEL [-O1] [--pipeline P] [--timing] [--verify-each]
[--print-before P] [--print-after P] [--dump-dir D] [--stop-after K] [--disable RULE]
[--bisect] [-o OUT.gxir]``: optimize a model (ONNX, .gxm or textual IR) with
instrumentation, or bisect the pipeline on random inputs."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _load(path: str):
    import galaxir as gx
    if path.endswith((".gxir", ".mlir", ".txt")):
        with open(path) as f:
            return gx.parse(f.read())
    return gx.import_model(path)


def main(argv: Sequence[str] | None = None) -> int:
    from .bisect import bisect
    from .pipeline import optimize
    ap = argparse.ArgumentParser(prog="python -m galaxir.passes", description=__doc__)
    ap.add_argument("model")
    ap.add_argument("-O", dest="level", type=int, default=1, help="optimization level 0-3")
    ap.add_argument("--target", default=None)
    ap.add_argument("--pipeline", default=None, help="comma separated pass names")
    ap.add_argument("--timing", action="store_true", help="print time and op counts per pass")
    ap.add_argument("--verify-each", action="store_true")
    ap.add_argument("--print-before", action="append", default=[], metavar="PASS")
    ap.add_argument("--print-after", action="append", default=[], metavar="PASS")
    ap.add_argument("--print-all", action="store_true", help="print the IR after every pass")
    ap.add_argument("--dump-dir", default=None, help="write every stage's IR to this folder")
    ap.add_argument("--stop-after", default=None, help="a pass count or name")
    ap.add_argument("--disable", action="append", default=[], metavar="RULE")
    ap.add_argument("--bisect", action="store_true",
                    help="find the pass that changes outputs (random inputs)")
    ap.add_argument("-o", "--output", default=None, help="write the optimized IR here")
    a = ap.parse_args(argv)
    module = _load(a.model)
    if a.bisect:
        res = bisect(module, None, pipeline=a.pipeline, level=a.level, target=a.target)
        print(res)
        return 1 if res.found else 0
    stop = a.stop_after
    if stop is not None and stop.isdigit():
        stop = int(stop)
    out = optimize(module, a.level, a.target, pipeline=a.pipeline, timing=a.timing,
                   verify_each=a.verify_each, print_before=a.print_before,
                   print_after=(["*"] if a.print_all else a.print_after),
                   dump_dir=a.dump_dir, stop_after=stop, disable_rules=a.disable,
                   stream=sys.stderr)
    text = out.to_text(resources=a.output is not None)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)
    elif not (a.timing or a.print_after or a.print_before or a.print_all or a.dump_dir):
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
