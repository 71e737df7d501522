"""First-hour usability (issue 13): what a new user meets first says what it does, uses the
same defaults as the Python API, and refuses what it does not understand with a message
that lists what it does."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir import errors
from galaxir.ir import GraphBuilder, tensor
from galaxir.testing import zoo
from conftest import cli
from conftest import add_relu_model

ROOT = Path(__file__).parent.parent


@pytest.fixture()
def model_file(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(add_relu_model(), str(p))
    return p


@pytest.fixture(scope="module")
def squeezenet():
    return gx.import_model(str(zoo.model_path("squeezenet")))


# -- the command line: defaults, version, help ----------------------------------------------
def test_version_and_help_show_defaults_and_targets():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"galaxir {gx.__version__}"
    r = cli("run", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    level = gx.default_level("cpu")
    assert level == 3
    assert f"cpu (default -O {level})" in text and "numpy (default -O 0)" in text
    assert "(default: cpu)" in text and "--disable-pass" in text and "--print-after" in text


def test_cli_default_level_is_gx_compile_default(model_file):
    for cmd in (["run"], ["bench", "--runs", "1"], ["show"]):
        r = cli(*cmd, model_file)
        assert r.returncode == 0, r.stderr
        assert f"O{gx.default_level('cpu')}" in r.stdout, (cmd, r.stdout)
    r = cli("run", model_file, "--target", "numpy")
    assert "O0 on numpy" in r.stdout


def test_cli_pass_switches_and_unknown_pass(model_file, tmp_path):
    r = cli("run", "--disable-pass", "no-such-pass", model_file)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no pass named 'no-such-pass'" in r.stderr
    for name in ("canonicalize", "cse", "dce", "fuse-elementwise", "layout"):
        assert name in r.stderr
    r = cli("run", "--disable-rule", "fold-constnt", model_file)
    assert r.returncode == 1 and "did you mean 'fold-constant'" in r.stderr
    r = cli("run", model_file, "--disable-pass", "layout", "--disable-rule", "fuse-activation",
            "--print-after", "cse", "--timing", "--dump-dir", tmp_path / "stages")
    assert r.returncode == 0, r.stderr
    assert "IR after pass #3 'cse'" in r.stderr and "total" in r.stderr
    assert "layout" not in r.stderr.split("total")[0]  # disabled: not in the timing table
    assert any(p.name.endswith("-cse.gxir") for p in (tmp_path / "stages").iterdir())


# -- the Python API refuses unknown names ---------------------------------------------------
def test_optimize_refuses_unknown_pass_rule_and_print_names(squeezenet):
    with pytest.raises(errors.OptionError, match="no pass named 'no-such-pass'") as e:
        gx.optimize(squeezenet, level=2, disable_passes=["no-such-pass"])
    assert "canonicalize" in str(e.value) and "fuse-bias" in str(e.value)
    with pytest.raises(errors.OptionError, match="no rule named 'fuse-conv-bais'.*fuse-conv-bias"):
        gx.optimize(squeezenet, level=2, disable_rules=["fuse-conv-bais"])
    with pytest.raises(errors.OptionError, match="did you mean 'cse'"):
        gx.optimize(squeezenet, level=1, print_after=["csee"])
    with pytest.raises(errors.OptionError, match="fold_max_elements"):
        gx.optimize(squeezenet, level=1, fold_max_element=10)
    # valid names still work, rules of a higher level included (disabling them is harmless)
    o = gx.optimize(squeezenet, level=1, disable_passes=["cse"], disable_rules=["fuse-conv-bias"],
                    print_after=[1], stream=open(os.devnull, "w"))
    assert "cse" not in o.metadata["optimized"]


def test_galaxir_passes_env_refuses_unknown_names(squeezenet, monkeypatch):
    monkeypatch.setenv("GALAXIR_PASSES", "disable=no-such-rule")
    with pytest.raises(errors.OptionError, match="no rule named 'no-such-rule'"):
        gx.optimize(squeezenet, level=1)
    monkeypatch.setenv("GALAXIR_PASSES", "disable-pass=cse")
    assert "cse" not in gx.optimize(squeezenet, level=1).metadata["optimized"]
    monkeypatch.setenv("GALAXIR_PASSES", "bogus")
    with pytest.raises(errors.OptionError, match="unknown item 'bogus'"):
        gx.optimize(squeezenet, level=1)


def test_compile_refuses_unknown_options(squeezenet):
    with pytest.raises(errors.OptionError) as e:
        gx.compile(squeezenet, target="cpu", bogus=1)
    for valid in ("num_threads", "cache_dir", "disable_passes", "timing"):
        assert valid in str(e.value)
    with pytest.raises(errors.OptionError, match="did you mean 'num_threads'"):
        gx.compile(squeezenet, target="cpu", num_thread=1)
    with pytest.raises(errors.OptionError, match="any_typo"):
        gx.compile(squeezenet, target="numpy", any_typo=3)
    # optimize's switches reach the pass manager through compile
    exe = gx.compile(squeezenet, target="numpy", level=1, disable_passes=["cse"])
    assert "cse" not in exe.module.metadata["optimized"]


# -- run, bench, bisect, viz ----------------------------------------------------------------
def test_run_times_first_call_apart_from_steady_state(model_file):
    r = cli("run", model_file, "--runs", "3")
    assert r.returncode == 0, r.stderr
    assert re.search(r"compile [\d.]+ ms, first call [\d.]+ ms", r.stdout)
    assert re.search(r"run: median [\d.]+ ms, min [\d.]+ ms over 3 more calls", r.stdout)


def test_bench_checks_agreement_before_timing(model_file):
    pytest.importorskip("onnxruntime")
    r = cli("bench", model_file, "--runs", "2", "--compare", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert re.search(r"outputs agree with onnxruntime: max \|diff\| [\d.e+-]+", r.stdout)
    assert r.stdout.index("agree") < r.stdout.index("median")


class _Fake:
    def __init__(self, outs):
        self.outs = outs
        self.output_names = ["y"]

    def run(self, feeds, *rest):
        return {"y": self.outs} if not rest else [self.outs]


def test_bench_disagreement_fails_clearly():
    from galaxir.cli import CliError, check_agreement
    y = np.ones((2, 3), np.float32)
    check_agreement(_Fake(y), _Fake(y + 1e-6), {}, 1e-3, 1e-4)  # within tolerance
    with pytest.raises(CliError, match=r"disagree at 6 of 6 elements \(max \|diff\| 0.5"):
        check_agreement(_Fake(y), _Fake(y + 0.5), {}, 1e-3, 1e-4)
    with pytest.raises(CliError, match="shape"):
        check_agreement(_Fake(y), _Fake(y.reshape(3, 2)), {}, 1e-3, 1e-4)


def test_bisect_shows_progress(model_file):
    r = cli("bisect", model_file, "-O", "1", "--target", "numpy")
    assert r.returncode == 0, r.stderr
    assert "bisect: checking pass 1/" in r.stderr and "'cse'" in r.stderr


def test_viz_level_constants_and_missing_graphviz(tmp_path):
    path = zoo.model_path("squeezenet")
    r = cli("viz", path, "-O", "0", "-o", tmp_path / "g.dot")
    assert r.returncode == 0, r.stderr
    dot = (tmp_path / "g.dot").read_text()
    assert 'label="constant' not in dot  # weights are no nodes of their own ...
    assert "conv1_w_0: f32[64,3,3,3] (constant_of_shape)" in dot  # ... but listed in consumers
    r = cli("viz", path, "-O", "0", "--constants", "-o", tmp_path / "all.dot")
    assert (tmp_path / "all.dot").read_text().count("->") > dot.count("->")
    r = cli("viz", path, "-O", "2", "-o", tmp_path / "o2.dot")
    assert "fused_conv" in (tmp_path / "o2.dot").read_text()
    env = dict(os.environ, PATH="")  # no graphviz
    r = subprocess.run([sys.executable, "-m", "galaxir.cli", "viz", str(path), "-o", str(tmp_path / "g.svg")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "'dot' is not installed" in r.stderr and "NOT written" in r.stderr
    assert (tmp_path / "g.dot").exists() and not (tmp_path / "g.svg").exists()


# -- the demo ------------------------------------------------------------------------------
def test_demo_shows_believable_result_without_noise():
    pytest.importorskip("onnxruntime")
    r = subprocess.run([sys.executable, "-m", "galaxir.demo", "--model", "squeezenet", "--runs", "1"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "matches" in out and "DOES NOT MATCH" not in out
    assert "constant weights" in out and "carry no meaning" in out
    assert re.search(r"seeded random weights vs onnxruntime: max \|diff\| [\d.e+-]+", out)
    assert "(the same;" in out
    assert re.search(r"galaxir cpu [\d.]+ ms, onnxruntime [\d.]+ ms", out)
    assert "[999, 998" not in out
    assert "Warning" not in r.stderr and "onnxruntime" not in r.stderr, r.stderr


def test_cli_silences_third_party_warnings(tmp_path):
    """A model with an unused initializer makes onnxruntime log a warning on every session."""
    pytest.importorskip("onnxruntime")
    model = add_relu_model()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    onnx.save(model, str(tmp_path / "m.onnx"))
    r = cli("bench", tmp_path / "m.onnx", "--runs", "1", "-O", "0", "--compare", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "W:onnxruntime" not in r.stderr and "Warning" not in r.stderr, r.stderr


# -- the IR text, folding, feeds, imports ---------------------------------------------------
def test_parse_of_display_text_points_to_to_text():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 100))
    gb.output(gb.add(x, gb.constant(np.ones((4, 100), np.float32))), "y")
    m = gb.module()
    shown = str(m)
    assert "elided" in shown and "module.to_text() prints the whole text" in shown
    with pytest.raises(errors.ParseError, match=r"elided.*module\.to_text\(\)"):
        gx.parse(shown)
    assert gx.parse(m.to_text()) == m


def test_fold_does_not_blow_up_a_splat(tmp_path):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1000, 1000))
    w = gb.op("constant_of_shape", gb.constant(np.array([1000, 1000], np.int64)),
              value=np.array([0.25], np.float32))
    small = gb.op("constant_of_shape", gb.constant(np.array([4, 4], np.int64)),
                  value=np.array([2.0], np.float32))
    gb.output(gb.mul(x, w), "y")
    gb.output(small, "s")
    m = gb.module()
    o = gx.optimize(m, level=2, target="cpu")
    assert o.op_counts().get("constant_of_shape") == 1  # the 4 MB one stays an op ...
    gx.save(o, tmp_path / "m.gxm")
    assert os.path.getsize(tmp_path / "m.gxm") < 64 << 10  # ... so the file stays small
    xv = np.random.default_rng(0).standard_normal((1000, 1000)).astype(np.float32)
    for target in ("numpy", "cpu"):
        y, s = gx.compile(o, target=target, level=0)(xv)
        np.testing.assert_allclose(y, xv * 0.25, rtol=1e-6)
        np.testing.assert_array_equal(s, np.full((4, 4), 2.0, np.float32))


def test_o2_zoo_resnet_gxm_stays_small(tmp_path):
    path = zoo.model_path("resnet50")
    m = gx.optimize(str(path), level=2, target="cpu")
    gx.save(m, tmp_path / "r.gxm")
    assert os.path.getsize(tmp_path / "r.gxm") < 1 << 20  # was 102 MB for an 80 KB .onnx


def test_unknown_feed_names_are_named_briefly():
    inputs = [helper.make_tensor_value_info(f"input_{i}", TensorProto.FLOAT, [1]) for i in range(300)]
    nodes = [helper.make_node("Sum", [f"input_{i}" for i in range(300)], ["y"])]
    g = helper.make_graph(nodes, "many", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    exe = gx.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), target="numpy")
    with pytest.raises(errors.InputValidationError) as e:
        exe.run({"imput_0": np.ones(1, np.float32)})
    msg = str(e.value)
    assert "unknown input name(s) 'imput_0'" in msg and "300 input(s)" in msg
    assert "'input_0'" in msg and "and 294 more" in msg and len(msg) < 400
    with pytest.raises(errors.InputValidationError, match="takes a dict"):
        exe.run([np.ones(1, np.float32)])


class KerasLikeModel:  # any object galaxir does not know
    pass


def test_import_of_unknown_sources_lists_formats(tmp_path):
    with pytest.raises(errors.ModelImportError, match="cannot import a .*KerasLikeModel.*galaxir reads an ONNX model"):
        gx.import_model(KerasLikeModel())
    with pytest.raises(errors.ModelImportError, match="cannot import a builtins.int"):
        gx.import_model(3)
    (tmp_path / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    with pytest.raises(errors.ModelImportError, match="TensorFlow Lite") as e:
        gx.import_model(str(tmp_path / "model.tflite"))  # the TFLite frontend: a corrupt file
    assert "corrupted ONNX" not in str(e.value)
    (tmp_path / "model.bin").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    with pytest.raises(errors.ModelImportError, match="read as ONNX.*galaxir reads"):
        gx.import_model(tmp_path / "model.bin")
    m = gx.import_model(add_relu_model())
    (tmp_path / "m.gxir").write_text(m.to_text())
    assert gx.import_model(str(tmp_path / "m.gxir")) == m


# -- the repository stands on its own -------------------------------------------------------
def test_docs_link_only_inside_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text, page.name
        for ref in re.findall(r"`((?:docs|tests|galaxir|benchmarks)/[\w/.-]+\.(?:md|py))`", text):
            assert (ROOT / ref).exists(), f"{page.name} names {ref}, which does not exist"
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()


def test_torch_extra_is_a_range():
    text = (ROOT / "pyproject.toml").read_text()
    torch_line = next(line for line in text.splitlines() if line.startswith("torch = "))
    assert "==" not in torch_line and ">=" in torch_line


def test_every_pass_option_read_is_registered():
    """optimize refuses unregistered option names, so every ``ctx.option("...")`` a pass
    reads must be in PASS_OPTIONS (else the option could never be given)."""
    from galaxir.passes.pipeline import PASS_OPTIONS
    used = set()
    for path in (ROOT / "galaxir").rglob("*.py"):
        used |= set(re.findall(r"ctx\.option\(\"(\w+)\"", path.read_text()))
        used |= set(re.findall(r"ctx\.options or \{\}\)\.get\(\"(\w+)\"", path.read_text()))
    assert used and used <= set(PASS_OPTIONS), used - set(PASS_OPTIONS)
