"""Every ONNX node test case gives the same pass/fail result before and after O1.

A case is optimized (verifying after every pass) and run; only when it fails is the
unoptimized module run too, and it must fail as well: O1 never breaks a passing case."""
from __future__ import annotations


from galaxir.passes import optimize
from galaxir.testing.onnx_conformance import load_cases, run_case


def _o1(m):
    return optimize(m, 1, verify_each=True)


def test_onnx_node_cases_same_results_after_o1():
    cases = load_cases()
    assert len(cases) > 1000
    broken = []
    passed = 0
    for case in cases:
        after = run_case(case, transform=_o1)
        if after.ok:
            passed += 1
            continue
        before = run_case(case)
        if before.ok:
            broken.append(f"{case.name}: {after.reason}")
    assert not broken, "O1 breaks:\n" + "\n".join(broken)
    assert passed > 1000
