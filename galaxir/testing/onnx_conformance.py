"""Run the ONNX backend node test cases (built in memory by onnx) through galaxir and
compare outputs the way onnx's own runner does: same count, shapes, dtypes, and
``assert_allclose`` with the case's rtol/atol (bfloat16 with two-ULP rtol)."""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx


@dataclass
class CaseResult:
    name: str
    ok: bool
    reason: str = ""


@functools.lru_cache(maxsize=1)
def _all_cases() -> tuple:
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(collect_testcases())


def load_cases(pattern: str | None = None) -> list:
    """The 1884 node cases (cached per process), optionally filtered by a name regex."""
    cases = list(_all_cases())
    if pattern:
        rx = re.compile(pattern)
        cases = [c for c in cases if rx.search(c.name)]
    return cases


def _normalize(x: Any) -> Any:
    if isinstance(x, onnx.TensorProto):
        return onnx.numpy_helper.to_array(x)
    return x


def data_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def assert_similar(ref: Sequence[Any], out: Sequence[Any], rtol: float, atol: float) -> None:
    if len(ref) != len(out):
        raise AssertionError(f"expected {len(ref)} outputs, got {len(out)}")
    for i, (r, o) in enumerate(zip(ref, out)):
        if r is None or o is None:
            if not (r is None and o is None):
                raise AssertionError(f"output {i}: expected {type(r).__name__}, got {type(o).__name__}")
            continue
        if isinstance(r, (list, tuple)):
            if not isinstance(o, (list, tuple)):
                raise AssertionError(f"output {i}: expected a sequence, got {type(o).__name__}")
            if len(r) != len(o):
                raise AssertionError(f"output {i}: sequence of {len(o)}, expected {len(r)}")
            assert_similar(list(r), list(o), rtol, atol)
            continue
        r = np.asarray(r)
        o = np.asarray(o) if not isinstance(o, np.ndarray) else o
        if tuple(o.shape) != tuple(r.shape):
            raise AssertionError(f"output {i}: shape {list(o.shape)}, expected {list(r.shape)}")
        if r.dtype == object:
            np.testing.assert_array_equal(o, r)
            continue
        if o.dtype != r.dtype:
            raise AssertionError(f"output {i}: dtype {o.dtype}, expected {r.dtype}")
        rt = rtol
        if r.dtype.name == "bfloat16":
            rt = max(rtol, 2 ** -6)
        if r.dtype.kind == "V" or r.dtype.name in ("bfloat16",) or r.dtype.name.startswith(("float8", "float4", "int4", "uint4", "int2", "uint2")):
            # ml_dtypes types: compare in float32 as onnx does for bfloat16 (the exact
            # same values pass; np.isclose cannot promote these types itself).
            o, r = o.astype(np.float32), r.astype(np.float32)
        np.testing.assert_allclose(o, r, rtol=rt, atol=atol)


def run_case(case, target: str = "numpy", transform: Callable | None = None) -> CaseResult:
    """Import, (optionally transform), compile and run one case; never raises."""
    import galaxir as gx
    try:
        module = gx.import_model(case.model)
        if transform is not None:
            module = transform(module)
        exe = gx.compile(module, target=target, level=0)
        names = data_inputs(case.model)
        for inputs, ref in case.data_sets:
            inputs = [_normalize(x) for x in inputs]
            ref = [_normalize(x) for x in ref]
            feeds = dict(zip(names, inputs))
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                out = exe.run(feeds)
            assert_similar(ref, [out[n] for n in exe.output_names], case.rtol, case.atol)
        return CaseResult(case.name, True)
    except AssertionError as e:
        msg = " ".join(str(e).split())
        return CaseResult(case.name, False, f"mismatch: {msg[:200]}")
    except Exception as e:
        msg = " ".join(str(e).split())
        return CaseResult(case.name, False, f"{type(e).__name__}: {msg[:200]}")


_ORT_RESULTS: dict[str, CaseResult] = {}


def run_case_onnxruntime(case) -> CaseResult:
    """The same comparison with onnxruntime, for the count printed beside galaxir's
    (cached per process: several tests ask)."""
    if case.name not in _ORT_RESULTS:
        _ORT_RESULTS[case.name] = _run_case_onnxruntime(case)
    return _ORT_RESULTS[case.name]


def _run_case_onnxruntime(case) -> CaseResult:
    import onnxruntime as ort
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(case.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for inputs, ref in case.data_sets:
            inputs = [_normalize(x) for x in inputs]
            ref = [_normalize(x) for x in ref]
            out = sess.run(None, dict(zip(names, inputs)))
            assert_similar(ref, out, case.rtol, case.atol)
        return CaseResult(case.name, True)
    except Exception as e:
        return CaseResult(case.name, False, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")


def summarize(results: Sequence[CaseResult]) -> str:
    passed = sum(r.ok for r in results)
    return f"{passed} of {len(results)} ONNX node cases pass"


def read_expected(path) -> dict[str, str]:
    """``name<TAB>reason`` lines; ``#`` starts a comment."""
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        name, _, reason = line.partition("\t")
        out[name.strip()] = reason.strip()
    return out


def write_expected(path, results: Sequence[CaseResult]) -> None:
    old = {}
    try:
        old = read_expected(path)
    except FileNotFoundError:
        pass
    with open(path, "w", encoding="utf-8") as f:
        f.write("# ONNX node conformance cases galaxir's numpy backend does not pass, one per line:\n")
        f.write("# case name, a tab, the reason. tests/test_onnx_conformance.py fails if a listed case\n")
        f.write("# passes or an unlisted case fails. Reasons written by hand are kept on rewrite.\n")
        for r in results:
            if not r.ok:
                f.write(f"{r.name}\t{old.get(r.name) or r.reason}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m galaxir.testing.onnx_conformance [--target T] [--pattern RX] [--failures]``"""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--target", default="numpy")
    p.add_argument("--pattern", default=None)
    p.add_argument("--failures", action="store_true", help="list failing cases with reasons")
    p.add_argument("--onnxruntime", action="store_true", help="also count onnxruntime")
    p.add_argument("--write-expected", metavar="FILE",
                   help="write the failing cases with reasons (the reviewed expected-failures list)")
    a = p.parse_args(argv)
    cases = load_cases(a.pattern)
    results = [run_case(c, a.target) for c in cases]
    if a.write_expected:
        write_expected(a.write_expected, results)
    if a.failures:
        for r in results:
            if not r.ok:
                print(f"{r.name}\t{r.reason}")
    print(f"galaxir ({a.target}): {summarize(results)}")
    if a.onnxruntime:
        print(f"onnxruntime: {summarize([run_case_onnxruntime(c) for c in cases])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
