"""All 1884 ONNX backend node test cases on the numpy backend, compared the way onnx's own
runner compares.  Cases galaxir does not pass are listed, each with a reason, in
tests/data/onnx_expected_failures.txt; this test fails if a listed case starts passing or
an unlisted case fails.  Regenerate the list (hand-written reasons are kept) with
``python -m galaxir.testing.onnx_conformance --write-expected tests/data/onnx_expected_failures.txt``."""
from pathlib import Path


from galaxir.testing.onnx_conformance import (load_cases, read_expected, run_case,
                                               run_case_onnxruntime, summarize)

EXPECTED = Path(__file__).parent / "data" / "onnx_expected_failures.txt"


def test_onnx_node_suite_on_numpy(capsys):
    cases = load_cases()
    assert len(cases) >= 1884
    expected = read_expected(EXPECTED)
    results = [run_case(c, "numpy") for c in cases]
    failed = {r.name: r.reason for r in results if not r.ok}
    newly_failing = sorted(set(failed) - set(expected))
    # a random op's case can match its expected values by chance (a few Bernoulli draws):
    # it may pass without being taken off the list
    by_chance = {n for n, why in expected.items() if why.startswith("random op")}
    newly_passing = sorted(set(expected) - set(failed) - by_chance)
    passed = len(results) - len(failed)
    with capsys.disabled():
        print(f"\ngalaxir numpy: {summarize(results)}")
        try:
            import onnxruntime  # noqa: F401
            ort = [run_case_onnxruntime(c) for c in cases]
            print(f"onnxruntime {onnxruntime.__version__}: {summarize(ort)}")
        except ImportError:
            print("onnxruntime not installed: no comparison count")
    msg = []
    if newly_failing:
        msg.append("cases failing that are not in the expected-failures list:\n" +
                   "\n".join(f"  {n}: {failed[n]}" for n in newly_failing))
    if newly_passing:
        msg.append("cases listed as expected failures that now pass (remove them):\n" +
                   "\n".join(f"  {n}" for n in newly_passing))
    assert not msg, "\n".join(msg)
    assert passed >= 1700, f"only {passed} cases pass; the target is 1700"
