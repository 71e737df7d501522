"""Fuzzing as a test (galaxir/testing/fuzz.py): mutated ONNX files, mutated .gxm files and
bad runtime feeds, each case in a worker process with a timeout.  The only outcomes allowed
are a result or a ``galaxir.errors`` exception: no crash, hang, other exception or wrong
answer.

The default run takes 300 cases (fixed seeds) and replays the corpus of every case that
ever failed (tests/data/fuzz_corpus); ``pytest -m fuzz`` runs 10,000 new ones
(``GALAXIR_FUZZ_CASES`` and ``GALAXIR_FUZZ_START`` change how many and from which seed).
A failing case is written to the corpus, to be committed with its fix.
"""
import json
import os
from pathlib import Path

import pytest

from galaxir.testing import fuzz

CORPUS = Path(__file__).parent / "data" / "fuzz_corpus"
WORKERS = 2


def _known_open() -> dict:
    """(kind, seed) -> reason, for corpus cases that wait for a fix elsewhere."""
    return {(c["kind"], c["seed"]): c["open"] for c in fuzz.load_corpus(CORPUS) if c.get("open")}


def _check(results, label):
    known = _known_open()
    bad = [r for r in results if not r.good and (r.case["kind"], r.case["seed"]) not in known]
    for r in bad:
        fuzz.save_to_corpus(r, CORPUS)
    assert not bad, (f"{label}: {len(bad)} of {len(results)} cases broke the promise "
                     f"(saved to {CORPUS}):\n" + fuzz.summary(results, 0) + "\n" +
                     "\n\n".join(r.traceback for r in bad[:3]))


def test_harness_pins_crash_hang_and_raw_exception_on_their_case():
    cases = [{"kind": "selftest", "seed": i, "note": n}
             for i, n in enumerate(["ok", "abort", "ok", "hang", "raise", "galaxir", "ok"])]
    res = fuzz.run_cases(cases, workers=1, timeout=10)
    got = [r.outcome.split(":")[0] if not r.outcome.startswith("galaxir") else r.outcome for r in res]
    assert got == ["ok", "crash", "ok", "hang", "other", "galaxir:ExecutionError", "ok"]
    assert "SIGABRT" in res[1].outcome and "KeyError" in res[4].outcome
    assert [r.good for r in res] == [True, False, True, False, False, True, True]


def test_fuzz_300_cases(tmp_path):
    cases = fuzz.generate(300, start=0, workdir=tmp_path)
    assert {c["kind"] for c in cases} == set(fuzz.KINDS)
    results = fuzz.run_cases(cases, workers=WORKERS)
    assert len(results) == 300
    outcomes = {r.outcome for r in results}
    assert "ok" in outcomes and any(o.startswith("galaxir:") for o in outcomes)  # both paths taken
    _check(results, "300 fuzz cases")


def _corpus_params():
    params = []
    for p in sorted(CORPUS.glob("*.json")):
        case = json.loads(p.read_text())
        marks = [pytest.mark.xfail(reason=case["open"], strict=False)] if case.get("open") else []
        params.append(pytest.param(p.name, marks=marks, id=p.stem))
    return params


@pytest.fixture(scope="module")
def corpus_results():
    """The whole corpus, replayed once (worker start-up is the cost, not the cases)."""
    cases = fuzz.load_corpus(CORPUS)
    return {r.case["_file"]: r for r in fuzz.run_cases(cases, workers=WORKERS)}


@pytest.mark.parametrize("name", _corpus_params())
def test_fuzz_corpus_replays(name, corpus_results):
    """Every case that ever failed; those marked "open" wait for a fix in another part of
    galaxir (the reason names it) and must pass once it lands."""
    res = corpus_results[name]
    assert res.good, f"{name}: {res.outcome}\n{res.traceback}"


def test_corpus_is_small_and_pickle_free():
    for p in CORPUS.iterdir():
        assert p.stat().st_size < 256 << 10, p.name
        assert p.suffix in (".json", ".onnx", ".gxm"), p.name
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks like a pickle"


@pytest.mark.fuzz
def test_fuzz_campaign(tmp_path):
    n = int(os.environ.get("GALAXIR_FUZZ_CASES", "10000"))
    start = int(os.environ.get("GALAXIR_FUZZ_START", "1000000"))
    cases = fuzz.generate(n, start=start, workdir=tmp_path)
    results = fuzz.run_cases(cases, workers=WORKERS)
    print(fuzz.summary(results, 0))
    _check(results, f"{n} fuzz cases from seed {start}")
